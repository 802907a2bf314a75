//! # profit-dfdx
//!
//! PROFIT as a [`dfdx::optim::Optimizer`] for any dfdx model ([`TensorCollection`]) on [`Cpu`]
//! in `f32`, with every inner optimizer of `profit-core` (SGD, Adam, AdamW, RMSprop with
//! PyTorch's formulas), plus [`DfdxPlain`]: one of those inner optimizers alone, so that a
//! baseline runs with exactly the same update formulas as PROFIT's main optimizer.
//!
//! ## Design
//!
//! PROFIT's global projection needs whole-model reductions (`<delta, g>`, `|delta|^2`) before any
//! parameter may change, while dfdx optimizers visit one tensor at a time. So each
//! [`update`](Optimizer::update) walks the model twice:
//!
//! 1. a read-only walk copies every trainable parameter and its gradient into host buffers
//!    (flat `Vec<f32>`, allocated once when the optimizer is built);
//! 2. [`Profit::step`] runs on those buffers ([`Flat`], a [`HostBackend`](profit_core::host::HostBackend), so the fused
//!    multi-threaded host loops of `profit-core` do the work);
//! 3. a mutating walk copies the parameters back into the model.
//!
//! Tensors with `do_gradient_update == false` (e.g. `BatchNorm` running statistics) are never
//! registered: they stay out of the projection and untouched. Nothing is changed unless the whole
//! step succeeds: a missing gradient, a model whose tensors no longer match, a non-finite
//! gradient (default policy) return an error with the model and the optimizer as they were.
//!
//! The copies cost extra passes over memory per step (parameters in and out, gradients in);
//! `dfdx::tensor::Gradients` only offers `get`, which clones the gradient buffer (taken from
//! dfdx's allocation cache with the default `fast-alloc` feature) and panics when a tensor has
//! no gradient: that panic is caught and returned as [`DfdxError::UnusedParams`], but the
//! default panic hook still prints its message to stderr.
//!
//! ```
//! use dfdx::prelude::*;
//! use profit_core::{ProfitConfig, RmsProp, Sgd};
//! use profit_dfdx::DfdxProfit;
//!
//! let dev = Cpu::default();
//! type Net = (Linear<2, 8>, ReLU, Linear<8, 1>);
//! let mut model = dev.build_module::<Net, f32>();
//! let config = ProfitConfig::new(Sgd { lr: 1e-7, ..Default::default() }, RmsProp { lr: 1e-3, ..Default::default() });
//! let mut opt = DfdxProfit::new(&model, config).unwrap();
//! let mut grads = model.alloc_grads();
//! for _ in 0..4 {
//!     let x: Tensor<Rank2<4, 2>, f32, _> = dev.sample_normal();
//!     let y: Tensor<Rank2<4, 1>, f32, _> = dev.sample_normal();
//!     let loss = mse_loss(model.forward_mut(x.traced(grads)), y);
//!     grads = loss.backward();
//!     opt.update(&mut model, &grads).unwrap();
//!     model.zero_grads(&mut grads);
//! }
//! assert_eq!(opt.profit().calls(), 4);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

use dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorVisitor, ViewTensorMut, ViewTensorName,
    ViewTensorRef,
};
use dfdx::optim::{Optimizer, OptimizerUpdateError, UnusedTensors};
use dfdx::prelude::{Cpu, Gradients, HasShape, Shape, Tensor};
use dfdx::tensor::CpuError;
use profit_core::plain::Plain;
use profit_core::{InnerConfig, ParamGroup, Profit, ProfitConfig, ProfitError, StepReport};

/// The host backend the optimizer state lives on: flat `f32` buffers with a shape
/// (profit-core's built-in [`VecBackend`](profit_core::host::VecBackend)).
pub type Flat = profit_core::host::VecBackend<f32>;

/// A flat row-major `f32` buffer with its shape (the [`Flat`] backend's tensor).
pub type FlatTensor = profit_core::host::VecTensor<f32>;

/// Why an update did not happen. In every case the model and the optimizer are unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DfdxError {
    /// Trainable tensors without a gradient in the `Gradients` passed (dfdx's own notion of
    /// unused parameters; allocate gradients with `model.alloc_grads()` to always have them).
    #[error("{} trainable tensor(s) have no gradient", .0.ids.len())]
    UnusedParams(UnusedTensors),
    /// The model's trainable tensors no longer match those the optimizer was built with.
    #[error("model does not match the optimizer: {0}")]
    ModelMismatch(String),
    /// PROFIT (or the inner optimizer) refused the step.
    #[error(transparent)]
    Profit(#[from] ProfitError),
}

/// The trainable tensors of a dfdx model mirrored in host memory (names, parameters,
/// gradients), allocated once: what [`DfdxProfit`] and [`DfdxPlain`] run on, public for
/// optimizers of your own over a dfdx model. Tensors dfdx excludes from gradient updates are
/// left out.
pub struct Mirror {
    names: Vec<String>,
    params: Vec<FlatTensor>,
    grads: Vec<FlatTensor>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("names", &self.names).finish_non_exhaustive()
    }
}

impl Mirror {
    /// Allocate host buffers for every trainable tensor of `model` (named by dfdx's paths).
    pub fn of<M: TensorCollection<f32, Cpu>>(model: &M) -> Result<Self, DfdxError> {
        let mut c = Collect { names: vec![], params: vec![], problem: None };
        M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut c })
            .map_err(|e| DfdxError::ModelMismatch(format!("{e}")))?;
        if let Some(p) = c.problem {
            return Err(DfdxError::ModelMismatch(p));
        }
        let grads = c.params.iter().map(<Flat as profit_core::host::HostBackend>::zeros_like).collect();
        Ok(Mirror { names: c.names, params: c.params, grads })
    }

    fn groups(&self) -> Vec<ParamGroup<'_, FlatTensor>> {
        vec![ParamGroup::new(self.names.iter().map(String::as_str).zip(&self.params))]
    }

    /// Names of the mirrored tensors, in walk order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The host copies of the parameters (as of the last [`gather`](Self::gather)).
    pub fn params(&self) -> &[FlatTensor] {
        &self.params
    }

    /// The host copies of the gradients (as of the last [`gather`](Self::gather)).
    pub fn grads(&self) -> &[FlatTensor] {
        &self.grads
    }

    /// Parameters (to update before [`scatter`](Self::scatter)) and gradients, mutable.
    pub fn params_and_grads_mut(&mut self) -> (&mut [FlatTensor], &mut [FlatTensor]) {
        (&mut self.params, &mut self.grads)
    }

    /// Read-only walk: copy parameters and gradients into the host buffers. Fails, changing no
    /// model tensor, if the model no longer matches or a trainable tensor has no gradient.
    pub fn gather<M: TensorCollection<f32, Cpu>>(
        &mut self,
        model: &M,
        gradients: &Gradients<f32, Cpu>,
    ) -> Result<(), DfdxError> {
        let mut g = Gather {
            gradients,
            params: &mut self.params,
            grads: &mut self.grads,
            names: &self.names,
            i: 0,
            unused: UnusedTensors::default(),
            problem: None,
        };
        M::iter_tensors(&mut RecursiveWalker { m: model, f: &mut g })
            .map_err(|e| DfdxError::ModelMismatch(format!("{e}")))?;
        if g.problem.is_none() && g.i != self.names.len() {
            g.problem = Some(format!("{} trainable tensors, expected {}", g.i, self.names.len()));
        }
        if let Some(p) = g.problem {
            return Err(DfdxError::ModelMismatch(p));
        }
        if !g.unused.is_empty() {
            return Err(DfdxError::UnusedParams(g.unused));
        }
        Ok(())
    }

    /// Mutating walk: copy the host parameters back into the model.
    pub fn scatter<M: TensorCollection<f32, Cpu>>(&self, model: &mut M) {
        let mut s = Scatter { params: &self.params, i: 0 };
        // Infallible: `Scatter` never returns an error.
        let _ = M::iter_tensors(&mut RecursiveWalker { m: model, f: &mut s });
    }

    fn refs(&mut self) -> (Vec<&mut FlatTensor>, Vec<&FlatTensor>) {
        (self.params.iter_mut().collect(), self.grads.iter().collect())
    }
}

fn shape_of<S: Shape>(t: &Tensor<S, f32, Cpu>) -> Vec<usize> {
    t.shape().concrete().into()
}

/// Copy a tensor's elements into `dst`, or `None` if its storage does not hold exactly
/// `dst.len()` elements (a broadcast or otherwise non-contiguous tensor).
fn read_into<S: Shape>(t: &Tensor<S, f32, Cpu>, dst: &mut [f32]) -> Option<()> {
    catch_unwind(AssertUnwindSafe(|| t.copy_into(dst))).ok()
}

struct Collect {
    names: Vec<String>,
    params: Vec<FlatTensor>,
    problem: Option<String>,
}

impl TensorVisitor<f32, Cpu> for Collect {
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = CpuError;
    type E2 = f32;
    type D2 = Cpu;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, f32, Cpu>,
        (t, name): (&Tensor<S, f32, Cpu>, String),
    ) -> Result<Option<Tensor<S, f32, Cpu>>, CpuError> {
        if !opts.do_gradient_update || self.problem.is_some() {
            return Ok(None);
        }
        let shape = shape_of(t);
        let mut data = vec![0.0; shape.iter().product()];
        if read_into(t, &mut data).is_none() {
            self.problem = Some(format!("tensor `{name}` is not contiguous"));
        }
        self.names.push(if name.is_empty() { self.names.len().to_string() } else { name });
        self.params.push(FlatTensor { data, shape });
        Ok(None)
    }
}

struct Gather<'a> {
    gradients: &'a Gradients<f32, Cpu>,
    params: &'a mut [FlatTensor],
    grads: &'a mut [FlatTensor],
    names: &'a [String],
    i: usize,
    unused: UnusedTensors,
    problem: Option<String>,
}

impl TensorVisitor<f32, Cpu> for Gather<'_> {
    type Viewer = ViewTensorRef;
    type Err = CpuError;
    type E2 = f32;
    type D2 = Cpu;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, f32, Cpu>,
        t: &Tensor<S, f32, Cpu>,
    ) -> Result<Option<Tensor<S, f32, Cpu>>, CpuError> {
        if !opts.do_gradient_update || self.problem.is_some() {
            return Ok(None);
        }
        let i = self.i;
        self.i += 1;
        let (Some(p), Some(g)) = (self.params.get_mut(i), self.grads.get_mut(i)) else {
            self.problem = Some(format!("more than {} trainable tensors", self.names.len()));
            return Ok(None);
        };
        if !t.shape().concrete().as_ref().eq(p.shape.as_slice()) {
            self.problem = Some(format!(
                "tensor `{}` has shape {:?}, expected {:?}",
                self.names[i],
                shape_of(t),
                p.shape
            ));
            return Ok(None);
        }
        if read_into(t, &mut p.data).is_none() {
            self.problem = Some(format!("tensor `{}` is not contiguous", self.names[i]));
            return Ok(None);
        }
        // `Gradients::get` is dfdx's only public accessor; it panics when the tensor has no
        // gradient, which is caught here and reported as an unused tensor.
        match catch_unwind(AssertUnwindSafe(|| self.gradients.get(t))) {
            Ok(gt) => {
                if read_into(&gt, &mut g.data).is_none() {
                    self.problem = Some(format!("gradient of `{}` is not contiguous", self.names[i]));
                }
            }
            Err(_) => self.unused.add(t),
        }
        Ok(None)
    }
}

struct Scatter<'a> {
    params: &'a [FlatTensor],
    i: usize,
}

impl TensorVisitor<f32, Cpu> for Scatter<'_> {
    type Viewer = ViewTensorMut;
    type Err = CpuError;
    type E2 = f32;
    type D2 = Cpu;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, f32, Cpu>,
        t: &mut Tensor<S, f32, Cpu>,
    ) -> Result<Option<Tensor<S, f32, Cpu>>, CpuError> {
        if opts.do_gradient_update {
            if let Some(p) = self.params.get(self.i) {
                t.copy_from(&p.data);
            }
            self.i += 1;
        }
        Ok(None)
    }
}

/// Map an error to dfdx's [`OptimizerUpdateError`]. dfdx's error type has no room for PROFIT's
/// errors, so those become `DeviceError(CpuError::WrongNumElements)`; the typed error is kept in
/// the optimizer ([`DfdxProfit::last_error`]).
fn to_dfdx(e: DfdxError) -> (OptimizerUpdateError<CpuError>, Option<DfdxError>) {
    match e {
        DfdxError::UnusedParams(u) => (OptimizerUpdateError::UnusedParams(u), None),
        other => (OptimizerUpdateError::DeviceError(CpuError::WrongNumElements), Some(other)),
    }
}

/// PROFIT as a dfdx optimizer for model `M` on [`Cpu`] in `f32`. See the [crate docs](crate).
pub struct DfdxProfit<M> {
    profit: Profit<Flat>,
    mirror: Mirror,
    last: Option<StepReport>,
    last_error: Option<DfdxError>,
    _model: PhantomData<fn(&M)>,
}

impl<M> std::fmt::Debug for DfdxProfit<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DfdxProfit")
            .field("profit", &self.profit)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl<M: TensorCollection<f32, Cpu>> DfdxProfit<M> {
    /// Build over every trainable tensor of `model` (named by dfdx's paths, e.g. `0.weight`).
    /// All optimizer state is allocated here.
    pub fn new(model: &M, config: ProfitConfig) -> Result<Self, DfdxError> {
        if config.main.is_external() {
            // Its main calls would only restore: training would silently do nothing.
            return Err(ProfitError::InvalidConfig(
                "an external main optimizer is not supported by DfdxProfit (its main step would never run)",
            )
            .into());
        }
        let mirror = Mirror::of(model)?;
        let profit = Profit::with_groups(config, mirror.groups())?;
        Ok(DfdxProfit { profit, mirror, last: None, last_error: None, _model: PhantomData })
    }

    /// One PROFIT call with typed errors: `gradients` must hold the gradient of the loss at the
    /// model's current parameters. On error nothing changed.
    pub fn try_update(
        &mut self,
        model: &mut M,
        gradients: &Gradients<f32, Cpu>,
    ) -> Result<StepReport, DfdxError> {
        self.mirror.gather(model, gradients)?;
        let (mut p, g) = self.mirror.refs();
        let report = self.profit.step(&mut p, &g)?;
        self.mirror.scatter(model);
        self.last = Some(report);
        Ok(report)
    }

    /// The report of the last successful call.
    pub fn last_report(&self) -> Option<&StepReport> {
        self.last.as_ref()
    }

    /// The typed error behind the last [`Optimizer::update`] that returned
    /// `DeviceError(CpuError::WrongNumElements)`.
    pub fn last_error(&self) -> Option<&DfdxError> {
        self.last_error.as_ref()
    }

    /// Main learning rate.
    pub fn lr(&self) -> f64 {
        self.profit.lr()
    }

    /// Set the main learning rate (the reference rate follows per the configured coupling).
    pub fn set_lr(&mut self, lr: f64) -> Result<(), ProfitError> {
        self.profit.set_lr(lr)
    }

    /// The inner [`Profit`] (reports, rates, state sizes).
    pub fn profit(&self) -> &Profit<Flat> {
        &self.profit
    }

    /// The inner [`Profit`], mutably (e.g. to set the reference rate).
    pub fn profit_mut(&mut self) -> &mut Profit<Flat> {
        &mut self.profit
    }

    /// Names of the registered (trainable) tensors, in walk order.
    pub fn names(&self) -> &[String] {
        &self.mirror.names
    }
}

impl<M: TensorCollection<f32, Cpu>> Optimizer<M, Cpu, f32> for DfdxProfit<M> {
    fn update(
        &mut self,
        module: &mut M,
        gradients: &Gradients<f32, Cpu>,
    ) -> Result<(), OptimizerUpdateError<CpuError>> {
        self.last_error = None;
        self.try_update(module, gradients).map(|_| ()).map_err(|e| {
            let (out, keep) = to_dfdx(e);
            self.last_error = keep;
            out
        })
    }
}

/// One of `profit-core`'s inner optimizers alone (PyTorch formulas) as a dfdx optimizer, for
/// baselines that must use exactly PROFIT's main-optimizer arithmetic.
pub struct DfdxPlain<M> {
    plain: Plain<Flat>,
    mirror: Mirror,
    last_error: Option<DfdxError>,
    _model: PhantomData<fn(&M)>,
}

impl<M> std::fmt::Debug for DfdxPlain<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DfdxPlain").field("plain", &self.plain).finish_non_exhaustive()
    }
}

impl<M: TensorCollection<f32, Cpu>> DfdxPlain<M> {
    /// Build over every trainable tensor of `model`.
    pub fn new(model: &M, config: impl Into<InnerConfig>) -> Result<Self, DfdxError> {
        let mirror = Mirror::of(model)?;
        let plain = Plain::with_groups(config.into(), mirror.groups())?;
        Ok(DfdxPlain { plain, mirror, last_error: None, _model: PhantomData })
    }

    /// One step with typed errors; on error nothing changed.
    pub fn try_update(&mut self, model: &mut M, gradients: &Gradients<f32, Cpu>) -> Result<(), DfdxError> {
        self.mirror.gather(model, gradients)?;
        let (mut p, g) = self.mirror.refs();
        self.plain.step(&mut p, &g)?;
        self.mirror.scatter(model);
        Ok(())
    }

    /// The typed error behind the last failed [`Optimizer::update`].
    pub fn last_error(&self) -> Option<&DfdxError> {
        self.last_error.as_ref()
    }

    /// Learning rate.
    pub fn lr(&self) -> f64 {
        self.plain.lr()
    }

    /// Set the learning rate.
    pub fn set_lr(&mut self, lr: f64) -> Result<(), ProfitError> {
        self.plain.set_lr(lr)
    }

    /// The inner [`Plain`] optimizer.
    pub fn plain(&self) -> &Plain<Flat> {
        &self.plain
    }
}

impl<M: TensorCollection<f32, Cpu>> Optimizer<M, Cpu, f32> for DfdxPlain<M> {
    fn update(
        &mut self,
        module: &mut M,
        gradients: &Gradients<f32, Cpu>,
    ) -> Result<(), OptimizerUpdateError<CpuError>> {
        self.last_error = None;
        self.try_update(module, gradients).map_err(|e| {
            let (out, keep) = to_dfdx(e);
            self.last_error = keep;
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;
    use profit_core::{Adam, Phase, Sgd};

    type Net = (Linear<3, 4>, BatchNorm1D<4>, ReLU, Linear<4, 2>);

    fn config() -> ProfitConfig {
        ProfitConfig::new(Sgd { lr: 1e-3, ..Default::default() }, Adam { lr: 1e-2, ..Default::default() })
    }

    #[test]
    fn running_stats_are_not_registered_or_touched() {
        let dev = Cpu::seed_from_u64(0);
        let mut model = dev.build_module::<Net, f32>();
        let opt = DfdxProfit::new(&model, config()).unwrap();
        // Linear weight + bias, BatchNorm scale + bias (not running mean/var), Linear weight + bias.
        assert_eq!(opt.names().len(), 6);
        assert!(!opt.names().iter().any(|n| n.contains("running")));
        let mut opt = opt;
        let mut grads = model.alloc_grads();
        for _ in 0..3 {
            let x: Tensor<Rank2<8, 3>, f32, _> = dev.sample_normal();
            // Training-mode forward: updates the running statistics.
            let loss = model.forward_mut(x.traced(grads)).square().mean();
            grads = loss.backward();
            let (mean, var) = (model.1.running_mean.as_vec(), model.1.running_var.as_vec());
            let r = opt.try_update(&mut model, &grads).unwrap();
            assert!(matches!(r.phase, Phase::Reference | Phase::Main));
            assert_eq!(model.1.running_mean.as_vec(), mean);
            assert_eq!(model.1.running_var.as_vec(), var);
            model.zero_grads(&mut grads);
        }
    }

    #[test]
    fn an_external_main_optimizer_is_refused() {
        let dev = Cpu::seed_from_u64(1);
        let model = dev.build_module::<Net, f32>();
        let cfg = ProfitConfig { main: profit_core::optim::External::default().into(), ..config() };
        assert!(matches!(
            DfdxProfit::new(&model, cfg),
            Err(DfdxError::Profit(ProfitError::InvalidConfig(_)))
        ));
        assert!(DfdxProfit::new(&model, config()).is_ok());
    }

    #[test]
    fn missing_gradients_are_unused_params_and_change_nothing() {
        let dev = Cpu::seed_from_u64(1);
        let mut model = dev.build_module::<Net, f32>();
        let mut opt = DfdxProfit::new(&model, config()).unwrap();
        let x: Tensor<Rank2<8, 3>, f32, _> = dev.sample_normal();
        // Only the first layer takes part: the other tensors have no gradient.
        let grads = model.0.forward(x.leaky_trace()).square().mean().backward();
        let before = model.3.weight.as_vec();
        let w0 = model.0.weight.as_vec();
        match opt.update(&mut model, &grads) {
            Err(OptimizerUpdateError::UnusedParams(u)) => assert_eq!(u.ids.len(), 4),
            other => panic!("expected UnusedParams, got {other:?}"),
        }
        assert_eq!(model.3.weight.as_vec(), before);
        assert_eq!(model.0.weight.as_vec(), w0);
        assert_eq!(opt.profit().calls(), 0);
    }

    #[test]
    fn non_finite_gradient_is_a_typed_error() {
        let dev = Cpu::seed_from_u64(2);
        let mut model = dev.build_module::<Linear<2, 2>, f32>();
        let mut opt = DfdxProfit::new(&model, config()).unwrap();
        let mut grads = model.alloc_grads();
        grads.get_or_alloc_mut(&model.bias).unwrap()[0] = f32::NAN;
        let w = model.weight.as_vec();
        assert!(opt.update(&mut model, &grads).is_err());
        assert!(matches!(opt.last_error(), Some(DfdxError::Profit(ProfitError::NonFiniteGradient { .. }))));
        assert_eq!(model.weight.as_vec(), w);
    }

    #[test]
    fn invalid_config_is_refused() {
        let dev = Cpu::default();
        let model = dev.build_module::<Linear<2, 2>, f32>();
        let mut c = config();
        c.n_ref = 0;
        assert!(matches!(DfdxProfit::new(&model, c), Err(DfdxError::Profit(_))));
        assert!(DfdxPlain::new(&model, Sgd { lr: -1.0, ..Default::default() }).is_err());
    }

    #[test]
    fn plain_sgd_matches_hand_computation() {
        let dev = Cpu::default();
        let mut model = dev.build_module::<Linear<2, 1>, f32>();
        let mut opt = DfdxPlain::new(&model, Sgd { lr: 0.5, ..Default::default() }).unwrap();
        let w = model.weight.as_vec();
        let mut grads = model.alloc_grads();
        grads.get_or_alloc_mut(&model.weight).unwrap().copy_from_slice(&[1.0, -2.0]);
        opt.update(&mut model, &grads).unwrap();
        assert_eq!(model.weight.as_vec(), vec![w[0] - 0.5, w[1] + 1.0]);
    }
}
