//! The conformance suite on the ndarray backend, f64 and f32.

use ndarray::{ArrayD, IxDyn};
use profit_conformance::{conformance_suite, Harness};
use profit_core::Element;
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
