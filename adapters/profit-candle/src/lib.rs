//! # profit-candle
//!
//! PROFIT for [candle](https://github.com/huggingface/candle): [`CandleProfit`] is a
//! [`candle_nn::Optimizer`] over [`Var`]s, so a candle user swaps `AdamW` for it and keeps the
//! training loop. Every inner optimizer of `profit-core` (SGD, Adam, AdamW, RMSprop with
//! PyTorch's formulas) is available as reference and main optimizer; the configuration is a
//! [`ProfitConfig`].
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{linear, Module, Optimizer, VarBuilder, VarMap};
//! use profit_candle::CandleProfit;
//! use profit_core::{Adam, ProfitConfig, Sgd};
//!
//! let dev = Device::Cpu;
//! let varmap = VarMap::new();
//! let model = linear(2, 1, VarBuilder::from_varmap(&varmap, DType::F32, &dev).pp("fc"))?;
//! let config = ProfitConfig::new(Sgd { lr: 1e-5, ..Default::default() }, Adam { lr: 1e-2, ..Default::default() });
//! let mut opt = CandleProfit::from_varmap(&varmap, config)?;
//! assert_eq!(opt.names(), ["fc.bias", "fc.weight"]);
//! let x = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev)?;
//! for _ in 0..4 {
//!     let loss = model.forward(&x)?.sqr()?.mean_all()?;
//!     opt.backward_step(&loss)?; // candle_nn::Optimizer
//! }
//! assert_eq!(opt.calls(), 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## How the weights are reached: which path runs where
//!
//! | vars on | default ([`Access::Auto`]) | can be chosen |
//! |---|---|---|
//! | the CPU | [`Access::InPlace`] | [`Access::TensorOps`], [`Access::Copy`] |
//! | CUDA, Metal (candle built with those features) | [`Access::TensorOps`] | [`Access::Copy`] |
//!
//! - **In place** ([`Access::InPlace`]; f32, f64, bf16 and f16 vars on the CPU): the
//!   parameters and gradients are the vars' and the gradient store's own candle storage, read
//!   and written where they are, with no copy: the [`Candle`] backend locks them (see
//!   [`backend`]) and runs profit-core's fused multi-threaded host loops on them. The optimizer
//!   state (anchor, delta, moments) is host memory. The fastest path.
//! - **Tensor ops** ([`Access::TensorOps`]): the [`CandleOps`] backend (see [`ops`]) writes
//!   every pass as candle tensor ops on the vars' device; the optimizer state is candle tensors
//!   on that device too, and nothing leaves it but 3 reduction scalars per tensor at the calls
//!   that reduce (read back in one transfer). Slower than fused kernels (each operation is its
//!   own kernel and temporary tensor: about as slow as candle's own `AdamW`, measured on the
//!   CPU in `BENCHMARKS.md`), but on the device. The same arithmetic as the host loops: on the
//!   CPU bf16, f16 and f32 runs matched the in-place path bitwise in this crate's tests, and f64
//!   runs within 4e-12 (the reductions are summed in another order). It has been run on the
//!   CPU only (forced, as the tests do); on CUDA and Metal it is untested here, and candle's
//!   kernels there may contract or reorder floating-point operations; reductions run in f64,
//!   on Metal (no f64) in f32.
//! - **Copying** ([`Access::Copy`], any device): the parameters and gradients are copied into
//!   host buffers, stepped there with the host loops, and written back with [`Var::set`].
//!
//! Every path writes the same checkpoint format, and a run saved on one path resumes on
//! another (the file's header names the backend, `candle` or `candle-ops`). f32,
//! f64, bf16 and f16 vars are supported (16-bit: math in f32, one rounding per stored value,
//! as profit-core does everywhere); other float dtypes are refused with
//! [`CandleProfitError::UnsupportedDtype`]; integer vars are left out, as candle's own
//! optimizers do.
//!
//! ## Errors
//!
//! [`CandleProfit::try_step`] returns PROFIT's [`StepReport`] or a typed [`CandleProfitError`];
//! on error nothing has changed (a var without gradient, a gradient of another shape, dtype or
//! device, a non-finite gradient under the default policy), on every path. [`Optimizer::step`]
//! returns the same errors wrapped in a `candle_core::Error`. (A device failure in the middle of
//! a tensor-ops step, such as running out of device memory, can leave the vars before it
//! stepped: that is not bad input, and it is reported as [`ProfitError::Backend`].)

#![warn(missing_docs, missing_debug_implementations)]

pub mod backend;
pub mod ops;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarMap};
use profit_core::report::TensorReport;
use profit_core::{LoadOptions, Phase, Profit, ProfitConfig, ProfitError, SaveOptions, StepReport};

use backend::storage_key;
pub use backend::{Candle, CandleBuf, CandleElement};
pub use ops::CandleOps;

/// Why a step (or building the optimizer) failed. In every case nothing has changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CandleProfitError {
    /// A var has no gradient in the [`GradStore`].
    #[error("var `{name}` has no gradient")]
    MissingGradient {
        /// The var's name.
        name: String,
    },
    /// A gradient does not fit its var (shape, dtype or device).
    #[error("gradient of `{name}`: {reason}")]
    GradientMismatch {
        /// The var's name.
        name: String,
        /// What does not fit.
        reason: String,
    },
    /// A float var of a dtype this adapter does not map (f8, ...).
    #[error("var `{name}` is {dtype:?}: profit-candle runs on f32, f64, bf16 and f16 vars")]
    UnsupportedDtype {
        /// The var's name.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// The vars do not all have the same dtype.
    #[error("vars of several dtypes ({first:?} and {other:?} for `{name}`): build one optimizer per dtype")]
    MixedDtypes {
        /// The first var's dtype.
        first: DType,
        /// Another dtype.
        other: DType,
        /// The var that has it.
        name: String,
    },
    /// [`Access::InPlace`] asked for vars that are not on the CPU.
    #[error("var `{name}` is on {device}: the in-place path runs on the CPU")]
    UnsupportedDevice {
        /// The var's name.
        name: String,
        /// Its device.
        device: String,
    },
    /// Two vars share one storage (the same var registered twice).
    #[error("vars `{0}` and `{1}` share one storage")]
    SharedStorage(String, String),
    /// No float var to optimize.
    #[error("no f32 or f64 var to optimize")]
    NoVars,
    /// candle failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// PROFIT refused the step (or the configuration, or a checkpoint).
    #[error(transparent)]
    Profit(#[from] ProfitError),
}

/// How the optimizer reaches the weights (see the [crate docs](crate)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Access {
    /// [`InPlace`](Access::InPlace) when every var is on the CPU, else
    /// [`TensorOps`](Access::TensorOps).
    #[default]
    Auto,
    /// Zero-copy on the CPU: profit-core's fused host loops on the vars' own storage. Vars on
    /// another device are refused ([`CandleProfitError::UnsupportedDevice`]).
    InPlace,
    /// Candle tensor ops on the vars' device ([`CandleOps`]): nothing leaves the device but
    /// the reductions' scalars. The default off the CPU; choose it on the CPU to run (and
    /// test) that path there.
    TensorOps,
    /// Copy into host buffers, step there with the fused host loops, and write back with
    /// [`Var::set`] (any device).
    Copy,
}

struct Core<E: CandleElement> {
    profit: Profit<Candle<E>>,
    /// The parameters as the backend sees them: the vars' tensors (in place) or host mirrors.
    params: Vec<CandleBuf<E>>,
    /// Host mirrors of the gradients (copying path only).
    grads: Vec<CandleBuf<E>>,
    copy: bool,
}

/// The tensor-ops path: the vars' own tensors stepped by [`CandleOps`] on their device.
struct OpsCore<E: CandleElement> {
    profit: Profit<CandleOps<E>>,
    /// The vars' tensors (sharing their storage: written in place).
    params: Vec<Tensor>,
}

enum Engine {
    F32(Core<f32>),
    F64(Core<f64>),
    Bf16(Core<half::bf16>),
    F16(Core<half::f16>),
    OpsF32(OpsCore<f32>),
    OpsF64(OpsCore<f64>),
    OpsBf16(OpsCore<half::bf16>),
    OpsF16(OpsCore<half::f16>),
}

macro_rules! on_core {
    ($engine:expr, $c:ident => $body:expr) => {
        match $engine {
            Engine::F32($c) => $body,
            Engine::F64($c) => $body,
            Engine::Bf16($c) => $body,
            Engine::F16($c) => $body,
            Engine::OpsF32($c) => $body,
            Engine::OpsF64($c) => $body,
            Engine::OpsBf16($c) => $body,
            Engine::OpsF16($c) => $body,
        }
    };
}

/// Every var's gradient from `store`, checked against the var (present, shape, dtype, device)
/// before anything changes.
fn find_grads<'a, E: CandleElement>(
    vars: &[(String, Var)],
    store: &'a GradStore,
) -> Result<Vec<&'a Tensor>, CandleProfitError> {
    let mut found = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let g = store.get(var).ok_or_else(|| CandleProfitError::MissingGradient { name: name.clone() })?;
        let bad = |reason: String| CandleProfitError::GradientMismatch { name: name.clone(), reason };
        if g.dims() != var.dims() {
            return Err(bad(format!("shape {:?}, the var's is {:?}", g.dims(), var.dims())));
        }
        if g.dtype() != <E as candle_core::WithDType>::DTYPE {
            return Err(bad(format!(
                "dtype {:?}, the var's is {:?}",
                g.dtype(),
                <E as candle_core::WithDType>::DTYPE
            )));
        }
        if !g.device().same_device(var.device()) {
            return Err(bad(format!(
                "on {:?}, the var on {:?}",
                g.device().location(),
                var.device().location()
            )));
        }
        found.push(g);
    }
    Ok(found)
}

impl<E: CandleElement> OpsCore<E> {
    fn new(vars: &[(String, Var)], config: ProfitConfig) -> Result<Self, CandleProfitError> {
        let params: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().clone()).collect();
        let group = profit_core::ParamGroup::new(vars.iter().map(|(n, _)| n.as_str()).zip(&params));
        let profit = Profit::<CandleOps<E>>::with_groups(config, vec![group])?;
        Ok(OpsCore { profit, params })
    }

    fn step(&mut self, vars: &[(String, Var)], store: &GradStore) -> Result<StepReport, CandleProfitError> {
        let found = find_grads::<E>(vars, store)?;
        let mut p: Vec<&mut Tensor> = self.params.iter_mut().collect();
        Ok(self.profit.step(&mut p, &found)?)
    }

    fn with_current<R>(
        &self,
        _vars: &[(String, Var)],
        f: impl FnOnce(&Profit<CandleOps<E>>, &[&Tensor]) -> Result<R, CandleProfitError>,
    ) -> Result<R, CandleProfitError> {
        f(&self.profit, &self.params.iter().collect::<Vec<_>>())
    }

    fn load(
        &mut self,
        _vars: &[(String, Var)],
        bytes: &[u8],
        opts: LoadOptions,
    ) -> Result<(), CandleProfitError> {
        let mut p: Vec<&mut Tensor> = self.params.iter_mut().collect();
        Ok(self.profit.load_checkpoint(bytes, &mut p, opts)?)
    }
}

/// A host mirror of a tensor's values (any device).
fn host_copy<E: CandleElement>(t: &Tensor) -> Result<CandleBuf<E>, CandleProfitError> {
    let data = t.flatten_all()?.to_vec1::<E>()?;
    Ok(CandleBuf::host(t.dims(), data).expect("to_vec1 returns every element"))
}

impl<E: CandleElement> Core<E> {
    fn new(vars: &[(String, Var)], config: ProfitConfig, copy: bool) -> Result<Self, CandleProfitError> {
        let mirrors: Vec<CandleBuf<E>> =
            vars.iter().map(|(_, v)| host_copy(v.as_tensor())).collect::<Result<_, _>>()?;
        let group = profit_core::ParamGroup::new(vars.iter().map(|(n, _)| n.as_str()).zip(&mirrors));
        let profit = Profit::<Candle<E>>::with_groups(config, vec![group])?;
        let (params, grads) = if copy {
            let grads = mirrors
                .iter()
                .map(<Candle<E> as profit_core::backend::TensorOps>::zeros_like)
                .collect::<Result<_, _>>()
                .map_err(ProfitError::from)?;
            (mirrors, grads)
        } else {
            (vars.iter().map(|(_, v)| CandleBuf::tensor(v.as_tensor().clone())).collect(), vec![])
        };
        Ok(Core { profit, params, grads, copy })
    }

    fn step(&mut self, vars: &[(String, Var)], store: &GradStore) -> Result<StepReport, CandleProfitError> {
        let found = find_grads::<E>(vars, store)?;
        if self.copy {
            for ((i, (_, var)), g) in vars.iter().enumerate().zip(&found) {
                copy_into(var.as_tensor(), &mut self.params[i])?;
                copy_into(g, &mut self.grads[i])?;
            }
            let mut p: Vec<&mut CandleBuf<E>> = self.params.iter_mut().collect();
            let g: Vec<&CandleBuf<E>> = self.grads.iter().collect();
            let report = self.profit.step(&mut p, &g)?;
            if report.phase != Phase::Skipped {
                for ((_, var), m) in vars.iter().zip(&self.params) {
                    let data = m.as_host().expect("host mirror");
                    var.set(&Tensor::from_slice(data, var.dims(), var.device())?)?;
                }
            }
            Ok(report)
        } else {
            // Gradients in place; a non-contiguous one is made contiguous (a copy).
            let grads: Vec<CandleBuf<E>> = found
                .into_iter()
                .map(|g| Ok(CandleBuf::tensor(if g.is_contiguous() { g.clone() } else { g.contiguous()? })))
                .collect::<Result<_, candle_core::Error>>()?;
            let mut p: Vec<&mut CandleBuf<E>> = self.params.iter_mut().collect();
            let g: Vec<&CandleBuf<E>> = grads.iter().collect();
            Ok(self.profit.step(&mut p, &g)?)
        }
    }
}

impl<E: CandleElement> Core<E> {
    fn access(&self) -> Access {
        if self.copy {
            Access::Copy
        } else {
            Access::InPlace
        }
    }

    /// Run `f` over the vars' current values: the vars themselves in place, fresh host
    /// copies on the copying path (its mirrors are refreshed only when a step runs).
    fn with_current<R>(
        &self,
        vars: &[(String, Var)],
        f: impl FnOnce(&Profit<Candle<E>>, &[&CandleBuf<E>]) -> Result<R, CandleProfitError>,
    ) -> Result<R, CandleProfitError> {
        if self.copy {
            let fresh: Vec<CandleBuf<E>> =
                vars.iter().map(|(_, v)| host_copy(v.as_tensor())).collect::<Result<_, _>>()?;
            f(&self.profit, &fresh.iter().collect::<Vec<_>>())
        } else {
            f(&self.profit, &self.params.iter().collect::<Vec<_>>())
        }
    }

    fn load(
        &mut self,
        vars: &[(String, Var)],
        bytes: &[u8],
        opts: LoadOptions,
    ) -> Result<(), CandleProfitError> {
        if !self.copy {
            let mut p: Vec<&mut CandleBuf<E>> = self.params.iter_mut().collect();
            return Ok(self.profit.load_checkpoint(bytes, &mut p, opts)?);
        }
        let mut fresh: Vec<CandleBuf<E>> =
            vars.iter().map(|(_, v)| host_copy(v.as_tensor())).collect::<Result<_, _>>()?;
        let mut p: Vec<&mut CandleBuf<E>> = fresh.iter_mut().collect();
        self.profit.load_checkpoint(bytes, &mut p, opts)?;
        for ((_, var), m) in vars.iter().zip(&fresh) {
            let data = m.as_host().expect("host mirror");
            var.set(&Tensor::from_slice(data, var.dims(), var.device())?)?;
        }
        self.params = fresh;
        Ok(())
    }
}

/// Copy a tensor's values into a host mirror of the same size (any device).
fn copy_into<E: CandleElement>(t: &Tensor, dst: &mut CandleBuf<E>) -> Result<(), CandleProfitError> {
    let d = dst.as_host_mut().expect("host mirror");
    if t.device().is_cpu() && t.is_contiguous() {
        let (g, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((a, b))) = (&*g, layout.contiguous_offsets()) {
            if let Some(s) = E::cpu_slice(cpu).and_then(|s| s.get(a..b)) {
                d.copy_from_slice(s);
                return Ok(());
            }
        }
    }
    let v = t.flatten_all()?.to_vec1::<E>()?;
    d.copy_from_slice(&v);
    Ok(())
}

/// PROFIT as a candle optimizer. See the [crate docs](crate).
pub struct CandleProfit {
    vars: Vec<(String, Var)>,
    names: Vec<String>,
    engine: Engine,
    last: Option<StepReport>,
}

impl std::fmt::Debug for CandleProfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleProfit")
            .field("names", &self.names)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl CandleProfit {
    /// Build over named vars (names key checkpoints and errors; they must be unique) with the
    /// given access ([`Access::Auto`]: in place on the CPU, tensor ops elsewhere; see the
    /// [crate docs](crate)). Integer vars are left out; vars of mixed dtypes are refused, and
    /// [`Access::InPlace`] for vars off the CPU. All optimizer state is allocated here (on the
    /// tensor-ops path, on the vars' device).
    pub fn with_names(
        vars: Vec<(String, Var)>,
        config: ProfitConfig,
        access: Access,
    ) -> Result<Self, CandleProfitError> {
        if config.main.is_external() {
            // Its main calls would only restore: training would silently do nothing.
            return Err(ProfitError::InvalidConfig(
                "an external main optimizer is not supported by CandleProfit (its main step would never run)",
            )
            .into());
        }
        let mut kept: Vec<(String, Var)> = vec![];
        let mut dtype = None;
        for (name, var) in vars {
            match var.dtype() {
                DType::F32 | DType::F64 | DType::BF16 | DType::F16 => {}
                d if d.is_float() => return Err(CandleProfitError::UnsupportedDtype { name, dtype: d }),
                _ => continue,
            }
            match dtype {
                None => dtype = Some(var.dtype()),
                Some(first) if first != var.dtype() => {
                    return Err(CandleProfitError::MixedDtypes { first, other: var.dtype(), name })
                }
                Some(_) => {}
            }
            kept.push((name, var));
        }
        let Some(dtype) = dtype else { return Err(CandleProfitError::NoVars) };
        let mut keys: Vec<(usize, &str)> = kept.iter().map(|(n, v)| (storage_key(v), n.as_str())).collect();
        keys.sort_unstable();
        if let Some(w) = keys.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(CandleProfitError::SharedStorage(w[0].1.to_string(), w[1].1.to_string()));
        }
        let off_cpu = kept.iter().find(|(_, v)| !v.device().is_cpu());
        let access = match (access, off_cpu) {
            (Access::Auto, None) => Access::InPlace,
            (Access::Auto, Some(_)) => Access::TensorOps,
            (Access::InPlace, Some((name, v))) => {
                return Err(CandleProfitError::UnsupportedDevice {
                    name: name.clone(),
                    device: format!("{:?}", v.device().location()),
                })
            }
            (a, _) => a,
        };
        let engine = if access == Access::TensorOps {
            match dtype {
                DType::F32 => Engine::OpsF32(OpsCore::new(&kept, config)?),
                DType::BF16 => Engine::OpsBf16(OpsCore::new(&kept, config)?),
                DType::F16 => Engine::OpsF16(OpsCore::new(&kept, config)?),
                _ => Engine::OpsF64(OpsCore::new(&kept, config)?),
            }
        } else {
            let copy = access == Access::Copy;
            match dtype {
                DType::F32 => Engine::F32(Core::new(&kept, config, copy)?),
                DType::BF16 => Engine::Bf16(Core::new(&kept, config, copy)?),
                DType::F16 => Engine::F16(Core::new(&kept, config, copy)?),
                _ => Engine::F64(Core::new(&kept, config, copy)?),
            }
        };
        let names = kept.iter().map(|(n, _)| n.clone()).collect();
        Ok(CandleProfit { vars: kept, names, engine, last: None })
    }

    /// Build over every var of a [`VarMap`], named by their paths (in sorted order).
    pub fn from_varmap(varmap: &VarMap, config: ProfitConfig) -> Result<Self, CandleProfitError> {
        Self::from_varmap_with(varmap, config, Access::Auto)
    }

    /// [`from_varmap`](Self::from_varmap) with a chosen [`Access`].
    pub fn from_varmap_with(
        varmap: &VarMap,
        config: ProfitConfig,
        access: Access,
    ) -> Result<Self, CandleProfitError> {
        let mut vars: Vec<(String, Var)> = {
            let data = varmap.data().lock().map_err(|_| candle_core::Error::msg("VarMap lock poisoned"))?;
            data.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
        };
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Self::with_names(vars, config, access)
    }

    /// One PROFIT call: `grads` must hold the gradient of the loss at the vars' current values
    /// (as `loss.backward()` returns it). On error nothing has changed.
    pub fn try_step(&mut self, grads: &GradStore) -> Result<StepReport, CandleProfitError> {
        let vars = &self.vars;
        let report = on_core!(&mut self.engine, c => c.step(vars, grads))?;
        self.last = Some(report);
        Ok(report)
    }

    /// The report of the last successful call.
    pub fn last_report(&self) -> Option<&StepReport> {
        self.last.as_ref()
    }

    /// Names of the registered vars, in registration order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The registered vars, in registration order.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.vars.iter().map(|(_, v)| v)
    }

    /// The device of the first var.
    pub fn device(&self) -> &Device {
        self.vars[0].1.device()
    }

    /// The vars' dtype (`F32`, `F64`, `BF16` or `F16`).
    pub fn dtype(&self) -> DType {
        match self.engine {
            Engine::F32(_) | Engine::OpsF32(_) => DType::F32,
            Engine::F64(_) | Engine::OpsF64(_) => DType::F64,
            Engine::Bf16(_) | Engine::OpsBf16(_) => DType::BF16,
            Engine::F16(_) | Engine::OpsF16(_) => DType::F16,
        }
    }

    /// Whether steps copy the weights (the copying path) rather than work in place.
    pub fn copies(&self) -> bool {
        self.access() == Access::Copy
    }

    /// The path the steps run: [`Access::InPlace`], [`Access::TensorOps`] or
    /// [`Access::Copy`] ([`Access::Auto`] resolved when the optimizer was built).
    pub fn access(&self) -> Access {
        match &self.engine {
            Engine::F32(c) => c.access(),
            Engine::F64(c) => c.access(),
            Engine::Bf16(c) => c.access(),
            Engine::F16(c) => c.access(),
            _ => Access::TensorOps,
        }
    }

    /// Counted calls so far.
    pub fn calls(&self) -> u64 {
        on_core!(&self.engine, c => c.profit.calls())
    }

    /// Main learning rate.
    pub fn lr(&self) -> f64 {
        on_core!(&self.engine, c => c.profit.lr())
    }

    /// Reference learning rate.
    pub fn ref_lr(&self) -> f64 {
        on_core!(&self.engine, c => c.profit.ref_lr())
    }

    /// Set the main learning rate (the reference rate follows per the configured coupling).
    pub fn set_lr(&mut self, lr: f64) -> Result<(), ProfitError> {
        on_core!(&mut self.engine, c => c.profit.set_lr(lr))
    }

    /// Set the reference learning rate.
    pub fn set_ref_lr(&mut self, lr: f64) -> Result<(), ProfitError> {
        on_core!(&mut self.engine, c => c.profit.set_ref_lr(lr))
    }

    /// Per-tensor statistics of the last main call, in registration order.
    pub fn tensor_reports(&self) -> &[TensorReport] {
        on_core!(&self.engine, c => c.profit.tensor_reports())
    }

    /// Main calls whose projection fired, so far.
    pub fn projected_calls(&self) -> u64 {
        on_core!(&self.engine, c => c.profit.projected_calls())
    }

    /// Main calls whose projection removed more than 95% of `|g|^2`, so far.
    pub fn stalled_calls(&self) -> u64 {
        on_core!(&self.engine, c => c.profit.stalled_calls())
    }

    /// The configuration.
    pub fn config(&self) -> &ProfitConfig {
        on_core!(&self.engine, c => c.profit.config())
    }

    /// The inner [`Profit`] of an f32 optimizer on the in-place or copying path.
    pub fn profit_f32(&self) -> Option<&Profit<Candle<f32>>> {
        match &self.engine {
            Engine::F32(c) => Some(&c.profit),
            _ => None,
        }
    }

    /// The inner [`Profit`] of an f64 optimizer on the in-place or copying path.
    pub fn profit_f64(&self) -> Option<&Profit<Candle<f64>>> {
        match &self.engine {
            Engine::F64(c) => Some(&c.profit),
            _ => None,
        }
    }

    /// The whole optimizer state: profit-core's checkpoint (safetensors keyed by var name),
    /// so that a run resumes mid-cycle in a new process. The file holds a fingerprint of the
    /// vars' current values (the anchor and the moments belong to those weights); with
    /// [`SaveOptions::with_params`] it holds the values themselves, and one file restores the
    /// whole run.
    pub fn save_checkpoint(&self, opts: SaveOptions) -> Result<Vec<u8>, CandleProfitError> {
        let vars = &self.vars;
        on_core!(&self.engine, c => c.with_current(vars, |p, params| Ok(p.save_checkpoint(params, opts)?)))
    }

    /// [`save_checkpoint`](Self::save_checkpoint) to a file, atomically: a crash mid-save
    /// leaves the previous file whole.
    pub fn save_checkpoint_file(
        &self,
        path: impl AsRef<std::path::Path>,
        opts: SaveOptions,
    ) -> Result<(), CandleProfitError> {
        let vars = &self.vars;
        let path = path.as_ref();
        on_core!(&self.engine, c => c.with_current(vars, |p, params| Ok(p.save_checkpoint_file(path, params, opts)?)))
    }

    /// Restore the state saved by [`save_checkpoint`](Self::save_checkpoint) into an optimizer
    /// built over the same vars (names, shapes, dtype) and state layout. The vars must hold
    /// the values the state was saved with (checked against the file's fingerprint), unless
    /// the file holds the values: then they are written into the vars. Refused with nothing
    /// changed otherwise.
    pub fn load_checkpoint(&mut self, bytes: &[u8], opts: LoadOptions) -> Result<(), CandleProfitError> {
        let vars = &self.vars;
        on_core!(&mut self.engine, c => c.load(vars, bytes, opts))
    }

    /// [`load_checkpoint`](Self::load_checkpoint) from a file.
    pub fn load_checkpoint_file(
        &mut self,
        path: impl AsRef<std::path::Path>,
        opts: LoadOptions,
    ) -> Result<(), CandleProfitError> {
        let bytes = std::fs::read(path.as_ref()).map_err(|e| {
            CandleProfitError::from(ProfitError::Checkpoint(format!("{}: {e}", path.as_ref().display())))
        })?;
        self.load_checkpoint(&bytes, opts)
    }
}

impl Optimizer for CandleProfit {
    type Config = ProfitConfig;

    /// Vars named `"0"`, `"1"`, ... in order (use [`CandleProfit::from_varmap`] for names that
    /// survive a change of order).
    fn new(vars: Vec<Var>, config: ProfitConfig) -> candle_core::Result<Self> {
        let named = vars.into_iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect();
        Self::with_names(named, config, Access::Auto).map_err(candle_core::Error::wrap)
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.try_step(grads).map(|_| ()).map_err(candle_core::Error::wrap)
    }

    fn learning_rate(&self) -> f64 {
        self.lr()
    }

    /// Sets the main rate; an invalid rate (negative, not finite) is ignored.
    fn set_learning_rate(&mut self, lr: f64) {
        let _ = self.set_lr(lr);
    }
}
