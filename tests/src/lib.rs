//! # profit-conformance
//!
//! The cross-backend conformance suite. A backend is proven by implementing [`Harness`] (make
//! a tensor from row-major `f64` values, read one back) and invoking [`conformance_suite!`]
//! once; every check below then runs on it:
//!
//! - [`golden`]: every golden trajectory (this crate's `golden/*.json`, plus
//!   `$PROFIT_GOLDEN_DIR/*.json`) replayed call by call, parameters checked at every call and
//!   `projected` at every main call, with the golden README's tolerances (f64: 1e-10, f32: 1e-4);
//! - [`invariants`]: property tests of the algorithm's invariants;
//! - [`bad_input`]: every kind of bad input returns its error and changes nothing;
//! - [`checkpoints`]: save after every call of every golden case, load into a fresh optimizer,
//!   continue, and match the uninterrupted run bitwise; corrupt checkpoints are refused.
//!
//! ```ignore
//! // in a backend crate's tests/conformance.rs:
//! profit_conformance::conformance_suite!(my_backend_f32, || Ok::<_, String>(MyHarness::new()));
//! ```

pub mod bad_input;
pub mod checkpoints;
pub mod golden;
pub mod invariants;

use profit_core::{Element, TensorOps};

/// What the suite needs from a backend besides [`TensorOps`].
pub trait Harness {
    /// The backend under test.
    type B: TensorOps;
    /// A label for output (`"ndarray-f32"`).
    fn label(&self) -> String;
    /// A tensor of this shape from row-major values (rounded to the element type).
    fn tensor(&self, shape: &[usize], data: &[f64]) -> <Self::B as TensorOps>::Tensor;
    /// A tensor's values, row-major, widened to `f64`.
    fn values(&self, t: &<Self::B as TensorOps>::Tensor) -> Vec<f64>;
}

/// The golden README's tolerance for this backend's element type.
pub fn tolerance<H: Harness>() -> f64 {
    match <<H::B as TensorOps>::Elem as Element>::DTYPE {
        "f64" => 1e-10,
        _ => 1e-4,
    }
}

/// Replay every golden case; print each case's worst error; panic listing every failure.
pub fn golden_all<H: Harness>(h: &H) {
    let files = golden::golden_files().unwrap_or_else(|e| panic!("{e}"));
    assert!(!files.is_empty(), "no golden cases found");
    let tol = tolerance::<H>();
    let mut failures = vec![];
    for f in &files {
        let case = match golden::GoldenCase::load(f) {
            Ok(c) => c,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        match golden::replay(h, &case, tol) {
            Ok(s) => println!(
                "golden {:<28} {:<18} worst param error {:.3e} (tol {:.0e}), worst omega/|d|^2/|g|^2 rel error {:.3e}, {} main calls",
                case.name,
                h.label(),
                s.worst_param,
                tol,
                s.worst_stats,
                s.main_calls
            ),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden failure(s) on {}:\n{}",
        failures.len(),
        h.label(),
        failures.join("\n")
    );
}

/// Build the harness or report why the backend is skipped.
pub fn with_harness<H: Harness>(make: impl FnOnce() -> Result<H, String>, test: impl FnOnce(&H)) {
    match make() {
        Ok(h) => test(&h),
        Err(why) => println!("SKIPPED: backend unavailable: {why}"),
    }
}

/// Instantiate the whole suite as `#[test]` functions in a module named `$name`.
///
/// `$make` is an expression of type `impl Fn() -> Result<H, String>`; an `Err` skips every test
/// of the module with a message (a backend whose hardware is absent).
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn golden_replay() {
                $crate::with_harness($make, $crate::golden_all);
            }
            #[test]
            fn invariant_lr_zero_restores_anchor() {
                $crate::with_harness($make, $crate::invariants::lr_zero_restores_anchor);
            }
            #[test]
            fn invariant_projection_orthogonal() {
                $crate::with_harness($make, $crate::invariants::projection_orthogonal);
            }
            #[test]
            fn invariant_unprojected_gradient_unchanged() {
                $crate::with_harness($make, $crate::invariants::unprojected_gradient_unchanged);
            }
            #[test]
            fn invariant_per_tensor_single_equals_global() {
                $crate::with_harness($make, $crate::invariants::per_tensor_single_equals_global);
            }
            #[test]
            fn invariant_frozen_groups_untouched() {
                $crate::with_harness($make, $crate::invariants::frozen_groups_untouched);
            }
            #[test]
            fn invariant_clipping_equals_prescaled_gradients() {
                $crate::with_harness($make, $crate::invariants::clipping_equals_prescaled);
            }
            #[test]
            fn invariant_group_rates_match_separate_optimizers() {
                $crate::with_harness($make, $crate::invariants::group_rates_match_separate);
            }
            #[test]
            fn invariant_subtract_restore_error_is_bounded() {
                $crate::with_harness($make, $crate::invariants::subtract_restore_error);
            }
            #[test]
            fn bad_input_changes_nothing() {
                $crate::with_harness($make, $crate::bad_input::all);
            }
            #[test]
            fn checkpoint_resume_bitwise() {
                $crate::with_harness($make, $crate::checkpoints::resume_every_call);
            }
            #[test]
            fn checkpoint_refuses_bad_files() {
                $crate::with_harness($make, $crate::checkpoints::refuse_bad);
            }
        }
    };
}
