//! Parameter registration, groups and the per-call argument checks shared by [`Profit`](crate::Profit)
//! and [`Plain`](crate::plain::Plain).

use serde::{Deserialize, Serialize};

use crate::backend::TensorOps;
use crate::backend::{Batch, Grads};
use crate::config::LrCoupling;
use crate::decision::{Decision, Verdict};
use crate::element::Element;
use crate::error::{ProfitError, Result};
use crate::kernel::{Kernel, Pass, Reduction, TensorState};
use crate::optim::check_lr;
use crate::state::{ratio_of, BufferKind, GroupState, ParamInfo, StateBuffer, StateMeta, TensorSteps};

/// Per-group options, as `torch.optim` parameter groups: anything left `None` comes from the
/// optimizer's own configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupOptions {
    /// Main learning rate for this group.
    pub lr: Option<f64>,
    /// Reference learning rate for this group (default: the group's `lr` divided by the
    /// optimizer's `lr_main / lr_ref` ratio).
    pub ref_lr: Option<f64>,
    /// Main optimizer weight decay for this group.
    pub weight_decay: Option<f64>,
    /// Frozen: the group's tensors are passed to `step` but never changed, hold no state, and
    /// stay out of the projection.
    pub frozen: bool,
}

/// A parameter group: named tensors sharing [`GroupOptions`].
pub struct ParamGroup<'a, T> {
    /// `(name, tensor)` pairs. Names key checkpoints and error messages; they must be unique.
    pub params: Vec<(String, &'a T)>,
    /// The group's options.
    pub options: GroupOptions,
}

impl<T> std::fmt::Debug for ParamGroup<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.params.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ParamGroup").field("params", &names).field("options", &self.options).finish()
    }
}

impl<'a, T> ParamGroup<'a, T> {
    /// A group with default options.
    pub fn new<S: Into<String>>(params: impl IntoIterator<Item = (S, &'a T)>) -> Self {
        ParamGroup {
            params: params.into_iter().map(|(n, t)| (n.into(), t)).collect(),
            options: GroupOptions::default(),
        }
    }

    /// The same group with other options.
    pub fn options(mut self, options: GroupOptions) -> Self {
        self.options = options;
        self
    }
}

/// The registered tensors with their state and the buffers a step reuses.
pub(crate) struct Registry<B: TensorOps> {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub numels: Vec<usize>,
    pub group_of: Vec<usize>,
    pub groups: Vec<GroupState>,
    /// Not frozen.
    pub trainable: Vec<bool>,
    /// Takes part in the current call: trainable, with a gradient ([`Registry::begin_call`]).
    pub active: Vec<bool>,
    /// The steps each tensor's inner optimizers have taken (they differ from the optimizer's
    /// counts only for a tensor that sat calls out without a gradient).
    pub steps: Vec<TensorSteps>,
    pub states: Vec<TensorState<B::Tensor>>,
    pub kernels: Vec<Kernel<B::Elem>>,
    pub reductions: Vec<Reduction>,
    /// Host scratch for the bookkeeping of tensors without a gradient (grown when first needed).
    scratch: [Vec<B::Elem>; 2],
}

/// What to allocate per trainable tensor.
pub(crate) struct Layout {
    pub anchor: bool,
    pub delta: bool,
    pub ref_slots: usize,
    pub main_slots: usize,
}

impl<B: TensorOps> Registry<B> {
    pub fn build(
        groups: Vec<ParamGroup<'_, B::Tensor>>,
        base: impl Fn(&GroupOptions) -> GroupState,
        layout: &Layout,
    ) -> Result<Self> {
        let mut reg = Registry {
            names: vec![],
            shapes: vec![],
            numels: vec![],
            group_of: vec![],
            groups: vec![],
            trainable: vec![],
            active: vec![],
            steps: vec![],
            states: vec![],
            kernels: vec![],
            reductions: vec![],
            scratch: [vec![], vec![]],
        };
        for (gi, group) in groups.iter().enumerate() {
            let gs = base(&group.options);
            check_lr("lr", gs.lr)?;
            check_lr("ref_lr", gs.ref_lr)?;
            check_lr("weight_decay", gs.weight_decay)?;
            reg.groups.push(gs);
            for (name, t) in &group.params {
                if reg.names.contains(name) {
                    return Err(ProfitError::DuplicateName(name.clone()));
                }
                B::validate(t)?;
                reg.names.push(name.clone());
                let shape = B::shape(t);
                let numel = shape.iter().product::<usize>();
                if B::numel(t) != numel {
                    return Err(ProfitError::ShapeMismatch {
                        what: "parameter",
                        name: name.clone(),
                        expected: shape,
                        got: vec![B::numel(t)],
                    });
                }
                reg.shapes.push(shape);
                reg.numels.push(numel);
                reg.group_of.push(gi);
                reg.trainable.push(!gs.frozen);
            }
        }
        if !reg.trainable.iter().any(|&a| a) {
            return Err(ProfitError::NoParameters);
        }
        for group in &groups {
            for (_, t) in &group.params {
                let zeros = |k: usize| (0..k).map(|_| B::zeros_like(t)).collect::<Result<Vec<_>, _>>();
                let state = if group.options.frozen {
                    TensorState { anchor: None, delta: None, ref_slots: vec![], main_slots: vec![] }
                } else {
                    TensorState {
                        anchor: if layout.anchor { Some(B::zeros_like(t)?) } else { None },
                        delta: if layout.delta { Some(B::zeros_like(t)?) } else { None },
                        ref_slots: zeros(layout.ref_slots)?,
                        main_slots: zeros(layout.main_slots)?,
                    }
                };
                reg.states.push(state);
            }
        }
        let n = reg.names.len();
        let all: Vec<&B::Tensor> = groups.iter().flat_map(|g| g.params.iter().map(|(_, t)| *t)).collect();
        B::prepare(&all)?;
        reg.kernels = vec![Kernel::idle(); n];
        reg.reductions = vec![Reduction::default(); n];
        reg.active.clone_from(&reg.trainable);
        reg.steps = vec![TensorSteps::default(); n];
        Ok(reg)
    }

    /// Check counts, shapes and layouts of one call's arguments. Mutates nothing.
    pub fn check_call(&self, params: &[&mut B::Tensor], grads: Grads<'_, B::Tensor>) -> Result<()> {
        let n = self.names.len();
        if params.len() != n {
            return Err(ProfitError::CountMismatch { what: "parameter", expected: n, got: params.len() });
        }
        if grads.len() != n {
            return Err(ProfitError::CountMismatch { what: "gradient", expected: n, got: grads.len() });
        }
        for (i, p) in params.iter().enumerate() {
            self.check_tensor(i, "parameter", p)?;
            if let Some(g) = grads.get(i) {
                self.check_tensor(i, "gradient", g)?;
            }
        }
        Ok(())
    }

    /// Mark the tensors that take part in a call: trainable ones with a gradient.
    pub fn begin_call(&mut self, grads: Grads<'_, B::Tensor>) {
        for (i, (a, &t)) in self.active.iter_mut().zip(&self.trainable).enumerate() {
            *a = t && grads.get(i).is_some();
        }
    }

    /// The call's tensors as one checked [`Batch`].
    pub fn batch<'b, 'p>(
        &'b mut self,
        params: &'b mut [&'p mut B::Tensor],
        grads: Grads<'b, B::Tensor>,
    ) -> Result<Batch<'b, 'p, B::Tensor, B::Elem>> {
        Ok(Batch::new(
            &self.active,
            &mut self.kernels,
            params,
            grads,
            &mut self.states,
            &mut self.reductions,
        )?)
    }

    /// A call's reductions and decision, and its update where the backend decides where its
    /// data lives ([`TensorOps::reduce_decide_apply`], only when `on_device`). Otherwise
    /// `reduce_all` (with the deltas at main calls), `combine` (a shard's all-reduce), then
    /// [`Decision::evaluate`]. Returns the verdict and whether the update has run.
    pub fn reduce_and_decide(
        &mut self,
        decision: &Decision,
        params: &mut [&mut B::Tensor],
        grads: Grads<'_, B::Tensor>,
        on_device: bool,
        combine: impl FnOnce(&mut [Reduction]) -> Result<()>,
    ) -> Result<(Verdict, bool)> {
        let mut batch = self.batch(params, grads)?;
        if on_device {
            if let Some(v) = B::reduce_decide_apply(decision, &mut batch)? {
                return Ok((v, true));
            }
        }
        B::reduce_all(&mut batch, decision.projection.is_some())?;
        combine(&mut self.reductions)?;
        Ok((decision.evaluate(&self.active, &self.reductions, &mut self.kernels), false))
    }

    /// Apply every active tensor's kernel.
    pub fn apply_all(&mut self, params: &mut [&mut B::Tensor], grads: Grads<'_, B::Tensor>) -> Result<()> {
        Ok(B::apply_all(&mut self.batch(params, grads)?)?)
    }

    /// Count a step of the inner optimizer that `pass` uses for every tensor but those that
    /// sat the call out (frozen tensors count along, so their counts stay the optimizer's).
    pub fn count_steps(&mut self, pass: Pass) {
        let sat_out = self.active.iter().zip(&self.trainable).map(|(&a, &t)| t && !a);
        for (s, _) in self.steps.iter_mut().zip(sat_out).filter(|(_, out)| !out) {
            match pass {
                Pass::Reference { .. } => s.reference += 1,
                _ => s.main += 1,
            }
        }
    }

    /// The cycle's bookkeeping for trainable tensors without a gradient at this call, which
    /// take no step: a cycle's first reference call takes their anchor (and zeroes their
    /// accumulated delta); the main call restores them. Through [`TensorOps::read`] and
    /// [`TensorOps::write`]: this runs only when a gradient is missing.
    pub fn sit_out(&mut self, pass: Pass, params: &mut [&mut B::Tensor]) -> Result<()> {
        let zero = B::Elem::from_f64(0.0);
        let it = params.iter_mut().zip(&mut self.states).zip(&self.numels);
        for (i, ((p, s), &n)) in it.enumerate() {
            if self.active[i] || !self.trainable[i] {
                continue;
            }
            let [a, b] = &mut self.scratch;
            a.resize(n, zero);
            b.resize(n, zero);
            match pass {
                Pass::Reference { first: true } => {
                    if let Some(anchor) = s.anchor.as_mut() {
                        B::read(p, a)?;
                        B::write(anchor, a)?;
                    }
                    if let Some(delta) = s.delta.as_mut() {
                        b.fill(zero);
                        B::write(delta, b)?;
                    }
                }
                Pass::Main => match (&s.anchor, &s.delta) {
                    (Some(anchor), _) => {
                        B::read(anchor, a)?;
                        B::write(p, a)?;
                    }
                    (None, Some(delta)) => {
                        B::read(p, a)?;
                        B::read(delta, b)?;
                        for (x, d) in a.iter_mut().zip(b.iter()) {
                            *x = B::Elem::store(x.load() - d.load());
                        }
                        B::write(p, a)?;
                    }
                    (None, None) => {}
                },
                _ => {}
            }
        }
        Ok(())
    }

    /// Parameters (elements) of trainable tensors.
    pub fn trainable_elements(&self) -> usize {
        (0..self.names.len())
            .filter(|&i| self.trainable[i])
            .map(|i| self.shapes[i].iter().product::<usize>())
            .sum()
    }

    /// Bytes of optimizer state held.
    pub fn state_bytes(&self) -> usize {
        let per = B::Elem::DTYPE.size();
        self.states
            .iter()
            .zip(&self.shapes)
            .map(|(s, shape)| {
                let bufs = s.anchor.is_some() as usize
                    + s.delta.is_some() as usize
                    + s.ref_slots.len()
                    + s.main_slots.len();
                bufs * shape.iter().product::<usize>() * per
            })
            .sum()
    }
}

/// Which of a group's two learning rates.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Rate {
    Main,
    Reference,
}

impl Rate {
    fn name(self) -> &'static str {
        match self {
            Rate::Main => "lr",
            Rate::Reference => "ref_lr",
        }
    }

    fn base(self, g: &GroupState) -> f64 {
        match self {
            Rate::Main => g.base_lr,
            Rate::Reference => g.base_ref_lr,
        }
    }
}

/// The learning-rate bookkeeping shared by [`Profit`](crate::profit::Profit) and
/// [`Plain`](crate::plain::Plain): every setter checks every new rate before it sets any.
impl<B: TensorOps> Registry<B> {
    /// Set group 0's rate to `lr` and every other group's in proportion to the rates they were
    /// built with (all to `lr` if group 0 was built with rate 0).
    pub fn set_rate(&mut self, rate: Rate, lr: f64, coupling: LrCoupling) -> Result<()> {
        check_lr(rate.name(), lr)?;
        let base = rate.base(&self.groups[0]);
        if base > 0.0 {
            if !(lr / base).is_finite() {
                return Err(ProfitError::InvalidHyperparameter {
                    name: rate.name(),
                    value: lr,
                    reason: "too large: the groups' rates, scaled in proportion, overflow",
                });
            }
            self.set_rate_factor(rate, lr / base, coupling)?;
            self.set_group_rate(rate, 0, lr, coupling)
        } else {
            for i in 0..self.groups.len() {
                self.set_group_rate(rate, i, lr, coupling)?;
            }
            Ok(())
        }
    }

    /// Set every group's rate to `factor` times the rate it was built with.
    pub fn set_rate_factor(&mut self, rate: Rate, factor: f64, coupling: LrCoupling) -> Result<()> {
        check_lr(if rate == Rate::Main { "lr factor" } else { "ref lr factor" }, factor)?;
        for g in &self.groups {
            check_lr(rate.name(), rate.base(g) * factor)?;
        }
        for i in 0..self.groups.len() {
            let lr = rate.base(&self.groups[i]) * factor;
            self.set_group_rate(rate, i, lr, coupling)?;
        }
        Ok(())
    }

    /// Set one group's rate. The main rate moves the reference one at the group's ratio with
    /// [`LrCoupling::FixedRatio`] (unless that ratio is 0 or infinite); the reference rate
    /// redefines the ratio.
    pub fn set_group_rate(&mut self, rate: Rate, group: usize, lr: f64, coupling: LrCoupling) -> Result<()> {
        check_lr(rate.name(), lr)?;
        let count = self.groups.len();
        let g = self.groups.get_mut(group).ok_or(ProfitError::NoSuchGroup { index: group, count })?;
        match rate {
            Rate::Main => {
                if coupling == LrCoupling::FixedRatio && g.ratio.is_finite() && g.ratio > 0.0 {
                    g.ref_lr = lr / g.ratio;
                }
                g.lr = lr;
            }
            Rate::Reference => {
                g.ref_lr = lr;
                g.ratio = ratio_of(g.lr, lr);
            }
        }
        Ok(())
    }

    /// Set one group's main weight decay.
    pub fn set_group_weight_decay(&mut self, group: usize, weight_decay: f64) -> Result<()> {
        check_lr("weight_decay", weight_decay)?;
        let count = self.groups.len();
        let g = self.groups.get_mut(group).ok_or(ProfitError::NoSuchGroup { index: group, count })?;
        g.weight_decay = weight_decay;
        Ok(())
    }
}

/// The registry's side of [`ProfitState`](crate::state::ProfitState).
impl<B: TensorOps> Registry<B> {
    /// The parameters' names, shapes and groups.
    pub fn param_infos(&self) -> Vec<ParamInfo> {
        (0..self.names.len())
            .map(|i| ParamInfo {
                name: self.names[i].clone(),
                shape: self.shapes[i].clone(),
                group: self.group_of[i],
                steps: self.steps[i],
            })
            .collect()
    }

    /// The state buffers named by `meta.buffer_keys()`.
    pub fn buffers(&self, meta: &StateMeta) -> Result<Vec<StateBuffer<&B::Tensor>>> {
        meta.buffer_keys()
            .into_iter()
            .map(|(key, param, kind)| {
                let tensor = self.buffer(param, kind).ok_or_else(|| missing(&key))?;
                Ok(StateBuffer { param, kind, key, tensor })
            })
            .collect()
    }

    /// One state buffer.
    pub fn buffer(&self, param: usize, kind: BufferKind) -> Option<&B::Tensor> {
        let s = self.states.get(param)?;
        match kind {
            BufferKind::Anchor => s.anchor.as_ref(),
            BufferKind::Delta => s.delta.as_ref(),
            BufferKind::Reference(k) => s.ref_slots.get(k),
            BufferKind::Main(k) => s.main_slots.get(k),
        }
    }

    /// One state buffer, to overwrite.
    pub fn buffer_mut(&mut self, param: usize, kind: BufferKind) -> Option<&mut B::Tensor> {
        let s = self.states.get_mut(param)?;
        match kind {
            BufferKind::Anchor => s.anchor.as_mut(),
            BufferKind::Delta => s.delta.as_mut(),
            BufferKind::Reference(k) => s.ref_slots.get_mut(k),
            BufferKind::Main(k) => s.main_slots.get_mut(k),
        }
    }

    /// Check `params` (count, shapes, layout) without a gradient: what saving and loading take.
    pub fn check_params(&self, params: &[&B::Tensor]) -> Result<()> {
        let n = self.names.len();
        if params.len() != n {
            return Err(ProfitError::CountMismatch { what: "parameter", expected: n, got: params.len() });
        }
        for (i, t) in params.iter().enumerate() {
            self.check_tensor(i, "parameter", t)?;
        }
        Ok(())
    }

    /// Check that `t` has tensor `i`'s shape and a usable layout.
    pub fn check_tensor(&self, i: usize, what: &'static str, t: &B::Tensor) -> Result<()> {
        // The element count too: a tensor whose data does not fill its shape would otherwise
        // fail half-way through a step.
        if !B::has_shape(t, &self.shapes[i]) || B::numel(t) != self.numels[i] {
            return Err(ProfitError::ShapeMismatch {
                what,
                name: self.names[i].clone(),
                expected: self.shapes[i].clone(),
                got: B::shape(t),
            });
        }
        B::validate(t)?;
        Ok(())
    }
}

fn missing(key: &str) -> ProfitError {
    ProfitError::State(format!("state buffer `{key}` missing"))
}
