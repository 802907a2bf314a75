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

use num_traits::{One, Zero};

use crate::element::{Element, Real};
use crate::error::BackendError;
use crate::optim::Rule;

/// f64 reductions over one tensor: `<delta, g>`, `|delta|^2`, `|g|^2`.
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

/// Element order of [`TensorOps::read`] / [`TensorOps::write`] (and of the kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageOrder {
    /// Last index fastest (C order).
    RowMajor,
    /// First index fastest (Fortran order).
    ColumnMajor,
}

/// Which step a [`Kernel`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// A plain optimizer step (warm-up calls, or an inner optimizer used on its own):
    /// `theta += u`, using the main slots.
    Plain,
    /// A reference step: `theta += u`, using the reference slots. With `first`, the cycle
    /// starts here: the anchor (if kept) is set to `theta` before the update. With an
    /// accumulated delta (a delta buffer is kept) `delta += u`, or `delta = u` when `first`.
    Reference {
        /// First reference call of a cycle.
        first: bool,
    },
    /// The main step: `g = s * g - proj * delta`; restore `theta = anchor` (or `theta - delta`
    /// when no anchor is kept); `theta += u` with the main slots. With the realized delta (no
    /// delta buffer) `delta = theta - anchor` is formed on the fly, in the element type.
    Main,
}

/// The loop a pass runs, fixed by the [`Pass`] and by which buffers the tensor's
/// [`TensorState`] holds. Host loops and device kernels are written once per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Variant {
    /// `theta += u`.
    Plain = 0,
    /// First reference step, anchor and accumulated delta: `anchor = theta; theta += u; delta = u`.
    RefFirstAnchor = 1,
    /// First reference step, accumulated delta without anchor: `theta += u; delta = u`.
    RefFirst = 2,
    /// Later reference step, accumulated delta: `theta += u; delta += u`.
    RefAcc = 3,
    /// Main step from the kept anchor with the stored delta.
    MainAnchor = 4,
    /// Main step restoring by `theta - delta` (no anchor kept).
    MainSub = 5,
    /// First reference step, realized delta: `anchor = theta; theta += u`.
    RefAnchor = 6,
    /// Main step with the realized delta `theta - anchor`, from the anchor.
    MainRealized = 7,
}

impl Variant {
    /// Every variant, in code order (the order of the CUDA kernel table).
    pub const ALL: [Variant; 8] = [
        Variant::Plain,
        Variant::RefFirstAnchor,
        Variant::RefFirst,
        Variant::RefAcc,
        Variant::MainAnchor,
        Variant::MainSub,
        Variant::RefAnchor,
        Variant::MainRealized,
    ];

    /// The variant for a pass over a tensor whose state holds an anchor and/or a delta buffer;
    /// `None` when the pass cannot run on that state (a reference or main step with neither).
    pub fn of(pass: Pass, anchor: bool, delta: bool) -> Option<Variant> {
        Some(match (pass, anchor, delta) {
            (Pass::Plain, _, _) => Variant::Plain,
            (Pass::Reference { first: true }, true, true) => Variant::RefFirstAnchor,
            (Pass::Reference { first: true }, false, true) => Variant::RefFirst,
            (Pass::Reference { first: true }, true, false) => Variant::RefAnchor,
            (Pass::Reference { first: false }, _, true) => Variant::RefAcc,
            (Pass::Reference { first: false }, true, false) => Variant::Plain,
            (Pass::Main, true, true) => Variant::MainAnchor,
            (Pass::Main, false, true) => Variant::MainSub,
            (Pass::Main, true, false) => Variant::MainRealized,
            _ => return None,
        })
    }

    /// Whether the loop reads the delta buffer.
    pub fn reads_delta(self) -> bool {
        matches!(self, Variant::RefAcc | Variant::MainAnchor | Variant::MainSub)
    }

    /// Whether the loop writes the delta buffer.
    pub fn writes_delta(self) -> bool {
        matches!(self, Variant::RefFirstAnchor | Variant::RefFirst | Variant::RefAcc)
    }

    /// Whether the loop reads the anchor.
    pub fn reads_anchor(self) -> bool {
        matches!(self, Variant::MainAnchor | Variant::MainRealized)
    }

    /// Whether the loop writes the anchor.
    pub fn writes_anchor(self) -> bool {
        matches!(self, Variant::RefFirstAnchor | Variant::RefAnchor)
    }

    /// Whether this is a main step (it projects the gradient).
    pub fn is_main(self) -> bool {
        matches!(self, Variant::MainAnchor | Variant::MainSub | Variant::MainRealized)
    }
}

/// Everything one fused elementwise pass over one tensor needs, as plain data. Scalars are in
/// the element's math type ([`Element::Real`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Kernel<E: Element> {
    /// Which pass.
    pub pass: Pass,
    /// The inner optimizer's element rule for this tensor (its group's lr and weight decay).
    pub rule: Rule<E::Real>,
    /// Factor applied to the gradient as it is loaded (gradient clipping, and `-1` for
    /// `maximize`; `1` otherwise).
    pub grad_scale: E::Real,
    /// Projection coefficient, applied as `g - proj * (delta * delta_scale)`; `0` when the
    /// projection does not fire. Only read by main passes.
    pub proj: E::Real,
    /// A power of two that brings `delta` near unit size before it is multiplied by `proj`, so
    /// that `proj = omega / (|delta|^2 * delta_scale)` stays representable however small
    /// `delta` is (scaling by a power of two is exact: the product is the same as
    /// `(omega / |delta|^2) * delta` wherever that one does not overflow). `1` when unused.
    pub delta_scale: E::Real,
}

impl<E: Element> Kernel<E> {
    /// A plain SGD pass with lr 0 (a placeholder filled in before every launch).
    pub fn idle() -> Self {
        let one = E::Real::one();
        Kernel {
            pass: Pass::Plain,
            rule: Rule::Sgd(crate::optim::SgdRule { lr: E::Real::zero(), weight_decay: E::Real::zero() }),
            grad_scale: one,
            proj: E::Real::zero(),
            delta_scale: one,
        }
    }
}

/// The optimizer state PROFIT keeps for one parameter tensor.
///
/// Which buffers exist fixes the delta and restore modes (see [`Variant::of`]):
/// - anchor and delta: accumulated delta, restore from the anchor;
/// - delta only: accumulated delta, restore by `theta - delta`;
/// - anchor only: realized delta `theta - anchor`, formed when it is needed;
/// - neither: a plain inner optimizer (only [`Pass::Plain`] runs).
#[derive(Debug)]
pub struct TensorState<T> {
    /// `theta_ref`, the cycle's anchor.
    pub anchor: Option<T>,
    /// `delta`, the sum of this cycle's reference updates (accumulated mode only).
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

    /// The slots a pass uses, read-only.
    pub fn slots(&self, pass: Pass) -> &[T] {
        match pass {
            Pass::Reference { .. } => &self.ref_slots,
            _ => &self.main_slots,
        }
    }

    /// The loop a pass runs on this state.
    pub fn variant(&self, pass: Pass) -> Option<Variant> {
        Variant::of(pass, self.anchor.is_some(), self.delta.is_some())
    }

    /// Where this tensor's delta comes from at a main call whose parameter is `param`.
    pub fn delta_view<'a>(&'a self, param: &'a T) -> DeltaView<'a, T> {
        match (&self.delta, &self.anchor) {
            (Some(d), _) => DeltaView::Stored(d),
            (None, Some(anchor)) => DeltaView::Realized { param, anchor },
            (None, None) => DeltaView::None,
        }
    }
}

/// The `delta` a reduction reads.
#[derive(Debug)]
pub enum DeltaView<'a, T> {
    /// No delta: only `|g|^2` is computed (the others are 0).
    None,
    /// A stored delta buffer (accumulated mode).
    Stored(&'a T),
    /// `delta = param - anchor`, each difference rounded to the element type (realized mode).
    Realized {
        /// The displaced parameters `theta'`.
        param: &'a T,
        /// The anchor `theta_ref`.
        anchor: &'a T,
    },
}

impl<T> Clone for DeltaView<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DeltaView<'_, T> {}

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
    /// [`host::reduce_slices`](crate::host::reduce_slices).
    fn reduce(delta: DeltaView<'_, Self::Tensor>, grad: &Self::Tensor) -> Result<Reduction, BackendError> {
        crate::host::slow::reduce::<Self>(delta, grad)
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
        crate::host::slow::apply::<Self>(kernel, param, grad, state)
    }

    /// Reductions of many tensors into `out` (one entry per tensor; zero where `active[i]` is
    /// false). `states` is `None` for the gradient-only pre-pass; otherwise each tensor's delta
    /// is [`TensorState::delta_view`] of its state and parameter. Provided: loops over
    /// [`reduce`](Self::reduce).
    fn reduce_all(
        active: &[bool],
        params: &[&mut Self::Tensor],
        states: Option<&[TensorState<Self::Tensor>]>,
        grads: &[&Self::Tensor],
        out: &mut [Reduction],
    ) -> Result<(), BackendError> {
        for (i, (g, o)) in grads.iter().zip(out.iter_mut()).enumerate() {
            *o = if active[i] {
                let delta = states.map_or(DeltaView::None, |s| s[i].delta_view(&*params[i]));
                Self::reduce(delta, g)?
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

    /// Per-tensor projection, one tensor at a time: reduce tensor `i`'s delta and gradient
    /// into `out[i]`, let `coef(out[i])` set `kernels[i]`'s projection, then apply `kernels[i]`,
    /// for every active tensor. Provided: loops over [`reduce`](Self::reduce) and
    /// [`apply`](Self::apply).
    #[allow(clippy::too_many_arguments)]
    fn reduce_apply_all(
        active: &[bool],
        kernels: &mut [Kernel<Self::Elem>],
        params: &mut [&mut Self::Tensor],
        grads: &[&Self::Tensor],
        states: &mut [TensorState<Self::Tensor>],
        out: &mut [Reduction],
        coef: &(dyn Fn(Reduction, &mut Kernel<Self::Elem>) + Sync),
    ) -> Result<(), BackendError> {
        let it = kernels.iter_mut().zip(params.iter_mut()).zip(grads).zip(states).zip(out);
        for (i, ((((k, p), g), s), o)) in it.enumerate() {
            if active[i] {
                *o = Self::reduce(s.delta_view(p), g)?;
                coef(*o, k);
                Self::apply(k, p, g, s)?;
            }
        }
        Ok(())
    }
}

/// The projection of one main call, turned into a kernel's scalars: `proj` and `delta_scale`
/// such that `proj * (delta * delta_scale) = coef * delta` with `coef = omega / |delta|^2`,
/// where `proj` stays representable (`|proj| <= |g|` when the projection fires). Returns
/// `None` when even then `proj` is not finite in the element's math type.
pub fn projection_scalars<R: Real>(coef: f64, delta_sq: f64) -> Option<(R, R)> {
    if coef == 0.0 {
        return Some((R::zero(), R::one()));
    }
    // Scale |delta| into [1, 2) with a power of two 2^m, m >= 0 (scaling up is exact); cap m
    // where the power itself would not be representable in `R`.
    let norm = delta_sq.sqrt();
    let max_exp = R::max_value().as_f64().log2().floor() as i32;
    let m = if norm < 1.0 { (-norm.log2().floor() as i32).clamp(0, max_exp) } else { 0 };
    let scale = 2f64.powi(m);
    let proj = R::from_f64(coef / scale);
    proj.is_finite().then(|| (proj, R::from_f64(scale)))
}
