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

    /// Reductions, decision and update as one call, for a backend that can decide where its
    /// data lives, so that the update is enqueued right behind the reductions with no wait for
    /// the host in between. It must equal, bitwise, what the core does otherwise:
    /// [`reduce_all`](Self::reduce_all) into `out` (with `states` at main calls, that is when
    /// `decision.projection` is `Some`, else `None`), then [`Decision::evaluate`] over `out`
    /// and `kernels` (whose pass and rule are set), then, only when the verdict is
    /// [`Verdict::Apply`], [`apply_all`](Self::apply_all). Returns the verdict with `out`
    /// filled; on any other verdict nothing has changed.
    ///
    /// Provided: `Ok(None)`, and the core runs those three steps itself.
    #[allow(clippy::too_many_arguments)]
    fn reduce_decide_apply(
        _decision: &Decision,
        _active: &[bool],
        _kernels: &mut [Kernel<Self::Elem>],
        _params: &mut [&mut Self::Tensor],
        _grads: &[&Self::Tensor],
        _states: &mut [TensorState<Self::Tensor>],
        _out: &mut [Reduction],
    ) -> Result<Option<Verdict>, BackendError> {
        Ok(None)
    }
}

/// The projection of one main call, turned into a kernel's scalars: `proj` and `delta_scale`
/// such that `proj * (delta * delta_scale) = coef * delta` with `coef = omega / |delta|^2`,
/// where `proj` stays representable (`|proj| <= |g|` when the projection fires). Returns
/// `None` when even then `proj` is not finite in the element's math type.
///
/// Every operation is exact or correctly rounded, so a device evaluates it bitwise alike
/// (`decide_body` in `cuda-kernels/profit.cu`).
pub fn projection_scalars<R: Real>(coef: f64, delta_sq: f64) -> Option<(R, R)> {
    if coef == 0.0 {
        return Some((R::zero(), R::one()));
    }
    // Scale |delta| into [1, 2) with a power of two 2^m, m >= 0 (scaling up is exact); cap m
    // where the power itself would not be representable in `R`.
    let norm = delta_sq.sqrt();
    let max_exp = floor_log2(R::max_value().as_f64());
    let m = if norm < 1.0 {
        if norm > 0.0 {
            (-floor_log2(norm)).clamp(0, max_exp)
        } else {
            max_exp
        }
    } else {
        0
    };
    let scale = pow2(m);
    let proj = R::from_f64(coef / scale);
    proj.is_finite().then(|| (proj, R::from_f64(scale)))
}

/// `floor(log2(x))` for finite `x > 0`, exactly (C's `ilogb`): the exponent of `x`.
fn floor_log2(x: f64) -> i32 {
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i32;
    if e == 0 {
        // Subnormal: 2^-1074 times the mantissa.
        let m = bits & ((1u64 << 52) - 1);
        -1075 + (64 - m.leading_zeros() as i32)
    } else {
        e - 1023
    }
}

/// `2^m` for `0 <= m <= 1023`, exactly.
fn pow2(m: i32) -> f64 {
    f64::from_bits(((1023 + m) as u64) << 52)
}

/// Lanes of [`total`]'s fixed summation order (`REDUCE_THREADS` in `cuda-kernels/profit.cu`).
pub const TOTAL_LANES: usize = 256;

/// Sum of per-tensor reductions in one fixed order, so that a device sums them bitwise alike:
/// lane `j % 256` adds entry `j` in index order, then the lanes are added as a tree
/// (`lane[t] += lane[t + h]` for `h = 128, 64, ..., 1`).
pub fn total(reductions: &[Reduction]) -> Reduction {
    let mut lanes = [Reduction::default(); TOTAL_LANES];
    for (j, r) in reductions.iter().enumerate() {
        let l = &mut lanes[j % TOTAL_LANES];
        *l = l.add(*r);
    }
    let mut h = TOTAL_LANES / 2;
    while h > 0 {
        for t in 0..h {
            lanes[t] = lanes[t].add(lanes[t + h]);
        }
        h /= 2;
    }
    lanes[0]
}

/// How one call turns its reductions into the kernels' scalars (`grad_scale`, `proj`,
/// `delta_scale`), as plain data, so that a backend can decide where its data lives
/// ([`TensorOps::reduce_decide_apply`]) instead of waiting for the host between the reductions
/// and the update. [`Decision::evaluate`] is the definition; a device must match it bitwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Refuse the call when an active tensor's `|g|^2` is not finite.
    pub check_finite: bool,
    /// Clip gradients to this global L2 norm (`torch.nn.utils.clip_grad_norm_`).
    pub max_grad_norm: Option<f64>,
    /// The inner optimizer's gradient sign (`-1` for `maximize`).
    pub sign: f64,
    /// At main calls, the projection: `Some(true)` global, `Some(false)` per tensor; `None`
    /// at reference and warm-up calls (no projection).
    pub projection: Option<bool>,
}

/// What [`Decision::evaluate`] concludes; anything but `Apply` means nothing may change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Run the update with the decided scalars.
    Apply,
    /// Tensor `tensor`'s gradient is not finite (the first such tensor).
    NonFinite {
        /// Tensor index.
        tensor: usize,
    },
    /// Tensor `tensor`'s projection coefficient is not representable in the element's math
    /// type even scaled (the first such tensor).
    Overflow {
        /// Tensor index.
        tensor: usize,
        /// The coefficient `omega / |delta|^2`.
        coefficient: f64,
    },
}

impl Decision {
    /// The clipping factor from the call's total `|g|^2` (`1` without clipping).
    pub fn clip_scale(&self, total: Reduction) -> f64 {
        match self.max_grad_norm {
            Some(max) => (max / (total.grad_sq.sqrt() + 1e-6)).min(1.0),
            None => 1.0,
        }
    }

    /// Decide from `reductions` (one per tensor, zero where inactive) and write every
    /// kernel's `grad_scale`, `proj` and `delta_scale`. The projection fires where
    /// `omega < 0` (globally or per tensor) with coefficient `omega / |delta|^2`, `omega`
    /// taken after clipping.
    pub fn evaluate<E: Element>(
        &self,
        active: &[bool],
        reductions: &[Reduction],
        kernels: &mut [Kernel<E>],
    ) -> Verdict {
        if self.check_finite {
            let bad = (0..reductions.len()).find(|&i| active[i] && !reductions[i].grad_sq.is_finite());
            if let Some(tensor) = bad {
                return Verdict::NonFinite { tensor };
            }
        }
        let t = total(reductions);
        let scale = self.clip_scale(t);
        let gs = E::Real::from_f64(self.sign * scale);
        let mut verdict = Verdict::Apply;
        for (i, (r, k)) in reductions.iter().zip(kernels.iter_mut()).enumerate() {
            k.grad_scale = gs;
            let (coef, d_sq) = match self.projection {
                None => (0.0, 1.0),
                Some(true) => (projection_coef(t.omega * scale, t.delta_sq), t.delta_sq),
                Some(false) => (projection_coef(r.omega * scale, r.delta_sq), r.delta_sq),
            };
            match projection_scalars::<E::Real>(self.sign * coef, d_sq) {
                Some((proj, ds)) => {
                    k.proj = proj;
                    k.delta_scale = ds;
                }
                None if verdict == Verdict::Apply => {
                    verdict = Verdict::Overflow { tensor: i, coefficient: coef }
                }
                None => {}
            }
        }
        verdict
    }
}

/// Whether the projection fires: `omega < 0` (hence `|delta|^2 > 0`; the second test guards
/// an underflowed `|delta|^2`, so that nothing is ever divided by zero).
pub(crate) fn fires(omega: f64, delta_sq: f64) -> bool {
    omega < 0.0 && delta_sq > 0.0
}

/// The projection coefficient `omega / |delta|^2` when the projection fires, else `0`: the
/// gradient goes to the main optimizer unchanged.
pub(crate) fn projection_coef(omega: f64, delta_sq: f64) -> f64 {
    if fires(omega, delta_sq) {
        omega / delta_sq
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_log2_is_the_exponent() {
        let mut xs = vec![f64::MIN_POSITIVE, f64::MAX, 5e-324, 1e-310, 0.1, 0.5, 1.0, 3.0, 1e300];
        // Both sides of every power of two across the normal and subnormal range.
        // 2^e for every exponent f64 has, subnormal ones included.
        let exp2 = |e: i32| {
            if e >= -1022 {
                f64::from_bits(((e + 1023) as u64) << 52)
            } else {
                f64::from_bits(1u64 << (e + 1074))
            }
        };
        for e in -1074..1024 {
            let p = exp2(e);
            xs.extend([p, f64::from_bits(p.to_bits() + 1), f64::from_bits(p.to_bits() - 1)]);
        }
        for x in xs.into_iter().filter(|x| *x > 0.0 && x.is_finite()) {
            let e = floor_log2(x);
            // 2^e <= x < 2^(e+1), with 2^(e+1) possibly past f64's range.
            assert!(exp2(e) <= x && (e == 1023 || x < exp2(e + 1)), "{x:e}: {e}");
        }
        assert_eq!(floor_log2(f32::MAX as f64), 127);
        assert_eq!(pow2(0), 1.0);
        assert_eq!(pow2(1023), 2f64.powi(1023));
    }

    #[test]
    fn projection_scalars_reproduce_the_coefficient() {
        for (coef, delta_sq) in [(-3.0, 4.0), (-1e10, 1e-20), (-2.5e-3, 1e-60), (-7.0, 1e-90), (-1.0, 5e-324)]
        {
            let (p, s): (f64, f64) = projection_scalars(coef, delta_sq).expect("representable in f64");
            let norm = delta_sq.sqrt();
            // delta * s lies in [1, 2) (or s is capped), and p * s == coef.
            assert!(norm * s < 2.0 || s == 1.0, "{coef:e} {delta_sq:e}");
            assert_eq!(p * s, coef, "{coef:e} {delta_sq:e}");
            assert_eq!(s.log2().fract(), 0.0);
        }
        assert_eq!(projection_scalars::<f32>(0.0, 0.0), Some((0.0, 1.0)));
        // Past f32's range even with |delta| scaled to [1, 2): refused; fine in f64.
        assert_eq!(projection_scalars::<f32>(-1e40, 1.0), None);
        assert!(projection_scalars::<f64>(-1e40, 1.0).is_some());
    }

    #[test]
    fn total_adds_in_its_fixed_order() {
        let mut rs: Vec<Reduction> = (0..700)
            .map(|i| {
                let x = ((i * 7919) % 1000) as f64 * 1e-3;
                Reduction { omega: x, delta_sq: x * x, grad_sq: 1.0 / (i as f64 + 1.0) }
            })
            .collect();
        // Cancellation that makes the order visible: sequentially 1e16 + 1 loses the 1.
        rs[0].omega = 1e16;
        rs[1].omega = 1.0;
        rs[256].omega = -1e16;
        // The order written out: lanes j % 256 in index order, then the halving tree.
        let mut lanes = vec![0.0f64; TOTAL_LANES];
        for (j, r) in rs.iter().enumerate() {
            lanes[j % TOTAL_LANES] += r.omega;
        }
        let mut h = TOTAL_LANES / 2;
        while h > 0 {
            for t in 0..h {
                lanes[t] += lanes[t + h];
            }
            h /= 2;
        }
        let t = total(&rs);
        assert_eq!(t.omega.to_bits(), lanes[0].to_bits());
        // Not the sequential sum here (the cancellation makes the order visible).
        let sequential = rs.iter().fold(0.0, |a, r| a + r.omega);
        assert_ne!(t.omega.to_bits(), sequential.to_bits());
        assert_eq!(total(&rs[..1]), rs[0]);
        assert_eq!(total(&[]), Reduction::default());
    }
}
