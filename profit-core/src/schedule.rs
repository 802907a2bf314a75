//! Learning-rate schedules (`torch.optim.lr_scheduler` closed forms), composable, driving the
//! main learning rate; the reference rate follows at the optimizer's fixed ratio
//! ([`LrCoupling::FixedRatio`](crate::config::LrCoupling)) or on a schedule of its own.
//!
//! ```
//! use profit_core::schedule::{Schedule, StepLr, LinearWarmup, Chain};
//! // Linear warm-up over 10 steps from 10%, times x0.5 every 100 steps.
//! let s = Chain(vec![
//!     Box::new(LinearWarmup { start_factor: 0.1, end_factor: 1.0, total_iters: 10 }) as Box<dyn Schedule>,
//!     Box::new(StepLr { step_size: 100, gamma: 0.5 }),
//! ]);
//! assert!((s.factor(0) - 0.1).abs() < 1e-12);
//! assert!((s.factor(150) - 0.5).abs() < 1e-12);
//! ```

use crate::backend::TensorOps;
use crate::error::Result;
use crate::optim::check_lr;
use crate::plain::Plain;
use crate::profit::Profit;

/// A multiplicative factor on the base learning rate at scheduler step `t` (0-based, `t = 0`
/// before the first `Scheduler::step`).
pub trait Schedule: Send + Sync {
    /// The factor at step `t`.
    fn factor(&self, t: u64) -> f64;
}

/// `StepLR`: `gamma^(t / step_size)`.
#[derive(Clone, Copy, Debug)]
pub struct StepLr {
    /// Period.
    pub step_size: u64,
    /// Decay factor per period.
    pub gamma: f64,
}

impl Schedule for StepLr {
    fn factor(&self, t: u64) -> f64 {
        self.gamma.powf((t / self.step_size.max(1)) as f64)
    }
}

/// `ExponentialLR`: `gamma^t`.
#[derive(Clone, Copy, Debug)]
pub struct ExponentialLr {
    /// Decay factor per step.
    pub gamma: f64,
}

impl Schedule for ExponentialLr {
    fn factor(&self, t: u64) -> f64 {
        self.gamma.powf(t as f64)
    }
}

/// `CosineAnnealingLR` (closed form): from `1` down to `min_factor` over `t_max` steps, then
/// holding `min_factor`.
#[derive(Clone, Copy, Debug)]
pub struct CosineAnnealing {
    /// Steps of one half-period.
    pub t_max: u64,
    /// Final factor (`eta_min / base_lr`).
    pub min_factor: f64,
}

impl Schedule for CosineAnnealing {
    fn factor(&self, t: u64) -> f64 {
        let t = t.min(self.t_max) as f64;
        let tm = self.t_max.max(1) as f64;
        self.min_factor + (1.0 - self.min_factor) * (1.0 + (std::f64::consts::PI * t / tm).cos()) / 2.0
    }
}

/// `LinearLR`, the usual linear warm-up: from `start_factor` to `end_factor` over `total_iters`.
#[derive(Clone, Copy, Debug)]
pub struct LinearWarmup {
    /// Factor at `t = 0`.
    pub start_factor: f64,
    /// Factor from `t = total_iters` on.
    pub end_factor: f64,
    /// Steps of the ramp.
    pub total_iters: u64,
}

impl Schedule for LinearWarmup {
    fn factor(&self, t: u64) -> f64 {
        if t >= self.total_iters {
            return self.end_factor;
        }
        self.start_factor + (self.end_factor - self.start_factor) * t as f64 / self.total_iters as f64
    }
}

/// The product of several schedules (`ChainedScheduler`).
pub struct Chain(pub Vec<Box<dyn Schedule>>);

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chain({} schedules)", self.0.len())
    }
}

impl Schedule for Chain {
    fn factor(&self, t: u64) -> f64 {
        self.0.iter().map(|s| s.factor(t)).product()
    }
}

/// One schedule after another (`SequentialLR`): schedule `i` runs from `milestones[i-1]`,
/// seeing its own step count from 0.
pub struct Sequential {
    /// The schedules, in order.
    pub schedules: Vec<Box<dyn Schedule>>,
    /// Steps at which the next schedule takes over (`schedules.len() - 1` entries, increasing).
    pub milestones: Vec<u64>,
}

impl std::fmt::Debug for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequential")
            .field("schedules", &self.schedules.len())
            .field("milestones", &self.milestones)
            .finish()
    }
}

impl Schedule for Sequential {
    fn factor(&self, t: u64) -> f64 {
        let i = self.milestones.iter().take_while(|&&m| t >= m).count();
        let start = if i == 0 { 0 } else { self.milestones[i - 1] };
        self.schedules.get(i).or(self.schedules.last()).map_or(1.0, |s| s.factor(t - start))
    }
}

/// An optimizer whose learning rates a [`Scheduler`] can drive.
pub trait LrControl {
    /// Main learning rate (group 0).
    fn lr(&self) -> f64;
    /// Set every group's main rate to `factor` times the rate it was built with (the reference
    /// rates follow the optimizer's coupling). Checks every rate before setting any.
    fn set_lr_factor(&mut self, factor: f64) -> Result<()>;
    /// Reference learning rate (group 0), if the optimizer has one.
    fn ref_lr(&self) -> Option<f64> {
        None
    }
    /// Set every group's reference rate to `factor` times the rate it was built with (no-op for
    /// optimizers without one).
    fn set_ref_lr_factor(&mut self, _factor: f64) -> Result<()> {
        Ok(())
    }
}

impl<B: TensorOps> LrControl for Profit<B> {
    fn lr(&self) -> f64 {
        Profit::lr(self)
    }
    fn set_lr_factor(&mut self, factor: f64) -> Result<()> {
        Profit::set_lr_factor(self, factor)
    }
    fn ref_lr(&self) -> Option<f64> {
        Some(Profit::ref_lr(self))
    }
    fn set_ref_lr_factor(&mut self, factor: f64) -> Result<()> {
        Profit::set_ref_lr_factor(self, factor)
    }
}

impl<B: TensorOps> LrControl for Plain<B> {
    fn lr(&self) -> f64 {
        Plain::lr(self)
    }
    fn set_lr_factor(&mut self, factor: f64) -> Result<()> {
        Plain::set_lr_factor(self, factor)
    }
}

/// Drives an optimizer's learning rates from schedules, as factors of the rates each group was
/// built with (torch's `initial_lr`). Call [`step`](Self::step) once per scheduler period (per
/// batch or per epoch, as with PyTorch). It holds only its step count: a resumed run (whose
/// checkpoint restores the built-with rates) rebuilds it with [`at`](Self::at).
pub struct Scheduler {
    main: Box<dyn Schedule>,
    reference: Option<Box<dyn Schedule>>,
    t: u64,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("t", &self.t)
            .field("reference", &self.reference.is_some())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Drive the main rates from `schedule`; the reference rates follow the optimizer's coupling.
    pub fn new(schedule: impl Schedule + 'static) -> Self {
        Scheduler { main: Box::new(schedule), reference: None, t: 0 }
    }

    /// Give the reference rates a schedule of their own (applied after the main rates).
    pub fn with_reference(mut self, schedule: impl Schedule + 'static) -> Self {
        self.reference = Some(Box::new(schedule));
        self
    }

    /// The same scheduler positioned at step `t` (for resuming).
    pub fn at(mut self, t: u64) -> Self {
        self.t = t;
        self
    }

    /// Scheduler steps taken.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The main factor at step `t`.
    pub fn factor_at(&self, t: u64) -> f64 {
        self.main.factor(t)
    }

    /// Apply the rates of the current step to `opt` (call once after building if the schedule
    /// does not start at factor 1). A refused factor changes nothing.
    pub fn apply(&self, opt: &mut impl LrControl) -> Result<()> {
        let f = self.main.factor(self.t);
        let rf = self.reference.as_ref().map(|s| s.factor(self.t));
        // Check both factors before setting either, so a bad schedule changes nothing.
        check_lr("lr factor", f)?;
        if let Some(r) = rf {
            check_lr("ref lr factor", r)?;
        }
        opt.set_lr_factor(f)?;
        if let Some(r) = rf {
            opt.set_ref_lr_factor(r)?;
        }
        Ok(())
    }

    /// Advance one step and apply the new rates. Returns the new main rate (group 0).
    pub fn step(&mut self, opt: &mut impl LrControl) -> Result<f64> {
        self.t += 1;
        if let Err(e) = self.apply(opt) {
            self.t -= 1;
            return Err(e);
        }
        Ok(opt.lr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms_match_torch() {
        // torch: StepLR(step_size=100, gamma=0.95) at epoch 250 -> 0.95^2.
        assert_eq!(StepLr { step_size: 100, gamma: 0.95 }.factor(250), 0.95f64.powi(2));
        assert_eq!(StepLr { step_size: 100, gamma: 0.95 }.factor(99), 1.0);
        assert!((ExponentialLr { gamma: 0.9 }.factor(3) - 0.729).abs() < 1e-15);
        let c = CosineAnnealing { t_max: 10, min_factor: 0.1 };
        assert_eq!(c.factor(0), 1.0);
        assert!((c.factor(5) - 0.55).abs() < 1e-12);
        assert!((c.factor(10) - 0.1).abs() < 1e-12);
        assert!((c.factor(50) - 0.1).abs() < 1e-12);
        let w = LinearWarmup { start_factor: 0.25, end_factor: 1.0, total_iters: 4 };
        assert_eq!([w.factor(0), w.factor(2), w.factor(4), w.factor(9)], [0.25, 0.625, 1.0, 1.0]);
        let s = Sequential {
            schedules: vec![Box::new(w), Box::new(StepLr { step_size: 2, gamma: 0.5 })],
            milestones: vec![4],
        };
        assert_eq!([s.factor(3), s.factor(4), s.factor(6)], [w.factor(3), 1.0, 0.5]);
    }
}
