//! The backend contract: what a tensor library provides so that PROFIT runs on it.
//!
//! A backend implements [`TensorOps`] for a marker type whose associated `Tensor` is the
//! library's own tensor (so the orphan rule never gets in the way). Four methods are required:
//! [`shape`](TensorOps::shape), [`zeros_like`](TensorOps::zeros_like), [`read`](TensorOps::read)
//! and [`write`](TensorOps::write). Everything else is provided: the two per-tensor passes
//! ([`reduce`](TensorOps::reduce) and [`apply`](TensorOps::apply), described by plain data, a
//! [`Kernel`]) by default copy the tensors to host memory, run profit-core's host loops and copy
//! the results back. That is slow but exact, so a new backend passes the conformance suite with
//! four methods and then overrides what is slow: the CUDA backend runs every pass as one PTX
//! launch over all tensors; a backend whose tensors are host memory implements the smaller
//! [`HostBackend`](crate::host::HostBackend) instead and gets fused multi-threaded loops.

mod provided;

pub use crate::batch::{Batch, Grads, Item, Parts};
pub use crate::decision::{projection_scalars, total, Decision, Verdict, TOTAL_LANES};
pub use crate::kernel::{DeltaView, Kernel, Pass, Reduction, StorageOrder, TensorState, Variant};

use crate::element::Element;
use crate::error::BackendError;

/// The tensor-library contract. See the [module docs](self).
///
/// Every method returns `Err` only for backend failures; argument checks happen in the core
/// before any backend method mutates anything.
pub trait TensorOps: Sized + 'static {
    /// Element type.
    type Elem: Element;
    /// The library's tensor type (parameters, gradients and optimizer state all use it).
    type Tensor: Send + Sync;

    /// A short name for reports (`"ndarray"`, `"cuda"`, ...).
    const NAME: &'static str;

    /// Element order of [`read`](Self::read) / [`write`](Self::write) (and of the kernels).
    /// Checkpoints record it and refuse to load into a backend with another order.
    const STORAGE_ORDER: StorageOrder = StorageOrder::RowMajor;

    /// Whether [`reduce_apply_all`](Self::reduce_apply_all) beats [`reduce_all`](Self::reduce_all)
    /// then [`apply_all`](Self::apply_all) for per-tensor projection (host backends: the tensor
    /// is still in cache for its second pass). Provided: `false`.
    const FUSE_PER_TENSOR: bool = false;

    /// Shape of a tensor (row-major dimensions).
    fn shape(t: &Self::Tensor) -> Vec<usize>;

    /// A new zero-filled tensor with `t`'s shape (called only when the optimizer is built).
    fn zeros_like(t: &Self::Tensor) -> Result<Self::Tensor, BackendError>;

    /// Copy a tensor's elements, in [`STORAGE_ORDER`](Self::STORAGE_ORDER), into host memory
    /// (`out.len() == numel`).
    fn read(t: &Self::Tensor, out: &mut [Self::Elem]) -> Result<(), BackendError>;

    /// Overwrite a tensor's elements from host memory, in [`STORAGE_ORDER`](Self::STORAGE_ORDER)
    /// (`src.len() == numel`).
    fn write(t: &mut Self::Tensor, src: &[Self::Elem]) -> Result<(), BackendError>;

    /// Whether a tensor has exactly this shape (override to avoid the allocation of `shape`).
    fn has_shape(t: &Self::Tensor, shape: &[usize]) -> bool {
        Self::shape(t) == shape
    }

    /// Number of elements.
    fn numel(t: &Self::Tensor) -> usize {
        Self::shape(t).iter().product()
    }

    /// Check that a tensor can be used (layout, device); called on every argument before a step
    /// mutates anything. Provided: always fine.
    fn validate(_t: &Self::Tensor) -> Result<(), BackendError> {
        Ok(())
    }

    /// Called once when an optimizer is built over these tensors: reserve whatever scratch
    /// the multi-tensor passes need for them, so that a step allocates nothing. Provided:
    /// nothing to reserve.
    fn prepare(_params: &[&Self::Tensor]) -> Result<(), BackendError> {
        Ok(())
    }

    /// f64 reductions of one tensor: `|grad|^2` always; `<delta, grad>` and `|delta|^2` from
    /// the given delta (zero for [`DeltaView::None`]). Must be deterministic.
    ///
    /// Provided: copies to host memory and runs
    /// the CPU reduction ([`host::reduce_slices`](crate::host::reduce_slices)).
    fn reduce(delta: DeltaView<'_, Self::Tensor>, grad: &Self::Tensor) -> Result<Reduction, BackendError> {
        provided::reduce::<Self>(delta, grad)
    }

    /// One fused elementwise pass over one tensor (see [`Pass`] and [`Variant`]).
    ///
    /// Provided: copies every buffer to host memory, runs the host loop and writes back what
    /// the pass changed.
    fn apply(
        kernel: &Kernel<Self::Elem>,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        state: &mut TensorState<Self::Tensor>,
    ) -> Result<(), BackendError> {
        provided::apply::<Self>(kernel, param, grad, state)
    }

    /// Reductions of every active tensor of `batch` into its reduction slots (zero for the
    /// others). With `with_delta` (main calls) each tensor's delta is
    /// [`TensorState::delta_view`] of its state and parameter; without, only `|g|^2` (the
    /// gradient pre-pass). Provided: loops over [`reduce`](Self::reduce).
    fn reduce_all(
        batch: &mut Batch<'_, '_, Self::Tensor, Self::Elem>,
        with_delta: bool,
    ) -> Result<(), BackendError> {
        batch.clear_out();
        for it in batch.items() {
            let delta = if with_delta { it.state.delta_view(&*it.param) } else { DeltaView::None };
            *it.out = Self::reduce(delta, it.grad)?;
        }
        Ok(())
    }

    /// One fused pass over every active tensor of `batch`, each with its kernel. Provided:
    /// loops over [`apply`](Self::apply).
    fn apply_all(batch: &mut Batch<'_, '_, Self::Tensor, Self::Elem>) -> Result<(), BackendError> {
        for it in batch.items() {
            Self::apply(it.kernel, it.param, it.grad, it.state)?;
        }
        Ok(())
    }

    /// Per-tensor projection, one tensor at a time: reduce each active tensor's delta and
    /// gradient into its slot, let `coef` set its kernel's projection from that reduction,
    /// then apply the kernel. Provided: loops over [`reduce`](Self::reduce) and
    /// [`apply`](Self::apply).
    fn reduce_apply_all(
        batch: &mut Batch<'_, '_, Self::Tensor, Self::Elem>,
        coef: &(dyn Fn(Reduction, &mut Kernel<Self::Elem>) + Sync),
    ) -> Result<(), BackendError> {
        batch.clear_out();
        for it in batch.items() {
            *it.out = Self::reduce(it.state.delta_view(&*it.param), it.grad)?;
            coef(*it.out, it.kernel);
            Self::apply(it.kernel, it.param, it.grad, it.state)?;
        }
        Ok(())
    }

    /// Reductions, decision and update as one call, for a backend that can decide where its
    /// data lives, so that the update is enqueued right behind the reductions with no wait for
    /// the host in between. It must equal, bitwise, what the core does otherwise:
    /// [`reduce_all`](Self::reduce_all) (with the deltas at main calls, that is when
    /// `decision.projection` is `Some`), then [`Decision::evaluate`] over the reductions and
    /// kernels (whose pass and rule are set), then, only when the verdict is
    /// [`Verdict::Apply`], [`apply_all`](Self::apply_all). Returns the verdict with the
    /// reductions filled; on any other verdict nothing has changed.
    ///
    /// Provided: `Ok(None)`, and the core runs those three steps itself.
    fn reduce_decide_apply(
        _decision: &Decision,
        _batch: &mut Batch<'_, '_, Self::Tensor, Self::Elem>,
    ) -> Result<Option<Verdict>, BackendError> {
        Ok(None)
    }
}
