//! Inner optimizers with PyTorch's `torch.optim` formulas, names and defaults.
//!
//! Each configuration validates like PyTorch and turns, once per step, into a [`Rule`]: the
//! per-element update with every scalar (bias corrections, step sizes) precomputed in `f64` and
//! rounded once to the element type. Backends run rules inside their fused kernels; the element
//! math below is the single definition the host kernels use and the CUDA kernels mirror.

use serde::{Deserialize, Serialize};

use crate::element::Real;
use crate::error::{ProfitError, Result};

/// `torch.optim.SGD`: momentum, dampening, nesterov, L2 weight decay.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sgd {
    /// Learning rate (PyTorch default `1e-3`).
    pub lr: f64,
    /// Momentum factor (default `0`).
    pub momentum: f64,
    /// Dampening for momentum (default `0`).
    pub dampening: f64,
    /// Nesterov momentum (default `false`; needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
    /// L2 penalty added to the gradient (default `0`).
    pub weight_decay: f64,
    /// Maximize the objective: step along `+g` (default `false`).
    pub maximize: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd { lr: 1e-3, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0, maximize: false }
    }
}

/// `torch.optim.Adam` (L2 weight decay added to the gradient) and, through [`AdamW`], its
/// decoupled-decay sibling.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adam {
    /// Learning rate (default `1e-3`).
    pub lr: f64,
    /// Coefficients for the running averages of the gradient and its square (default `(0.9, 0.999)`).
    pub betas: (f64, f64),
    /// Term added to the denominator (default `1e-8`).
    pub eps: f64,
    /// Weight decay (default `0`): L2 for Adam, decoupled for AdamW.
    pub weight_decay: f64,
    /// Use the AMSGrad variant (default `false`).
    pub amsgrad: bool,
    /// Maximize the objective (default `false`).
    pub maximize: bool,
}

impl Default for Adam {
    fn default() -> Self {
        Adam { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, amsgrad: false, maximize: false }
    }
}

/// `torch.optim.AdamW`: Adam with decoupled weight decay (default `weight_decay = 1e-2`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamW {
    /// Learning rate (default `1e-3`).
    pub lr: f64,
    /// Running-average coefficients (default `(0.9, 0.999)`).
    pub betas: (f64, f64),
    /// Term added to the denominator (default `1e-8`).
    pub eps: f64,
    /// Decoupled weight decay (default `1e-2`).
    pub weight_decay: f64,
    /// Use the AMSGrad variant (default `false`).
    pub amsgrad: bool,
    /// Maximize the objective (default `false`).
    pub maximize: bool,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            amsgrad: false,
            maximize: false,
        }
    }
}

/// `torch.optim.RMSprop`: alpha, eps, L2 weight decay, momentum, centered.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmsProp {
    /// Learning rate (default `1e-2`).
    pub lr: f64,
    /// Smoothing constant (default `0.99`).
    pub alpha: f64,
    /// Term added to the denominator (default `1e-8`).
    pub eps: f64,
    /// L2 penalty (default `0`).
    pub weight_decay: f64,
    /// Momentum factor (default `0`).
    pub momentum: f64,
    /// Normalize by the estimated variance of the gradient (default `false`).
    pub centered: bool,
    /// Maximize the objective (default `false`).
    pub maximize: bool,
}

impl Default for RmsProp {
    fn default() -> Self {
        RmsProp {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

/// A main optimizer that lives outside profit-core (a framework's own optimizer, such as burn's
/// `Adam`): PROFIT takes the reference steps, restores the anchor and projects the gradient as
/// usual, and instead of applying a main rule it leaves the weights where they are (restored
/// to the anchor at main calls, unchanged at warm-up calls) and keeps the gradient the main
/// optimizer must use in one state slot per tensor, `grad` ([`Profit::captured_grad`]): the
/// clipped and projected gradient `s * g - c * delta`. The caller then steps the weights with
/// its optimizer and that gradient.
///
/// Only PROFIT's main optimizer can be external: as the reference optimizer, or alone in
/// [`Plain`](crate::plain::Plain), it is refused with [`ProfitError::InvalidConfig`].
///
/// [`Profit::captured_grad`]: crate::Profit::captured_grad
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct External {
    /// The learning rate the external optimizer is called with (default `1e-3`). PROFIT does
    /// not apply it; it sets the reference rate through `lr_main / lr_ref`
    /// ([`LrCoupling`](crate::config::LrCoupling)) and is what [`Profit::lr`](crate::Profit::lr)
    /// and the schedules move.
    pub lr: f64,
}

impl Default for External {
    fn default() -> Self {
        External { lr: 1e-3 }
    }
}

/// Any inner optimizer: PROFIT's reference optimizer `O_ref` or its main optimizer `O`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum InnerConfig {
    /// `torch.optim.SGD`.
    Sgd(Sgd),
    /// `torch.optim.Adam`.
    Adam(Adam),
    /// `torch.optim.AdamW`.
    AdamW(AdamW),
    /// `torch.optim.RMSprop`.
    RmsProp(RmsProp),
    /// A main optimizer outside profit-core: PROFIT captures the projected gradient for it
    /// (main optimizer only; see [`External`]).
    External(External),
}

impl From<Sgd> for InnerConfig {
    fn from(c: Sgd) -> Self {
        InnerConfig::Sgd(c)
    }
}
impl From<Adam> for InnerConfig {
    fn from(c: Adam) -> Self {
        InnerConfig::Adam(c)
    }
}
impl From<AdamW> for InnerConfig {
    fn from(c: AdamW) -> Self {
        InnerConfig::AdamW(c)
    }
}
impl From<RmsProp> for InnerConfig {
    fn from(c: RmsProp) -> Self {
        InnerConfig::RmsProp(c)
    }
}
impl From<External> for InnerConfig {
    fn from(c: External) -> Self {
        InnerConfig::External(c)
    }
}

fn check(name: &'static str, value: f64, ok: bool, reason: &'static str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(ProfitError::InvalidHyperparameter { name, value, reason })
    }
}

/// `lr >= 0` and finite.
pub(crate) fn check_lr(name: &'static str, lr: f64) -> Result<()> {
    check(name, lr, lr.is_finite() && lr >= 0.0, "must be finite and >= 0")
}

fn check_nonneg(name: &'static str, v: f64) -> Result<()> {
    check(name, v, v.is_finite() && v >= 0.0, "must be finite and >= 0")
}

fn check_beta(name: &'static str, v: f64) -> Result<()> {
    check(name, v, (0.0..1.0).contains(&v), "must be in [0, 1)")
}

impl InnerConfig {
    /// PyTorch's name for this optimizer kind (`sgd`, `adam`, `adamw`, `rmsprop`), or
    /// `external`.
    pub fn kind(&self) -> &'static str {
        match self {
            InnerConfig::Sgd(_) => "sgd",
            InnerConfig::Adam(_) => "adam",
            InnerConfig::AdamW(_) => "adamw",
            InnerConfig::RmsProp(_) => "rmsprop",
            InnerConfig::External(_) => "external",
        }
    }

    /// Whether this is an [`External`] main optimizer (PROFIT captures the gradient for it).
    pub fn is_external(&self) -> bool {
        matches!(self, InnerConfig::External(_))
    }

    /// Validate the hyperparameters with PyTorch's rules.
    pub fn validate(&self) -> Result<()> {
        match *self {
            InnerConfig::Sgd(c) => {
                check_lr("lr", c.lr)?;
                check_nonneg("momentum", c.momentum)?;
                check("dampening", c.dampening, c.dampening.is_finite(), "must be finite")?;
                check_nonneg("weight_decay", c.weight_decay)?;
                if c.nesterov {
                    check(
                        "momentum",
                        c.momentum,
                        c.momentum > 0.0 && c.dampening == 0.0,
                        "nesterov needs momentum > 0 and dampening = 0",
                    )?;
                }
                Ok(())
            }
            InnerConfig::Adam(Adam { lr, betas, eps, weight_decay, .. })
            | InnerConfig::AdamW(AdamW { lr, betas, eps, weight_decay, .. }) => {
                check_lr("lr", lr)?;
                check_beta("betas.0", betas.0)?;
                check_beta("betas.1", betas.1)?;
                check_nonneg("eps", eps)?;
                check_nonneg("weight_decay", weight_decay)
            }
            InnerConfig::RmsProp(c) => {
                check_lr("lr", c.lr)?;
                check_nonneg("alpha", c.alpha)?;
                check_nonneg("eps", c.eps)?;
                check_nonneg("weight_decay", c.weight_decay)?;
                check_nonneg("momentum", c.momentum)
            }
            InnerConfig::External(c) => check_lr("lr", c.lr),
        }
    }

    /// `maximize` (torch's option): the gradient is negated before the update. Backends see it
    /// as a negative gradient scale (and projection coefficient), so kernels need nothing extra.
    pub fn maximize(&self) -> bool {
        match self {
            InnerConfig::Sgd(c) => c.maximize,
            InnerConfig::Adam(c) => c.maximize,
            InnerConfig::AdamW(c) => c.maximize,
            InnerConfig::RmsProp(c) => c.maximize,
            InnerConfig::External(_) => false,
        }
    }

    /// `-1` with `maximize`, else `1`.
    pub fn grad_sign(&self) -> f64 {
        if self.maximize() {
            -1.0
        } else {
            1.0
        }
    }

    /// Learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            InnerConfig::Sgd(c) => c.lr,
            InnerConfig::Adam(c) => c.lr,
            InnerConfig::AdamW(c) => c.lr,
            InnerConfig::RmsProp(c) => c.lr,
            InnerConfig::External(c) => c.lr,
        }
    }

    /// Weight decay (`0` for [`External`]: the external optimizer applies its own).
    pub fn weight_decay(&self) -> f64 {
        match self {
            InnerConfig::Sgd(c) => c.weight_decay,
            InnerConfig::Adam(c) => c.weight_decay,
            InnerConfig::AdamW(c) => c.weight_decay,
            InnerConfig::RmsProp(c) => c.weight_decay,
            InnerConfig::External(_) => 0.0,
        }
    }

    /// The same configuration with another learning rate.
    pub fn with_lr(mut self, lr: f64) -> Self {
        match &mut self {
            InnerConfig::Sgd(c) => c.lr = lr,
            InnerConfig::Adam(c) => c.lr = lr,
            InnerConfig::AdamW(c) => c.lr = lr,
            InnerConfig::RmsProp(c) => c.lr = lr,
            InnerConfig::External(c) => c.lr = lr,
        }
        self
    }

    /// The same configuration with another weight decay (none for [`External`]).
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        match &mut self {
            InnerConfig::Sgd(c) => c.weight_decay = weight_decay,
            InnerConfig::Adam(c) => c.weight_decay = weight_decay,
            InnerConfig::AdamW(c) => c.weight_decay = weight_decay,
            InnerConfig::RmsProp(c) => c.weight_decay = weight_decay,
            InnerConfig::External(_) => {}
        }
        self
    }

    /// Names of the per-parameter state buffers, in PyTorch's names and in kernel slot order.
    pub fn slot_names(&self) -> &'static [&'static str] {
        match *self {
            InnerConfig::Sgd(c) if c.momentum != 0.0 => &["momentum_buffer"],
            InnerConfig::Sgd(_) => &[],
            InnerConfig::Adam(Adam { amsgrad, .. }) | InnerConfig::AdamW(AdamW { amsgrad, .. }) => {
                if amsgrad {
                    &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
                } else {
                    &["exp_avg", "exp_avg_sq"]
                }
            }
            InnerConfig::RmsProp(c) => match (c.centered, c.momentum > 0.0) {
                (false, false) => &["square_avg"],
                (true, false) => &["square_avg", "grad_avg"],
                (false, true) => &["square_avg", "momentum_buffer"],
                (true, true) => &["square_avg", "grad_avg", "momentum_buffer"],
            },
            InnerConfig::External(_) => &["grad"],
        }
    }

    /// Number of parameter-sized state buffers this optimizer keeps per tensor.
    pub fn slots(&self) -> usize {
        self.slot_names().len()
    }

    /// The element rule for step number `step` (1-based, as PyTorch's `state['step']` after its
    /// increment) with learning rate `lr` and weight decay `weight_decay` (a parameter group's).
    pub fn rule<E: Real>(&self, step: u64, lr: f64, weight_decay: f64) -> Rule<E> {
        let e = E::from_f64;
        match *self {
            InnerConfig::Sgd(c) if c.momentum != 0.0 => Rule::SgdMomentum(SgdMomentumRule {
                lr: e(lr),
                weight_decay: e(weight_decay),
                momentum: e(c.momentum),
                one_minus_dampening: e(1.0 - c.dampening),
                nesterov: c.nesterov,
                first: step <= 1,
            }),
            InnerConfig::Sgd(_) => Rule::Sgd(SgdRule { lr: e(lr), weight_decay: e(weight_decay) }),
            InnerConfig::Adam(Adam { betas, eps, amsgrad, .. }) => {
                Rule::Adam(AdamRule::new(step, lr, betas, eps, weight_decay, false, amsgrad))
            }
            InnerConfig::AdamW(AdamW { betas, eps, amsgrad, .. }) => {
                Rule::Adam(AdamRule::new(step, lr, betas, eps, weight_decay, true, amsgrad))
            }
            InnerConfig::RmsProp(c) => Rule::RmsProp(RmsPropRule {
                lr: e(lr),
                weight_decay: e(weight_decay),
                alpha: e(c.alpha),
                one_minus_alpha: e(1.0 - c.alpha),
                eps: e(c.eps),
                momentum: e(c.momentum),
                centered: c.centered,
                use_momentum: c.momentum > 0.0,
            }),
            InnerConfig::External(_) => Rule::Capture,
        }
    }
}

/// One step of one inner optimizer for every element of a tensor, with all scalars ready.
///
/// `update(p, g, s0, s1, s2)` takes the parameter value `p`, the (already projected) gradient
/// `g` and the state slots in [`InnerConfig::slot_names`] order, updates the slots, and returns
/// the update `u` so that the new parameter is `p + u`. PROFIT accumulates `u` itself into
/// `delta` (the accumulated mode; see [`Delta`](crate::Delta)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule<E> {
    /// SGD without momentum.
    Sgd(SgdRule<E>),
    /// SGD with momentum (and optionally dampening, nesterov).
    SgdMomentum(SgdMomentumRule<E>),
    /// Adam / AdamW, optionally AMSGrad.
    Adam(AdamRule<E>),
    /// RMSprop, optionally centered and with momentum.
    RmsProp(RmsPropRule<E>),
    /// [`External`]: no update (`u = -0`, which leaves every value bitwise as it is); the
    /// gradient as it reaches the rule (scaled and, at main calls, projected) is stored in
    /// slot 0.
    Capture,
}

impl<E> Rule<E> {
    /// Number of state slots the rule reads and writes.
    pub fn slots(&self) -> usize {
        match self {
            Rule::Sgd(_) => 0,
            Rule::SgdMomentum(_) => 1,
            Rule::Adam(r) => 2 + r.amsgrad as usize,
            Rule::RmsProp(r) => 1 + r.centered as usize + r.use_momentum as usize,
            Rule::Capture => 1,
        }
    }
}

/// [`Rule::Capture`] on one element: store `g` in the slot and return the update `-0`
/// (`p + -0 == p` bitwise for every `p`, signed zeros included).
#[inline(always)]
pub fn capture<E: Real>(g: E, slot: &mut E) -> E {
    *slot = g;
    -E::zero()
}

/// `torch.lerp(start, end, weight)` exactly as PyTorch's CPU kernel evaluates it.
#[inline(always)]
pub fn lerp<E: Real>(start: E, end: E, weight: E) -> E {
    if weight.abs() < E::from_f64(0.5) {
        start + weight * (end - start)
    } else {
        end - (end - start) * (E::one() - weight)
    }
}

/// SGD without momentum: `u = -lr * (g + wd * p)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdRule<E> {
    /// Learning rate.
    pub lr: E,
    /// L2 weight decay.
    pub weight_decay: E,
}

impl<E: Real> SgdRule<E> {
    /// Update of one element.
    #[inline(always)]
    pub fn update(&self, p: E, g: E) -> E {
        let d = g + self.weight_decay * p;
        -(self.lr * d)
    }
}

/// SGD with momentum, as `torch.optim.SGD`: the buffer is the first step's gradient (no
/// dampening on that step), then `buf = momentum * buf + (1 - dampening) * d`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdMomentumRule<E> {
    /// Learning rate.
    pub lr: E,
    /// L2 weight decay.
    pub weight_decay: E,
    /// Momentum factor.
    pub momentum: E,
    /// `1 - dampening`.
    pub one_minus_dampening: E,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// First step: the buffer is initialized to the gradient.
    pub first: bool,
}

impl<E: Real> SgdMomentumRule<E> {
    /// Update of one element with its momentum buffer.
    #[inline(always)]
    pub fn update(&self, p: E, g: E, buf: &mut E) -> E {
        let d = g + self.weight_decay * p;
        let b = if self.first { d } else { self.momentum * *buf + self.one_minus_dampening * d };
        *buf = b;
        let step = if self.nesterov { d + self.momentum * b } else { b };
        -(self.lr * step)
    }
}

/// Adam / AdamW (`torch.optim.Adam`, single-tensor path), optionally AMSGrad.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamRule<E> {
    /// L2 weight decay added to the gradient (Adam), zero for AdamW.
    pub l2: E,
    /// `-lr * weight_decay` for AdamW's decoupled decay, zero for Adam.
    pub decay: E,
    /// `1 - beta1`, the `lerp` weight of the first moment.
    pub one_minus_beta1: E,
    /// `beta2`.
    pub beta2: E,
    /// `1 - beta2`.
    pub one_minus_beta2: E,
    /// `sqrt(1 - beta2^step)`.
    pub bias_correction2_sqrt: E,
    /// `lr / (1 - beta1^step)`.
    pub step_size: E,
    /// `eps`.
    pub eps: E,
    /// AMSGrad: keep the running maximum of the second moment.
    pub amsgrad: bool,
}

impl<E: Real> AdamRule<E> {
    fn new(
        step: u64,
        lr: f64,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
        amsgrad: bool,
    ) -> Self {
        let e = E::from_f64;
        let t = step.clamp(1, i32::MAX as u64) as i32;
        let bias_correction1 = 1.0 - betas.0.powi(t);
        let bias_correction2 = 1.0 - betas.1.powi(t);
        AdamRule {
            l2: e(if decoupled { 0.0 } else { weight_decay }),
            decay: e(if decoupled { -lr * weight_decay } else { 0.0 }),
            one_minus_beta1: e(1.0 - betas.0),
            beta2: e(betas.1),
            one_minus_beta2: e(1.0 - betas.1),
            bias_correction2_sqrt: e(bias_correction2.sqrt()),
            step_size: e(lr / bias_correction1),
            eps: e(eps),
            amsgrad,
        }
    }

    /// Update of one element with its moments (`m`, `v`, `v_max`).
    #[inline(always)]
    pub fn update(&self, p: E, g: E, m: &mut E, v: &mut E, vmax: &mut E) -> E {
        let g = g + self.l2 * p;
        let m1 = lerp(*m, g, self.one_minus_beta1);
        let v1 = *v * self.beta2 + self.one_minus_beta2 * g * g;
        *m = m1;
        *v = v1;
        let vv = if self.amsgrad {
            let mx = if *vmax > v1 { *vmax } else { v1 };
            *vmax = mx;
            mx
        } else {
            v1
        };
        let denom = vv.sqrt() / self.bias_correction2_sqrt + self.eps;
        self.decay * p - self.step_size * m1 / denom
    }
}

/// RMSprop (`torch.optim.RMSprop`), optionally centered and with momentum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsPropRule<E> {
    /// Learning rate.
    pub lr: E,
    /// L2 weight decay.
    pub weight_decay: E,
    /// `alpha`.
    pub alpha: E,
    /// `1 - alpha`.
    pub one_minus_alpha: E,
    /// `eps`.
    pub eps: E,
    /// Momentum factor.
    pub momentum: E,
    /// Centered variant.
    pub centered: bool,
    /// `momentum > 0`.
    pub use_momentum: bool,
}

impl<E: Real> RmsPropRule<E> {
    /// Update of one element with its square average, gradient average and momentum buffer.
    #[inline(always)]
    pub fn update(&self, p: E, g: E, sq: &mut E, gavg: &mut E, buf: &mut E) -> E {
        let g = g + self.weight_decay * p;
        let s = self.alpha * *sq + self.one_minus_alpha * g * g;
        *sq = s;
        let avg = if self.centered {
            let ga = lerp(*gavg, g, self.one_minus_alpha);
            *gavg = ga;
            (s - ga * ga).sqrt() + self.eps
        } else {
            s.sqrt() + self.eps
        };
        if self.use_momentum {
            let b = self.momentum * *buf + g / avg;
            *buf = b;
            -(self.lr * b)
        } else {
            -(self.lr * g / avg)
        }
    }
}
