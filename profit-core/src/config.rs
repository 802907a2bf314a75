//! PROFIT's configuration: the inner optimizers and the policies the paper leaves open (see the
//! repository's `ALGORITHM.md`).

use serde::{Deserialize, Serialize};

use crate::error::{ProfitError, Result};
use crate::optim::{InnerConfig, Sgd};

/// How the projection is scoped (`ALGORITHM.md`, section 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    /// One `omega` and one `|delta|^2` over all trainable parameters (the paper's reading).
    #[default]
    Global,
    /// Each tensor is tested and projected against its own delta.
    PerTensor,
}

/// What `delta` is: how far the reference steps moved the weights.
///
/// In `f64` the two agree to about 1e-16. In `f32` (and lower precisions) they part ways when
/// the reference updates are small against the spacing of the floating-point numbers around
/// the weights (`lr_ref * |g|` below about `1e-7 * |w|` in `f32`): most of each reference
/// update then rounds away when it is added to the weights, and the realized delta keeps only
/// what the weights really moved, while the accumulated one keeps the updates as intended. See
/// `EXPERIMENTS.md` for what that does to fine-tuning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delta {
    /// `delta = theta' - theta_ref`, the difference of the stored weights after the reference
    /// steps, rounded to the parameters' type element by element: Algorithm 1's line 7 as
    /// written, and what PyTorch implementations compute. Needs the anchor and no delta buffer
    /// (formed on the fly at the main call). The default.
    #[default]
    Realized,
    /// `delta` = the sum of the reference updates as computed (the displacement as intended),
    /// kept in a parameter-sized buffer.
    Accumulated,
}

/// How the main call returns to the anchor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restore {
    /// Keep a copy of the anchor and copy it back: bitwise exact, one parameter-sized buffer.
    #[default]
    Anchor,
    /// Keep no anchor; restore by `theta - delta` (only with [`Delta::Accumulated`]: the
    /// realized delta needs the anchor). Saves one buffer; the restored weights differ
    /// from the anchor by rounding: measured by the conformance suite
    /// (`invariant_subtract_restore_error_is_bounded`) at about 1-1.5 eps x max(1, |anchor|)
    /// over up to 3 reference steps, in f32 and f64, and within the golden tolerances.
    Subtract,
}

/// What to do with a gradient that holds NaN or infinity. (The check looks at the f64 `|g|^2`
/// of each tensor, so an `f64` gradient so large that its squared norm overflows, above about
/// 1e154, counts as non-finite too.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinitePolicy {
    /// Return [`ProfitError::NonFiniteGradient`] and change nothing (default).
    #[default]
    Error,
    /// Count the call as skipped ([`Phase::Skipped`](crate::report::Phase::Skipped)) and change nothing.
    Skip,
    /// Do not check (as `torch.optim` does): saves the gradient pre-pass at reference and
    /// warm-up calls; a non-finite gradient then propagates into the weights.
    Propagate,
}

/// How the reference learning rate follows the main one when [`Profit::set_lr`](crate::profit::Profit::set_lr) is called.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrCoupling {
    /// `lr_ref = lr_main / r` with the ratio `r` fixed when the optimizer is built (default).
    #[default]
    FixedRatio,
    /// The two rates move independently ([`Profit::set_ref_lr`](crate::profit::Profit::set_ref_lr)).
    Free,
}

/// PROFIT's configuration. Defaults are the paper's (`n_ref = 1`, SGD reference, global
/// projection, the realized delta).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfitConfig {
    /// Reference optimizer `O_ref` (default: plain SGD).
    pub reference: InnerConfig,
    /// Main optimizer `O` (default: Adam).
    pub main: InnerConfig,
    /// Reference steps per cycle (`>= 1`).
    pub n_ref: u64,
    /// Calls that go straight to the main optimizer before the first cycle.
    pub warmup_steps: u64,
    /// Projection scope.
    pub projection: Projection,
    /// What `delta` is.
    pub delta: Delta,
    /// Restore mode.
    pub restore: Restore,
    /// Non-finite gradient policy.
    pub non_finite: NonFinitePolicy,
    /// Clip gradients to this global L2 norm before they are used (`torch.nn.utils.clip_grad_norm_`).
    pub max_grad_norm: Option<f64>,
    /// How `set_lr` moves the reference rate.
    pub lr_coupling: LrCoupling,
}

/// The most calls an optimizer counts (and a checkpoint may record).
pub const MAX_CALLS: u64 = 1 << 40;

/// The default main learning rate (`torch.optim.Adam`'s).
const DEFAULT_MAIN_LR: f64 = 1e-3;
/// The default `lr_main / lr_ref` of [`ProfitConfig::default`].
pub const DEFAULT_RATIO: f64 = 1e3;

/// The default: SGD reference at `lr_ref = 1e-3 / DEFAULT_RATIO` (not `Sgd::default()`'s
/// `1e-3`: PROFIT wants reference steps much smaller than the main ones), Adam main with
/// PyTorch's defaults, `n_ref = 1`, global projection, realized delta, anchor restore, no
/// clipping, non-finite gradients refused.
impl Default for ProfitConfig {
    fn default() -> Self {
        ProfitConfig {
            reference: InnerConfig::Sgd(Sgd { lr: DEFAULT_MAIN_LR / DEFAULT_RATIO, ..Sgd::default() }),
            main: InnerConfig::Adam(Default::default()),
            n_ref: 1,
            warmup_steps: 0,
            projection: Projection::Global,
            delta: Delta::Realized,
            restore: Restore::Anchor,
            non_finite: NonFinitePolicy::Error,
            max_grad_norm: None,
            lr_coupling: LrCoupling::FixedRatio,
        }
    }
}

impl ProfitConfig {
    /// A configuration with these two inner optimizers and the other fields at their defaults.
    pub fn new(reference: impl Into<InnerConfig>, main: impl Into<InnerConfig>) -> Self {
        ProfitConfig { reference: reference.into(), main: main.into(), ..Default::default() }
    }

    /// Reference calls among the first `calls` counted calls of a run with this configuration
    /// (the reference optimizer's `state['step']`).
    pub fn reference_calls(&self, calls: u64) -> u64 {
        let n = self.n_ref;
        let cycled = calls.saturating_sub(self.warmup_steps);
        cycled / (n + 1) * n + (cycled % (n + 1)).min(n)
    }

    /// Check every hyperparameter.
    pub fn validate(&self) -> Result<()> {
        self.reference.validate()?;
        self.main.validate()?;
        if self.reference.is_external() {
            return Err(ProfitError::InvalidConfig(
                "an external optimizer can only be the main optimizer: PROFIT takes the reference steps itself",
            ));
        }
        if self.n_ref == 0 || self.n_ref > u32::MAX as u64 {
            return Err(ProfitError::InvalidHyperparameter {
                name: "n_ref",
                value: self.n_ref as f64,
                reason: "must be in 1..=2^32-1",
            });
        }
        if self.delta == Delta::Realized && self.restore == Restore::Subtract {
            return Err(ProfitError::InvalidConfig(
                "the realized delta (theta' - anchor) needs the anchor: Restore::Subtract works only with Delta::Accumulated",
            ));
        }
        if let Some(m) = self.max_grad_norm {
            if !(m.is_finite() && m > 0.0) {
                return Err(ProfitError::InvalidHyperparameter {
                    name: "max_grad_norm",
                    value: m,
                    reason: "must be finite and > 0",
                });
            }
        }
        Ok(())
    }
}
