//! The conformance suite on the ndarray backend, f64 and f32; bf16 and f16 parameters (equal
//! to `VecBackend` bitwise, golden trajectories within the measured tolerances, PyTorch's own
//! bf16 and f16 trajectories of `golden16/`).

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use profit_conformance::golden::golden16_all;
use profit_conformance::{conformance_suite, Harness, VecHarness};
use profit_core::element::Element;
use profit_core::host::{VecBackend, VecTensor};
use profit_core::{Delta, ProfitConfig};
use profit_ndarray::NdArray;

struct Nd<E>(std::marker::PhantomData<E>);

impl<E: Element> Harness for Nd<E> {
    type B = NdArray<E>;
    fn label(&self) -> String {
        format!("ndarray-{}", E::DTYPE)
    }
    fn tensor(&self, shape: &[usize], data: &[f64]) -> ArrayD<E> {
        ArrayD::from_shape_vec(IxDyn(shape), data.iter().map(|&x| E::from_f64(x)).collect()).expect("shape")
    }
    fn values(&self, t: &ArrayD<E>) -> Vec<f64> {
        t.iter().map(|x| x.as_f64()).collect()
    }
}

conformance_suite!(ndarray_f64, || Ok::<_, String>(Nd::<f64>(Default::default())));
conformance_suite!(ndarray_f32, || Ok::<_, String>(Nd::<f32>(Default::default())));

/// Every float64 and float32 golden case in both delta modes, on ndarray and on `VecBackend`,
/// each call checked against the f32 reference rounded once ([`profit_conformance::stepwise16`]).
fn stepwise_replays<E: Element>() {
    profit_conformance::stepwise16::replay_all(&Nd::<E>(Default::default()));
    profit_conformance::stepwise16::replay_all(&VecHarness::<E>::default());
}

#[test]
fn bf16_replays_every_golden_case() {
    stepwise_replays::<bf16>();
}

#[test]
fn f16_replays_every_golden_case() {
    stepwise_replays::<f16>();
}

/// The 16-bit golden files PyTorch made in this element type (`golden16/`), on ndarray and on
/// `VecBackend`, which must agree bitwise: files rounded once per stored value matched
/// bitwise, torch's per-op files within the measured tolerance.
fn torch_16bit_replays<E: Element>() {
    let nd = golden16_all(&Nd::<E>(Default::default()));
    let vec = golden16_all(&VecHarness::<E>::default());
    assert_eq!(nd.len(), vec.len());
    let mut per_op_worst = 0.0f64;
    for ((file, rounding, a), (_, _, b)) in nd.iter().zip(&vec) {
        assert_eq!(a.worst_param.to_bits(), b.worst_param.to_bits(), "{file}: ndarray and VecBackend differ");
        assert_eq!(a.worst_stats.to_bits(), b.worst_stats.to_bits(), "{file}: ndarray and VecBackend differ");
        if rounding == "per_op" {
            per_op_worst = per_op_worst.max(a.worst_param);
        }
    }
    let kinds = |r: &str| nd.iter().filter(|(_, k, _)| k == r).count();
    assert!(kinds("once") > 0 && kinds("per_op") > 0, "{}: both kinds of file must be present", E::DTYPE);
    // Torch's per-op rounding is not this library's: the per-op files must show it.
    assert!(per_op_worst > 0.0, "{}: no difference from torch's per-op rounding seen", E::DTYPE);
}

#[test]
fn bf16_replays_torch_bf16_trajectories() {
    torch_16bit_replays::<bf16>();
}

#[test]
fn f16_replays_torch_f16_trajectories() {
    torch_16bit_replays::<f16>();
}

/// A reference update below half the spacing of every weight rounds away: the realized delta
/// is exactly zero and the projection cannot fire, while the accumulated delta keeps it.
fn small_reference_updates_round_away<E: Element>() {
    use profit_core::{Adam, Profit, Sgd};
    let n = 4096;
    // Weights in [0.5, 1): spacing 2^-8 (bf16) or 2^-11 (f16); updates lr_ref * |g| <= 1e-6.
    let w0: Vec<E> = (0..n).map(|i| E::from_f64(0.5 + 0.5 * (i as f64 / n as f64))).collect();
    let g = VecTensor::new(&[n], (0..n).map(|i| E::from_f64(if i % 3 == 0 { -1.0 } else { 1.0 })).collect())
        .unwrap();
    let mut fired = vec![];
    for delta in [Delta::Realized, Delta::Accumulated] {
        let config = ProfitConfig {
            delta,
            ..ProfitConfig::new(
                Sgd { lr: 1e-6, ..Default::default() },
                Adam { lr: 1e-3, ..Default::default() },
            )
        };
        let mut w = VecTensor::new(&[n], w0.clone()).unwrap();
        let mut opt = Profit::<VecBackend<E>>::with_names(config, &[("w", &w)]).unwrap();
        opt.step(&mut [&mut w], &[&g]).unwrap(); // reference
        assert_eq!(w.data, w0, "{delta:?}: every reference update rounded away in {}", E::DTYPE);
        let main = opt.step(&mut [&mut w], &[&g]).unwrap().main.unwrap();
        fired.push((main.projected, main.delta_norm_sq));
    }
    assert_eq!(fired[0], (false, 0.0), "{}: realized", E::DTYPE);
    assert!(fired[1].0 && fired[1].1 > 0.0, "{}: accumulated {:?}", E::DTYPE, fired[1]);
}

#[test]
fn realized_delta_loses_updates_below_the_spacing() {
    small_reference_updates_round_away::<bf16>();
    small_reference_updates_round_away::<f16>();
}

/// Sharding on ndarray: rank optimizers over 1-D `ArrayD` shards equal the `VecBackend` engine.
#[test]
fn sharded_ndarray_ranks_equal_the_vec_engine() {
    profit_conformance::sharded::ranks_on_backend(&Nd::<f32>(Default::default()));
    profit_conformance::sharded::ranks_on_backend(&Nd::<f64>(Default::default()));
}
