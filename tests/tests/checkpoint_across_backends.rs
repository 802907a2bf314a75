//! Checkpoints move between row-major backends (ndarray -> the built-in VecBackend) and are
//! refused, with nothing changed, by a backend with another storage order (nalgebra).

use nalgebra::DMatrix;
use ndarray::{ArrayD, IxDyn};
use profit_core::checkpoint::{LoadOptions, SaveOptions};
use profit_core::host::{VecBackend, VecTensor};
use profit_core::{Adam, Delta, Profit, ProfitConfig, ProfitError, Sgd};
use profit_nalgebra::Nalgebra;
use profit_ndarray::NdArray;

fn config() -> ProfitConfig {
    ProfitConfig {
        delta: Delta::Accumulated,
        ..ProfitConfig::new(
            Sgd { lr: 1e-3, momentum: 0.9, ..Sgd::default() },
            Adam { lr: 1e-2, ..Adam::default() },
        )
    }
}

#[test]
fn row_major_backends_share_checkpoints_and_column_major_is_refused() {
    let mut w = ArrayD::from_shape_fn(IxDyn(&[2, 3]), |d| d[0] as f32 - 0.5 * d[1] as f32);
    let mut nd = Profit::<NdArray<f32>>::with_names(config(), &[("w", &w)]).unwrap();
    for i in 0..3 {
        let g = w.mapv(|x| x * 0.3 + i as f32 * 0.1);
        nd.step(&mut [&mut w], &[&g]).unwrap();
    }
    let bytes = nd.save_checkpoint(&[&w], SaveOptions::default()).unwrap();

    // ndarray -> VecBackend: same names, shapes and order: loads, and saves back identically
    // apart from the backend name in the header.
    let mut v = VecTensor::new(&[2, 3], w.iter().copied().collect()).unwrap();
    let mut vec_opt = Profit::<VecBackend<f32>>::with_names(config(), &[("w", &v)]).unwrap();
    vec_opt
        .load_checkpoint(&bytes, &mut [&mut v], LoadOptions::default())
        .expect("row-major checkpoint loads into VecBackend");
    assert_eq!(vec_opt.calls(), 3);
    let delta_nd: Vec<f32> = nd.delta(0).unwrap().iter().copied().collect();
    assert_eq!(vec_opt.delta(0).unwrap().data, delta_nd);
    let anchor_nd: Vec<f32> = nd.anchor(0).unwrap().iter().copied().collect();
    assert_eq!(vec_opt.anchor(0).unwrap().data, anchor_nd);

    // ndarray -> nalgebra (column-major): refused, nothing changed.
    let mut m = DMatrix::<f32>::zeros(2, 3);
    let mut na = Profit::<Nalgebra<f32>>::with_names(config(), &[("w", &m)]).unwrap();
    let before = na.save_checkpoint(&[&m], SaveOptions::default()).unwrap();
    match na.load_checkpoint(&bytes, &mut [&mut m], LoadOptions::default()) {
        Err(ProfitError::Checkpoint(msg)) => assert!(msg.contains("ColumnMajor"), "{msg}"),
        other => panic!("expected a storage-order refusal, got {other:?}"),
    }
    assert_eq!(na.save_checkpoint(&[&m], SaveOptions::default()).unwrap(), before);
}
