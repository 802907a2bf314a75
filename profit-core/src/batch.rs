//! The plain data of one call over many tensors: a [`Batch`] holds, for every registered
//! tensor, whether it takes part in the call, its [`Kernel`], parameter, gradient, state and
//! reduction slot. Its lengths and its gradients are checked once, when it is built, so the
//! multi-tensor passes of [`TensorOps`](crate::backend::TensorOps) index nothing unchecked.

use crate::element::Element;
use crate::error::BackendError;
use crate::kernel::{Kernel, Reduction, TensorState};

/// One call's gradients: one per tensor, or one per tensor where it has one (a tensor without
/// a gradient sits the call out, as `torch.optim` skips a parameter whose `grad` is `None`).
#[derive(Debug)]
pub enum Grads<'g, T> {
    /// Every tensor has a gradient.
    Every(&'g [&'g T]),
    /// `None` where a tensor has no gradient at this call.
    Some(&'g [Option<&'g T>]),
}

impl<T> Clone for Grads<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Grads<'_, T> {}

impl<'g, T> Grads<'g, T> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            Grads::Every(g) => g.len(),
            Grads::Some(g) => g.len(),
        }
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tensor `i`'s gradient, if it has one at this call.
    pub fn get(&self, i: usize) -> Option<&'g T> {
        match self {
            Grads::Every(g) => g.get(i).copied(),
            Grads::Some(g) => g.get(i).copied().flatten(),
        }
    }
}

/// One tensor of a [`Batch`] that takes part in the call.
#[derive(Debug)]
pub struct Item<'b, T, E: Element> {
    /// Its index in registration order.
    pub index: usize,
    /// Its pass.
    pub kernel: &'b mut Kernel<E>,
    /// The parameter.
    pub param: &'b mut T,
    /// Its gradient.
    pub grad: &'b T,
    /// Its optimizer state.
    pub state: &'b mut TensorState<T>,
    /// Where its reductions go.
    pub out: &'b mut Reduction,
}

/// The fields of a [`Batch`], borrowed apart (for backends that walk them themselves, such as
/// one that launches a pass over all tensors at once).
#[derive(Debug)]
pub struct Parts<'b, 'p, T, E: Element> {
    /// Whether tensor `i` takes part in the call (then it has a gradient).
    pub active: &'b [bool],
    /// Tensor `i`'s pass.
    pub kernels: &'b mut [Kernel<E>],
    /// The parameters.
    pub params: &'b mut [&'p mut T],
    /// The gradients.
    pub grads: Grads<'b, T>,
    /// The optimizer states.
    pub states: &'b mut [TensorState<T>],
    /// The reductions, one per tensor.
    pub out: &'b mut [Reduction],
}

/// One call over every registered tensor: `active`, kernels, parameters, gradients, states and
/// reductions, one entry each, with a gradient wherever `active` is set.
#[derive(Debug)]
pub struct Batch<'b, 'p, T, E: Element> {
    active: &'b [bool],
    kernels: &'b mut [Kernel<E>],
    params: &'b mut [&'p mut T],
    grads: Grads<'b, T>,
    states: &'b mut [TensorState<T>],
    out: &'b mut [Reduction],
}

impl<'b, 'p, T, E: Element> Batch<'b, 'p, T, E> {
    /// Check that every slice has one entry per tensor and that every active tensor has a
    /// gradient.
    pub fn new(
        active: &'b [bool],
        kernels: &'b mut [Kernel<E>],
        params: &'b mut [&'p mut T],
        grads: Grads<'b, T>,
        states: &'b mut [TensorState<T>],
        out: &'b mut [Reduction],
    ) -> Result<Self, BackendError> {
        let n = active.len();
        let lens = [kernels.len(), params.len(), grads.len(), states.len(), out.len()];
        if lens.iter().any(|&l| l != n) {
            return Err(BackendError::Device(format!("batch: {n} tensors but slices of {lens:?}")));
        }
        if let Some(i) = (0..n).find(|&i| active[i] && grads.get(i).is_none()) {
            return Err(BackendError::Device(format!("batch: active tensor {i} has no gradient")));
        }
        Ok(Batch { active, kernels, params, grads, states, out })
    }

    /// Number of tensors (active or not).
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Whether the batch holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Whether tensor `i` takes part in the call.
    pub fn active(&self) -> &[bool] {
        self.active
    }

    /// The kernels.
    pub fn kernels(&self) -> &[Kernel<E>] {
        self.kernels
    }

    /// The reductions.
    pub fn out(&self) -> &[Reduction] {
        self.out
    }

    /// Zero every reduction (what an inactive tensor reports).
    pub fn clear_out(&mut self) {
        self.out.fill(Reduction::default());
    }

    /// The fields, borrowed apart. The invariants hold: one entry per tensor in each, and a
    /// gradient wherever `active` is set.
    pub fn parts(&mut self) -> Parts<'_, 'p, T, E> {
        Parts {
            active: self.active,
            kernels: self.kernels,
            params: self.params,
            grads: self.grads,
            states: self.states,
            out: self.out,
        }
    }

    /// The tensors that take part in the call, in order.
    pub fn items(&mut self) -> impl Iterator<Item = Item<'_, T, E>> + use<'_, 'b, 'p, T, E> {
        let grads = self.grads;
        let it = self.kernels.iter_mut().zip(self.params.iter_mut()).zip(self.states.iter_mut());
        it.zip(self.out.iter_mut()).zip(self.active).enumerate().filter_map(
            move |(index, ((((kernel, param), state), out), &on))| {
                let grad = grads.get(index).filter(|_| on)?;
                Some(Item { index, kernel, param: &mut **param, grad, state, out })
            },
        )
    }
}

#[cfg(feature = "rayon")]
impl<'b, 'p, T: Send + Sync, E: Element> Batch<'b, 'p, T, E> {
    /// [`items`](Self::items) as a rayon parallel iterator.
    pub fn par_items(
        &mut self,
    ) -> impl rayon::iter::ParallelIterator<Item = Item<'_, T, E>> + use<'_, 'b, 'p, T, E> {
        use rayon::prelude::*;
        let grads = self.grads;
        let it = self.kernels.par_iter_mut().zip(self.params.par_iter_mut()).zip(self.states.par_iter_mut());
        it.zip(self.out.par_iter_mut()).zip(self.active.par_iter()).enumerate().filter_map(
            move |(index, ((((kernel, param), state), out), &on))| {
                let grad = grads.get(index).filter(|_| on)?;
                Some(Item { index, kernel, param: &mut **param, grad, state, out })
            },
        )
    }
}
