//! PROFIT on dfdx: every golden trajectory replayed through the real dfdx path: a dfdx model
//! holding `w` and `b`, gradients in a dfdx `Gradients`, `Optimizer::update`. (`profit-dfdx`'s
//! host backend `Flat` is profit-core's `VecBackend<f32>`, whose conformance suite runs in
//! `vec.rs`.)

use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::nn::ZeroGrads;
use dfdx::optim::Optimizer;
use dfdx::prelude::*;
use profit_conformance::golden::{self, GoldenCase};
use profit_core::{Delta, ProfitConfig};
use profit_dfdx::DfdxProfit;

/// Largest golden shapes the dfdx replay takes (`w: [MAX_D, MAX_K]`, `b: [MAX_K]`).
const MAX_D: usize = 64;
const MAX_K: usize = 16;

/// The golden least-squares model as a dfdx module: `pred = x @ w + b`. dfdx 0.13's
/// `TensorCollection` needs compile-time shapes, so every case runs in a `[MAX_D, MAX_K]` model
/// whose extra entries are zero with zero gradients: every inner optimizer then leaves them at
/// exactly zero and they add exactly nothing to PROFIT's reductions.
struct Affine<E: Dtype, Dev: Storage<E>> {
    w: Tensor<Rank2<MAX_D, MAX_K>, E, Dev>,
    b: Tensor<Rank1<MAX_K>, E, Dev>,
}

impl<E: Dtype, Dev: Device<E>> TensorCollection<E, Dev> for Affine<E, Dev> {
    type To<E2: Dtype, D2: Device<E2>> = Affine<E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor("w", |s| &s.w, |s| &mut s.w, TensorOptions::reset_to_zeros()),
                Self::tensor("b", |s| &s.b, |s| &mut s.b, TensorOptions::reset_to_zeros()),
            ),
            |(w, b)| Affine { w, b },
        )
    }
}

/// Row-major `[d, k]` values into a zero-padded row-major `[rows, MAX_K]` buffer.
fn pad(v: &[f64], d: usize, k: usize, rows: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * MAX_K];
    for i in 0..d {
        for j in 0..k {
            out[i * MAX_K + j] = v[i * k + j] as f32;
        }
    }
    out
}

/// The `[d, k]` block of a padded `[rows, MAX_K]` buffer, widened.
fn unpad(v: &[f32], d: usize, k: usize) -> Vec<f64> {
    (0..d).flat_map(|i| (0..k).map(move |j| v[i * MAX_K + j] as f64)).collect()
}

/// Replay one case through dfdx in one delta mode within `tol`; returns the worst parameter
/// error.
fn replay(case: &GoldenCase, delta: Delta, tol: f64) -> Result<f64, String> {
    let dev = Cpu::default();
    let config = ProfitConfig { delta, ..case.profit_config()? };
    let (pw, pb) = (&case.problem.params[0], &case.problem.params[1]);
    let (d, k) = match (pw.shape.as_slice(), pb.shape.as_slice()) {
        ([d, k], [k2]) if k == k2 && *d <= MAX_D && *k <= MAX_K => (*d, *k),
        other => {
            return Err(format!(
                "{}: parameter shapes {other:?} are not [d, k] and [k] with d <= {MAX_D}, k <= {MAX_K}",
                case.name
            ))
        }
    };
    let mut model = Affine::<f32, Cpu> {
        w: dev.tensor_from_vec(pad(&pw.init, d, k, MAX_D), (Const::<MAX_D>, Const::<MAX_K>)),
        b: dev.tensor_from_vec(pad(&pb.init, 1, k, 1), (Const::<MAX_K>,)),
    };
    let mut opt = DfdxProfit::new(&model, config).map_err(|e| e.to_string())?;
    if opt.names() != ["w", "b"] {
        return Err(format!("registered {:?}", opt.names()));
    }
    let mut worst = 0.0f64;
    for (call, (rows, rec)) in case.problem.batches.iter().zip(&case.trajectory).enumerate() {
        let at = |m: String| format!("{} call {call}: {m}", case.name);
        let current = vec![unpad(&model.w.as_vec(), d, k), unpad(&model.b.as_vec(), 1, k)];
        let (g, _) = case.gradients(rows, &current);
        let mut grads = model.alloc_grads();
        grads
            .get_or_alloc_mut(&model.w)
            .map_err(|e| at(e.to_string()))?
            .copy_from_slice(&pad(&g[0], d, k, MAX_D));
        grads
            .get_or_alloc_mut(&model.b)
            .map_err(|e| at(e.to_string()))?
            .copy_from_slice(&pad(&g[1], 1, k, 1));
        opt.update(&mut model, &grads).map_err(|e| at(format!("{e} ({:?})", opt.last_error())))?;
        let report = *opt.last_report().ok_or_else(|| at("no report".into()))?;
        let (w_all, b_all) = (model.w.as_vec(), model.b.as_vec());
        if w_all.iter().enumerate().any(|(i, &x)| (i / MAX_K >= d || i % MAX_K >= k) && x != 0.0)
            || b_all.iter().skip(k).any(|&x| x != 0.0)
        {
            return Err(at("a padding entry moved".into()));
        }
        let params = [("w", unpad(&w_all, d, k)), ("b", unpad(&b_all, 1, k))];
        let main = report.main.map(|m| m.projected);
        let reports = || opt.profit().tensor_reports().iter().map(|r| r.projected).collect();
        worst = worst.max(rec.check(report.phase, &params, main, reports, tol).map_err(at)?);
    }
    Ok(worst)
}

#[test]
fn golden_replay_through_dfdx_optimizer() {
    golden::replay_every_case("dfdx-optimizer-f32", profit_core::element::Dtype::F32, replay);
}
