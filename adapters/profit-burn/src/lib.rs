//! # profit-burn
//!
//! PROFIT for any [burn](https://burn.dev) [`Module`]. burn's [`Optimizer`](burn::optim::Optimizer)
//! trait steps one tensor at a time, while PROFIT's projection needs sums over the whole model
//! before any weight may change, so [`BurnProfit`] is a module-level optimizer in the manner of
//! burn's own `LBFGS`: `step(lr, module, grads) -> module`. Every inner optimizer of
//! `profit-core` (SGD, Adam, AdamW, RMSprop, PyTorch's formulas, checked against the golden
//! trajectories) serves as reference and main optimizer; burn's own optimizers can be the main
//! optimizer too ([below](#burns-own-optimizer-as-the-main-optimizer)).
//!
//! ```
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Device, Tensor};
//! use profit_burn::BurnProfit;
//! use profit_core::{Adam, ProfitConfig, Sgd};
//!
//! let device = Device::default().autodiff();
//! let mut model: Linear = LinearConfig::new(2, 1).init(&device);
//! let config = ProfitConfig::new(Sgd { lr: 1e-5, ..Default::default() }, Adam { lr: 1e-2, ..Default::default() });
//! let mut opt = BurnProfit::new(&model, config)?;
//! assert_eq!(opt.names(), ["weight", "bias"]);
//! let x = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
//! for _ in 0..4 {
//!     let loss = model.forward(x.clone()).powi_scalar(2).mean();
//!     let grads = GradientsParams::from_grads(loss.backward(), &model);
//!     model = opt.step(1e-2, model, grads);
//! }
//! assert_eq!(opt.calls(), 4);
//! # Ok::<(), profit_burn::BurnProfitError>(())
//! ```
//!
//! ## burn's own optimizer as the main optimizer
//!
//! With [`BurnProfit::with_main_optimizer`] any burn [`ModuleOptimizer`] (`AdamConfig::new()
//! .init()`, `AdamWConfig`, `SgdConfig`, ..., with burn's own defaults, parameter groups and
//! gradient clipping) takes the main steps, and `config.main` is
//! [`External`](profit_core::optim::External) (its `lr` is the rate burn's optimizer is called with).
//! PROFIT takes the reference steps with its reference optimizer as usual; at a main call it
//! forms `delta`, projects the gradient, restores the anchor and hands the projected
//! gradient to burn's optimizer, which steps the restored module; at warm-up calls burn's
//! optimizer gets the gradient unchanged (clipped if `max_grad_norm` is set).
//!
//! ```
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::{AdamWConfig, GradientsParams};
//! use burn::tensor::{Device, Tensor};
//! use profit_burn::BurnProfit;
//! use profit_core::optim::External;
//! use profit_core::{ProfitConfig, Sgd};
//!
//! let device = Device::default().autodiff();
//! let mut model: Linear = LinearConfig::new(2, 1).init(&device);
//! let config = ProfitConfig::new(Sgd { lr: 1e-5, ..Default::default() }, External { lr: 1e-2 });
//! let mut opt = BurnProfit::with_main_optimizer(&model, config, AdamWConfig::new().init())?;
//! let x = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
//! for _ in 0..4 {
//!     let loss = model.forward(x.clone()).powi_scalar(2).mean();
//!     let grads = GradientsParams::from_grads(loss.backward(), &model);
//!     model = opt.step(1e-2, model, grads); // burn's AdamW steps at calls 1 and 3
//! }
//! // Saving: PROFIT's state and burn's optimizer state, each in its own format.
//! let profit_state = opt.save_checkpoint(&model, Default::default())?;
//! let adamw_state = opt.main_optimizer().unwrap().to_record();
//! assert!(!profit_state.is_empty() && !adamw_state.is_empty());
//! # Ok::<(), profit_burn::BurnProfitError>(())
//! ```
//!
//! burn's optimizer keeps its own state (moments, step counts, keyed by parameter id);
//! PROFIT keeps the anchor, the reference optimizer's state and the last captured gradient.
//! To resume a run, save both: [`save_checkpoint`](BurnProfit::save_checkpoint) for PROFIT,
//! and burn's record of the main optimizer (`opt.main_optimizer().unwrap().to_record()`, then
//! `OptimizerRecord::save(path)` or `into_bytes`). Later, load the record into a fresh burn
//! optimizer (`AdamWConfig::new().init().load_record(record)`), build
//! `BurnProfit::with_main_optimizer` with it over the module (its parameters must keep their
//! ids, as burn's module records do), and [`load_checkpoint`](BurnProfit::load_checkpoint).
//! burn's Adam and AdamW default to `epsilon = 1e-5` (PyTorch's is `1e-8`) and compute their
//! bias corrections in `f32`: set `with_epsilon(1e-8)` for PyTorch's numbers; measured against
//! profit-core's Adam in `tests/external.rs`.
//!
//! ## How a step runs
//!
//! 1. a [`ModuleVisitor`] pass copies every registered parameter and its gradient (from the
//!    [`GradientsParams`]) into host buffers allocated once (burn's host data is always a copy:
//!    `into_data`);
//! 2. `profit-core` steps those buffers with its fused host loops
//!    ([`VecBackend`]);
//! 3. a [`ModuleMapper`] pass rebuilds each parameter from its buffer (`from_data`) on the
//!    parameter's device, with its id, `require_grad` and autodiff settings, as burn's own
//!    optimizers do.
//!
//! The parameters registered are the module's float parameters that require a gradient (on an
//! autodiff device), named by their module paths (`encoder.0.weight`): the names key
//! [`save_checkpoint`](BurnProfit::save_checkpoint), so a run resumes mid-cycle. Parameters
//! must be `f32` or `f64` (one dtype per optimizer). Nothing changes unless the whole step
//! succeeds: a registered parameter without gradient, a gradient of another shape or dtype, a
//! non-finite gradient (default policy) return the module as it was with a typed
//! [`BurnProfitError`].

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{DType, Tensor, TensorData};
use profit_core::host::{VecBackend, VecTensor};
use profit_core::report::TensorReport;
use profit_core::{
    LoadOptions, ParamGroup, Phase, Profit, ProfitConfig, ProfitError, SaveOptions, StepReport,
};

/// The host backend PROFIT's state lives on (profit-core's [`VecBackend`]).
pub type Host<E> = VecBackend<E>;

/// An element type parameters can have: `f32` or `f64`.
pub trait BurnElement: profit_core::element::Element + burn::tensor::Element + sealed::Sealed {
    /// burn's dtype for it.
    const BURN_DTYPE: DType;
}
impl BurnElement for f32 {
    const BURN_DTYPE: DType = DType::F32;
}
impl BurnElement for f64 {
    const BURN_DTYPE: DType = DType::F64;
}
mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// Why a step (or building the optimizer) failed. In every case nothing has changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BurnProfitError {
    /// A registered parameter has no gradient in the [`GradientsParams`].
    #[error("parameter `{name}` has no gradient")]
    MissingGradient {
        /// The parameter's path.
        name: String,
    },
    /// A gradient does not fit its parameter (shape or dtype).
    #[error("gradient of `{name}`: {reason}")]
    GradientMismatch {
        /// The parameter's path.
        name: String,
        /// What does not fit.
        reason: String,
    },
    /// The module's parameters no longer match those the optimizer was built with.
    #[error("module does not match the optimizer: {0}")]
    ModuleMismatch(String),
    /// A parameter of a dtype profit-core has no element type for.
    #[error("parameter `{name}` is {dtype:?}: profit-burn runs on f32 and f64 parameters only")]
    UnsupportedDtype {
        /// The parameter's path.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// The parameters do not all have the same dtype.
    #[error("parameters of several dtypes ({first:?} and {other:?} for `{name}`)")]
    MixedDtypes {
        /// The first parameter's dtype.
        first: DType,
        /// Another dtype.
        other: DType,
        /// The parameter that has it.
        name: String,
    },
    /// No float parameter requires a gradient (build the optimizer over a module on an
    /// autodiff device).
    #[error("no float parameter requires a gradient")]
    NoParameters,
    /// The main optimizer does not fit the configuration: a burn optimizer needs
    /// `config.main` to be [`InnerConfig::External`](profit_core::InnerConfig::External), and
    /// an external main needs a burn optimizer ([`BurnProfit::with_main_optimizer`]).
    #[error("main optimizer: {0}")]
    MainOptimizer(&'static str),
    /// PROFIT refused the step (or the configuration, or a checkpoint).
    #[error(transparent)]
    Profit(#[from] ProfitError),
}

/// A failed [`BurnProfit::try_step`] or [`BurnProfit::load_checkpoint`]: the module,
/// unchanged, and why.
#[derive(Debug)]
pub struct StepFailure<M> {
    /// The module as it was passed.
    pub module: M,
    /// Why the step failed.
    pub error: BurnProfitError,
}

/// Module paths from `enter_module` / `exit_module`.
#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn name(&self, index: usize) -> String {
        if self.0.is_empty() {
            index.to_string()
        } else {
            self.0.join(".")
        }
    }
}

/// The registered parameters: names, ids and shapes, in visit order.
struct Registry {
    names: Vec<String>,
    ids: Vec<ParamId>,
    shapes: Vec<Vec<usize>>,
    index: HashMap<ParamId, usize>,
}

struct Collect {
    path: Path,
    seen: usize,
    names: Vec<String>,
    ids: Vec<ParamId>,
    shapes: Vec<Vec<usize>>,
    dtypes: Vec<DType>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.seen += 1;
        let t = param.val();
        if !t.is_require_grad() {
            return;
        }
        self.names.push(self.path.name(self.seen - 1));
        self.ids.push(param.id);
        self.shapes.push(t.dims().to_vec());
        self.dtypes.push(t.dtype());
    }
}

/// Copies parameters (and gradients) into the host buffers.
struct Gather<'a, E> {
    reg: &'a Registry,
    params: &'a mut [VecTensor<E>],
    grads: Option<(&'a GradientsParams, &'a mut [VecTensor<E>])>,
    found: usize,
    error: Option<BurnProfitError>,
}

fn copy_data<E: BurnElement>(data: TensorData, dst: &mut [E]) -> Result<(), String> {
    let s = data.as_slice::<E>().map_err(|e| format!("{e:?}"))?;
    if s.len() != dst.len() {
        return Err(format!("{} elements, expected {}", s.len(), dst.len()));
    }
    dst.copy_from_slice(s);
    Ok(())
}

impl<E: BurnElement> ModuleVisitor for Gather<'_, E> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let Some(&i) = self.reg.index.get(&param.id) else { return };
        self.found += 1;
        let name = &self.reg.names[i];
        let t = param.val();
        if t.dims().as_slice() != self.reg.shapes[i].as_slice() {
            self.error = Some(BurnProfitError::ModuleMismatch(format!(
                "`{name}` has shape {:?}, expected {:?}",
                t.dims(),
                self.reg.shapes[i]
            )));
            return;
        }
        if let Err(e) = copy_data(host_data(t), &mut self.params[i].data) {
            self.error = Some(BurnProfitError::ModuleMismatch(format!("`{name}`: {e}")));
            return;
        }
        if let Some((grads, out)) = &mut self.grads {
            let Some(g) = grads.get::<D>(param.id) else {
                self.error = Some(BurnProfitError::MissingGradient { name: name.clone() });
                return;
            };
            let bad = |reason: String| BurnProfitError::GradientMismatch { name: name.clone(), reason };
            if g.dims().as_slice() != self.reg.shapes[i].as_slice() {
                self.error =
                    Some(bad(format!("shape {:?}, the parameter's is {:?}", g.dims(), self.reg.shapes[i])));
                return;
            }
            if g.dtype() != E::BURN_DTYPE {
                self.error =
                    Some(bad(format!("dtype {:?}, the parameter's is {:?}", g.dtype(), E::BURN_DTYPE)));
                return;
            }
            if let Err(e) = copy_data(host_data(g), &mut out[i].data) {
                self.error = Some(bad(e));
            }
        }
    }
}

/// A tensor's values on the host. The tensor is first multiplied by 1 (exact) outside
/// autodiff: the product is a tensor nobody else holds, which burn's ndarray backend hands
/// over without copying, while a tensor shared with the module (or with the
/// `GradientsParams`) would be read element by element through a generic iterator, about 20x
/// slower than the multiplication.
fn host_data<const D: usize>(t: Tensor<D>) -> TensorData {
    t.inner().mul_scalar(1.0).into_data()
}

/// The gradients an external main optimizer steps with: PROFIT's captured gradients, each
/// registered under its parameter's id as a tensor on the device of the gradient it came from.
struct Handover<'a, E: BurnElement> {
    profit: &'a Profit<Host<E>>,
    grads: &'a GradientsParams,
    out: GradientsParams,
}

/// Rebuilds the registered parameters from the host buffers (unless `rebuild` is off: the
/// parameters did not change) and, with `handover`, registers the captured gradients.
struct Scatter<'a, E: BurnElement> {
    reg: &'a Registry,
    params: &'a [VecTensor<E>],
    rebuild: bool,
    handover: Option<Handover<'a, E>>,
}

impl<'a, E: BurnElement> Scatter<'a, E> {
    fn new(reg: &'a Registry, params: &'a [VecTensor<E>]) -> Self {
        Scatter { reg, params, rebuild: true, handover: None }
    }
}

impl<E: BurnElement> ModuleMapper for Scatter<'_, E> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(&i) = self.reg.index.get(&param.id) else { return param };
        if let Some(h) = &mut self.handover {
            // `Core::step` gathered a gradient of this shape and dtype for every registered
            // parameter before PROFIT stepped, and the external rule captured one per tensor.
            if let (Some(g), Some(c)) = (h.grads.get::<D>(param.id), h.profit.captured_grad(i)) {
                let data = TensorData::new(c.data.clone(), c.shape.clone());
                h.out.register::<D>(param.id, Tensor::<D>::from_data(data, (&g.device(), E::BURN_DTYPE)));
            }
        }
        if !self.rebuild {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let host = &self.params[i];
        let device = tensor.device();
        let data = TensorData::new(host.data.clone(), host.shape.clone());
        let mut updated = Tensor::<D>::from_data(data, (&device.clone().inner(), E::BURN_DTYPE));
        // Re-wrap as burn's optimizers do (its `ParameterContext`): autodiff with the same
        // checkpointing strategy, `require_grad`, distributed marking.
        if tensor.is_autodiff() {
            updated = Tensor::from_inner(updated);
            if let Some(s) = tensor.gradient_checkpointing_strategy() {
                updated = updated.with_gradient_checkpointing_strategy(s);
            }
            if tensor.is_require_grad() {
                updated = updated.require_grad();
            }
        }
        if tensor.is_distributed() {
            updated = updated.set_distributed(id);
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// Copy every registered parameter of `module` (and, with `grads`, its gradient) into the
/// host buffers; an error if one is missing or does not fit.
fn visit_all<M: Module, E: BurnElement>(
    module: &M,
    reg: &Registry,
    params: &mut [VecTensor<E>],
    grads: Option<(&GradientsParams, &mut [VecTensor<E>])>,
) -> Result<(), BurnProfitError> {
    let mut g = Gather::<E> { reg, params, grads, found: 0, error: None };
    module.visit(&mut g);
    if let Some(e) = g.error {
        return Err(e);
    }
    if g.found != reg.names.len() {
        return Err(BurnProfitError::ModuleMismatch(format!(
            "{} of the {} registered parameters found",
            g.found,
            reg.names.len()
        )));
    }
    Ok(())
}

struct Core<E: BurnElement> {
    profit: Profit<Host<E>>,
    params: Vec<VecTensor<E>>,
    grads: Vec<VecTensor<E>>,
}

impl<E: BurnElement> Core<E> {
    fn new<M: Module>(module: &M, reg: &Registry, config: ProfitConfig) -> Result<Self, BurnProfitError> {
        let zeros = |s: &Vec<usize>| {
            VecTensor::new(s, vec![<E as profit_core::element::Element>::from_f64(0.0); s.iter().product()])
        };
        let mut params: Vec<VecTensor<E>> = reg.shapes.iter().map(|s| zeros(s).expect("sizes")).collect();
        let grads = params.clone();
        let mut g = Gather::<E> { reg, params: &mut params, grads: None, found: 0, error: None };
        module.visit(&mut g);
        if let Some(e) = g.error {
            return Err(e);
        }
        let group = ParamGroup::new(reg.names.iter().map(String::as_str).zip(&params));
        let profit = Profit::with_groups(config, vec![group])?;
        Ok(Core { profit, params, grads })
    }

    fn gather<M: Module>(
        &mut self,
        module: &M,
        reg: &Registry,
        grads: &GradientsParams,
    ) -> Result<(), BurnProfitError> {
        visit_all(module, reg, &mut self.params, Some((grads, &mut self.grads)))
    }

    /// The module's current values of the registered parameters, in fresh buffers.
    fn current<M: Module>(&self, module: &M, reg: &Registry) -> Result<Vec<VecTensor<E>>, BurnProfitError> {
        let mut params = self.params.clone();
        visit_all(module, reg, &mut params, None)?;
        Ok(params)
    }

    fn save<M: Module>(
        &self,
        module: &M,
        reg: &Registry,
        opts: SaveOptions,
    ) -> Result<Vec<u8>, BurnProfitError> {
        let params = self.current(module, reg)?;
        let refs: Vec<&VecTensor<E>> = params.iter().collect();
        Ok(self.profit.save_checkpoint(&refs, opts)?)
    }

    fn save_file<M: Module>(
        &self,
        path: &std::path::Path,
        module: &M,
        reg: &Registry,
        opts: SaveOptions,
    ) -> Result<(), BurnProfitError> {
        let params = self.current(module, reg)?;
        let refs: Vec<&VecTensor<E>> = params.iter().collect();
        Ok(self.profit.save_checkpoint_file(path, &refs, opts)?)
    }

    fn load<M: Module>(
        &mut self,
        bytes: &[u8],
        module: M,
        reg: &Registry,
        opts: LoadOptions,
    ) -> Result<M, StepFailure<M>> {
        let mut params = match self.current(&module, reg) {
            Ok(p) => p,
            Err(error) => return Err(StepFailure { module, error }),
        };
        let before: Vec<VecTensor<E>> = params.clone();
        let mut refs: Vec<&mut VecTensor<E>> = params.iter_mut().collect();
        if let Err(e) = self.profit.load_checkpoint(bytes, &mut refs, opts) {
            return Err(StepFailure { module, error: e.into() });
        }
        if params.iter().zip(&before).all(|(a, b)| a.data == b.data) {
            return Ok(module);
        }
        Ok(module.map(&mut Scatter::new(reg, &params)))
    }

    /// One call. With `main` (an external main optimizer), warm-up and main calls hand the
    /// captured gradients to it: at a main call PROFIT has restored the anchor, which is
    /// written back first; at a warm-up call the parameters did not change.
    fn step<M: Module>(
        &mut self,
        module: M,
        reg: &Registry,
        grads: &GradientsParams,
        main: Option<&mut ModuleOptimizer>,
    ) -> Result<(M, StepReport), StepFailure<M>> {
        if let Err(error) = self.gather(&module, reg, grads) {
            return Err(StepFailure { module, error });
        }
        let mut p: Vec<&mut VecTensor<E>> = self.params.iter_mut().collect();
        let g: Vec<&VecTensor<E>> = self.grads.iter().collect();
        match self.profit.step(&mut p, &g) {
            Err(e) => Err(StepFailure { module, error: e.into() }),
            Ok(r) if r.phase == Phase::Skipped => Ok((module, r)),
            Ok(r) => match main {
                Some(optim) if r.phase != Phase::Reference => {
                    let handover = Handover { profit: &self.profit, grads, out: GradientsParams::new() };
                    let mut scatter = Scatter {
                        reg,
                        params: &self.params,
                        rebuild: r.phase == Phase::Main,
                        handover: Some(handover),
                    };
                    let module = module.map(&mut scatter);
                    let out = scatter.handover.map(|h| h.out).unwrap_or_default();
                    Ok((optim.step(self.profit.lr(), module, out), r))
                }
                _ => Ok((module.map(&mut Scatter::new(reg, &self.params)), r)),
            },
        }
    }
}

enum Engine {
    F32(Core<f32>),
    F64(Core<f64>),
}

macro_rules! on_core {
    ($engine:expr, $c:ident => $body:expr) => {
        match $engine {
            Engine::F32($c) => $body,
            Engine::F64($c) => $body,
        }
    };
}

/// PROFIT for a burn module. See the [crate docs](crate).
pub struct BurnProfit {
    reg: Registry,
    engine: Engine,
    /// burn's optimizer as the main optimizer (with `config.main` external).
    main: Option<ModuleOptimizer>,
    last: Option<StepReport>,
    last_error: Option<BurnProfitError>,
}

impl std::fmt::Debug for BurnProfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnProfit")
            .field("external_main", &self.main.is_some())
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl BurnProfit {
    /// Build over every float parameter of `module` that requires a gradient, named by its
    /// module path, with one of profit-core's inner optimizers as the main optimizer. All
    /// optimizer state is allocated here. An external `config.main` is refused
    /// ([`BurnProfitError::MainOptimizer`]): use [`with_main_optimizer`](Self::with_main_optimizer).
    pub fn new<M: Module>(module: &M, config: ProfitConfig) -> Result<Self, BurnProfitError> {
        if config.main.is_external() {
            return Err(BurnProfitError::MainOptimizer(
                "config.main is external: build with BurnProfit::with_main_optimizer and a burn optimizer",
            ));
        }
        Self::build(module, config, None)
    }

    /// Build with a burn optimizer (`AdamWConfig::new().init()`, any
    /// [`ModuleOptimizer`]) as the main optimizer; `config.main` must be
    /// [`External`](profit_core::optim::External), whose `lr` is the main rate (the rate burn's
    /// optimizer is called with; the reference rate follows it at the configured ratio). See
    /// the [crate docs](crate#burns-own-optimizer-as-the-main-optimizer).
    pub fn with_main_optimizer<M: Module>(
        module: &M,
        config: ProfitConfig,
        main: ModuleOptimizer,
    ) -> Result<Self, BurnProfitError> {
        if !config.main.is_external() {
            return Err(BurnProfitError::MainOptimizer(
                "a burn main optimizer needs config.main = InnerConfig::External (profit_core::optim::External)",
            ));
        }
        Self::build(module, config, Some(main))
    }

    fn build<M: Module>(
        module: &M,
        config: ProfitConfig,
        main: Option<ModuleOptimizer>,
    ) -> Result<Self, BurnProfitError> {
        let mut c = Collect {
            path: Path::default(),
            seen: 0,
            names: vec![],
            ids: vec![],
            shapes: vec![],
            dtypes: vec![],
        };
        module.visit(&mut c);
        let Some(&first) = c.dtypes.first() else { return Err(BurnProfitError::NoParameters) };
        for (name, &dtype) in c.names.iter().zip(&c.dtypes) {
            if !matches!(dtype, DType::F32 | DType::F64) {
                return Err(BurnProfitError::UnsupportedDtype { name: name.clone(), dtype });
            }
            if dtype != first {
                return Err(BurnProfitError::MixedDtypes { first, other: dtype, name: name.clone() });
            }
        }
        let index = c.ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let reg = Registry { names: c.names, ids: c.ids, shapes: c.shapes, index };
        let engine = match first {
            DType::F32 => Engine::F32(Core::new(module, &reg, config)?),
            _ => Engine::F64(Core::new(module, &reg, config)?),
        };
        Ok(BurnProfit { reg, engine, main, last: None, last_error: None })
    }

    /// One PROFIT call with typed errors: `grads` must hold the gradient of the loss at the
    /// module's current parameters. Returns the updated module and PROFIT's report, or the
    /// module unchanged with the error.
    pub fn try_step<M: Module>(
        &mut self,
        module: M,
        grads: &GradientsParams,
    ) -> Result<(M, StepReport), StepFailure<M>> {
        let reg = &self.reg;
        let main = self.main.as_mut();
        let out = on_core!(&mut self.engine, c => c.step(module, reg, grads, main));
        if let Ok((_, r)) = &out {
            self.last = Some(*r);
        }
        out
    }

    /// One PROFIT call in burn's style (as `LBFGS::step` and `ModuleOptimizer::step`): `lr` is
    /// the main learning rate for this call (the reference rate follows it at the configured
    /// ratio). On error the module comes back unchanged and the error is kept in
    /// [`last_error`](Self::last_error).
    pub fn step<M: Module>(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        self.last_error = None;
        if lr != self.lr() {
            if let Err(e) = self.set_lr(lr) {
                self.last_error = Some(e.into());
                return module;
            }
        }
        match self.try_step(module, &grads) {
            Ok((m, _)) => m,
            Err(StepFailure { module, error }) => {
                self.last_error = Some(error);
                module
            }
        }
    }

    /// burn's main optimizer, when built [`with_main_optimizer`](Self::with_main_optimizer): its
    /// state (moments, step counts, keyed by parameter id) is saved with burn's records
    /// (`main_optimizer().to_record()`), beside PROFIT's [checkpoint](Self::save_checkpoint).
    pub fn main_optimizer(&self) -> Option<&ModuleOptimizer> {
        self.main.as_ref()
    }

    /// burn's main optimizer, mutably (to replace it, e.g. by one loaded from a record).
    pub fn main_optimizer_mut(&mut self) -> Option<&mut ModuleOptimizer> {
        self.main.as_mut()
    }

    /// The error of the last [`step`](Self::step), if it failed.
    pub fn last_error(&self) -> Option<&BurnProfitError> {
        self.last_error.as_ref()
    }

    /// The report of the last successful call.
    pub fn last_report(&self) -> Option<&StepReport> {
        self.last.as_ref()
    }

    /// Paths of the registered parameters, in visit order.
    pub fn names(&self) -> &[String] {
        &self.reg.names
    }

    /// Ids of the registered parameters, in visit order.
    pub fn param_ids(&self) -> &[ParamId] {
        &self.reg.ids
    }

    /// The parameters' dtype (`F32` or `F64`).
    pub fn dtype(&self) -> DType {
        match self.engine {
            Engine::F32(_) => DType::F32,
            Engine::F64(_) => DType::F64,
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

    /// The inner [`Profit`] of an f32 optimizer.
    pub fn profit_f32(&self) -> Option<&Profit<Host<f32>>> {
        match &self.engine {
            Engine::F32(c) => Some(&c.profit),
            Engine::F64(_) => None,
        }
    }

    /// The inner [`Profit`] of an f64 optimizer.
    pub fn profit_f64(&self) -> Option<&Profit<Host<f64>>> {
        match &self.engine {
            Engine::F64(c) => Some(&c.profit),
            Engine::F32(_) => None,
        }
    }

    /// The whole optimizer state: profit-core's checkpoint (safetensors), keyed by the
    /// parameters' module paths, so that a run resumes mid-cycle in a new process. The file
    /// holds a fingerprint of `module`'s parameters (the anchor and the moments belong to
    /// those weights); with [`SaveOptions::with_params`] it holds the parameters themselves,
    /// and one file restores the whole run.
    pub fn save_checkpoint<M: Module>(
        &self,
        module: &M,
        opts: SaveOptions,
    ) -> Result<Vec<u8>, BurnProfitError> {
        let reg = &self.reg;
        on_core!(&self.engine, c => c.save(module, reg, opts))
    }

    /// [`save_checkpoint`](Self::save_checkpoint) to a file, atomically: a crash mid-save
    /// leaves the previous file whole.
    pub fn save_checkpoint_file<M: Module>(
        &self,
        path: impl AsRef<std::path::Path>,
        module: &M,
        opts: SaveOptions,
    ) -> Result<(), BurnProfitError> {
        let reg = &self.reg;
        on_core!(&self.engine, c => c.save_file(path.as_ref(), module, reg, opts))
    }

    /// Restore [`save_checkpoint`](Self::save_checkpoint) bytes into an optimizer built over a
    /// module with the same parameter paths, shapes and dtype and the same state layout.
    /// Returns the module: with the checkpoint's parameters when the file holds them, else as
    /// passed (after checking it against the file's fingerprint). Refused with nothing changed
    /// otherwise, the module handed back in the [`StepFailure`].
    pub fn load_checkpoint<M: Module>(
        &mut self,
        bytes: &[u8],
        module: M,
        opts: LoadOptions,
    ) -> Result<M, StepFailure<M>> {
        let reg = &self.reg;
        on_core!(&mut self.engine, c => c.load(bytes, module, reg, opts))
    }

    /// [`load_checkpoint`](Self::load_checkpoint) from a file.
    pub fn load_checkpoint_file<M: Module>(
        &mut self,
        path: impl AsRef<std::path::Path>,
        module: M,
        opts: LoadOptions,
    ) -> Result<M, StepFailure<M>> {
        match std::fs::read(path.as_ref()) {
            Ok(bytes) => self.load_checkpoint(&bytes, module, opts),
            Err(e) => {
                let error = ProfitError::Checkpoint(format!("{}: {e}", path.as_ref().display()));
                Err(StepFailure { module, error: error.into() })
            }
        }
    }
}
