//! `torch_profit._core`: the engine behind `torch_profit.PROFIT`. Private: the Python package
//! checks every tensor (device, dtype, layout, shape) and hands this module the addresses of
//! contiguous CPU tensors; the engine steps them in place with profit-core's fused host loops,
//! holding the GIL for the whole call (so no Python code can free or move a tensor meanwhile).
//!
//! Errors are raised as `CoreError(kind, message)`; the Python package maps `kind` to its
//! exception classes.

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

/// Point the views at a call's tensors (`grads` empty, or `0` for a tensor without a gradient)
/// and check that no parameter shares memory with another tensor of the call. Returns which
/// tensors have a gradient.
fn point<E: Element>(
    params: &mut [TorchBuf<E>],
    grads: &mut [TorchBuf<E>],
    p_addrs: &[usize],
    g_addrs: &[usize],
) -> PyResult<Vec<bool>> {
    let n = params.len();
    if p_addrs.len() != n || (!g_addrs.is_empty() && g_addrs.len() != n) {
        let msg = format!("{} parameters and {} gradients for {n} tensors", p_addrs.len(), g_addrs.len());
        return Err(core_err("input", msg));
    }
    for (v, &a) in params.iter_mut().zip(p_addrs) {
        v.point(a).map_err(|e| core_err("input", e))?;
    }
    let mut present = vec![false; n];
    for ((v, &a), p) in grads.iter_mut().zip(g_addrs).zip(&mut present) {
        if a != 0 || v.numel() == 0 {
            v.point(a).map_err(|e| core_err("input", e))?;
            *p = true;
        }
    }
    let g: Vec<Option<&TorchBuf<E>>> = grads.iter().zip(&present).map(|(g, &p)| p.then_some(g)).collect();
    check_disjoint(params, &g).map_err(|e| core_err("input", e))?;
    Ok(present)
}

/// One element type's optimizer with its parameter and gradient views.
struct Run<E: Element> {
    profit: Profit<Torch<E>>,
    params: Vec<TorchBuf<E>>,
    grads: Vec<TorchBuf<E>>,
}

/// A group as the package describes it: options (JSON of `GroupOptions`), names, shapes.
type GroupSpec = (String, Vec<String>, Vec<Vec<usize>>);

impl<E: Element> Run<E> {
    fn new(config: ProfitConfig, groups: Vec<GroupSpec>, addrs: &[usize]) -> PyResult<Self> {
        let mut params = vec![];
        let mut options = vec![];
        for (opts, names, shapes) in &groups {
            if names.len() != shapes.len() {
                return Err(core_err("input", "a group's names and shapes differ in number"));
            }
            options.push(json::<GroupOptions>("group options", opts)?);
            params.extend(shapes.iter().map(|s| TorchBuf::view(s)));
        }
        let mut grads: Vec<TorchBuf<E>> =
            params.iter().map(|p| TorchBuf::view(&Torch::<E>::shape(p))).collect();
        point(&mut params, &mut grads, addrs, &[])?;
        let mut built = vec![];
        let mut rest = &params[..];
        for (o, (_, names, _)) in options.into_iter().zip(&groups) {
            let (mine, next) = rest.split_at(names.len().min(rest.len()));
            built.push(ParamGroup::new(names.iter().map(String::as_str).zip(mine)).options(o));
            rest = next;
        }
        let profit = Profit::with_groups(config, built).map_err(err)?;
        Ok(Run { profit, params, grads })
    }

    fn step(&mut self, params: &[usize], grads: &[usize]) -> PyResult<StepReport> {
        let present = point(&mut self.params, &mut self.grads, params, grads)?;
        let g: Vec<Option<&TorchBuf<E>>> =
            self.grads.iter().zip(&present).map(|(g, &p)| p.then_some(g)).collect();
        let mut p: Vec<&mut TorchBuf<E>> = self.params.iter_mut().collect();
        self.profit.step_partial(&mut p, &g).map_err(err)
    }

    /// Copy state buffer `key` into the `numel` elements at `dst`.
    fn read_buffer(&self, key: &str, dst: usize) -> PyResult<()> {
        let state = self.profit.state().map_err(err)?;
        let b = state
            .buffers
            .iter()
            .find(|b| b.key == key)
            .ok_or_else(|| core_err("state", format!("no state buffer `{key}`")))?;
        let mut view = TorchBuf::<E>::view(&Torch::<E>::shape(b.tensor));
        view.point(dst).map_err(|e| core_err("input", e))?;
        let mut tmp = vec![E::from_f64(0.0); b.tensor.numel()];
        Torch::<E>::read(b.tensor, &mut tmp).map_err(|e| err(e.into()))?;
        Torch::<E>::write(&mut view, &tmp).map_err(|e| err(e.into()))
    }

    /// Load a state: its meta (JSON) and each buffer's key and address (contiguous tensors of
    /// this element type, checked by the caller). Checked whole before anything changes.
    fn load(&mut self, meta: &str, keys: Vec<String>, addrs: Vec<usize>, adopt_config: bool) -> PyResult<()> {
        let meta: StateMeta = json("state", meta)?;
        if keys.len() != addrs.len() {
            return Err(core_err("state", "keys and addresses differ in number"));
        }
        let mut buffers = vec![];
        for (key, addr) in keys.into_iter().zip(addrs) {
            let expected = meta.buffer_keys().into_iter().find(|(k, _, _)| *k == key);
            let (_, param, kind) =
                expected.ok_or_else(|| core_err("state", format!("unexpected state buffer `{key}`")))?;
            let shape =
                &meta.params.get(param).ok_or_else(|| core_err("state", "bad parameter index"))?.shape;
            let mut view = TorchBuf::<E>::view(shape);
            view.point(addr).map_err(|e| core_err("input", e))?;
            buffers.push(StateBuffer { param, kind, key, tensor: view });
        }
        self.profit.load_state(&ProfitState { meta, buffers }, adopt_config).map_err(err)
    }
}

enum Inner {
    F32(Run<f32>),
    F64(Run<f64>),
    Bf16(Run<bf16>),
    F16(Run<f16>),
}

macro_rules! with_run {
    ($inner:expr, $r:ident => $body:expr) => {
        match $inner {
            Inner::F32($r) => $body,
            Inner::F64($r) => $body,
            Inner::Bf16($r) => $body,
            Inner::F16($r) => $body,
        }
    };
}

/// One PROFIT optimizer over torch CPU tensors of one dtype.
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
    fn new(dtype: &str, config: &str, groups: Vec<GroupSpec>, addrs: Vec<usize>) -> PyResult<Self> {
        let config: ProfitConfig = json("config", config)?;
        let inner = match dtype {
            "float32" => Inner::F32(Run::new(config, groups, &addrs)?),
            "float64" => Inner::F64(Run::new(config, groups, &addrs)?),
            "bfloat16" => Inner::Bf16(Run::new(config, groups, &addrs)?),
            "float16" => Inner::F16(Run::new(config, groups, &addrs)?),
            other => return Err(core_err("input", format!("unsupported dtype {other}"))),
        };
        Ok(Engine { inner })
    }

    /// One call: the parameters' and gradients' `data_ptr()`s (`0`: no gradient). Returns
    /// `(call, phase, grad_scale, main)`, `main` = `(omega, |delta|^2, |g|^2, projected, cos,
    /// removed)` at main calls.
    fn step(&mut self, params: Vec<usize>, grads: Vec<usize>) -> PyResult<ReportTuple> {
        with_run!(&mut self.inner, r => r.step(&params, &grads).map(report))
    }

    /// Check a call's addresses (alignment; no parameter sharing memory with another tensor
    /// of the call) without stepping: what a rank checks before the ranks agree to step.
    fn check(&mut self, params: Vec<usize>, grads: Vec<usize>) -> PyResult<()> {
        with_run!(&mut self.inner, r => point(&mut r.params, &mut r.grads, &params, &grads).map(|_| ()))
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

    /// Copy state buffer `key` into the contiguous tensor at `dst` (same dtype and numel).
    fn read_buffer(&self, key: &str, dst: usize) -> PyResult<()> {
        with_run!(&self.inner, r => r.read_buffer(key, dst))
    }

    /// Load a state (meta JSON, buffer keys and addresses), its configuration too with
    /// `adopt_config` (the state layout must agree); nothing changes on error.
    fn load_state(
        &mut self,
        meta: &str,
        keys: Vec<String>,
        addrs: Vec<usize>,
        adopt_config: bool,
    ) -> PyResult<()> {
        with_run!(&mut self.inner, r => r.load(meta, keys, addrs, adopt_config))
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
