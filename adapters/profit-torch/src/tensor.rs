//! The host backend over torch CPU memory: a [`TorchBuf`] is either a torch tensor's memory,
//! borrowed for one call (parameters and gradients, stepped in place), or a buffer owned here
//! (the optimizer's state). profit-core's fused multi-threaded host loops run on both.

use std::marker::PhantomData;
use std::ptr::NonNull;

use profit_core::element::Element;
use profit_core::error::BackendError;
use profit_core::host::HostBackend;

/// Parameter, gradient or state memory.
pub(crate) struct TorchBuf<E> {
    buf: Buf<E>,
    shape: Vec<usize>,
}

enum Buf<E> {
    /// A contiguous torch tensor's elements, pointed at by [`TorchBuf::point`] before each call.
    View { ptr: NonNull<E>, len: usize },
    /// Owned here.
    Owned(Vec<E>),
}

// SAFETY: a view is only read or written inside one optimizer call, while the Python caller
// holds the GIL and references to the tensors it points into (see `Engine::step`), and the
// views of one call were checked not to overlap a parameter (`check_disjoint`); the host loops
// split the work across threads by disjoint ranges, as they do for owned buffers.
unsafe impl<E: Send> Send for TorchBuf<E> {}
unsafe impl<E: Sync> Sync for TorchBuf<E> {}

impl<E: Element> TorchBuf<E> {
    /// A view of nothing yet (pointed at before every use).
    pub fn view(shape: &[usize]) -> Self {
        let len = shape.iter().product();
        TorchBuf { buf: Buf::View { ptr: NonNull::dangling(), len }, shape: shape.to_vec() }
    }

    /// Point this view at `addr` (a torch tensor's `data_ptr()`), checked to be aligned for
    /// `E` and non-null unless empty. The caller guarantees it holds `len` elements of `E`.
    pub fn point(&mut self, addr: usize) -> Result<(), String> {
        let Buf::View { ptr, len } = &mut self.buf else { return Err("not a view".into()) };
        if *len == 0 {
            *ptr = NonNull::dangling();
            return Ok(());
        }
        if addr % std::mem::align_of::<E>() != 0 {
            return Err(format!("address {addr:#x} is not aligned for {}", E::DTYPE));
        }
        *ptr = NonNull::new(addr as *mut E).ok_or("null data pointer")?;
        Ok(())
    }

    /// The byte range this buffer's elements occupy (empty for no elements).
    pub fn range(&self) -> (usize, usize) {
        let (start, len) = match &self.buf {
            Buf::View { ptr, len } => (ptr.as_ptr() as usize, *len),
            Buf::Owned(v) => (v.as_ptr() as usize, v.len()),
        };
        (start, start + len * std::mem::size_of::<E>())
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        match &self.buf {
            Buf::View { len, .. } => *len,
            Buf::Owned(v) => v.len(),
        }
    }
}

/// The backend marker.
pub(crate) struct Torch<E>(PhantomData<E>);

impl<E: Element> HostBackend for Torch<E> {
    type Elem = E;
    type Tensor = TorchBuf<E>;
    const NAME: &'static str = "torch";

    fn shape(t: &TorchBuf<E>) -> Vec<usize> {
        t.shape.clone()
    }
    fn has_shape(t: &TorchBuf<E>, shape: &[usize]) -> bool {
        t.shape == shape
    }
    fn zeros_like(t: &TorchBuf<E>) -> TorchBuf<E> {
        TorchBuf { buf: Buf::Owned(vec![E::from_f64(0.0); t.numel()]), shape: t.shape.clone() }
    }
    fn as_slice(t: &TorchBuf<E>) -> Result<&[E], BackendError> {
        Ok(match &t.buf {
            // SAFETY: see the `Send`/`Sync` impls: the view points at `len` live, initialized,
            // aligned elements for the duration of the call, and no parameter overlaps it.
            Buf::View { ptr, len } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
            Buf::Owned(v) => v,
        })
    }
    fn as_mut_slice(t: &mut TorchBuf<E>) -> Result<&mut [E], BackendError> {
        Ok(match &mut t.buf {
            // SAFETY: as for `as_slice`; a parameter view overlaps no other view of the call, so
            // this is the only reference to those elements.
            Buf::View { ptr, len } => unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), *len) },
            Buf::Owned(v) => v,
        })
    }
}

/// Refuse a call whose parameters overlap each other or any gradient (their memory is
/// written), given each tensor's byte range, before any view is turned into a slice.
pub(crate) fn check_disjoint(
    params: &[(usize, usize)],
    grads: &[Option<(usize, usize)>],
) -> Result<(), String> {
    let mut written: Vec<(usize, usize, usize)> =
        params.iter().enumerate().map(|(i, &(a, b))| (a, b, i)).filter(|(a, b, _)| a < b).collect();
    written.sort_unstable();
    for w in written.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("parameters {} and {} share memory", w[0].2, w[1].2));
        }
    }
    for (j, g) in grads.iter().enumerate() {
        let Some((a, b)) = *g else { continue };
        if a == b {
            continue;
        }
        // The first parameter ending after `a` is the only one that can overlap `[a, b)`.
        let k = written.partition_point(|w| w.1 <= a);
        if let Some(&(pa, _, i)) = written.get(k) {
            if pa < b {
                return Err(format!("gradient {j} shares memory with parameter {i}"));
            }
        }
    }
    Ok(())
}
