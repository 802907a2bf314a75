//! The backend contract: what a tensor library provides so that PROFIT runs on it.
//!
//! A backend implements [`TensorOps`] for a marker type whose associated `Tensor` is the
//! library's own tensor (so the orphan rule never gets in the way). The required methods are a
//! handful of primitives plus two per-tensor fused passes described by plain data ([`Kernel`]):
//! a backend either writes those passes itself (the CUDA backend runs PTX kernels) or, if its
//! tensors live in host memory, implements the smaller [`HostBackend`](crate::host::HostBackend)
//! and gets all of `TensorOps`, multi-threaded, for free. The multi-tensor methods are provided
//! and loop over tensors; a backend overrides them to cover many tensors in one launch.

use crate::element::Element;
use crate::error::BackendError;
use crate::optim::Rule;

/// f64 reductions over one tensor (SPEC section 2): `<delta, g>`, `|delta|^2`, `|g|^2`.
///
/// A non-finite gradient shows up as a non-finite `grad_sq`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reduction {
    /// `omega = <delta, g>`.
    pub omega: f64,
    /// `|delta|^2`.
    pub delta_sq: f64,
    /// `|g|^2`.
    pub grad_sq: f64,
}

impl Reduction {
    /// Element-wise sum of two reductions.
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, o: Reduction) -> Reduction {
        Reduction {
            omega: self.omega + o.omega,
            delta_sq: self.delta_sq + o.delta_sq,
            grad_sq: self.grad_sq + o.grad_sq,
        }
    }
}

/// Which pass a [`Kernel`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// A plain optimizer step (warm-up calls, or an inner optimizer used on its own):
    /// `theta += u`, using the main slots.
    Plain,
    /// A reference step: `theta += u; delta += u`, using the reference slots. With `first`, the
    /// cycle starts here: the anchor (if kept) is set to `theta` before the update and `delta`
    /// is set to `u` (so it needs no separate zeroing pass).
    Reference {
        /// First reference call of a cycle.
        first: bool,
    },
    /// The main step: `g = s * g - proj * delta`; restore `theta = anchor` (or `theta - delta`
    /// when no anchor is kept); `theta += u` with the main slots.
    Main,
}

/// Everything one fused elementwise pass over one tensor needs, as plain data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Kernel<E> {
    /// Which pass.
    pub pass: Pass,
    /// The inner optimizer's element rule for this tensor (its group's lr and weight decay).
    pub rule: Rule<E>,
    /// Factor applied to the gradient as it is loaded (gradient clipping; `1` otherwise).
    pub grad_scale: E,
    /// Projection coefficient `omega / |delta|^2` (already multiplied by `grad_scale`), `0` when
    /// the projection does not fire. Only read by [`Pass::Main`].
    pub proj: E,
}

/// The optimizer state PROFIT keeps for one parameter tensor.
#[derive(Debug)]
pub struct TensorState<T> {
    /// `theta_ref`, the cycle's anchor (absent with restore-by-subtraction or for a plain optimizer).
    pub anchor: Option<T>,
    /// `delta`, the sum of this cycle's reference updates (absent for a plain optimizer).
    pub delta: Option<T>,
    /// Reference optimizer state buffers (momentum, ...), in rule slot order.
    pub ref_slots: Vec<T>,
    /// Main optimizer state buffers, in rule slot order.
    pub main_slots: Vec<T>,
}

impl<T> TensorState<T> {
    /// The state slots a pass uses: the reference slots for [`Pass::Reference`], else the main ones.
    pub fn slots_for(&mut self, pass: Pass) -> &mut [T] {
        match pass {
            Pass::Reference { .. } => &mut self.ref_slots,
            _ => &mut self.main_slots,
        }
    }
}

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

    /// Element order of [`read`](Self::read) / [`write`](Self::write) (and of the kernels):
    /// `"row-major"` (default) or `"column-major"`. Checkpoints record it and refuse to load
    /// into a backend with another order.
    const STORAGE_ORDER: &'static str = "row-major";

    /// Whether [`reduce_apply_all`](Self::reduce_apply_all) beats [`reduce_all`](Self::reduce_all)
    /// then [`apply_all`](Self::apply_all) for per-tensor projection (host backends: the tensor
    /// is still in cache for its second pass). Provided: `false`.
    const FUSE_PER_TENSOR: bool = false;

    /// Shape of a tensor (row-major dimensions).
    fn shape(t: &Self::Tensor) -> Vec<usize>;

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

    /// A new zero-filled tensor with `t`'s shape (called only when the optimizer is built).
    fn zeros_like(t: &Self::Tensor) -> Result<Self::Tensor, BackendError>;

    /// `dst = src` (same shape).
    fn copy(dst: &mut Self::Tensor, src: &Self::Tensor) -> Result<(), BackendError>;

    /// Copy a tensor's elements, in [`STORAGE_ORDER`](Self::STORAGE_ORDER), into host memory
    /// (`out.len() == numel`).
    fn read(t: &Self::Tensor, out: &mut [Self::Elem]) -> Result<(), BackendError>;

    /// Overwrite a tensor's elements from host memory, in [`STORAGE_ORDER`](Self::STORAGE_ORDER)
    /// (`src.len() == numel`).
    fn write(t: &mut Self::Tensor, src: &[Self::Elem]) -> Result<(), BackendError>;

    /// f64 reductions of one tensor: `|grad|^2` always; `<delta, grad>` and `|delta|^2` when
    /// `delta` is given (zero otherwise). Must be deterministic.
    fn reduce(delta: Option<&Self::Tensor>, grad: &Self::Tensor) -> Result<Reduction, BackendError>;

    /// One fused elementwise pass over one tensor (see [`Pass`] for what each pass does).
    fn apply(
        kernel: &Kernel<Self::Elem>,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        state: &mut TensorState<Self::Tensor>,
    ) -> Result<(), BackendError>;

    /// Reductions of many tensors into `out` (one entry per tensor; zero where `active[i]` is
    /// false). Provided: loops over [`reduce`](Self::reduce). `states` is `None` for the
    /// gradient-only pre-pass.
    fn reduce_all(
        active: &[bool],
        states: Option<&[TensorState<Self::Tensor>]>,
        grads: &[&Self::Tensor],
        out: &mut [Reduction],
    ) -> Result<(), BackendError> {
        for (i, (g, o)) in grads.iter().zip(out.iter_mut()).enumerate() {
            *o = if active[i] {
                Self::reduce(states.and_then(|s| s[i].delta.as_ref()), g)?
            } else {
                Reduction::default()
            };
        }
        Ok(())
    }

    /// One fused pass over many tensors (`kernels[i]` for tensor `i`, skipped where `active[i]`
    /// is false). Provided: loops over [`apply`](Self::apply).
    fn apply_all(
        active: &[bool],
        kernels: &[Kernel<Self::Elem>],
        params: &mut [&mut Self::Tensor],
        grads: &[&Self::Tensor],
        states: &mut [TensorState<Self::Tensor>],
    ) -> Result<(), BackendError> {
        let it = kernels.iter().zip(params.iter_mut()).zip(grads).zip(states);
        for (i, (((k, p), g), s)) in it.enumerate() {
            if active[i] {
                Self::apply(k, p, g, s)?;
            }
        }
        Ok(())
    }

    /// Per-tensor projection, one tensor at a time: reduce `(delta_i, grad_i)` into `out[i]`,
    /// set `kernels[i].proj = coef(out[i])`, then apply `kernels[i]`, for every active tensor.
    /// Provided: loops over [`reduce`](Self::reduce) and [`apply`](Self::apply).
    fn reduce_apply_all(
        active: &[bool],
        kernels: &mut [Kernel<Self::Elem>],
        params: &mut [&mut Self::Tensor],
        grads: &[&Self::Tensor],
        states: &mut [TensorState<Self::Tensor>],
        out: &mut [Reduction],
        coef: &(dyn Fn(Reduction) -> Self::Elem + Sync),
    ) -> Result<(), BackendError> {
        let it = kernels.iter_mut().zip(params.iter_mut()).zip(grads).zip(states).zip(out);
        for (i, ((((k, p), g), s), o)) in it.enumerate() {
            if active[i] {
                *o = Self::reduce(s.delta.as_ref(), g)?;
                k.proj = coef(*o);
                Self::apply(k, p, g, s)?;
            }
        }
        Ok(())
    }
}
