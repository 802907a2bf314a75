//! The conformance suite on the host backend `profit-burn` steps (burn's host data is always a
//! copy, so the optimizer runs on profit-core's `VecBackend` mirrors), f32 and f64. The burn
//! path itself (visitor, gradients from burn's autodiff, mapper) is replayed against every
//! golden trajectory in `golden.rs`.

use profit_burn::{BurnElement, Host};
use profit_conformance::{conformance_suite, Harness};
use profit_core::element::Element;
use profit_core::host::VecTensor;

struct HostHarness<E>(std::marker::PhantomData<E>);

impl<E: BurnElement> Harness for HostHarness<E> {
    type B = Host<E>;
    fn label(&self) -> String {
        format!("burn-host-{}", <E as Element>::DTYPE)
    }
    fn tensor(&self, shape: &[usize], data: &[f64]) -> VecTensor<E> {
        VecTensor::from_f64(shape, data).expect("shape matches data")
    }
    fn values(&self, t: &VecTensor<E>) -> Vec<f64> {
        t.to_f64()
    }
}

conformance_suite!(burn_host_f32, || Ok::<_, String>(HostHarness::<f32>(Default::default())));
conformance_suite!(burn_host_f64, || Ok::<_, String>(HostHarness::<f64>(Default::default())));
