//! Per-tensor projection fused tensor by tensor (reduce, then update while the tensor is in
//! cache) gives bitwise the same run as the two-sweep path (all reductions, then all updates).

use profit_core::error::BackendError;
use profit_core::host::{HostBackend, VecBackend, VecTensor};
use profit_core::{Adam, InnerConfig, NonFinitePolicy, Profit, ProfitConfig, Projection, RmsProp, Sgd};

/// The built-in host backend with the per-tensor fusion switched off.
struct TwoSweeps;

impl HostBackend for TwoSweeps {
    type Elem = f32;
    type Tensor = VecTensor<f32>;
    const NAME: &'static str = "two-sweeps";
    const FUSE_PER_TENSOR: bool = false;
    fn shape(t: &VecTensor<f32>) -> Vec<usize> {
        t.shape.clone()
    }
    fn zeros_like(t: &VecTensor<f32>) -> VecTensor<f32> {
        VecTensor { data: vec![0.0; t.data.len()], shape: t.shape.clone() }
    }
    fn as_slice(t: &VecTensor<f32>) -> Result<&[f32], BackendError> {
        Ok(&t.data)
    }
    fn as_mut_slice(t: &mut VecTensor<f32>) -> Result<&mut [f32], BackendError> {
        Ok(&mut t.data)
    }
}

fn data(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn run<B: HostBackend<Elem = f32, Tensor = VecTensor<f32>>>(
    main: InnerConfig,
    policy: NonFinitePolicy,
) -> Vec<Vec<f32>> {
    // Three tensors, one large enough to be split across threads.
    let shapes: [&[usize]; 3] = [&[7, 5], &[300, 400], &[13]];
    let mut params: Vec<VecTensor<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| VecTensor::new(s, data(i as u64, s.iter().product())).unwrap())
        .collect();
    let config = ProfitConfig {
        projection: Projection::PerTensor,
        non_finite: policy,
        n_ref: 2,
        ..ProfitConfig::new(Sgd { lr: 1e-2, momentum: 0.5, ..Sgd::default() }, main)
    };
    let mut opt = Profit::<B>::new(config, &params.iter().collect::<Vec<_>>()).unwrap();
    for call in 0..12u64 {
        let grads: Vec<VecTensor<f32>> = params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let noise = data(100 + call * 7 + i as u64, p.data.len());
                // Gradients correlated across calls, so that projections fire and do not.
                let g = p.data.iter().zip(noise).map(|(x, n)| 0.5 * x + 0.3 * n).collect();
                VecTensor::new(&p.shape, g).unwrap()
            })
            .collect();
        let mut pm: Vec<&mut VecTensor<f32>> = params.iter_mut().collect();
        opt.step(&mut pm, &grads.iter().collect::<Vec<_>>()).unwrap();
    }
    params.into_iter().map(|t| t.data).collect()
}

#[test]
fn fused_per_tensor_equals_two_sweeps_bitwise() {
    let mains: [InnerConfig; 3] = [
        Adam { lr: 1e-2, amsgrad: true, ..Adam::default() }.into(),
        RmsProp { lr: 1e-3, centered: true, momentum: 0.9, ..RmsProp::default() }.into(),
        Sgd { lr: 0.1, momentum: 0.9, nesterov: true, ..Sgd::default() }.into(),
    ];
    for main in mains {
        // Propagate: the fused path runs; Error: both take the two-sweep path.
        for policy in [NonFinitePolicy::Propagate, NonFinitePolicy::Error] {
            let fused = run::<VecBackend<f32>>(main, policy);
            let swept = run::<TwoSweeps>(main, policy);
            assert!(fused == swept, "{main:?} {policy:?}: fused per-tensor run differs");
        }
    }
}

#[test]
fn tensor_whose_data_does_not_fill_its_shape_is_refused_before_anything_changes() {
    let mut a = VecTensor::new(&[3], vec![1.0f32, 2.0, 3.0]).unwrap();
    let mut b = VecTensor::new(&[2], vec![0.5f32, 0.5]).unwrap();
    let config = ProfitConfig::new(Sgd { lr: 0.1, ..Sgd::default() }, Sgd { lr: 0.1, ..Sgd::default() });
    let mut opt = Profit::<VecBackend<f32>>::new(config, &[&a, &b]).unwrap();
    let ga = VecTensor::new(&[3], vec![1.0f32; 3]).unwrap();
    // Public fields make an inconsistent tensor possible: two elements of data, shape [2] ... of 1.
    let gb = VecTensor { data: vec![1.0f32], shape: vec![2] };
    let err = opt.step(&mut [&mut a, &mut b], &[&ga, &gb]).unwrap_err();
    assert!(matches!(err, profit_core::ProfitError::ShapeMismatch { .. }), "{err}");
    assert_eq!(a.data, vec![1.0, 2.0, 3.0], "the other tensor moved");
    assert_eq!(opt.calls(), 0);
}
