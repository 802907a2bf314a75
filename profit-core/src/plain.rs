//! An inner optimizer used on its own, as a plain `torch.optim`-style optimizer.

use crate::backend::{Grads, TensorOps};
use crate::config::{LrCoupling, NonFinitePolicy};
use crate::decision::{Decision, Verdict};
use crate::element::{Element, Real};
use crate::error::{ProfitError, Result};
use crate::kernel::Pass;
use crate::optim::InnerConfig;
use crate::params::{GroupOptions, Layout, ParamGroup, Rate, Registry};
use crate::state::GroupState;

/// SGD, Adam, AdamW or RMSprop without PROFIT, on any backend.
///
/// Non-finite gradients are refused with [`ProfitError::NonFiniteGradient`], nothing changed
/// (see [`with_non_finite`](Self::with_non_finite) for the other policies).
pub struct Plain<B: TensorOps> {
    /// The inner optimizer.
    config: InnerConfig,
    reg: Registry<B>,
    steps: u64,
    non_finite: NonFinitePolicy,
    skipped: u64,
}

impl<B: TensorOps> Plain<B> {
    /// Build over unnamed tensors, one group.
    pub fn new(config: InnerConfig, params: &[&B::Tensor]) -> Result<Self> {
        let group = ParamGroup::new(params.iter().enumerate().map(|(i, t)| (i.to_string(), *t)));
        Self::with_groups(config, vec![group])
    }

    /// Build over parameter groups (the groups' `ref_lr` is ignored).
    pub fn with_groups(config: InnerConfig, groups: Vec<ParamGroup<'_, B::Tensor>>) -> Result<Self> {
        config.validate()?;
        if config.is_external() {
            return Err(ProfitError::InvalidConfig(
                "an external optimizer captures PROFIT's projected gradient: it can only be PROFIT's main optimizer",
            ));
        }
        let base = |o: &GroupOptions| {
            let wd = o.weight_decay.unwrap_or(config.weight_decay());
            GroupState::new(o.lr.unwrap_or(config.lr()), 0.0, wd, 0.0, o.frozen)
        };
        let layout = Layout { anchor: false, delta: false, ref_slots: 0, main_slots: config.slots() };
        Ok(Plain {
            config,
            reg: Registry::build(groups, base, &layout)?,
            steps: 0,
            non_finite: NonFinitePolicy::Error,
            skipped: 0,
        })
    }

    /// The same optimizer with another non-finite gradient policy. `Propagate` drops the
    /// gradient pre-pass (as `torch.optim` does: 28 bytes per parameter for Adam instead of 32).
    pub fn with_non_finite(mut self, policy: NonFinitePolicy) -> Self {
        self.non_finite = policy;
        self
    }

    /// One step. Checks everything before changing anything. Returns `false` when the call was
    /// skipped for a non-finite gradient (policy `Skip`).
    pub fn step(&mut self, params: &mut [&mut B::Tensor], grads: &[&B::Tensor]) -> Result<bool> {
        let grads = Grads::Every(grads);
        self.reg.check_call(params, grads)?;
        let step = self.steps + 1;
        for i in 0..self.reg.names.len() {
            let g = &self.reg.groups[self.reg.group_of[i]];
            let k = &mut self.reg.kernels[i];
            k.pass = Pass::Plain;
            k.rule = self.config.rule(step, g.lr, g.weight_decay);
        }
        let decision = Decision {
            check_finite: self.non_finite != NonFinitePolicy::Propagate,
            max_grad_norm: None,
            sign: self.config.grad_sign(),
            projection: None,
        };
        let reg = &mut self.reg;
        let mut applied = false;
        if decision.check_finite {
            let verdict;
            (verdict, applied) = reg.reduce_and_decide(&decision, params, grads, true, |_| Ok(()))?;
            if let Verdict::NonFinite { tensor } = verdict {
                if self.non_finite == NonFinitePolicy::Skip {
                    self.skipped += 1;
                    return Ok(false);
                }
                return Err(ProfitError::NonFiniteGradient { name: reg.names[tensor].clone() });
            }
        } else {
            let gs = <B::Elem as Element>::Real::from_f64(decision.sign);
            reg.kernels.iter_mut().for_each(|k| k.grad_scale = gs);
        }
        if !applied {
            reg.apply_all(params, grads)?;
        }
        self.steps = step;
        Ok(true)
    }

    /// Calls skipped for non-finite gradients.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Learning rate of group 0.
    pub fn lr(&self) -> f64 {
        self.reg.groups[0].lr
    }

    /// Set the learning rate of group 0 to `lr` and every other group's in proportion to the
    /// rates they were built with (all to `lr` if group 0 was built with rate 0). Checks every
    /// new rate before setting any.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.reg.set_rate(Rate::Main, lr, LrCoupling::Free)
    }

    /// Set every group's learning rate to `factor` times the rate it was built with (what
    /// schedules do). Checks every new rate before setting any.
    pub fn set_lr_factor(&mut self, factor: f64) -> Result<()> {
        self.reg.set_rate_factor(Rate::Main, factor, LrCoupling::Free)
    }

    /// Set one group's learning rate.
    pub fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        self.reg.set_group_rate(Rate::Main, group, lr, LrCoupling::Free)
    }

    /// Bytes of optimizer state held.
    pub fn state_bytes(&self) -> usize {
        self.reg.state_bytes()
    }
}

impl<B: TensorOps> std::fmt::Debug for Plain<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plain")
            .field("backend", &B::NAME)
            .field("config", &self.config)
            .field("steps", &self.steps)
            .field("skipped", &self.skipped)
            .field("groups", &self.reg.groups)
            .finish_non_exhaustive()
    }
}
