//! Device tensors: a `CudaSlice` plus a shape and the handle of the backend that made it.

use std::mem::ManuallyDrop;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits};
use profit_core::element::Element;
use profit_core::error::BackendError;

use crate::device::{driver_err, CudaBackend, Device};

/// An element type the CUDA kernels are compiled for: `f32`, `f64`, and the 16-bit
/// `half::bf16` and `half::f16` (stored in 16 bits, computed in `f32`, rounded once per stored
/// value, as on the host).
pub trait CudaElement: Element + DeviceRepr + ValidAsZeroBits + Unpin {
    /// Index of the type in [`kernels::DTYPES`](crate::kernels::DTYPES).
    const DTYPE_INDEX: usize;
    /// Bytes of one kernel scalar (the math type's).
    const SCALAR_BYTES: usize;
    /// Index of the math type's decision kernel in [`kernels::DECIDE`](crate::kernels::DECIDE).
    const DECIDE_INDEX: usize = if Self::SCALAR_BYTES == 8 { 1 } else { 0 };
    /// Append one kernel scalar (in the math type), little-endian.
    fn put_scalar(x: Self::Real, out: &mut Vec<u8>);
}

impl CudaElement for f32 {
    const DTYPE_INDEX: usize = 0;
    const SCALAR_BYTES: usize = 4;
    fn put_scalar(x: f32, out: &mut Vec<u8>) {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

impl CudaElement for f64 {
    const DTYPE_INDEX: usize = 1;
    const SCALAR_BYTES: usize = 8;
    fn put_scalar(x: f64, out: &mut Vec<u8>) {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

impl CudaElement for half::bf16 {
    const DTYPE_INDEX: usize = 2;
    const SCALAR_BYTES: usize = 4;
    fn put_scalar(x: f32, out: &mut Vec<u8>) {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

impl CudaElement for half::f16 {
    const DTYPE_INDEX: usize = 3;
    const SCALAR_BYTES: usize = 4;
    fn put_scalar(x: f32, out: &mut Vec<u8>) {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// A row-major tensor in GPU memory, made by a [`CudaBackend`](crate::CudaBackend).
///
/// It carries its backend's handle (context, stream, kernels, scratch), so that
/// [`TensorOps`](profit_core::backend::TensorOps)'s associated functions can launch work on it.
pub struct CudaTensor<E> {
    /// Device memory: `max(len, 1)` elements (CUDA refuses empty allocations), `len` used;
    /// freed on drop unless `borrowed`.
    pub(crate) data: ManuallyDrop<CudaSlice<E>>,
    pub(crate) len: usize,
    pub(crate) shape: Vec<usize>,
    pub(crate) dev: Arc<Device>,
    /// Memory another owner allocated ([`CudaBackend::borrow`]): never freed here.
    pub(crate) borrowed: bool,
}

impl<E> Drop for CudaTensor<E> {
    fn drop(&mut self) {
        // SAFETY: `data` is taken once, here, and not used again.
        let data = unsafe { ManuallyDrop::take(&mut self.data) };
        if self.borrowed {
            // Its owner frees it.
            let _ = data.leak();
        }
    }
}

impl<E> std::fmt::Debug for CudaTensor<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaTensor").field("shape", &self.shape).field("device", &self.dev.ordinal).finish()
    }
}

impl<E: CudaElement> CudaTensor<E> {
    /// Shape (row-major dimensions).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The device address of the first element.
    pub fn device_address(&self) -> u64 {
        let (p, _sync) = cudarc::driver::DevicePtr::device_ptr(&*self.data, &self.dev.stream);
        p
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The backend this tensor lives on.
    pub fn backend(&self) -> crate::CudaBackend {
        crate::CudaBackend { dev: self.dev.clone() }
    }

    /// The elements as a device view (for use with other cudarc code on the backend's stream).
    pub fn view(&self) -> CudaView<'_, E> {
        self.data.slice(0..self.len)
    }

    /// The elements as a mutable device view.
    pub fn view_mut(&mut self) -> CudaViewMut<'_, E> {
        self.data.slice_mut(0..self.len)
    }

    /// Copy the elements into `out` (`out.len() == self.len()`), waiting for the copy.
    pub fn copy_to_host(&self, out: &mut [E]) -> Result<(), BackendError> {
        if out.len() != self.len {
            return Err(BackendError::Device(format!(
                "copy to host: {} elements into a buffer of {}",
                self.len,
                out.len()
            )));
        }
        if self.len == 0 {
            return Ok(());
        }
        let s = &self.dev.stream;
        s.memcpy_dtoh(&self.view(), out).map_err(driver_err)?;
        s.synchronize().map_err(driver_err)
    }

    /// The elements as a host vector.
    pub fn to_vec(&self) -> Result<Vec<E>, BackendError> {
        let mut v = vec![E::default(); self.len];
        self.copy_to_host(&mut v)?;
        Ok(v)
    }

    /// Overwrite the elements from host memory (`src.len() == self.len()`), waiting for the copy.
    pub fn copy_from_host(&mut self, src: &[E]) -> Result<(), BackendError> {
        if src.len() != self.len {
            return Err(BackendError::Device(format!(
                "copy from host: {} values into a tensor of {}",
                src.len(),
                self.len
            )));
        }
        if self.len == 0 {
            return Ok(());
        }
        let dev = self.dev.clone();
        dev.stream.memcpy_htod(src, &mut self.view_mut()).map_err(driver_err)?;
        dev.stream.synchronize().map_err(driver_err)
    }
}

/// Making tensors on a backend (here rather than in `device`, which knows nothing of tensors).
impl CudaBackend {
    /// A zero-filled tensor of this shape.
    pub fn zeros<E: CudaElement>(&self, shape: &[usize]) -> Result<CudaTensor<E>, BackendError> {
        let len = shape.iter().product::<usize>();
        let data = self.dev.stream.alloc_zeros::<E>(len.max(1)).map_err(driver_err)?;
        Ok(CudaTensor {
            data: ManuallyDrop::new(data),
            len,
            shape: shape.to_vec(),
            dev: self.dev.clone(),
            borrowed: false,
        })
    }

    /// A tensor of this shape from row-major host values (`data.len()` must match the shape).
    pub fn upload<E: CudaElement>(&self, shape: &[usize], data: &[E]) -> Result<CudaTensor<E>, BackendError> {
        let len = shape.iter().product::<usize>();
        if data.len() != len {
            return Err(BackendError::Device(format!("upload: {} values for shape {shape:?}", data.len())));
        }
        let mut t = self.zeros(shape)?;
        t.copy_from_host(data)?;
        Ok(t)
    }

    /// A tensor of this shape over device memory another owner allocated in this device's
    /// primary context (another framework's tensor: a torch CUDA tensor's `data_ptr()`). The
    /// memory is read and written in place and never freed here. Order the other owner's work
    /// with this backend's stream around each use ([`wait_for`](Self::wait_for),
    /// [`signal`](Self::signal)). `Err` if `ptr` is null (with elements) or misaligned for `E`.
    ///
    /// # Safety
    /// `ptr` must hold `shape`'s element count of `E`, in this device's primary context, for
    /// as long as the tensor is used, and no other work may use that memory meanwhile except
    /// as ordered with this backend's stream.
    pub unsafe fn borrow<E: CudaElement>(
        &self,
        ptr: u64,
        shape: &[usize],
    ) -> Result<CudaTensor<E>, BackendError> {
        let len = shape.iter().product::<usize>();
        if len > 0 && (ptr == 0 || ptr % std::mem::align_of::<E>() as u64 != 0) {
            return Err(BackendError::Device(format!(
                "borrow: device address {ptr:#x} is null or misaligned"
            )));
        }
        // SAFETY: the caller guarantees the allocation; the slice is never freed (`borrowed`).
        let data = unsafe { self.dev.stream.upgrade_device_ptr::<E>(ptr, len) };
        Ok(CudaTensor {
            data: ManuallyDrop::new(data),
            len,
            shape: shape.to_vec(),
            dev: self.dev.clone(),
            borrowed: true,
        })
    }

    /// Make this backend's stream wait for the work queued so far on `stream`, a raw `CUstream`
    /// of the same context (such as `torch.cuda.current_stream().cuda_stream`; `0` is the
    /// legacy default stream). Enqueues an event; does not block the host.
    ///
    /// # Safety
    /// `stream` must be a live stream of this device's primary context.
    pub unsafe fn wait_for(&self, stream: u64) -> Result<(), BackendError> {
        let event = self.dev.ctx.new_event(None).map_err(driver_err)?;
        // SAFETY: a live event and, by the caller, a live stream of this context.
        unsafe {
            cudarc::driver::result::event::record(event.cu_event(), stream as cudarc::driver::sys::CUstream)
        }
        .map_err(driver_err)?;
        self.dev.stream.wait(&event).map_err(driver_err)
    }

    /// Make `stream` (as in [`wait_for`](Self::wait_for)) wait for the work queued so far on
    /// this backend's stream. Does not block the host.
    ///
    /// # Safety
    /// `stream` must be a live stream of this device's primary context.
    pub unsafe fn signal(&self, stream: u64) -> Result<(), BackendError> {
        let event = self.dev.stream.record_event(None).map_err(driver_err)?;
        let wait = cudarc::driver::sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT;
        // SAFETY: a live event and, by the caller, a live stream of this context.
        unsafe {
            cudarc::driver::result::stream::wait_event(
                stream as cudarc::driver::sys::CUstream,
                event.cu_event(),
                wait,
            )
        }
        .map_err(driver_err)
    }
}
