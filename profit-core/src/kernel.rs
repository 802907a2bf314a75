//! The plain data of a pass: what one fused elementwise pass over one tensor needs
//! ([`Kernel`]), which loop it runs ([`Variant`]), the per-tensor optimizer state
//! ([`TensorState`]) and the f64 reductions ([`Reduction`]). No behaviour beyond accessors:
//! the decision math is in [`decision`](crate::decision), the loops in `cpu`, the contract in
//! [`backend`](crate::backend).

use num_traits::{One, Zero};

use crate::element::Element;
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

/// Element-wise sum of two reductions.
impl std::ops::Add for Reduction {
    type Output = Reduction;

    fn add(self, o: Reduction) -> Reduction {
        Reduction {
            omega: self.omega + o.omega,
            delta_sq: self.delta_sq + o.delta_sq,
            grad_sq: self.grad_sq + o.grad_sq,
        }
    }
}

impl std::ops::AddAssign for Reduction {
    fn add_assign(&mut self, o: Reduction) {
        *self = *self + o;
    }
}

/// Element order of [`TensorOps::read`](crate::backend::TensorOps::read) / [`TensorOps::write`](crate::backend::TensorOps::write) (and of the kernels).
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

    /// The state check every backend makes before a pass: the loop `kernel`'s pass runs on
    /// this state, which holds the slots its rule needs. `Err` (nothing touched) otherwise.
    pub fn check<E: Element>(&self, kernel: &Kernel<E>) -> Result<Variant, BackendError> {
        let variant = self
            .variant(kernel.pass)
            .ok_or_else(|| BackendError::Device("pass needs an anchor or a delta".into()))?;
        if self.slots(kernel.pass).len() < kernel.rule.slots() {
            return Err(BackendError::Device("missing optimizer state slots".into()));
        }
        Ok(variant)
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
