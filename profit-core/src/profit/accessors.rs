//! [`Profit`]'s accessors and learning-rate setters: what a trainer reads and schedules,
//! beside the algorithm in `profit.rs`.

use crate::backend::TensorOps;
use crate::config::{Delta, ProfitConfig, Restore};
use crate::element::Element;
use crate::error::{ProfitError, Result};
use crate::optim::InnerConfig;
use crate::params::Rate;
use crate::report::{Phase, TensorReport};
use crate::state::{BufferKind, GroupState};

use super::Profit;

/// Accessors and learning-rate setters.
impl<B: TensorOps> Profit<B> {
    /// The configuration (with the learning rates it was built with).
    pub fn config(&self) -> &ProfitConfig {
        &self.config
    }

    /// Counted calls so far.
    pub fn calls(&self) -> u64 {
        self.counters.calls
    }

    /// Calls skipped for non-finite gradients.
    pub fn skipped(&self) -> u64 {
        self.counters.skipped
    }

    /// Main calls whose projection fired, so far.
    pub fn projected_calls(&self) -> u64 {
        self.counters.projected_calls
    }

    /// Main calls whose projection removed more than [`STALL_SHARE`](crate::report::STALL_SHARE) (95%) of `|g|^2`, so far.
    /// When most main calls stall, the main optimizer sees mostly batch noise and fine-tuning
    /// makes little progress on the new task (see `EXPERIMENTS.md`); a larger `lr_ref` (for the
    /// realized delta) or the realized delta itself is what changes that.
    pub fn stalled_calls(&self) -> u64 {
        self.counters.stalled_calls
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
        self.phase_at(self.counters.calls).0
    }

    /// Steps the reference optimizer has taken (its `state['step']`).
    pub fn reference_steps(&self) -> u64 {
        self.config.reference_calls(self.counters.calls)
    }

    /// Steps the main optimizer has taken (warm-up and main calls).
    pub fn main_steps(&self) -> u64 {
        self.counters.calls - self.reference_steps()
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
    /// [`LrCoupling::FixedRatio`](crate::config::LrCoupling) each group's reference rate
    /// follows at its ratio. Checks every new rate before setting any.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.reg.set_rate(Rate::Main, lr, self.config.lr_coupling)
    }

    /// Set every group's main learning rate to `factor` times the rate it was built with (what
    /// [`Scheduler`](crate::schedule::Scheduler) does); the reference rates follow as with
    /// [`set_lr`](Self::set_lr).
    pub fn set_lr_factor(&mut self, factor: f64) -> Result<()> {
        self.reg.set_rate_factor(Rate::Main, factor, self.config.lr_coupling)
    }

    /// Set one group's main learning rate; with `LrCoupling::FixedRatio` its reference rate
    /// follows at the group's ratio (unless that ratio is 0 or infinite).
    pub fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        self.reg.set_group_rate(Rate::Main, group, lr, self.config.lr_coupling)
    }

    /// Set group 0's reference learning rate to `lr` and every other group's in proportion
    /// (all to `lr` if group 0's was built as 0). This redefines the groups' ratios.
    pub fn set_ref_lr(&mut self, lr: f64) -> Result<()> {
        self.reg.set_rate(Rate::Reference, lr, self.config.lr_coupling)
    }

    /// Set every group's reference learning rate to `factor` times the rate it was built with.
    pub fn set_ref_lr_factor(&mut self, factor: f64) -> Result<()> {
        self.reg.set_rate_factor(Rate::Reference, factor, self.config.lr_coupling)
    }

    /// Set one group's reference learning rate (this redefines the group's ratio).
    pub fn set_group_ref_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        self.reg.set_group_rate(Rate::Reference, group, lr, self.config.lr_coupling)
    }

    /// Set one group's main weight decay.
    pub fn set_group_weight_decay(&mut self, group: usize, weight_decay: f64) -> Result<()> {
        self.reg.set_group_weight_decay(group, weight_decay)
    }

    /// Replace the inner optimizers' other hyperparameters (betas, eps, momentum, alpha, ...),
    /// as a scheduler such as torch's `OneCycleLR` moves them, between calls. Each must keep
    /// its kind and state layout (slots); the learning rates and weight decays stay the
    /// groups' own. Checked before anything changes.
    pub fn set_inner_hyperparameters(&mut self, reference: InnerConfig, main: InnerConfig) -> Result<()> {
        let (r, m) = (self.config.reference, self.config.main);
        for (new, old) in [(reference, r), (main, m)] {
            new.validate()?;
            if new.kind() != old.kind() || new.slot_names() != old.slot_names() {
                return Err(ProfitError::InvalidConfig(
                    "an inner optimizer's kind and state slots cannot change after it is built",
                ));
            }
        }
        self.config.reference = reference.with_lr(r.lr()).with_weight_decay(r.weight_decay());
        self.config.main = main.with_lr(m.lr()).with_weight_decay(m.weight_decay());
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
        self.reg.buffer(i, BufferKind::Anchor)
    }

    /// With an [`External`](crate::optim::External) main optimizer: the gradient it must use
    /// for tensor `i`, captured by the last warm-up or main call (`s * g` at a warm-up call,
    /// the clipped and projected `s * g - c * delta` at a main call, where the weights were
    /// restored to the anchor). Reference and skipped calls leave it as it was. `None` for
    /// other main optimizers and for frozen tensors.
    pub fn captured_grad(&self, i: usize) -> Option<&B::Tensor> {
        self.config.main.is_external().then(|| self.reg.buffer(i, BufferKind::Main(0)))?
    }

    /// The accumulated delta buffer of tensor `i` (present only with [`Delta::Accumulated`],
    /// for trainable tensors; the realized delta is `param - anchor`, formed when needed).
    pub fn delta(&self, i: usize) -> Option<&B::Tensor> {
        self.reg.buffer(i, BufferKind::Delta)
    }
}
