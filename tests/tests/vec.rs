//! The conformance suite on profit-core's own host backend, `VecBackend` (f64 and f32): the
//! reference the adapters are compared with, and the backend `profit-burn` and `profit-dfdx`
//! step (their host mirrors are `VecBackend` tensors; their own code is tested through their
//! frameworks' autodiff in `profit-burn/tests/golden.rs` and `dfdx.rs`).

use profit_conformance::{conformance_suite, VecHarness};

conformance_suite!(vec_f64, || Ok::<_, String>(VecHarness::<f64>::default()));
conformance_suite!(vec_f32, || Ok::<_, String>(VecHarness::<f32>::default()));
