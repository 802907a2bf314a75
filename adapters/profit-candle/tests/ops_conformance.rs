//! The conformance suite on the tensor-ops backend ([`CandleOps`]), forced onto the CPU: every
//! tensor the suite makes is a candle CPU tensor and every pass runs as candle tensor ops (the
//! path vars on CUDA or Metal take), f32 and f64; the golden replays also in bf16 and f16.

use candle_core::{Device, Tensor};
use profit_candle::{CandleElement, CandleOps};
use profit_conformance::{conformance_suite, Harness};
use profit_core::element::Element;

struct OpsHarness<E>(std::marker::PhantomData<E>);

impl<E: CandleElement> Harness for OpsHarness<E> {
    type B = CandleOps<E>;
    fn label(&self) -> String {
        format!("candle-ops-{}", <E as Element>::DTYPE)
    }
    fn tensor(&self, shape: &[usize], data: &[f64]) -> Tensor {
        let v: Vec<E> = data.iter().map(|&x| <E as Element>::from_f64(x)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches data")
    }
    fn values(&self, t: &Tensor) -> Vec<f64> {
        t.flatten_all().and_then(|f| f.to_vec1::<E>()).expect("readable").iter().map(|x| x.as_f64()).collect()
    }
    fn resume_stride(&self) -> usize {
        4
    }
}

conformance_suite!(candle_ops_f32, || Ok::<_, String>(OpsHarness::<f32>(Default::default())));
conformance_suite!(candle_ops_f64, || Ok::<_, String>(OpsHarness::<f64>(Default::default())));

// The suite's invariants are written for f32/f64 precision (no backend runs them in 16 bits);
// the golden replays carry bf16 and f16 tolerances (`profit_conformance::TOLERANCE_BF16`,
// `TOLERANCE_F16`, accumulated delta): replayed on the tensor-ops path too.

#[test]
fn golden_replay_bf16() {
    profit_conformance::golden_all(&OpsHarness::<half::bf16>(Default::default()));
}

#[test]
fn golden_replay_f16() {
    profit_conformance::golden_all(&OpsHarness::<half::f16>(Default::default()));
}
