//! PROFIT (Algorithm 1 of arXiv 2412.01930) with every point the paper leaves open pinned
//! down (see the repository's `ALGORITHM.md`, also [`algorithm`](crate::algorithm)): the whole
//! algorithm is in this file. Its settings are in [`config`](crate::config), what a call
//! reports in [`report`](crate::report), the element math in [`optim`](crate::optim), the
//! decision (projection, clipping, non-finite check) in [`decision`](crate::decision) and the
//! passes over memory are the backend's ([`TensorOps`]).
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

use crate::backend::{Grads, TensorOps};
use crate::collective::{all_reduce, Collective, SingleProcess};
use crate::config::{Delta, NonFinitePolicy, ProfitConfig, Projection, Restore, MAX_CALLS};
use crate::decision::{projection_coef, projection_scalars, total, Decision, Verdict};
use crate::element::{Element, Real};
use crate::error::{ProfitError, Result};
use crate::kernel::{Kernel, Pass, Reduction};
use crate::params::{GroupOptions, Layout, ParamGroup, Registry};
use crate::report::{main_report, Phase, StepReport, TensorReport, STALL_SHARE};
use crate::state::{ratio_of, Counters, GroupState};

mod accessors;
mod state;

type R<B> = <<B as TensorOps>::Elem as Element>::Real;

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
    config: ProfitConfig,
    reg: Registry<B>,
    counters: Counters,
    /// Per-tensor statistics of the last main call.
    tensor_reports: Vec<TensorReport>,
    /// The other ranks, when this optimizer steps one shard of the parameters
    /// ([`SingleProcess`] otherwise).
    collective: Box<dyn Collective>,
    /// The per-tensor reductions as the all-reduce sends them (`3 * tensors` values; empty
    /// when single-process).
    sums: Vec<f64>,
}

impl<B: TensorOps> std::fmt::Debug for Profit<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profit")
            .field("backend", &B::NAME)
            .field("config", &self.config)
            .field("counters", &self.counters)
            .field("names", &self.reg.names)
            .field("groups", &self.reg.groups)
            .field("rank", &self.collective.rank())
            .field("world_size", &self.collective.world_size())
            .finish_non_exhaustive()
    }
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
            let ref_lr = o.ref_lr.unwrap_or(if follows { lr / ratio } else { reference.lr() });
            let wd = o.weight_decay.unwrap_or(main.weight_decay());
            GroupState::new(lr, ref_lr, wd, reference.weight_decay(), o.frozen)
        };
        let layout = Layout {
            anchor: config.restore == Restore::Anchor,
            delta: config.delta == Delta::Accumulated,
            ref_slots: reference.slots(),
            main_slots: main.slots(),
        };
        let reg = Registry::build(groups, base, &layout)?;
        let n = reg.names.len();
        Ok(Profit {
            config,
            reg,
            counters: Counters::default(),
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

    /// One optimizer call: `grads[i]` is the gradient of the loss at the current `params[i]`.
    ///
    /// Arguments are checked (counts, shapes, layouts, finiteness) before anything is changed;
    /// on error nothing is changed.
    pub fn step(&mut self, params: &mut [&mut B::Tensor], grads: &[&B::Tensor]) -> Result<StepReport> {
        self.step_grads(params, Grads::Every(grads))
    }

    /// One call in which some tensors may have no gradient (`None`, as a `torch.optim`
    /// parameter whose `grad` is `None`). Such a tensor sits the call out: it takes no step,
    /// its inner optimizers' state and step counts stay as they are, and it adds nothing to the
    /// sums (projection, clipping, non-finite check). The cycle still applies to it: the first
    /// reference call of a cycle takes its anchor and the main call restores it, undoing any
    /// reference steps it took in the cycle (`ALGORITHM.md`, section 1).
    pub fn step_partial(
        &mut self,
        params: &mut [&mut B::Tensor],
        grads: &[Option<&B::Tensor>],
    ) -> Result<StepReport> {
        self.step_grads(params, Grads::Some(grads))
    }

    fn step_grads(
        &mut self,
        params: &mut [&mut B::Tensor],
        grads: Grads<'_, B::Tensor>,
    ) -> Result<StepReport> {
        self.reg.check_call(params, grads)?;
        if self.counters.calls >= MAX_CALLS {
            return Err(ProfitError::CallLimit { limit: MAX_CALLS });
        }
        let (phase, first) = self.phase_at(self.counters.calls);
        self.reg.begin_call(grads);
        let (pass, decision) = self.prepare_kernels(phase, first);
        // The non-finite check and the clipping norm must see every gradient before any
        // tensor changes: a pass of reductions first, unless neither is asked for.
        let pre_pass = decision.check_finite || decision.max_grad_norm.is_some();
        // A shard's per-tensor sums are partial (summed over the ranks first): no fusing.
        let fuse =
            decision.projection == Some(false) && B::FUSE_PER_TENSOR && !pre_pass && self.sums.is_empty();
        let scale = if fuse {
            self.reduce_apply_per_tensor(decision.sign, params, grads)?;
            1.0
        } else if decision.projection.is_some() || pre_pass {
            match self.reduce_and_apply(&decision, params, grads)? {
                Some(scale) => scale,
                None => {
                    self.counters.skipped += 1;
                    let call = self.counters.calls;
                    return Ok(StepReport { call, phase: Phase::Skipped, grad_scale: 1.0, main: None });
                }
            }
        } else {
            self.apply_unreduced(decision.sign, params, grads)?;
            1.0
        };
        self.reg.sit_out(pass, params)?;
        self.reg.count_steps(pass);
        let main = (phase == Phase::Main).then(|| self.record_main(scale));
        let call = self.counters.calls;
        self.counters.calls += 1;
        Ok(StepReport { call, phase, grad_scale: scale, main })
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

    /// Set every kernel's pass and rule for this call (the reference or the main optimizer,
    /// at its group's rates and the tensor's own step count), and say what the call must
    /// decide.
    fn prepare_kernels(&mut self, phase: Phase, first: bool) -> (Pass, Decision) {
        let (pass, inner) = match phase {
            Phase::Reference => (Pass::Reference { first }, self.config.reference),
            Phase::Main => (Pass::Main, self.config.main),
            _ => (Pass::Plain, self.config.main),
        };
        let reg = &mut self.reg;
        for ((k, &g), steps) in reg.kernels.iter_mut().zip(&reg.group_of).zip(&reg.steps) {
            let g = &reg.groups[g];
            let (lr, wd, step) = match phase {
                Phase::Reference => (g.ref_lr, g.ref_weight_decay, steps.reference + 1),
                _ => (g.lr, g.weight_decay, steps.main + 1),
            };
            k.pass = pass;
            k.rule = inner.rule(step, lr, wd);
        }
        let decision = Decision {
            check_finite: self.config.non_finite != NonFinitePolicy::Propagate,
            max_grad_norm: self.config.max_grad_norm,
            // With `maximize` the inner optimizer negates the (projected) gradient.
            sign: inner.grad_sign(),
            projection: (phase == Phase::Main).then_some(self.config.projection == Projection::Global),
        };
        (pass, decision)
    }

    /// A per-tensor main call with nothing to check first: each tensor's reductions fused with
    /// its update, its coefficient from its own sums. A coefficient that overflows even scaled
    /// propagates (this path runs only under [`NonFinitePolicy::Propagate`]).
    fn reduce_apply_per_tensor(
        &mut self,
        sign: f64,
        params: &mut [&mut B::Tensor],
        grads: Grads<'_, B::Tensor>,
    ) -> Result<()> {
        let coef = |r: Reduction, k: &mut Kernel<B::Elem>| {
            let c = projection_coef(r.omega, r.delta_sq);
            k.grad_scale = R::<B>::from_f64(sign);
            (k.proj, k.delta_scale) = projection_scalars(sign * c, r.delta_sq)
                .unwrap_or((<R<B> as num_traits::Float>::infinity(), R::<B>::from_f64(1.0)));
        };
        B::reduce_apply_all(&mut self.reg.batch(params, grads)?, &coef)?;
        Ok(())
    }

    /// Reductions (summed over the ranks), the decision, then the update. `Some(clip scale)`,
    /// or `None` for a call skipped under [`NonFinitePolicy::Skip`] (nothing changed).
    fn reduce_and_apply(
        &mut self,
        decision: &Decision,
        params: &mut [&mut B::Tensor],
        grads: Grads<'_, B::Tensor>,
    ) -> Result<Option<f64>> {
        let (sums, collective) = (&mut self.sums, &mut self.collective);
        let on_device = sums.is_empty();
        let (verdict, applied) = self.reg.reduce_and_decide(decision, params, grads, on_device, |r| {
            all_reduce(sums, collective.as_mut(), r)
        })?;
        match verdict {
            Verdict::Apply => {}
            Verdict::NonFinite { .. } if self.config.non_finite == NonFinitePolicy::Skip => return Ok(None),
            Verdict::NonFinite { tensor } => {
                return Err(ProfitError::NonFiniteGradient { name: self.reg.names[tensor].clone() })
            }
            Verdict::Overflow { coefficient, .. } => {
                return Err(ProfitError::ProjectionOverflow { coefficient })
            }
        }
        if !applied {
            self.reg.apply_all(params, grads)?;
        }
        Ok(Some(decision.clip_scale(total(&self.reg.reductions))))
    }

    /// A call with nothing to reduce: the plain scalars (nothing to clip or project).
    fn apply_unreduced(
        &mut self,
        sign: f64,
        params: &mut [&mut B::Tensor],
        grads: Grads<'_, B::Tensor>,
    ) -> Result<()> {
        for k in &mut self.reg.kernels {
            (k.grad_scale, k.proj, k.delta_scale) =
                (R::<B>::from_f64(sign), R::<B>::from_f64(0.0), R::<B>::from_f64(1.0));
        }
        self.reg.apply_all(params, grads)
    }

    /// The main call's report (its reductions scaled by the clipping factor), counted.
    fn record_main(&mut self, scale: f64) -> crate::report::MainReport {
        let global = self.config.projection == Projection::Global;
        let r = main_report(global, scale, &self.reg.active, &self.reg.reductions, &mut self.tensor_reports);
        self.counters.projected_calls += r.projected as u64;
        self.counters.stalled_calls += (r.removed > STALL_SHARE) as u64;
        r
    }
}
