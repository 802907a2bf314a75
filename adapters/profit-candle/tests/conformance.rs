//! The conformance suite on the candle backend: every tensor the suite makes is a candle CPU
//! tensor, so every pass runs the in-place path (locks, views), f32 and f64.

use candle_core::{Device, Tensor};
use profit_candle::{Candle, CandleBuf, CandleElement};
use profit_conformance::{conformance_suite, Harness};
use profit_core::element::Element;

struct CandleHarness<E>(std::marker::PhantomData<E>);

impl<E: CandleElement> Harness for CandleHarness<E> {
    type B = Candle<E>;
    fn label(&self) -> String {
        format!("candle-{}", <E as Element>::DTYPE)
    }
    fn tensor(&self, shape: &[usize], data: &[f64]) -> CandleBuf<E> {
        let v: Vec<E> = data.iter().map(|&x| <E as Element>::from_f64(x)).collect();
        CandleBuf::tensor(Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches data"))
    }
    fn values(&self, t: &CandleBuf<E>) -> Vec<f64> {
        t.to_vec().expect("readable").iter().map(|x| x.as_f64()).collect()
    }
}

conformance_suite!(candle_f32, || Ok::<_, String>(CandleHarness::<f32>(Default::default())));
conformance_suite!(candle_f64, || Ok::<_, String>(CandleHarness::<f64>(Default::default())));
