//! The [`Candle`] backend: profit-core's [`TensorOps`] over [`CandleBuf`]s, whose parameters
//! and gradients are candle tensors read and written in place (no copy) on the CPU.
//!
//! candle keeps a tensor's storage behind a lock and lends it out only inside a callback
//! (`Tensor::storage_and_layout` for reads, `Tensor::inplace_op1` for writes). A pass over
//! many tensors therefore
//!
//! 1. takes a read guard on every gradient (and, for reductions, every parameter);
//! 2. locks the parameters for writing by nesting one `inplace_op1` callback inside the
//!    previous one, [`NEST`] tensors at a time (so the stack depth stays bounded);
//! 3. runs profit-core's fused host loops (through a [`HostBackend`] over raw views) on the
//!    slices it holds.
//!
//! Optimizer state (anchor, delta, moments) lives in host memory ([`CandleBuf::host`]).
//! Before any lock is taken a pass checks that no two parameters share a storage and that no
//! gradient shares one with a parameter (either would deadlock candle's locks): such input is
//! refused with an error and nothing is changed.

use std::cell::RefCell;
use std::marker::PhantomData;

use candle_core::{CpuStorage, InplaceOp1, Layout, Storage, StorageRef, Tensor};
use profit_core::backend::{Batch, DeltaView, Grads, Kernel, Parts, Reduction, TensorOps, TensorState};
use profit_core::element::Element;
use profit_core::error::BackendError;
use profit_core::host::HostBackend;

/// Parameters locked for writing at once (one nested candle callback each).
pub const NEST: usize = 64;

/// An element type the adapter runs on: `f32`, `f64`, `half::bf16` or `half::f16` (the
/// element types profit-core and candle share).
pub trait CandleElement: Element + candle_core::WithDType + sealed::Sealed {
    /// The elements of a CPU storage of this type, or `None` for another dtype.
    fn cpu_slice(s: &CpuStorage) -> Option<&[Self]>;
    /// The elements of a CPU storage of this type, mutably.
    fn cpu_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

macro_rules! element {
    ($t:ty, $v:ident) => {
        impl CandleElement for $t {
            fn cpu_slice(s: &CpuStorage) -> Option<&[$t]> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn cpu_slice_mut(s: &mut CpuStorage) -> Option<&mut [$t]> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
element!(f32, F32);
element!(f64, F64);
element!(half::bf16, BF16);
element!(half::f16, F16);

/// A tensor as the [`Candle`] backend sees it: a candle tensor (parameters and gradients,
/// used in place), or a host buffer (optimizer state, and the mirrors of the copying path).
pub struct CandleBuf<E> {
    repr: Repr<E>,
}

impl<E> std::fmt::Debug for CandleBuf<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.repr {
            Repr::Host { shape, .. } => format!("host {shape:?}"),
            Repr::Tensor(t) => format!("tensor {:?}", t.shape()),
            Repr::View { len, .. } => format!("view of {len}"),
        };
        f.debug_struct("CandleBuf").field("repr", &kind).finish()
    }
}

enum Repr<E> {
    Host {
        data: Vec<E>,
        shape: Vec<usize>,
    },
    Tensor(Tensor),
    /// A slice of a locked candle storage or of a host buffer, valid only inside one pass.
    View {
        ptr: *mut E,
        len: usize,
        writable: bool,
    },
}

// SAFETY: a `View` is only built inside a pass, from a slice the pass holds (a candle storage
// locked for reading or writing, or a host buffer borrowed for the pass), and dropped before
// the pass returns; writable views are built only from exclusively held storage. The other
// variants are `Send + Sync` themselves.
unsafe impl<E: Send> Send for CandleBuf<E> {}
unsafe impl<E: Sync> Sync for CandleBuf<E> {}

impl<E: CandleElement> CandleBuf<E> {
    /// Wrap a candle tensor (shared, not copied: steps write into its storage).
    pub fn tensor(t: Tensor) -> Self {
        CandleBuf { repr: Repr::Tensor(t) }
    }

    /// A host buffer of this shape from row-major data, or `None` if their sizes differ.
    pub fn host(shape: &[usize], data: Vec<E>) -> Option<Self> {
        (shape.iter().product::<usize>() == data.len())
            .then(|| CandleBuf { repr: Repr::Host { data, shape: shape.to_vec() } })
    }

    /// The candle tensor, if this is one.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match &self.repr {
            Repr::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The host data, if this is a host buffer.
    pub fn as_host(&self) -> Option<&[E]> {
        match &self.repr {
            Repr::Host { data, .. } => Some(data),
            _ => None,
        }
    }

    /// The host data, mutably, if this is a host buffer.
    pub fn as_host_mut(&mut self) -> Option<&mut [E]> {
        match &mut self.repr {
            Repr::Host { data, .. } => Some(data),
            _ => None,
        }
    }

    /// The elements, row-major (a copy).
    pub fn to_vec(&self) -> Result<Vec<E>, BackendError> {
        let mut out = vec![<E as Element>::from_f64(0.0); Candle::<E>::numel(self)];
        Candle::<E>::read(self, &mut out)?;
        Ok(out)
    }

    fn view(ptr: *mut E, len: usize, writable: bool) -> Self {
        CandleBuf { repr: Repr::View { ptr, len, writable } }
    }
}

fn device_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Device(e.to_string())
}

/// profit-core's host loops over [`CandleBuf`] views and host buffers (never over a candle
/// tensor directly: [`Candle`] locks those first).
pub(crate) struct Views<E>(PhantomData<E>);

impl<E: CandleElement> HostBackend for Views<E> {
    type Elem = E;
    type Tensor = CandleBuf<E>;
    const NAME: &'static str = "candle";
    fn shape(t: &CandleBuf<E>) -> Vec<usize> {
        Candle::<E>::shape(t)
    }
    fn zeros_like(t: &CandleBuf<E>) -> CandleBuf<E> {
        let shape = Candle::<E>::shape(t);
        let n = shape.iter().product();
        CandleBuf { repr: Repr::Host { data: vec![<E as Element>::from_f64(0.0); n], shape } }
    }
    fn as_slice(t: &CandleBuf<E>) -> Result<&[E], BackendError> {
        match &t.repr {
            Repr::Host { data, .. } => Ok(data),
            // SAFETY: see the `Send`/`Sync` impls: the view's memory is held by the pass.
            Repr::View { ptr, len, .. } => Ok(unsafe { std::slice::from_raw_parts(*ptr, *len) }),
            Repr::Tensor(_) => Err(BackendError::Device("candle tensor used outside a lock".into())),
        }
    }
    fn as_mut_slice(t: &mut CandleBuf<E>) -> Result<&mut [E], BackendError> {
        match &mut t.repr {
            Repr::Host { data, .. } => Ok(data),
            // SAFETY: writable views come from storage the pass holds exclusively.
            Repr::View { ptr, len, writable: true } => {
                Ok(unsafe { std::slice::from_raw_parts_mut(*ptr, *len) })
            }
            Repr::View { .. } => Err(BackendError::Device("read-only view written".into())),
            Repr::Tensor(_) => Err(BackendError::Device("candle tensor used outside a lock".into())),
        }
    }
}

/// The backend: [`TensorOps`] for [`CandleBuf`]s of element `E` (see the [module docs](self)).
#[derive(Debug)]
pub struct Candle<E>(PhantomData<E>);

/// Address of a tensor's storage lock: equal for tensors that share a storage. Takes a read
/// lock for the time of the call.
pub(crate) fn storage_key(t: &Tensor) -> usize {
    let (g, _) = t.storage_and_layout();
    &*g as *const Storage as usize
}

/// Read guards held for one pass, and the views built from them.
struct Reads<'a> {
    guards: Vec<StorageRef<'a>>,
}

impl<'a> Reads<'a> {
    fn new() -> Self {
        Reads { guards: vec![] }
    }

    /// A read-only view of `t` that stays valid while `self` lives.
    fn view<E: CandleElement>(&mut self, t: &'a CandleBuf<E>) -> Result<CandleBuf<E>, BackendError> {
        match &t.repr {
            Repr::Host { data, .. } => Ok(CandleBuf::view(data.as_ptr() as *mut E, data.len(), false)),
            Repr::View { ptr, len, .. } => Ok(CandleBuf::view(*ptr, *len, false)),
            Repr::Tensor(t) => {
                let (g, layout) = t.storage_and_layout();
                let (a, b) = layout.contiguous_offsets().ok_or(BackendError::NotContiguous)?;
                let Storage::Cpu(cpu) = &*g else {
                    return Err(BackendError::Unavailable("tensor is not on the CPU".into()));
                };
                let s = E::cpu_slice(cpu).ok_or_else(|| dtype_err::<E>(t))?;
                let s = s.get(a..b).ok_or_else(|| device_err("layout outside its storage"))?;
                let v = CandleBuf::view(s.as_ptr() as *mut E, s.len(), false);
                self.guards.push(g);
                Ok(v)
            }
        }
    }
}

fn dtype_err<E: CandleElement>(t: &Tensor) -> BackendError {
    BackendError::Device(format!(
        "tensor is {:?}, expected {:?}",
        t.dtype(),
        <E as candle_core::WithDType>::DTYPE
    ))
}

/// Refuse parameters that share a storage with each other, and gradients that share one with
/// a parameter (taking those locks would deadlock). Takes and releases one read lock per tensor.
fn check_aliasing<E: CandleElement>(
    params: &[&mut CandleBuf<E>],
    grads: Grads<'_, CandleBuf<E>>,
) -> Result<(), BackendError> {
    let mut keys: Vec<usize> = params.iter().filter_map(|p| p.as_tensor()).map(storage_key).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return Err(BackendError::Device("two parameters share a candle storage".into()));
    }
    for g in (0..grads.len()).filter_map(|i| grads.get(i)?.as_tensor()) {
        if keys.binary_search(&storage_key(g)).is_ok() {
            return Err(BackendError::Device("a gradient shares its storage with a parameter".into()));
        }
    }
    Ok(())
}

type ViewsBody<'b, E> = dyn FnMut(&mut [&mut CandleBuf<E>]) -> Result<(), BackendError> + 'b;

type Body<'b, E> = dyn FnMut(&[(*mut E, usize)]) -> Result<(), BackendError> + 'b;

/// One nested lock: `cpu_fwd` records the locked slice, then locks the next tensor, and the
/// innermost one runs the body with every slice.
struct Nest<'a, 'b, E> {
    rest: &'a [&'a Tensor],
    acc: &'a RefCell<Vec<(*mut E, usize)>>,
    body: &'a RefCell<&'a mut Body<'b, E>>,
    err: &'a RefCell<Option<BackendError>>,
}

impl<E: CandleElement> InplaceOp1 for Nest<'_, '_, E> {
    fn name(&self) -> &'static str {
        "profit-lock"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let fail = |e: BackendError| {
            *self.err.borrow_mut() = Some(e);
            Ok(())
        };
        let Some(data) = E::cpu_slice_mut(s) else {
            return fail(BackendError::Device(format!(
                "parameter is not {:?}",
                <E as candle_core::WithDType>::DTYPE
            )));
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            return fail(BackendError::NotContiguous);
        };
        let Some(slice) = data.get_mut(a..b) else {
            return fail(device_err("layout outside its storage"));
        };
        self.acc.borrow_mut().push((slice.as_mut_ptr(), slice.len()));
        match self.rest.split_first() {
            Some((next, rest)) => next.inplace_op1(&Nest { rest, ..*self }),
            None => {
                let acc = self.acc.borrow();
                if let Err(e) = (self.body.borrow_mut())(&acc) {
                    *self.err.borrow_mut() = Some(e);
                }
                Ok(())
            }
        }
    }
}

/// Lock `tensors` for writing (all at once) and run `body` on their slices, in order.
fn with_locked<E: CandleElement>(tensors: &[&Tensor], body: &mut Body<'_, E>) -> Result<(), BackendError> {
    let Some((first, rest)) = tensors.split_first() else {
        return body(&[]);
    };
    let acc = RefCell::new(Vec::with_capacity(tensors.len()));
    let err = RefCell::new(None);
    let body = RefCell::new(body);
    first.inplace_op1(&Nest { rest, acc: &acc, body: &body, err: &err }).map_err(device_err)?;
    match err.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Run `f` on writable views of `params[range]` (candle tensors locked, host buffers borrowed).
fn with_param_views<E: CandleElement>(
    params: &mut [&mut CandleBuf<E>],
    f: &mut ViewsBody<'_, E>,
) -> Result<(), BackendError> {
    let tensors: Vec<Tensor> = params.iter().filter_map(|p| p.as_tensor().cloned()).collect();
    let trefs: Vec<&Tensor> = tensors.iter().collect();
    // Host parameters: views of their data, taken now (they are not locked).
    let mut host: Vec<Option<(*mut E, usize)>> = params
        .iter_mut()
        .map(|p| match &mut p.repr {
            Repr::Host { data, .. } => Some((data.as_mut_ptr(), data.len())),
            Repr::View { ptr, len, .. } => Some((*ptr, *len)),
            Repr::Tensor(_) => None,
        })
        .collect();
    if params.iter().any(|p| matches!(p.repr, Repr::View { writable: false, .. })) {
        return Err(device_err("read-only view passed as a parameter"));
    }
    let mut body = |locked: &[(*mut E, usize)]| -> Result<(), BackendError> {
        let mut it = locked.iter();
        let mut views = Vec::with_capacity(host.len());
        for h in host.iter_mut() {
            let (ptr, len) = match h {
                Some(x) => *x,
                None => *it.next().ok_or_else(|| device_err("lock count"))?,
            };
            views.push(CandleBuf::view(ptr, len, true));
        }
        let mut refs: Vec<&mut CandleBuf<E>> = views.iter_mut().collect();
        f(&mut refs)
    };
    with_locked::<E>(&trefs, &mut body)
}

/// Read-only views of `bufs` held by `reads`.
fn read_views<'a, E: CandleElement>(
    reads: &mut Reads<'a>,
    bufs: impl Iterator<Item = &'a CandleBuf<E>>,
) -> Result<Vec<CandleBuf<E>>, BackendError> {
    bufs.map(|b| reads.view(b)).collect()
}

impl<E: CandleElement> TensorOps for Candle<E> {
    type Elem = E;
    type Tensor = CandleBuf<E>;
    const NAME: &'static str = "candle";
    const FUSE_PER_TENSOR: bool = true;

    fn shape(t: &CandleBuf<E>) -> Vec<usize> {
        match &t.repr {
            Repr::Host { shape, .. } => shape.clone(),
            Repr::Tensor(t) => t.dims().to_vec(),
            Repr::View { len, .. } => vec![*len],
        }
    }

    fn has_shape(t: &CandleBuf<E>, shape: &[usize]) -> bool {
        match &t.repr {
            Repr::Host { shape: s, .. } => s == shape,
            Repr::Tensor(t) => t.dims() == shape,
            Repr::View { len, .. } => shape == [*len],
        }
    }

    fn numel(t: &CandleBuf<E>) -> usize {
        match &t.repr {
            Repr::Host { data, .. } => data.len(),
            Repr::Tensor(t) => t.elem_count(),
            Repr::View { len, .. } => *len,
        }
    }

    fn validate(t: &CandleBuf<E>) -> Result<(), BackendError> {
        match &t.repr {
            Repr::Tensor(t) => {
                if !t.device().is_cpu() {
                    return Err(BackendError::Unavailable(format!(
                        "tensor on {:?}: the in-place path runs on the CPU (use the copying path)",
                        t.device().location()
                    )));
                }
                if t.dtype() != <E as candle_core::WithDType>::DTYPE {
                    return Err(dtype_err::<E>(t));
                }
                if !t.is_contiguous() {
                    return Err(BackendError::NotContiguous);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn zeros_like(t: &CandleBuf<E>) -> Result<CandleBuf<E>, BackendError> {
        Ok(<Views<E> as HostBackend>::zeros_like(t))
    }

    fn read(t: &CandleBuf<E>, out: &mut [E]) -> Result<(), BackendError> {
        let mut reads = Reads::new();
        let v = reads.view(t)?;
        let s = <Views<E> as HostBackend>::as_slice(&v)?;
        if s.len() != out.len() {
            return Err(device_err("tensor lengths differ"));
        }
        out.copy_from_slice(s);
        Ok(())
    }

    fn write(t: &mut CandleBuf<E>, src: &[E]) -> Result<(), BackendError> {
        Self::validate(t)?;
        with_param_views(&mut [t], &mut |v| {
            let d = <Views<E> as HostBackend>::as_mut_slice(v[0])?;
            if d.len() != src.len() {
                return Err(device_err("tensor lengths differ"));
            }
            d.copy_from_slice(src);
            Ok(())
        })
    }

    fn reduce(delta: DeltaView<'_, CandleBuf<E>>, grad: &CandleBuf<E>) -> Result<Reduction, BackendError> {
        let mut reads = Reads::new();
        let g = reads.view(grad)?;
        let a;
        let b;
        let d = match delta {
            DeltaView::None => DeltaView::None,
            DeltaView::Stored(t) => {
                a = reads.view(t)?;
                DeltaView::Stored(&a)
            }
            DeltaView::Realized { param, anchor } => {
                a = reads.view(param)?;
                b = reads.view(anchor)?;
                DeltaView::Realized { param: &a, anchor: &b }
            }
        };
        <Views<E> as TensorOps>::reduce(d, &g)
    }

    fn apply(
        kernel: &Kernel<E>,
        param: &mut CandleBuf<E>,
        grad: &CandleBuf<E>,
        state: &mut TensorState<CandleBuf<E>>,
    ) -> Result<(), BackendError> {
        check_aliasing(&[&mut *param], Grads::Every(&[grad]))?;
        let mut reads = Reads::new();
        let g = reads.view(grad)?;
        with_param_views(&mut [param], &mut |p| <Views<E> as TensorOps>::apply(kernel, p[0], &g, state))
    }

    fn reduce_all(batch: &mut Batch<'_, '_, CandleBuf<E>, E>, with_delta: bool) -> Result<(), BackendError> {
        let Parts { active, kernels, params, grads, states, out } = batch.parts();
        check_aliasing(params, grads)?;
        let mut reads = Reads::new();
        let g = grad_views(&mut reads, grads)?;
        let gr: Vec<Option<&CandleBuf<E>>> = g.iter().map(Option::as_ref).collect();
        // Reductions only read the parameters: read-only views of them.
        let mut p = read_views(&mut reads, params.iter().map(|p| &**p))?;
        let mut pr: Vec<&mut CandleBuf<E>> = p.iter_mut().collect();
        let mut views = Batch::new(active, kernels, &mut pr, Grads::Some(&gr), states, out)?;
        <Views<E> as TensorOps>::reduce_all(&mut views, with_delta)
    }

    fn apply_all(batch: &mut Batch<'_, '_, CandleBuf<E>, E>) -> Result<(), BackendError> {
        nested(batch, &mut |views| <Views<E> as TensorOps>::apply_all(views))
    }

    fn reduce_apply_all(
        batch: &mut Batch<'_, '_, CandleBuf<E>, E>,
        coef: &(dyn Fn(Reduction, &mut Kernel<E>) + Sync),
    ) -> Result<(), BackendError> {
        nested(batch, &mut |views| <Views<E> as TensorOps>::reduce_apply_all(views, coef))
    }
}

type BatchBody<'b, E> = dyn FnMut(&mut Batch<'_, '_, CandleBuf<E>, E>) -> Result<(), BackendError> + 'b;

/// Run `f` over the batch with every parameter locked for writing and every gradient for
/// reading, [`NEST`] parameters at a time.
fn nested<E: CandleElement>(
    batch: &mut Batch<'_, '_, CandleBuf<E>, E>,
    f: &mut BatchBody<'_, E>,
) -> Result<(), BackendError> {
    let Parts { active, kernels, params, grads, states, out } = batch.parts();
    check_aliasing(params, grads)?;
    let mut reads = Reads::new();
    let g = grad_views(&mut reads, grads)?;
    let gr: Vec<Option<&CandleBuf<E>>> = g.iter().map(Option::as_ref).collect();
    let mut start = 0;
    for chunk in params.chunks_mut(NEST) {
        let end = start + chunk.len();
        with_param_views(chunk, &mut |p| {
            let mut views = Batch::new(
                &active[start..end],
                &mut kernels[start..end],
                p,
                Grads::Some(&gr[start..end]),
                &mut states[start..end],
                &mut out[start..end],
            )?;
            f(&mut views)
        })?;
        start = end;
    }
    Ok(())
}

/// Read-only views of the gradients that are present.
fn grad_views<'a, E: CandleElement>(
    reads: &mut Reads<'a>,
    grads: Grads<'a, CandleBuf<E>>,
) -> Result<Vec<Option<CandleBuf<E>>>, BackendError> {
    (0..grads.len()).map(|i| grads.get(i).map(|g| reads.view(g)).transpose()).collect()
}
