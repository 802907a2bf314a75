//! `torch_profit._core`: the engine behind `torch_profit.PROFIT`. Private: the Python package
//! checks every tensor (device, dtype, layout, shape) and hands this module the addresses of
//! contiguous CPU tensors; the engine steps them in place with profit-core's fused host loops,
//! holding the GIL for the whole call (so no Python code can free or move a tensor meanwhile).
//!
//! Errors are raised as `CoreError(kind, message)`; the Python package maps `kind` to its
//! exception classes.

use std::marker::PhantomData;

use half::{bf16, f16};
use profit_core::backend::TensorOps;
use profit_core::collective::Collective;
use profit_core::element::Element;
use profit_core::error::ProfitError;
use profit_core::optim::InnerConfig;
use profit_core::state::{ProfitState, StateBuffer, StateMeta};
use profit_core::{GroupOptions, ParamGroup, Profit, ProfitConfig, StepReport};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

mod tensor;

use profit_cuda::{Cuda, CudaBackend, CudaElement, CudaTensor};
use tensor::{check_disjoint, Torch, TorchBuf};

pyo3::create_exception!(_core, CoreError, PyException, "An engine error: args are (kind, message).");

fn core_err(kind: &str, msg: impl Into<String>) -> PyErr {
    CoreError::new_err((kind.to_string(), msg.into()))
}

/// A profit-core error as `CoreError(kind, message)`.
fn err(e: ProfitError) -> PyErr {
    let kind = match &e {
        ProfitError::InvalidHyperparameter { .. } | ProfitError::InvalidConfig(_) => "config",
        ProfitError::NoParameters
        | ProfitError::CountMismatch { .. }
        | ProfitError::ShapeMismatch { .. }
        | ProfitError::DuplicateName(_)
        | ProfitError::NoSuchGroup { .. } => "input",
        ProfitError::NonFiniteGradient { .. } => "non_finite",
        ProfitError::ProjectionOverflow { .. } => "overflow",
        ProfitError::CallLimit { .. } => "limit",
        ProfitError::Checkpoint(_) | ProfitError::State(_) | ProfitError::ShardMismatch { .. } => "state",
        ProfitError::Collective(_) | ProfitError::ShardPlan(_) => "collective",
        _ => "backend",
    };
    core_err(kind, e.to_string())
}

fn json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> PyResult<T> {
    serde_json::from_str(s).map_err(|e| core_err("config", format!("{what}: {e}")))
}

/// A rank's collective that calls back into Python (`torch.distributed`): the callback takes
/// the little-endian bytes of the `f64` partial sums and returns the bytes of their sum over
/// the ranks, the same on every rank.
struct PyCollective {
    rank: usize,
    world: usize,
    callback: Py<PyAny>,
}

impl Collective for PyCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&mut self, values: &mut [f64]) -> profit_core::error::Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let out: PyResult<Vec<u8>> = Python::attach(|py| {
            let r = self.callback.call1(py, (PyBytes::new(py, &bytes),))?;
            r.extract::<Vec<u8>>(py)
        });
        let out = out.map_err(|e| ProfitError::Collective(format!("all-reduce callback: {e}")))?;
        if out.len() != bytes.len() {
            return Err(ProfitError::Collective(format!(
                "all-reduce callback returned {} bytes, expected {}",
                out.len(),
                bytes.len()
            )));
        }
        for (v, b) in values.iter_mut().zip(out.chunks_exact(8)) {
            *v = f64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        Ok(())
    }
}

/// Where the tensors a call hands over live, and how the engine sees them: views of the
/// memory at the addresses Python passes, for the duration of one call.
trait Mem: Sized {
    /// The backend that steps them.
    type B: TensorOps;
    /// A tensor of `shape` over the elements at `addr`.
    fn view(&self, addr: usize, shape: &[usize]) -> PyResult<T<Self>>;
    /// The bytes a view covers (`start == end` when empty).
    fn range(t: &T<Self>) -> (usize, usize);
    /// Order the tensors' owner's work before the engine's (`stream`: the owner's stream).
    fn before(&self, _stream: usize) -> PyResult<()> {
        Ok(())
    }
    /// Order the engine's work before the owner's next work.
    fn after(&self, _stream: usize) -> PyResult<()> {
        Ok(())
    }
}

type T<M> = <<M as Mem>::B as TensorOps>::Tensor;

/// CPU tensors, stepped by profit-core's fused host loops.
struct Host<E>(PhantomData<E>);

impl<E: Element> Mem for Host<E> {
    type B = Torch<E>;
    fn view(&self, addr: usize, shape: &[usize]) -> PyResult<TorchBuf<E>> {
        let mut v = TorchBuf::view(shape);
        v.point(addr).map_err(|e| core_err("input", e))?;
        Ok(v)
    }
    fn range(t: &TorchBuf<E>) -> (usize, usize) {
        t.range()
    }
}

/// CUDA tensors of one device, stepped by profit-cuda's fused kernels on their own memory, on
/// the backend's stream ordered after and before the owner's stream.
struct Device<E> {
    gpu: CudaBackend,
    _elem: PhantomData<E>,
}

impl<E: CudaElement> Mem for Device<E> {
    type B = Cuda<E>;
    fn view(&self, addr: usize, shape: &[usize]) -> PyResult<CudaTensor<E>> {
        // SAFETY: the package hands over `data_ptr()`s of contiguous CUDA tensors of this
        // device, dtype and shape, which it keeps referenced (and the GIL held) for the call.
        unsafe { self.gpu.borrow::<E>(addr as u64, shape) }.map_err(|e| err(e.into()))
    }
    fn range(t: &CudaTensor<E>) -> (usize, usize) {
        let start = t.device_address() as usize;
        (start, start + t.len() * std::mem::size_of::<E>())
    }
    fn before(&self, stream: usize) -> PyResult<()> {
        // SAFETY: the package passes torch's current stream of this device.
        unsafe { self.gpu.wait_for(stream as u64) }.map_err(|e| err(e.into()))
    }
    fn after(&self, stream: usize) -> PyResult<()> {
        // SAFETY: as in `before`.
        unsafe { self.gpu.signal(stream as u64) }.map_err(|e| err(e.into()))
    }
}

/// A call's views: parameters, and gradients where present (`0`: none), checked not to
/// share memory with a parameter.
#[allow(clippy::type_complexity)]
fn views<M: Mem>(
    mem: &M,
    shapes: &[Vec<usize>],
    p_addrs: &[usize],
    g_addrs: &[usize],
) -> PyResult<(Vec<T<M>>, Vec<Option<T<M>>>)> {
    let n = shapes.len();
    if p_addrs.len() != n || (!g_addrs.is_empty() && g_addrs.len() != n) {
        let msg = format!("{} parameters and {} gradients for {n} tensors", p_addrs.len(), g_addrs.len());
        return Err(core_err("input", msg));
    }
    let params = p_addrs.iter().zip(shapes).map(|(&a, s)| mem.view(a, s)).collect::<PyResult<Vec<_>>>()?;
    let grads = g_addrs
        .iter()
        .zip(shapes)
        .map(
            |(&a, s)| {
                if a != 0 || s.iter().product::<usize>() == 0 {
                    mem.view(a, s).map(Some)
                } else {
                    Ok(None)
                }
            },
        )
        .collect::<PyResult<Vec<_>>>()?;
    let pr: Vec<(usize, usize)> = params.iter().map(M::range).collect();
    let gr: Vec<Option<(usize, usize)>> = grads.iter().map(|g| g.as_ref().map(M::range)).collect();
    check_disjoint(&pr, &gr).map_err(|e| core_err("input", e))?;
    Ok((params, grads))
}

/// One element type's optimizer over tensors of one kind of memory.
struct Run<M: Mem> {
    mem: M,
    profit: Profit<M::B>,
    shapes: Vec<Vec<usize>>,
}

/// A group as the package describes it: options (JSON of `GroupOptions`), names, shapes.
type GroupSpec = (String, Vec<String>, Vec<Vec<usize>>);

impl<M: Mem> Run<M> {
    fn new(mem: M, config: ProfitConfig, groups: Vec<GroupSpec>, addrs: &[usize]) -> PyResult<Self> {
        let mut options = vec![];
        let mut shapes = vec![];
        for (opts, names, s) in &groups {
            if names.len() != s.len() {
                return Err(core_err("input", "a group's names and shapes differ in number"));
            }
            options.push(json::<GroupOptions>("group options", opts)?);
            shapes.extend(s.iter().cloned());
        }
        let (params, _) = views(&mem, &shapes, addrs, &[])?;
        let mut built = vec![];
        let mut rest = &params[..];
        for (o, (_, names, _)) in options.into_iter().zip(&groups) {
            let (mine, next) = rest.split_at(names.len().min(rest.len()));
            built.push(ParamGroup::new(names.iter().map(String::as_str).zip(mine)).options(o));
            rest = next;
        }
        let profit = Profit::with_groups(config, built).map_err(err)?;
        Ok(Run { mem, profit, shapes })
    }

    fn step(&mut self, params: &[usize], grads: &[usize], stream: usize) -> PyResult<StepReport> {
        let (mut p, g) = views(&self.mem, &self.shapes, params, grads)?;
        let g: Vec<Option<&T<M>>> = g.iter().map(Option::as_ref).collect();
        let mut p: Vec<&mut T<M>> = p.iter_mut().collect();
        self.mem.before(stream)?;
        let r = self.profit.step_partial(&mut p, &g).map_err(err);
        self.mem.after(stream)?;
        r
    }

    /// Check a call's addresses without stepping.
    fn check(&self, params: &[usize], grads: &[usize]) -> PyResult<()> {
        views(&self.mem, &self.shapes, params, grads).map(|_| ())
    }

    /// Copy state buffer `key` into the `numel` elements at `dst`.
    fn read_buffer(&self, key: &str, dst: usize, stream: usize) -> PyResult<()> {
        let state = self.profit.state().map_err(err)?;
        let b = state
            .buffers
            .iter()
            .find(|b| b.key == key)
            .ok_or_else(|| core_err("state", format!("no state buffer `{key}`")))?;
        let mut view = self.mem.view(dst, &<M::B as TensorOps>::shape(b.tensor))?;
        let mut tmp =
            vec![<<M::B as TensorOps>::Elem as Element>::from_f64(0.0); <M::B as TensorOps>::numel(b.tensor)];
        self.mem.before(stream)?;
        <M::B as TensorOps>::read(b.tensor, &mut tmp).map_err(|e| err(e.into()))?;
        <M::B as TensorOps>::write(&mut view, &tmp).map_err(|e| err(e.into()))?;
        self.mem.after(stream)
    }

    /// Load a state: its meta (JSON) and each buffer's key and address (contiguous tensors of
    /// this element type and memory, checked by the caller). Checked whole before anything
    /// changes.
    fn load(
        &mut self,
        meta: &str,
        keys: Vec<String>,
        addrs: Vec<usize>,
        adopt_config: bool,
        stream: usize,
    ) -> PyResult<()> {
        let meta: StateMeta = json("state", meta)?;
        if keys.len() != addrs.len() {
            return Err(core_err("state", "keys and addresses differ in number"));
        }
        let expected = meta.buffer_keys();
        let mut buffers = vec![];
        for (key, addr) in keys.into_iter().zip(addrs) {
            let found = expected.iter().find(|(k, _, _)| *k == key);
            let &(_, param, kind) =
                found.ok_or_else(|| core_err("state", format!("unexpected state buffer `{key}`")))?;
            let shape =
                &meta.params.get(param).ok_or_else(|| core_err("state", "bad parameter index"))?.shape;
            buffers.push(StateBuffer { param, kind, key, tensor: self.mem.view(addr, shape)? });
        }
        self.mem.before(stream)?;
        let r = self.profit.load_state(&ProfitState { meta, buffers }, adopt_config).map_err(err);
        self.mem.after(stream)?;
        r
    }
}

enum Inner {
    F32(Run<Host<f32>>),
    F64(Run<Host<f64>>),
    Bf16(Run<Host<bf16>>),
    F16(Run<Host<f16>>),
    CudaF32(Run<Device<f32>>),
    CudaF64(Run<Device<f64>>),
    CudaBf16(Run<Device<bf16>>),
    CudaF16(Run<Device<f16>>),
}

macro_rules! with_run {
    ($inner:expr, $r:ident => $body:expr) => {
        match $inner {
            Inner::F32($r) => $body,
            Inner::F64($r) => $body,
            Inner::Bf16($r) => $body,
            Inner::F16($r) => $body,
            Inner::CudaF32($r) => $body,
            Inner::CudaF64($r) => $body,
            Inner::CudaBf16($r) => $body,
            Inner::CudaF16($r) => $body,
        }
    };
}

/// One PROFIT optimizer over torch tensors of one dtype on one device (the CPU or a CUDA device).
#[pyclass(module = "torch_profit._core")]
struct Engine {
    inner: Inner,
}

/// A main call's `(omega, |delta|^2, |g|^2, projected, cos, removed)`.
type MainTuple = (f64, f64, f64, bool, f64, f64);
/// A call's `(call, phase, grad_scale, main)`.
type ReportTuple = (u64, &'static str, f64, Option<MainTuple>);

fn report(r: StepReport) -> ReportTuple {
    let main = r.main.map(|m| (m.omega, m.delta_norm_sq, m.grad_norm_sq, m.projected, m.cosine, m.removed));
    (r.call, r.phase.name(), r.grad_scale, main)
}

#[pymethods]
impl Engine {
    /// `dtype`: `float32`, `float64`, `bfloat16` or `float16`; `config`: JSON of
    /// `ProfitConfig`; `groups`: `(options JSON, names, shapes)` each; `addrs`: the
    /// parameters' `data_ptr()`s, in group order.
    #[new]
    fn new(
        dtype: &str,
        config: &str,
        groups: Vec<GroupSpec>,
        addrs: Vec<usize>,
        device: i64,
    ) -> PyResult<Self> {
        let config: ProfitConfig = json("config", config)?;
        let inner = if device < 0 {
            match dtype {
                "float32" => Inner::F32(Run::new(Host(PhantomData), config, groups, &addrs)?),
                "float64" => Inner::F64(Run::new(Host(PhantomData), config, groups, &addrs)?),
                "bfloat16" => Inner::Bf16(Run::new(Host(PhantomData), config, groups, &addrs)?),
                "float16" => Inner::F16(Run::new(Host(PhantomData), config, groups, &addrs)?),
                other => return Err(core_err("input", format!("unsupported dtype {other}"))),
            }
        } else {
            let gpu = CudaBackend::new(device as usize).map_err(|e| core_err("device", e.to_string()))?;
            match dtype {
                "float32" => {
                    Inner::CudaF32(Run::new(Device { gpu, _elem: PhantomData }, config, groups, &addrs)?)
                }
                "float64" => {
                    Inner::CudaF64(Run::new(Device { gpu, _elem: PhantomData }, config, groups, &addrs)?)
                }
                "bfloat16" => {
                    Inner::CudaBf16(Run::new(Device { gpu, _elem: PhantomData }, config, groups, &addrs)?)
                }
                "float16" => {
                    Inner::CudaF16(Run::new(Device { gpu, _elem: PhantomData }, config, groups, &addrs)?)
                }
                other => return Err(core_err("input", format!("unsupported dtype {other}"))),
            }
        };
        Ok(Engine { inner })
    }

    /// One call: the parameters' and gradients' `data_ptr()`s (`0`: no gradient) and, on CUDA,
    /// the owner's current stream (`cuda_stream`). Returns `(call, phase, grad_scale, main)`,
    /// `main` = `(omega, |delta|^2, |g|^2, projected, cos, removed)` at main calls.
    #[pyo3(signature = (params, grads, stream = 0))]
    fn step(&mut self, params: Vec<usize>, grads: Vec<usize>, stream: usize) -> PyResult<ReportTuple> {
        with_run!(&mut self.inner, r => r.step(&params, &grads, stream).map(report))
    }

    /// Check a call's addresses (alignment; no parameter sharing memory with another tensor
    /// of the call) without stepping: what a rank checks before the ranks agree to step.
    fn check(&self, params: Vec<usize>, grads: Vec<usize>) -> PyResult<()> {
        with_run!(&self.inner, r => r.check(&params, &grads))
    }

    /// Counted calls, skipped calls, main calls that projected, main calls that stalled,
    /// reference steps, main steps.
    fn counters(&self) -> (u64, u64, u64, u64, u64, u64) {
        with_run!(&self.inner, r => {
            let p = &r.profit;
            (p.calls(), p.skipped(), p.projected_calls(), p.stalled_calls(), p.reference_steps(), p.main_steps())
        })
    }

    /// The phase the next call will have.
    fn next_phase(&self) -> &'static str {
        with_run!(&self.inner, r => r.profit.next_phase().name())
    }

    /// Per tensor at the last main call: `(omega, |delta|^2, |g|^2, projected)`.
    fn tensor_reports(&self) -> Vec<(f64, f64, f64, bool)> {
        with_run!(&self.inner, r => r.profit.tensor_reports().iter().map(|t| (t.omega, t.delta_norm_sq, t.grad_norm_sq, t.projected)).collect())
    }

    /// Each group's `(lr, ref_lr, weight_decay)`.
    fn group_rates(&self) -> Vec<(f64, f64, f64)> {
        with_run!(&self.inner, r => r.profit.groups().iter().map(|g| (g.lr, g.ref_lr, g.weight_decay)).collect())
    }

    /// Set group `g`'s main rate (its reference rate follows at the group's ratio).
    fn set_group_lr(&mut self, g: usize, lr: f64) -> PyResult<()> {
        with_run!(&mut self.inner, r => r.profit.set_group_lr(g, lr).map_err(err))
    }

    /// Set group `g`'s reference rate.
    fn set_group_ref_lr(&mut self, g: usize, lr: f64) -> PyResult<()> {
        with_run!(&mut self.inner, r => r.profit.set_group_ref_lr(g, lr).map_err(err))
    }

    /// Set group `g`'s weight decay.
    fn set_group_weight_decay(&mut self, g: usize, wd: f64) -> PyResult<()> {
        with_run!(&mut self.inner, r => r.profit.set_group_weight_decay(g, wd).map_err(err))
    }

    /// Replace the inner optimizers' other hyperparameters (JSON of `InnerConfig` each).
    fn set_inner(&mut self, reference: &str, main: &str) -> PyResult<()> {
        let (a, b): (InnerConfig, InnerConfig) = (json("reference", reference)?, json("main", main)?);
        with_run!(&mut self.inner, r => r.profit.set_inner_hyperparameters(a, b).map_err(err))
    }

    /// The state but its buffers, as JSON.
    fn state_meta(&self) -> PyResult<String> {
        let meta = with_run!(&self.inner, r => r.profit.meta());
        serde_json::to_string(&meta).map_err(|e| core_err("state", e.to_string()))
    }

    /// The state buffers: `(key, parameter index)` each, in key order.
    fn buffer_keys(&self) -> Vec<(String, usize)> {
        with_run!(&self.inner, r => r.profit.meta().buffer_keys().into_iter().map(|(k, i, _)| (k, i)).collect())
    }

    /// Copy state buffer `key` into the contiguous tensor at `dst` (same dtype, numel and
    /// device; `stream` as in `step`).
    #[pyo3(signature = (key, dst, stream = 0))]
    fn read_buffer(&self, key: &str, dst: usize, stream: usize) -> PyResult<()> {
        with_run!(&self.inner, r => r.read_buffer(key, dst, stream))
    }

    /// Load a state (meta JSON, buffer keys and addresses), its configuration too with
    /// `adopt_config` (the state layout must agree; `stream` as in `step`); nothing changes
    /// on error.
    #[pyo3(signature = (meta, keys, addrs, adopt_config, stream = 0))]
    fn load_state(
        &mut self,
        meta: &str,
        keys: Vec<String>,
        addrs: Vec<usize>,
        adopt_config: bool,
        stream: usize,
    ) -> PyResult<()> {
        with_run!(&mut self.inner, r => r.load(meta, keys, addrs, adopt_config, stream))
    }

    /// Make this engine rank `rank` of `world` ranks whose sums `callback` all-reduces.
    fn set_collective(&mut self, rank: usize, world: usize, callback: Py<PyAny>) -> PyResult<()> {
        let c = PyCollective { rank, world, callback };
        with_run!(&mut self.inner, r => r.profit.set_collective(c).map_err(err))
    }

    /// Bytes of optimizer state held.
    fn state_bytes(&self) -> usize {
        with_run!(&self.inner, r => r.profit.state_bytes())
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add("CoreError", m.py().get_type::<CoreError>())?;
    Ok(())
}
