//! Parameter registration, groups and the per-call argument checks shared by [`Profit`](crate::Profit)
//! and [`Plain`](crate::Plain).

use serde::{Deserialize, Serialize};

use crate::backend::{Decision, Kernel, Reduction, TensorOps, TensorState, Verdict};
use crate::element::Element;
use crate::error::{ProfitError, Result};
use crate::optim::check_lr;

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

/// Learning rates and weight decay a group runs with now.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// Main learning rate.
    pub lr: f64,
    /// Reference learning rate.
    pub ref_lr: f64,
    /// Main weight decay.
    pub weight_decay: f64,
    /// Reference weight decay.
    pub ref_weight_decay: f64,
    /// `lr / ref_lr`, kept fixed by [`LrCoupling::FixedRatio`](crate::LrCoupling).
    pub ratio: f64,
    /// Main learning rate the group was built with (schedules scale it, as torch's `initial_lr`).
    pub base_lr: f64,
    /// Reference learning rate the group was built with.
    pub base_ref_lr: f64,
    /// Frozen.
    pub frozen: bool,
}

/// The registered tensors with their state and the buffers a step reuses.
pub(crate) struct Registry<B: TensorOps> {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub numels: Vec<usize>,
    pub group_of: Vec<usize>,
    pub groups: Vec<GroupState>,
    pub active: Vec<bool>,
    pub states: Vec<TensorState<B::Tensor>>,
    pub kernels: Vec<Kernel<B::Elem>>,
    pub reductions: Vec<Reduction>,
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
        base: impl Fn(&GroupOptions) -> Result<GroupState>,
        layout: &Layout,
    ) -> Result<Self> {
        let mut reg = Registry {
            names: vec![],
            shapes: vec![],
            numels: vec![],
            group_of: vec![],
            groups: vec![],
            active: vec![],
            states: vec![],
            kernels: vec![],
            reductions: vec![],
        };
        for (gi, group) in groups.iter().enumerate() {
            let mut gs = base(&group.options)?;
            gs.base_lr = gs.lr;
            gs.base_ref_lr = gs.ref_lr;
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
                reg.active.push(!gs.frozen);
            }
        }
        if !reg.active.iter().any(|&a| a) {
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
        Ok(reg)
    }

    /// Check counts, shapes and layouts of one call's arguments. Mutates nothing.
    pub fn check_call(&self, params: &[&mut B::Tensor], grads: &[&B::Tensor]) -> Result<()> {
        let n = self.names.len();
        if params.len() != n {
            return Err(ProfitError::CountMismatch { what: "parameter", expected: n, got: params.len() });
        }
        if grads.len() != n {
            return Err(ProfitError::CountMismatch { what: "gradient", expected: n, got: grads.len() });
        }
        for i in 0..n {
            for (what, t) in [("parameter", &*params[i]), ("gradient", grads[i])] {
                // The element count too: a tensor whose data does not fill its shape would
                // otherwise fail half-way through a step.
                if !B::has_shape(t, &self.shapes[i]) || B::numel(t) != self.numels[i] {
                    return Err(ProfitError::ShapeMismatch {
                        what,
                        name: self.names[i].clone(),
                        expected: self.shapes[i].clone(),
                        got: B::shape(t),
                    });
                }
                B::validate(t)?;
            }
        }
        Ok(())
    }

    /// A call's reductions and decision, and its update where the backend decides where its
    /// data lives ([`TensorOps::reduce_decide_apply`], only when `on_device`). Otherwise
    /// `reduce_all` (with the states at main calls), `combine` (a shard's all-reduce), then
    /// [`Decision::evaluate`]. Returns the verdict and whether the update has run.
    pub fn reduce_and_decide(
        &mut self,
        decision: &Decision,
        params: &mut [&mut B::Tensor],
        grads: &[&B::Tensor],
        on_device: bool,
        combine: impl FnOnce(&mut [Reduction]) -> Result<()>,
    ) -> Result<(Verdict, bool)> {
        if on_device {
            let done = B::reduce_decide_apply(
                decision,
                &self.active,
                &mut self.kernels,
                params,
                grads,
                &mut self.states,
                &mut self.reductions,
            )?;
            if let Some(v) = done {
                return Ok((v, true));
            }
        }
        let states = decision.projection.is_some().then_some(&self.states[..]);
        B::reduce_all(&self.active, params, states, grads, &mut self.reductions)?;
        combine(&mut self.reductions)?;
        Ok((decision.evaluate(&self.active, &self.reductions, &mut self.kernels), false))
    }

    /// Parameters (elements) of trainable tensors.
    pub fn trainable_elements(&self) -> usize {
        (0..self.names.len())
            .filter(|&i| self.active[i])
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
