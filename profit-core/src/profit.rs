//! PROFIT (Algorithm 1 of arXiv 2412.01930) with every point the paper leaves open pinned
//! down (see the repository's `ALGORITHM.md`): the whole algorithm is in this file; the element
//! math is in [`optim`](crate::optim) and the passes over memory are the backend's
//! ([`TensorOps`]).
//!
//! One [`Profit::step`] call per batch. After `warmup_steps` plain main-optimizer calls, calls
//! run in cycles of `n_ref + 1`:
//!
//! | call in cycle | what happens |
//! |---|---|
//! | 0 | anchor `theta_ref = theta`; then as below |
//! | 0 .. n_ref-1 | reference step: `u = O_ref(theta, g)`; `theta += u` |
//! | n_ref (main) | `delta` (below); `omega = <delta, g>`; if `omega < 0`: `g -= omega / |delta|^2 * delta`; `theta = theta_ref`; `theta = O(theta, g)` |
//!
//! `delta` is, by default ([`Delta::Realized`]), `theta' - theta_ref`: the difference of the
//! stored weights, formed at the main call in the parameters' precision (Algorithm 1, line 7).
//! With [`Delta::Accumulated`] it is the sum of the reference updates as computed, kept in a
//! buffer (`delta += u` at every reference step).

use serde::{Deserialize, Serialize};

use crate::backend::{
    fires, projection_coef, projection_scalars, total, Decision, Kernel, Pass, Reduction, TensorOps, Verdict,
};
use crate::collective::{Collective, SingleProcess};
use crate::element::{Element, Real};
use crate::error::{ProfitError, Result};
use crate::optim::{check_lr, InnerConfig, Sgd};
use crate::params::{GroupOptions, GroupState, Layout, ParamGroup, Registry};

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
    /// Count the call as skipped ([`Phase::Skipped`]) and change nothing.
    Skip,
    /// Do not check (as `torch.optim` does): saves the gradient pre-pass at reference and
    /// warm-up calls; a non-finite gradient then propagates into the weights.
    Propagate,
}

/// How the reference learning rate follows the main one when [`Profit::set_lr`] is called.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrCoupling {
    /// `lr_ref = lr_main / r` with the ratio `r` fixed when the optimizer is built (default).
    #[default]
    FixedRatio,
    /// The two rates move independently ([`Profit::set_ref_lr`]).
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

/// What a call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A warm-up call: plain main-optimizer step.
    Warmup,
    /// A reference call.
    Reference,
    /// The main call of a cycle.
    Main,
    /// A call skipped for a non-finite gradient (policy [`NonFinitePolicy::Skip`]); nothing changed.
    Skipped,
}

impl Phase {
    /// The phase's name as in reports and golden files (`warmup`, `reference`, `main`, `skipped`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Warmup => "warmup",
            Phase::Reference => "reference",
            Phase::Main => "main",
            Phase::Skipped => "skipped",
        }
    }
}

/// Projection statistics of a main call (over all trainable tensors for global projection;
/// sums over tensors for per-tensor projection, whose per-tensor values are in
/// [`Profit::tensor_reports`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MainReport {
    /// `omega = <delta, g>`.
    pub omega: f64,
    /// `|delta|^2`.
    pub delta_norm_sq: f64,
    /// `|g|^2` before projection (after clipping, if any).
    pub grad_norm_sq: f64,
    /// Whether the projection fired (any tensor, for per-tensor projection).
    pub projected: bool,
    /// `cos(delta, g)`, `0` when either is zero.
    pub cosine: f64,
    /// The share of `|g|^2` the projection removed: `omega^2 / (|delta|^2 |g|^2)` (that is
    /// `cos^2`) when it fires, `0` when it does not; for per-tensor projection the removed
    /// `omega_i^2 / |delta_i|^2` of the projected tensors over the total `|g|^2`. Near `1`, the
    /// main optimizer sees almost nothing of the gradient: see [`Profit::stalled_calls`].
    pub removed: f64,
}

/// A main call whose projection removed more than this share of `|g|^2` counts as stalled
/// ([`Profit::stalled_calls`]).
pub const STALL_SHARE: f64 = 0.95;

/// Per-tensor statistics of the last main call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TensorReport {
    /// `<delta_i, g_i>`.
    pub omega: f64,
    /// `|delta_i|^2`.
    pub delta_norm_sq: f64,
    /// `|g_i|^2`.
    pub grad_norm_sq: f64,
    /// Whether this tensor's gradient was projected (per-tensor projection), or the global one
    /// fired (global projection).
    pub projected: bool,
}

/// The per-call report.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Index of this call among counted calls (skipped calls are not counted).
    pub call: u64,
    /// What the call did.
    pub phase: Phase,
    /// Factor the gradient was scaled by (gradient clipping), `1` otherwise.
    pub grad_scale: f64,
    /// Projection statistics, at main calls.
    pub main: Option<MainReport>,
}

fn cosine(omega: f64, dd: f64, gg: f64) -> f64 {
    if dd > 0.0 && gg > 0.0 {
        omega / (dd.sqrt() * gg.sqrt())
    } else {
        0.0
    }
}

/// The PROFIT optimizer over backend `B`.
///
/// ```
/// use profit_core::host::{VecBackend, VecTensor};
/// use profit_core::{Adam, Phase, Profit, ProfitConfig, Sgd};
///
/// let config = ProfitConfig::new(Sgd { lr: 1e-3, ..Default::default() }, Adam { lr: 1e-2, ..Default::default() });
/// let mut w = VecTensor::new(&[2], vec![1.0f64, -1.0]).unwrap();
/// let mut opt = Profit::<VecBackend<f64>>::new(config, &[&w])?;
/// let g = VecTensor::new(&[2], vec![1.0, 0.0]).unwrap();
/// let r = opt.step(&mut [&mut w], &[&g])?;
/// assert_eq!(r.phase, Phase::Reference);
/// // delta = -1e-3 * [1, 0]; this gradient has <delta, g> < 0, so it is projected:
/// let g = VecTensor::new(&[2], vec![1.0, 0.5]).unwrap();
/// let r = opt.step(&mut [&mut w], &[&g])?;
/// assert_eq!(r.phase, Phase::Main);
/// assert!(r.main.unwrap().projected);
/// # Ok::<(), profit_core::ProfitError>(())
/// ```
pub struct Profit<B: TensorOps> {
    pub(crate) config: ProfitConfig,
    pub(crate) reg: Registry<B>,
    /// Counted calls so far.
    pub(crate) calls: u64,
    /// Calls skipped for non-finite gradients.
    pub(crate) skipped: u64,
    /// Main calls whose projection fired.
    pub(crate) projected_calls: u64,
    /// Main calls whose projection removed more than [`STALL_SHARE`] of `|g|^2`.
    pub(crate) stalled_calls: u64,
    /// Per-tensor statistics of the last main call.
    pub(crate) tensor_reports: Vec<TensorReport>,
    /// The other ranks, when this optimizer steps one shard of the parameters
    /// ([`SingleProcess`] otherwise).
    pub(crate) collective: Box<dyn Collective>,
    /// The per-tensor reductions as the all-reduce sends them (`3 * tensors` values; empty
    /// when single-process).
    sums: Vec<f64>,
}

/// Sum the per-tensor reductions over the ranks through `sums` (`3 * tensors` values; nothing
/// when empty: single-process).
fn all_reduce(sums: &mut [f64], collective: &mut dyn Collective, reductions: &mut [Reduction]) -> Result<()> {
    if sums.is_empty() {
        return Ok(());
    }
    for (s, r) in sums.chunks_exact_mut(3).zip(reductions.iter()) {
        s.copy_from_slice(&[r.omega, r.delta_sq, r.grad_sq]);
    }
    collective.all_reduce_sum(sums)?;
    for (s, r) in sums.chunks_exact(3).zip(reductions.iter_mut()) {
        *r = Reduction { omega: s[0], delta_sq: s[1], grad_sq: s[2] };
    }
    Ok(())
}

/// Reference calls among the first `calls` counted calls of a run with this configuration.
pub(crate) fn reference_calls(config: &ProfitConfig, calls: u64) -> u64 {
    let n = config.n_ref;
    let cycled = calls.saturating_sub(config.warmup_steps);
    cycled / (n + 1) * n + (cycled % (n + 1)).min(n)
}

impl<B: TensorOps> Profit<B> {
    /// Build over unnamed tensors (named `"0"`, `"1"`, ...), one group.
    pub fn new(config: ProfitConfig, params: &[&B::Tensor]) -> Result<Self> {
        let group = ParamGroup::new(params.iter().enumerate().map(|(i, t)| (i.to_string(), *t)));
        Self::with_groups(config, vec![group])
    }

    /// Build over named tensors, one group.
    pub fn with_names(config: ProfitConfig, params: &[(&str, &B::Tensor)]) -> Result<Self> {
        Self::with_groups(config, vec![ParamGroup::new(params.iter().copied())])
    }

    /// Build over parameter groups. All state is allocated here; a step allocates nothing.
    pub fn with_groups(config: ProfitConfig, groups: Vec<ParamGroup<'_, B::Tensor>>) -> Result<Self> {
        config.validate()?;
        let (main, reference) = (config.main, config.reference);
        let ratio = ratio_of(main.lr(), reference.lr());
        let base = |o: &GroupOptions| {
            let lr = o.lr.unwrap_or(main.lr());
            // A group with its own lr gets its reference rate at the optimizer's ratio, unless
            // that ratio is degenerate (0 or infinite).
            let follows = o.lr.is_some() && ratio.is_finite() && ratio > 0.0;
            Ok(GroupState {
                lr,
                ref_lr: o.ref_lr.unwrap_or(if follows { lr / ratio } else { reference.lr() }),
                weight_decay: o.weight_decay.unwrap_or(main.weight_decay()),
                ref_weight_decay: reference.weight_decay(),
                ratio: 0.0,
                base_lr: 0.0,
                base_ref_lr: 0.0,
                frozen: o.frozen,
            })
        };
        let layout = Layout {
            anchor: config.restore == Restore::Anchor,
            delta: config.delta == Delta::Accumulated,
            ref_slots: reference.slots(),
            main_slots: main.slots(),
        };
        let mut reg = Registry::build(groups, base, &layout)?;
        for g in &mut reg.groups {
            g.ratio = ratio_of(g.lr, g.ref_lr);
        }
        let n = reg.names.len();
        Ok(Profit {
            config,
            reg,
            calls: 0,
            skipped: 0,
            projected_calls: 0,
            stalled_calls: 0,
            tensor_reports: vec![TensorReport::default(); n],
            collective: Box::new(SingleProcess),
            sums: vec![],
        })
    }

    /// Make this optimizer one rank of a sharded run: its tensors are this rank's shards of
    /// the parameters (see [`shard`](crate::shard)), and `collective` reaches the other ranks.
    ///
    /// Every rank must be built the same way (same configuration, groups and tensor names,
    /// in the same order; a tensor of which a rank holds nothing is registered with zero
    /// elements) and must make the same calls. Each call then sums its per-tensor
    /// reductions over the ranks with one all-reduce of `3 * tensors` `f64`s, between the
    /// reductions and the update, wherever a decision depends on them: at main calls (the
    /// projection, global or per tensor), and at other calls when the clipping norm or the
    /// non-finite check needs `|g|^2` (so every rank refuses or skips the same calls). With
    /// [`NonFinitePolicy::Propagate`] and no clipping, reference and warm-up calls
    /// communicate nothing. Every rank then takes the same decisions from bitwise the same
    /// sums. `Err` if the collective's rank is not below its world size.
    pub fn set_collective(&mut self, collective: impl Collective + 'static) -> Result<()> {
        let (rank, world) = (collective.rank(), collective.world_size());
        if rank >= world {
            return Err(ProfitError::Collective(format!("rank {rank} is not below the world size {world}")));
        }
        self.sums = if world > 1 { vec![0.0; 3 * self.reg.names.len()] } else { vec![] };
        self.collective = Box::new(collective);
        Ok(())
    }

    /// This optimizer's rank in a sharded run (`0` single-process).
    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    /// Ranks in the run (`1` single-process).
    pub fn world_size(&self) -> usize {
        self.collective.world_size()
    }

    /// What the next call will do (warm-up, reference or main).
    pub fn next_phase(&self) -> Phase {
        self.phase_at(self.calls).0
    }

    /// Phase of counted call `call`, and whether it starts a cycle.
    fn phase_at(&self, call: u64) -> (Phase, bool) {
        if call < self.config.warmup_steps {
            return (Phase::Warmup, false);
        }
        let k = (call - self.config.warmup_steps) % (self.config.n_ref + 1);
        if k == self.config.n_ref {
            (Phase::Main, false)
        } else {
            (Phase::Reference, k == 0)
        }
    }

    /// Steps the reference optimizer has taken (its `state['step']`).
    pub fn reference_steps(&self) -> u64 {
        reference_calls(&self.config, self.calls)
    }

    /// Steps the main optimizer has taken (warm-up and main calls).
    pub fn main_steps(&self) -> u64 {
        self.calls - self.reference_steps()
    }

    /// One optimizer call: `grads[i]` is the gradient of the loss at the current `params[i]`.
    ///
    /// Arguments are checked (counts, shapes, layouts, finiteness) before anything is changed;
    /// on error nothing is changed.
    pub fn step(&mut self, params: &mut [&mut B::Tensor], grads: &[&B::Tensor]) -> Result<StepReport> {
        self.reg.check_call(params, grads)?;
        if self.calls >= crate::checkpoint::MAX_CALLS {
            return Err(ProfitError::CallLimit { limit: crate::checkpoint::MAX_CALLS });
        }
        let (phase, first) = self.phase_at(self.calls);

        // Pass 1: reductions. At main calls omega, |delta|^2 and |g|^2 in one pass; at other calls
        // |g|^2 only, needed to refuse non-finite gradients and for clipping. With per-tensor
        // projection, `NonFinitePolicy::Propagate` and no clipping, on a backend that prefers it,
        // the main call's reductions are fused per tensor with pass 2 instead (below), so each
        // tensor's second read comes from cache.
        let main = phase == Phase::Main;
        let need_pre =
            self.config.non_finite != NonFinitePolicy::Propagate || self.config.max_grad_norm.is_some();
        // Fusing only pays when no gradient pre-pass is needed: the non-finite check and the
        // clipping norm must see every gradient before any tensor changes.
        // A shard's per-tensor sums are partial: they are summed over the ranks first.
        let single = self.sums.is_empty();
        let fuse = main
            && self.config.projection == Projection::PerTensor
            && B::FUSE_PER_TENSOR
            && !need_pre
            && single;

        // Pass 2: one fused pass per tensor, its kernel's pass and rule set here, its scalars by
        // the decision.
        let (pass, inner, step) = match phase {
            Phase::Reference => {
                (Pass::Reference { first }, self.config.reference, self.reference_steps() + 1)
            }
            Phase::Main => (Pass::Main, self.config.main, self.main_steps() + 1),
            _ => (Pass::Plain, self.config.main, self.main_steps() + 1),
        };
        for i in 0..self.reg.names.len() {
            let g = &self.reg.groups[self.reg.group_of[i]];
            let (lr, wd) = if phase == Phase::Reference {
                (g.ref_lr, g.ref_weight_decay)
            } else {
                (g.lr, g.weight_decay)
            };
            self.reg.kernels[i].pass = pass;
            self.reg.kernels[i].rule = inner.rule(step, lr, wd);
        }
        // With `maximize` the inner optimizer negates the (projected) gradient.
        let sign = inner.grad_sign();
        let decision = Decision {
            check_finite: self.config.non_finite != NonFinitePolicy::Propagate,
            max_grad_norm: self.config.max_grad_norm,
            sign,
            projection: main.then_some(self.config.projection == Projection::Global),
        };
        let mut report = None;
        let mut scale = 1.0;
        if fuse {
            // Per-tensor coefficients inside the fused pass. A coefficient that overflows even
            // scaled propagates (this path runs only under `NonFinitePolicy::Propagate`).
            let gs = <B::Elem as Element>::Real::from_f64(sign);
            let one = <B::Elem as Element>::Real::from_f64(1.0);
            let coef = |r: Reduction, k: &mut Kernel<B::Elem>| {
                let c = projection_coef(r.omega, r.delta_sq);
                k.grad_scale = gs;
                (k.proj, k.delta_scale) = projection_scalars(sign * c, r.delta_sq)
                    .unwrap_or((<<B::Elem as Element>::Real as num_traits::Float>::infinity(), one));
            };
            let reg = &mut self.reg;
            B::reduce_apply_all(
                &reg.active,
                &mut reg.kernels,
                params,
                grads,
                &mut reg.states,
                &mut reg.reductions,
                &coef,
            )?;
            report = Some(self.main_report(scale));
        } else if main || need_pre {
            let (sums, collective) = (&mut self.sums, &mut self.collective);
            let (verdict, applied) = self.reg.reduce_and_decide(&decision, params, grads, single, |r| {
                all_reduce(sums, collective.as_mut(), r)
            })?;
            match verdict {
                Verdict::Apply => {}
                Verdict::NonFinite { tensor } => {
                    if self.config.non_finite == NonFinitePolicy::Skip {
                        self.skipped += 1;
                        return Ok(StepReport {
                            call: self.calls,
                            phase: Phase::Skipped,
                            grad_scale: 1.0,
                            main: None,
                        });
                    }
                    return Err(ProfitError::NonFiniteGradient { name: self.reg.names[tensor].clone() });
                }
                Verdict::Overflow { coefficient, .. } => {
                    return Err(ProfitError::ProjectionOverflow { coefficient })
                }
            }
            scale = decision.clip_scale(total(&self.reg.reductions));
            if main {
                report = Some(self.main_report(scale));
            }
            if !applied {
                B::apply_all(&self.reg.active, &self.reg.kernels, params, grads, &mut self.reg.states)?;
            }
        } else {
            // No reductions: the plain scalars (nothing to clip or project).
            type R<B> = <<B as TensorOps>::Elem as Element>::Real;
            for k in &mut self.reg.kernels {
                (k.grad_scale, k.proj, k.delta_scale) =
                    (R::<B>::from_f64(sign), R::<B>::from_f64(0.0), R::<B>::from_f64(1.0));
            }
            B::apply_all(&self.reg.active, &self.reg.kernels, params, grads, &mut self.reg.states)?;
        }
        if let Some(r) = &report {
            self.projected_calls += r.projected as u64;
            self.stalled_calls += (r.removed > STALL_SHARE) as u64;
        }
        let call = self.calls;
        self.calls += 1;
        Ok(StepReport { call, phase, grad_scale: scale, main: report })
    }

    /// The main call's report and per-tensor reports from its reductions.
    fn main_report(&mut self, scale: f64) -> MainReport {
        let global = self.config.projection == Projection::Global;
        let total = total(&self.reg.reductions);
        let (om, dd, gg) = (total.omega * scale, total.delta_sq, total.grad_sq * scale * scale);
        let global_fires = fires(om, dd);
        let mut any = false;
        let mut removed_sq = 0.0;
        for (i, r) in self.reg.reductions.iter().enumerate() {
            let (o_i, d_i) = (r.omega * scale, r.delta_sq);
            let projected = self.reg.active[i] && if global { global_fires } else { fires(o_i, d_i) };
            if projected && !global {
                any = true;
                removed_sq += o_i / d_i * o_i;
            }
            self.tensor_reports[i] = TensorReport {
                omega: o_i,
                delta_norm_sq: d_i,
                grad_norm_sq: r.grad_sq * scale * scale,
                projected,
            };
        }
        let cos = cosine(om, dd, gg);
        let (projected, removed) = if global {
            (global_fires, if global_fires { cos * cos } else { 0.0 })
        } else {
            (any, if gg > 0.0 { (removed_sq / gg).min(1.0) } else { 0.0 })
        };
        MainReport { omega: om, delta_norm_sq: dd, grad_norm_sq: gg, projected, cosine: cos, removed }
    }

    /// The configuration (with the learning rates it was built with).
    pub fn config(&self) -> &ProfitConfig {
        &self.config
    }

    /// Counted calls so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Calls skipped for non-finite gradients.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Main calls whose projection fired, so far.
    pub fn projected_calls(&self) -> u64 {
        self.projected_calls
    }

    /// Main calls whose projection removed more than [`STALL_SHARE`] (95%) of `|g|^2`, so far.
    /// When most main calls stall, the main optimizer sees mostly batch noise and fine-tuning
    /// makes little progress on the new task (see `EXPERIMENTS.md`); a larger `lr_ref` (for the
    /// realized delta) or the realized delta itself is what changes that.
    pub fn stalled_calls(&self) -> u64 {
        self.stalled_calls
    }

    /// Per-tensor statistics of the last main call, in registration order.
    pub fn tensor_reports(&self) -> &[TensorReport] {
        &self.tensor_reports
    }

    /// Registered parameter names, in order.
    pub fn names(&self) -> &[String] {
        &self.reg.names
    }

    /// Parameter groups with their current rates.
    pub fn groups(&self) -> &[GroupState] {
        &self.reg.groups
    }

    /// Main learning rate of group 0.
    pub fn lr(&self) -> f64 {
        self.reg.groups[0].lr
    }

    /// Reference learning rate of group 0.
    pub fn ref_lr(&self) -> f64 {
        self.reg.groups[0].ref_lr
    }

    /// Set group 0's main learning rate to `lr` and every other group's in proportion to the
    /// rates they were built with (all to `lr` if group 0 was built with rate 0). With
    /// [`LrCoupling::FixedRatio`] each group's reference rate follows at its ratio.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_lr("lr", lr)?;
        let base = self.reg.groups[0].base_lr;
        if base > 0.0 {
            if !(lr / base).is_finite() {
                return Err(ProfitError::InvalidHyperparameter {
                    name: "lr",
                    value: lr,
                    reason: "too large: the groups' rates, scaled in proportion, overflow",
                });
            }
            self.set_lr_factor(lr / base)?;
            self.set_group_lr(0, lr)
        } else {
            for i in 0..self.reg.groups.len() {
                self.set_group_lr(i, lr)?;
            }
            Ok(())
        }
    }

    /// Set every group's main learning rate to `factor` times the rate it was built with (what
    /// [`Scheduler`](crate::schedule::Scheduler) does); with [`LrCoupling::FixedRatio`] the
    /// reference rates follow at each group's ratio. Checks every new rate before setting any.
    pub fn set_lr_factor(&mut self, factor: f64) -> Result<()> {
        check_lr("lr factor", factor)?;
        for g in &self.reg.groups {
            check_lr("lr", g.base_lr * factor)?;
        }
        for i in 0..self.reg.groups.len() {
            let lr = self.reg.groups[i].base_lr * factor;
            self.set_group_lr(i, lr)?;
        }
        Ok(())
    }

    /// Set one group's main learning rate; with [`LrCoupling::FixedRatio`] its reference rate
    /// follows at the group's ratio (unless that ratio is 0 or infinite).
    pub fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        check_lr("lr", lr)?;
        let count = self.reg.groups.len();
        let g = self.reg.groups.get_mut(group).ok_or(ProfitError::NoSuchGroup { index: group, count })?;
        if self.config.lr_coupling == LrCoupling::FixedRatio && g.ratio.is_finite() && g.ratio > 0.0 {
            g.ref_lr = lr / g.ratio;
        }
        g.lr = lr;
        Ok(())
    }

    /// Set group 0's reference learning rate to `lr` and every other group's in proportion to
    /// the reference rates they were built with (all to `lr` if group 0's was 0). With
    /// [`LrCoupling::FixedRatio`] this redefines the ratios.
    pub fn set_ref_lr(&mut self, lr: f64) -> Result<()> {
        check_lr("ref_lr", lr)?;
        let base = self.reg.groups[0].base_ref_lr;
        if base > 0.0 {
            if !(lr / base).is_finite() {
                return Err(ProfitError::InvalidHyperparameter {
                    name: "ref_lr",
                    value: lr,
                    reason: "too large: the groups' rates, scaled in proportion, overflow",
                });
            }
            self.set_ref_lr_factor(lr / base)?;
            self.set_group_ref_lr(0, lr)
        } else {
            for i in 0..self.reg.groups.len() {
                self.set_group_ref_lr(i, lr)?;
            }
            Ok(())
        }
    }

    /// Set every group's reference learning rate to `factor` times the rate it was built with.
    /// Checks every new rate before setting any.
    pub fn set_ref_lr_factor(&mut self, factor: f64) -> Result<()> {
        check_lr("ref lr factor", factor)?;
        for g in &self.reg.groups {
            check_lr("ref_lr", g.base_ref_lr * factor)?;
        }
        for i in 0..self.reg.groups.len() {
            let lr = self.reg.groups[i].base_ref_lr * factor;
            self.set_group_ref_lr(i, lr)?;
        }
        Ok(())
    }

    /// Set one group's reference learning rate (with [`LrCoupling::FixedRatio`] this redefines
    /// the group's ratio).
    pub fn set_group_ref_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        check_lr("ref_lr", lr)?;
        let count = self.reg.groups.len();
        let g = self.reg.groups.get_mut(group).ok_or(ProfitError::NoSuchGroup { index: group, count })?;
        g.ref_lr = lr;
        g.ratio = ratio_of(g.lr, lr);
        Ok(())
    }

    /// Set one group's main weight decay.
    pub fn set_group_weight_decay(&mut self, group: usize, weight_decay: f64) -> Result<()> {
        check_lr("weight_decay", weight_decay)?;
        let count = self.reg.groups.len();
        let g = self.reg.groups.get_mut(group).ok_or(ProfitError::NoSuchGroup { index: group, count })?;
        g.weight_decay = weight_decay;
        Ok(())
    }

    /// Elements in trainable tensors.
    pub fn trainable_elements(&self) -> usize {
        self.reg.trainable_elements()
    }

    /// Bytes of optimizer state this optimizer holds (anchor, delta, both inner states).
    pub fn state_bytes(&self) -> usize {
        self.reg.state_bytes()
    }

    /// Extra bytes held beyond what the main optimizer alone would hold: the anchor (if kept),
    /// the delta buffer (accumulated mode only) and the reference optimizer's state (the
    /// paper's stated memory cost). With the defaults (SGD reference, realized delta, anchor
    /// restore) that is one parameter-sized buffer.
    pub fn profit_overhead_bytes(&self) -> usize {
        let per = self.reg.trainable_elements() * B::Elem::DTYPE.size();
        // An external main optimizer's `grad` slot is held here, beside that optimizer's state.
        let buffers = self.config.reference.slots()
            + self.config.main.is_external() as usize
            + (self.config.delta == Delta::Accumulated) as usize
            + (self.config.restore == Restore::Anchor) as usize;
        per * buffers
    }

    /// The anchor of tensor `i` (absent with [`Restore::Subtract`] or for frozen tensors).
    pub fn anchor(&self, i: usize) -> Option<&B::Tensor> {
        self.reg.states.get(i)?.anchor.as_ref()
    }

    /// With an [`External`](crate::optim::External) main optimizer: the gradient it must use
    /// for tensor `i`, captured by the last warm-up or main call (`s * g` at a warm-up call,
    /// the clipped and projected `s * g - c * delta` at a main call, where the weights were
    /// restored to the anchor). Reference and skipped calls leave it as it was. `None` for
    /// other main optimizers and for frozen tensors.
    pub fn captured_grad(&self, i: usize) -> Option<&B::Tensor> {
        if !self.config.main.is_external() {
            return None;
        }
        self.reg.states.get(i)?.main_slots.first()
    }

    /// The accumulated delta buffer of tensor `i` (present only with [`Delta::Accumulated`],
    /// for trainable tensors; the realized delta is `param - anchor`, formed when needed).
    pub fn delta(&self, i: usize) -> Option<&B::Tensor> {
        self.reg.states.get(i)?.delta.as_ref()
    }
}

/// `lr_main / lr_ref`, with `0 / 0` read as `1` (a degenerate ratio leaves `lr_ref` alone).
fn ratio_of(main: f64, reference: f64) -> f64 {
    if reference == 0.0 {
        if main == 0.0 {
            1.0
        } else {
            f64::INFINITY
        }
    } else {
        main / reference
    }
}
