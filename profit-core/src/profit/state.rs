//! [`Profit`]'s state as a value ([`ProfitState`]), what `torch.optim`'s `state_dict()` and
//! `load_state_dict()` are and what [`checkpoint`](crate::checkpoint) converts to a file.

use std::borrow::Borrow;

use super::Profit;
use crate::backend::TensorOps;
use crate::element::Element;
use crate::error::{ProfitError, Result};
use crate::state::{BufferKind, ProfitState, StateMeta};

/// The state as a value ([`ProfitState`]): what `torch.optim`'s `state_dict()` and
/// `load_state_dict()` are, and what [`checkpoint`](crate::checkpoint) writes to a file.
impl<B: TensorOps> Profit<B> {
    /// Configuration, counters, group rates, parameters and rank: the state but its buffers.
    pub fn meta(&self) -> StateMeta {
        StateMeta {
            config: self.config,
            counters: self.counters,
            groups: self.reg.groups.clone(),
            params: self.reg.param_infos(),
            rank: self.collective.rank(),
            world_size: self.collective.world_size(),
        }
    }

    /// The whole state, its buffers borrowed from the optimizer.
    pub fn state(&self) -> Result<ProfitState<&B::Tensor>> {
        let meta = self.meta();
        let buffers = self.reg.buffers(&meta)?;
        Ok(ProfitState { meta, buffers })
    }

    /// Load a state taken from an optimizer built the same way ([`StateMeta::check_fits`]; a
    /// different configuration only with `adopt_config`), its buffers by key. Everything is
    /// checked (keys, shapes) before anything changes; on error nothing is changed. The
    /// anchor belongs with the weights it was taken with: mid-cycle, load the parameters
    /// saved with the state too.
    pub fn load_state<T: Borrow<B::Tensor>>(
        &mut self,
        state: &ProfitState<T>,
        adopt_config: bool,
    ) -> Result<()> {
        self.meta().check_fits(&state.meta, adopt_config)?;
        let keys = state.meta.buffer_keys();
        if state.buffers.len() != keys.len() {
            return Err(ProfitError::State(format!(
                "{} state buffers, expected {}",
                state.buffers.len(),
                keys.len()
            )));
        }
        let mut plan = Vec::with_capacity(keys.len());
        for (key, i, kind) in &keys {
            let Some(b) = state.buffers.iter().find(|b| &b.key == key) else {
                return Err(ProfitError::State(format!("state buffer `{key}` missing")));
            };
            let mine = self.reg.names.iter().position(|n| *n == state.meta.params[*i].name);
            let mine = mine.ok_or_else(|| ProfitError::State(format!("no parameter for `{key}`")))?;
            self.reg.check_tensor(mine, "state buffer", b.tensor.borrow())?;
            plan.push((mine, *kind, b.tensor.borrow()));
        }
        let mut values = vec![];
        for (i, kind, src) in plan {
            values.resize(self.reg.numels[i], B::Elem::from_f64(0.0));
            B::read(src, &mut values)?;
            let dst = self
                .reg
                .buffer_mut(i, kind)
                .ok_or_else(|| ProfitError::State("state buffer missing".into()))?;
            B::write(dst, &values)?;
        }
        self.restore_meta(&state.meta);
        Ok(())
    }

    /// Take `meta`'s configuration, counters and group rates (checked by the caller).
    pub(crate) fn restore_meta(&mut self, meta: &StateMeta) {
        self.config = meta.config;
        self.counters = meta.counters;
        self.reg.groups.clone_from(&meta.groups);
        for p in &meta.params {
            if let Some(i) = self.reg.names.iter().position(|n| *n == p.name) {
                self.reg.steps[i] = p.steps;
            }
        }
    }

    /// One state buffer of parameter `i`, to overwrite (checkpoint loading).
    pub(crate) fn buffer_mut(&mut self, i: usize, kind: BufferKind) -> Option<&mut B::Tensor> {
        self.reg.buffer_mut(i, kind)
    }

    /// Check `params` (count, shapes, layout) without gradients.
    pub(crate) fn check_params(&self, params: &[&B::Tensor]) -> Result<()> {
        self.reg.check_params(params)
    }

    /// Parameter `i`'s element count.
    pub(crate) fn numel(&self, i: usize) -> usize {
        self.reg.numels[i]
    }
}
