//! The backend handle: context, stream, loaded kernels and the reusable launch scratch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError,
    PinnedHostSlice, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use profit_core::error::BackendError;

use crate::kernels;

pub(crate) fn driver_err(e: DriverError) -> BackendError {
    BackendError::Device(format!("CUDA driver: {e:?}"))
}

/// Which PTX the kernels were loaded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtxSource {
    /// PTX compiled by `nvcc` when this crate was built.
    Nvcc,
    /// The committed `cuda-kernels/ptx/profit.ptx`.
    Committed,
}

/// Device buffers and host staging reused by every launch (grown, never shrunk), so that a
/// step allocates nothing once the first step of a given size has run.
#[derive(Default)]
pub(crate) struct Scratch {
    /// Descriptor tables: [apply at reference and warm-up calls, reduce without delta,
    /// reduce with delta, apply at main calls] (kept apart so that alternating calls do not
    /// upload each other's table every time).
    pub(crate) tables: [Table; 4],
    /// Scalar sets of the last apply call (bytes of the element type).
    pub(crate) scalars: Option<CudaSlice<u8>>,
    /// Per-block reduction partials (3 per block).
    pub(crate) partials: Option<CudaSlice<f64>>,
    /// A call's results, on the device and on the host: the verdict (3 doubles) of a call
    /// decided on the device, the per-tensor reductions (3 per tensor, by tensor index), then
    /// (device only) the decided scalars (3 per tensor, in the math type).
    pub(crate) out_dev: Option<CudaSlice<f64>>,
    pub(crate) out_host: Vec<f64>,
    /// Host staging for the table and scalar sets being built.
    pub(crate) words: Vec<u64>,
    pub(crate) bytes: Vec<u8>,
    /// Page-locked copies of what goes to the device (tables, scalar sets) and comes back
    /// (results), so that those copies are asynchronous DMA rather than staged by the driver.
    pub(crate) up_words: [Option<Staging<u64>>; 4],
    pub(crate) up_bytes: Option<Staging<u8>>,
    pub(crate) down: Option<Staging<f64>>,
    /// `(variant, tensor index)` of the tensors a call launches on.
    pub(crate) entries: Vec<(u16, u32)>,
    /// The apply launches described in `words`: (variant, first entry, end entry, blocks).
    pub(crate) groups: Vec<(u16, usize, usize, u64)>,
}

/// Page-locked host memory for asynchronous copies on the backend's stream, and an event
/// recorded behind the last copy through it (the host touches the memory only after it).
pub(crate) struct Staging<T> {
    buf: PinnedHostSlice<T>,
    done: CudaEvent,
}

impl<T: DeviceRepr + ValidAsZeroBits> Staging<T> {
    /// `slot` holds at least `len` elements afterwards (grown to `max(len, 2 * old)`);
    /// `write_combined` for memory the host only writes.
    pub(crate) fn ensure(
        slot: &mut Option<Self>,
        ctx: &Arc<CudaContext>,
        len: usize,
        write_combined: bool,
    ) -> Result<(), BackendError> {
        let have = slot.as_ref().map_or(0, |s| s.buf.len());
        if have < len {
            *slot = None;
            let flags = if write_combined { cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED } else { 0 };
            // SAFETY: the memory is written (uploads) or copied into (downloads) before it is read.
            let buf =
                unsafe { ctx.alloc_pinned_with_flags::<T>(len.max(2 * have), flags) }.map_err(driver_err)?;
            let done = ctx.new_event(None).map_err(driver_err)?;
            *slot = Some(Staging { buf, done });
        }
        Ok(())
    }

    /// The host memory, once every copy through it has completed.
    pub(crate) fn host(&mut self) -> Result<&mut [T], BackendError> {
        self.done.synchronize().map_err(driver_err)?;
        self.buf.as_mut_slice().map_err(driver_err)
    }

    /// Copy `src` into this memory, then from it to device address `dst`, asynchronously.
    pub(crate) fn upload(&mut self, src: &[T], dst: u64, stream: &CudaStream) -> Result<(), BackendError>
    where
        T: Copy,
    {
        let host = self.host()?;
        let host =
            host.get_mut(..src.len()).ok_or_else(|| BackendError::Device("staging too small".into()))?;
        host.copy_from_slice(src);
        // SAFETY: `host` is page-locked memory that stays allocated (and untouched: `host()` waits
        // for `done`) until the copy completes; `dst` holds `src.len()` elements (the caller's
        // buffer, ensured to that size, lives in the same scratch and is not freed before a
        // later synchronization).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, &*host, stream.cu_stream()) }
            .map_err(driver_err)?;
        self.done.record(stream).map_err(driver_err)
    }

    /// Copy `len` elements from device address `src` into this memory, asynchronously; read
    /// them with [`host`](Self::host).
    pub(crate) fn download(&mut self, src: u64, len: usize, stream: &CudaStream) -> Result<(), BackendError> {
        let host = self.host()?;
        let host = host.get_mut(..len).ok_or_else(|| BackendError::Device("staging too small".into()))?;
        // SAFETY: as in `upload`; `src` holds `len` elements.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(host, src, stream.cu_stream()) }
            .map_err(driver_err)?;
        self.done.record(stream).map_err(driver_err)
    }
}

/// One descriptor table on the device and a host copy of what it holds (uploads are skipped
/// when a call's table is unchanged, the usual case: same tensors every step).
#[derive(Default)]
pub(crate) struct Table {
    pub(crate) dev: Option<CudaSlice<u64>>,
    pub(crate) uploaded: Vec<u64>,
}

pub(crate) struct Device {
    pub(crate) ordinal: usize,
    pub(crate) name: String,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) ptx: PtxSource,
    /// `[dtype][pass][rule]`, flattened.
    pub(crate) apply_fns: Vec<CudaFunction>,
    pub(crate) partial_fns: Vec<CudaFunction>,
    pub(crate) final_fn: CudaFunction,
    pub(crate) decide_fns: Vec<CudaFunction>,
    pub(crate) sm_count: u32,
    pub(crate) scratch: Mutex<Scratch>,
    /// Whether calls that need reductions are decided on the device (the default).
    pub(crate) decide_on_device: AtomicBool,
}

impl Device {
    pub(crate) fn apply_fn(&self, dtype: usize, variant: usize) -> &CudaFunction {
        &self.apply_fns[dtype * kernels::PASSES.len() * kernels::RULES.len() + variant]
    }

    /// Grid size for a grid-stride launch over `blocks` flattened blocks.
    pub(crate) fn grid(&self, blocks: u64) -> u32 {
        blocks.clamp(1, self.sm_count as u64 * 8) as u32
    }
}

/// A CUDA device ready to run PROFIT: a context, one stream, the loaded kernels.
///
/// Cloning is cheap (a shared handle). Tensors made by a backend keep it alive.
///
/// ```
/// use profit_cuda::CudaBackend;
/// match CudaBackend::new(0) {
///     Ok(gpu) => {
///         let t = gpu.upload(&[2, 2], &[1.0f32, 2.0, 3.0, 4.0]).unwrap();
///         assert_eq!(t.to_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
///     }
///     // No driver or no device: a typed error, never a panic.
///     Err(e) => println!("no CUDA: {e}"),
/// }
/// ```
#[derive(Clone)]
pub struct CudaBackend {
    pub(crate) dev: Arc<Device>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("ordinal", &self.dev.ordinal)
            .field("name", &self.dev.name)
            .field("ptx", &self.dev.ptx)
            .finish()
    }
}

fn unavailable(why: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(why.to_string())
}

impl CudaBackend {
    /// Whether the CUDA driver library (`libcuda`) can be loaded on this machine.
    pub fn driver_present() -> bool {
        // SAFETY: only tries to dlopen the driver library by its usual names.
        unsafe { cudarc::driver::sys::is_culib_present() }
    }

    /// Open device `ordinal`: create its context and stream and load the kernels.
    ///
    /// Returns [`BackendError::Unavailable`] when there is no driver, no such device, or the
    /// driver refuses the kernels; never panics for lack of hardware.
    pub fn new(ordinal: usize) -> Result<Self, BackendError> {
        if !Self::driver_present() {
            return Err(unavailable("no CUDA driver (libcuda) found on this machine"));
        }
        // cudarc panics if a driver symbol is missing (a driver older than its bindings):
        // turn that into an error too.
        std::panic::catch_unwind(|| Self::open(ordinal))
            .unwrap_or_else(|_| Err(unavailable("the CUDA driver could not be used (missing symbols?)")))
    }

    fn open(ordinal: usize) -> Result<Self, BackendError> {
        let count = CudaContext::device_count().map_err(|e| unavailable(format!("CUDA driver: {e:?}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(unavailable(format!("no CUDA device {ordinal} ({count} present)")));
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| unavailable(format!("CUDA device {ordinal}: {e:?}")))?;
        // One stream orders every launch and copy, so cudarc's per-buffer events are not
        // needed; they would cost two event records per buffer per launch.
        // SAFETY: no buffer exists yet in this context handle; everything this backend
        // allocates and launches uses the one stream created below.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err)?;
        let name = ctx.name().unwrap_or_else(|_| "unknown CUDA device".into());
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err)?
            .max(1) as u32;

        let (module, ptx) = load_module(&ctx)?;
        let load = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| unavailable(format!("kernel {name} not in the PTX: {e:?}")))
        };
        let mut apply_fns = Vec::new();
        for d in 0..kernels::DTYPES.len() {
            for p in 0..kernels::PASSES.len() {
                for r in 0..kernels::RULES.len() {
                    apply_fns.push(load(&kernels::apply_entry(d, p, r))?);
                }
            }
        }
        let partial_fns = (0..kernels::DTYPES.len())
            .map(|d| load(&kernels::reduce_partials_entry(d)))
            .collect::<Result<_, _>>()?;
        let final_fn = load(kernels::REDUCE_FINAL)?;
        let decide_fns = kernels::DECIDE.iter().map(|n| load(n)).collect::<Result<_, _>>()?;
        Ok(CudaBackend {
            dev: Arc::new(Device {
                ordinal,
                name,
                ctx,
                stream,
                ptx,
                apply_fns,
                partial_fns,
                final_fn,
                decide_fns,
                sm_count,
                scratch: Mutex::new(Scratch::default()),
                decide_on_device: AtomicBool::new(true),
            }),
        })
    }

    /// Device ordinal.
    pub fn ordinal(&self) -> usize {
        self.dev.ordinal
    }

    /// Device name as the driver reports it.
    pub fn device_name(&self) -> &str {
        &self.dev.name
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.dev.sm_count
    }

    /// Which PTX the kernels came from.
    pub fn ptx_source(&self) -> PtxSource {
        self.dev.ptx
    }

    /// The cudarc context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.dev.ctx
    }

    /// The stream every launch and copy of this backend is ordered on. Other cudarc work on
    /// these tensors must use it too (this backend turns off cudarc's cross-stream events).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.dev.stream
    }

    /// Whether a call that needs reductions (every main call; reference and warm-up calls when
    /// non-finite gradients are refused or gradients are clipped) is decided on the device:
    /// reductions, decision and update are enqueued back to back, and the host waits once, at
    /// the end of the call (the default, `true`). With `false` the host waits for the
    /// reductions, decides, then launches the update, as any backend without
    /// [`TensorOps::reduce_decide_apply`](profit_core::backend::TensorOps::reduce_decide_apply) does.
    /// Results are bitwise the same either way; this switch exists to measure the difference.
    /// Applies to every optimizer over this backend's tensors.
    pub fn set_decide_on_device(&self, on: bool) {
        self.dev.decide_on_device.store(on, Ordering::Relaxed);
    }

    /// See [`set_decide_on_device`](Self::set_decide_on_device).
    pub fn decides_on_device(&self) -> bool {
        self.dev.decide_on_device.load(Ordering::Relaxed)
    }

    /// Wait for all queued work.
    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.dev.stream.synchronize().map_err(driver_err)
    }
}

/// Load the kernels: the build-time `nvcc` PTX first (if any), else (or if the driver refuses
/// it) the committed PTX.
fn load_module(ctx: &Arc<CudaContext>) -> Result<(Arc<CudaModule>, PtxSource), BackendError> {
    let mut why = String::new();
    if !kernels::NVCC_PTX.is_empty() {
        match ctx.load_module(Ptx::from_src(kernels::NVCC_PTX)) {
            Ok(m) => return Ok((m, PtxSource::Nvcc)),
            Err(e) => why = format!("build-time PTX refused ({e:?}); "),
        }
    }
    ctx.load_module(Ptx::from_src(kernels::COMMITTED_PTX))
        .map(|m| (m, PtxSource::Committed))
        .map_err(|e| unavailable(format!("{why}committed PTX refused by the driver: {e:?}")))
}

/// `slot` holds at least `len` elements afterwards (grown to `max(len, 2 * old)`).
pub(crate) fn ensure<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<(), BackendError> {
    let have = slot.as_ref().map_or(0, |s| s.len());
    if have < len {
        *slot = None;
        *slot = Some(stream.alloc_zeros::<T>(len.max(2 * have)).map_err(driver_err)?);
    }
    Ok(())
}
