//! Experiment only: PROFIT with a naive float32 delta (`profit toy --naive-delta`).
//!
//! This is how a straightforward PyTorch implementation of Algorithm 1 would do it, and what
//! SPEC.md section 2 forbids: at a reference call, `anchor = theta.clone()` and
//! `theta.add_(g, alpha=-lr_ref)` in float32, with no delta accumulated; at the main call,
//! `delta = theta' - anchor` in float32. When `lr_ref` is far below the float32 spacing of the
//! weights, that subtraction returns rounding noise (or zero) instead of the reference update.
//! Everything else is as in profit-core's PROFIT: SGD reference, global projection only when
//! `omega < 0` (reductions in f64), restore `theta = anchor`, then the main optimizer (any of
//! profit-core's `torch.optim` formulas, through [`Plain`]) with the projected gradient.
//!
//! The model's trainable tensors are mirrored into flat `f32` buffers with profit-dfdx's
//! [`Mirror`], and copied back after every call.

use std::marker::PhantomData;

use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::prelude::{Cpu, Gradients};
use profit_core::{InnerConfig, ParamGroup, Plain};
use profit_dfdx::{Flat, FlatTensor, Mirror};

/// `theta += (-lr) * g` in float32, as `torch.Tensor.add_(g, alpha=-lr)` (SGD without momentum).
pub fn sgd_step_f32(theta: &mut [f32], g: &[f32], lr: f64) {
    let alpha = -(lr as f32);
    for (t, &g) in theta.iter_mut().zip(g) {
        *t += alpha * g;
    }
}

/// The naive delta `theta' - anchor`, elementwise in float32.
pub fn naive_delta_f32(theta: &[f32], anchor: &[f32], delta: &mut [f32]) {
    for ((d, &t), &a) in delta.iter_mut().zip(theta).zip(anchor) {
        *d = t - a;
    }
}

/// `(<delta, g>, |delta|^2, |g|^2)`, accumulated in f64.
pub fn reductions(delta: &[f32], g: &[f32]) -> (f64, f64, f64) {
    let (mut om, mut dd, mut gg) = (0.0f64, 0.0f64, 0.0f64);
    for (&d, &g) in delta.iter().zip(g) {
        let (d, g) = (d as f64, g as f64);
        om += d * g;
        dd += d * d;
        gg += g * g;
    }
    (om, dd, gg)
}

/// `g -= coef * delta` in float32 (coefficient rounded to f32, as profit-core's kernels do).
pub fn project_f32(g: &mut [f32], delta: &[f32], coef: f64) {
    let c = coef as f32;
    for (g, &d) in g.iter_mut().zip(delta) {
        *g -= c * d;
    }
}

/// What one main call did.
#[derive(Clone, Copy, Debug)]
pub struct NaiveMain {
    /// Whether the gradient was projected (`omega < 0` and `|delta|^2 > 0`).
    pub projected: bool,
    /// `cos(delta, g)` (0 when either is zero).
    pub cosine: f64,
    /// `|delta|^2` of the naive delta.
    pub delta_sq: f64,
    /// Diagnostics against the exact reference update `u = -lr_ref * g_ref` (what profit-core
    /// accumulates): `cos(naive delta, u)` and `|naive delta| / |u|` (0 when either is zero).
    pub cos_to_exact: f64,
    pub norm_ratio_to_exact: f64,
}

/// PROFIT (n_ref = 1, SGD reference, global projection, no warm-up) with the naive float32 delta.
pub struct NaiveProfit<M> {
    mirror: Mirror,
    anchor: Vec<Vec<f32>>,
    delta: Vec<Vec<f32>>,
    /// The gradient of the last reference call and the rate it was applied with (diagnostics).
    ref_grad: Vec<Vec<f32>>,
    ref_lr_used: f64,
    main: Plain<Flat>,
    lr_ref: f64,
    calls: u64,
    _model: PhantomData<fn(&M)>,
}

impl<M: TensorCollection<f32, Cpu>> NaiveProfit<M> {
    /// Build over every trainable tensor of `model`, with main optimizer `main` and reference
    /// learning rate `lr_ref`.
    pub fn new(model: &M, main: impl Into<InnerConfig>, lr_ref: f64) -> Result<Self, String> {
        let mirror = Mirror::of(model).map_err(|e| e.to_string())?;
        let params = mirror.params();
        let group = ParamGroup::new(mirror.names().iter().map(String::as_str).zip(params));
        let main = Plain::with_groups(main.into(), vec![group]).map_err(|e| e.to_string())?;
        let anchor = params.iter().map(|p| p.data.clone()).collect();
        let delta: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.data.len()]).collect();
        let ref_grad = delta.clone();
        Ok(NaiveProfit {
            mirror,
            anchor,
            delta,
            ref_grad,
            ref_lr_used: 0.0,
            main,
            lr_ref,
            calls: 0,
            _model: PhantomData,
        })
    }

    /// Set the main learning rate and the reference one (`lr_ref`).
    pub fn set_lr(&mut self, lr: f64, lr_ref: f64) -> Result<(), String> {
        self.lr_ref = lr_ref;
        self.main.set_lr(lr).map_err(|e| e.to_string())
    }

    /// One call; `gradients` is the gradient of the loss at the model's current parameters.
    /// Returns `Some` at main calls.
    pub fn step(
        &mut self,
        model: &mut M,
        gradients: &Gradients<f32, Cpu>,
    ) -> Result<Option<NaiveMain>, String> {
        self.mirror.gather(&*model, gradients).map_err(|e| e.to_string())?;
        let (params, grads) = self.mirror.params_and_grads_mut();
        let out = if self.calls % 2 == 0 {
            // Reference call: remember the anchor, take the SGD step in f32, keep no delta.
            for (a, p) in self.anchor.iter_mut().zip(params.iter()) {
                a.copy_from_slice(&p.data);
            }
            for ((p, g), r) in params.iter_mut().zip(grads.iter()).zip(&mut self.ref_grad) {
                sgd_step_f32(&mut p.data, &g.data, self.lr_ref);
                r.copy_from_slice(&g.data);
            }
            self.ref_lr_used = self.lr_ref;
            None
        } else {
            // Main call: naive delta, global conditional projection, restore, main step.
            let (mut om, mut dd, mut gg) = (0.0, 0.0, 0.0);
            for ((p, a), d) in params.iter().zip(&self.anchor).zip(&mut self.delta) {
                naive_delta_f32(&p.data, a, d);
            }
            let (mut dr, mut rr) = (0.0, 0.0);
            for ((d, g), r) in self.delta.iter().zip(grads.iter()).zip(&self.ref_grad) {
                let (o, x, y) = reductions(d, &g.data);
                (om, dd, gg) = (om + o, dd + x, gg + y);
                let (o, _, y) = reductions(d, r);
                (dr, rr) = (dr + o, rr + y);
            }
            // u = -lr_ref * g_ref: <delta, u> = -lr_ref <delta, g_ref>, |u| = lr_ref |g_ref|.
            let unorm = self.ref_lr_used * rr.sqrt();
            let (cos_to_exact, norm_ratio_to_exact) = if dd > 0.0 && unorm > 0.0 {
                (-self.ref_lr_used * dr / (dd.sqrt() * unorm), dd.sqrt() / unorm)
            } else {
                (0.0, 0.0)
            };
            let projected = om < 0.0 && dd > 0.0;
            if projected {
                for (g, d) in grads.iter_mut().zip(&self.delta) {
                    project_f32(&mut g.data, d, om / dd);
                }
            }
            for (p, a) in params.iter_mut().zip(&self.anchor) {
                p.data.copy_from_slice(a);
            }
            let mut pm: Vec<&mut FlatTensor> = params.iter_mut().collect();
            let gr: Vec<&FlatTensor> = grads.iter().collect();
            self.main.step(&mut pm, &gr).map_err(|e| e.to_string())?;
            let cosine = if dd > 0.0 && gg > 0.0 { om / (dd.sqrt() * gg.sqrt()) } else { 0.0 };
            Some(NaiveMain { projected, cosine, delta_sq: dd, cos_to_exact, norm_ratio_to_exact })
        };
        self.calls += 1;
        self.mirror.scatter(model);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::{AsArray, DeviceBuildExt, Linear, ZeroGrads};
    use profit_core::{RmsProp, Sgd};

    /// With `lr_ref` far below the float32 spacing of the weights, the naive delta loses the
    /// reference update: zero for weights near 1, exact-ish only for tiny weights; the update
    /// itself (what profit-core accumulates) is not lost.
    #[test]
    fn naive_delta_is_quantized_where_the_update_is_not() {
        let lr = 5e-8;
        let g = [0.3f32, -0.2, 0.25, 0.1];
        let anchor = [0.9f32, 0.7, 1e-3, -1e-4];
        let mut theta = anchor;
        sgd_step_f32(&mut theta, &g, lr);
        let mut naive = [0.0f32; 4];
        naive_delta_f32(&theta, &anchor, &mut naive);
        let exact: Vec<f32> = g.iter().map(|&g| -(lr as f32) * g).collect();
        // Weights in [0.5, 1): spacing 5.96e-8, update <= 1.5e-8: the step is lost entirely.
        assert_eq!(naive[0], 0.0);
        assert_eq!(naive[1], 0.0);
        assert!(exact[0] != 0.0 && exact[1] != 0.0);
        // Small weights keep the update to a few float32 spacings.
        for k in 2..4 {
            let rel = ((naive[k] - exact[k]) / exact[k]).abs();
            assert!(rel < 1e-2, "k {k}: naive {} exact {}", naive[k], exact[k]);
        }
        // Reductions in f64 and the projection.
        let (om, dd, gg) = reductions(&exact, &g);
        assert!(om < 0.0 && dd > 0.0 && gg > 0.0);
        let mut gp = g;
        project_f32(&mut gp, &exact, om / dd);
        let (after, _, _) = reductions(&exact, &gp);
        assert!(after.abs() < 1e-6 * om.abs(), "{after} vs {om}");
    }

    /// Mid-size weights: the naive delta is a multiple of the float32 spacing, not the update.
    #[test]
    fn naive_delta_rounds_to_the_float32_grid() {
        let (anchor, g, lr) = ([0.6f32], [1.0f32], 5e-8);
        let mut theta = anchor;
        sgd_step_f32(&mut theta, &g, lr);
        let mut d = [0.0f32];
        naive_delta_f32(&theta, &anchor, &mut d);
        let ulp = 0.6f32 - f32::from_bits(0.6f32.to_bits() - 1);
        assert_eq!(d[0], -ulp);
        assert!(((d[0] as f64 + 5e-8) / 5e-8).abs() > 0.15);
    }

    /// With `lr_ref = 0` the arm is RMSprop on every other batch from the restored anchor (never
    /// projects), and the reference call leaves the model untouched.
    #[test]
    fn cycle_on_a_dfdx_model() {
        let dev = Cpu::default();
        let mut model = dev.build_module::<Linear<2, 1>, f32>();
        let w0 = model.weight.array();
        let mut opt = NaiveProfit::new(&model, RmsProp { lr: 1e-2, ..Default::default() }, 0.0).unwrap();
        let mut grads = model.alloc_grads();
        grads.get_or_alloc_mut(&model.weight).unwrap().copy_from_slice(&[1.0, -1.0]);
        assert!(opt.step(&mut model, &grads).unwrap().is_none());
        assert_eq!(model.weight.array(), w0);
        let m = opt.step(&mut model, &grads).unwrap().unwrap();
        assert!(!m.projected && m.delta_sq == 0.0);
        assert!(model.weight.array()[0][0] < w0[0][0] && model.weight.array()[0][1] > w0[0][1]);
        // A large reference rate: the delta is exact enough and opposes g at the main call.
        let mut opt = NaiveProfit::new(&model, Sgd { lr: 0.0, ..Default::default() }, 0.1).unwrap();
        let w1 = model.weight.array();
        assert!(opt.step(&mut model, &grads).unwrap().is_none());
        let m = opt.step(&mut model, &grads).unwrap().unwrap();
        assert!(m.projected && m.cosine < -0.999, "{m:?}");
        // Restored to the anchor, and SGD with lr 0 leaves it there.
        assert_eq!(model.weight.array(), w1);
    }
}
