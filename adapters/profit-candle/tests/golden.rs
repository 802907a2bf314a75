//! Every golden trajectory replayed through candle itself: the least-squares model as two
//! `Var`s, the loss built from candle ops, gradients from candle's `backward()`, and
//! [`CandleProfit::try_step`], in place, through the copying path and through the tensor-ops
//! path (forced onto the CPU).
//!
//! Modes and tolerances (golden READMEs): f32 vars replay the float64 files with the
//! accumulated delta within 1e-4 and the float32 files with the realized delta within 1e-5;
//! f64 vars replay the float64 files in both delta modes within 1e-10.

use candle_core::{Device, Tensor, Var};
use profit_candle::{Access, CandleElement, CandleProfit};
use profit_conformance::delta_name;
use profit_conformance::golden::{self, GoldenCase};
use profit_core::element::Element;
use profit_core::{Delta, ProfitConfig};

fn tensor<E: CandleElement>(data: &[f64], shape: &[usize]) -> Tensor {
    let v: Vec<E> = data.iter().map(|&x| <E as Element>::from_f64(x)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn values<E: CandleElement>(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<E>().unwrap().iter().map(|x| x.as_f64()).collect()
}

/// Replay one case; returns the worst parameter error.
fn replay<E: CandleElement>(
    case: &GoldenCase,
    delta: Delta,
    tol: f64,
    access: Access,
) -> Result<f64, String> {
    let p = &case.problem;
    let (pw, pb) = (&p.params[0], &p.params[1]);
    let (n, d, k) = (p.features.shape[0], p.features.shape[1], p.targets.shape[1]);
    let x_all = tensor::<E>(&p.features.data, &[n, d]);
    let y_all = tensor::<E>(&p.targets.data, &[n, k]);
    let w = Var::from_tensor(&tensor::<E>(&pw.init, &pw.shape)).unwrap();
    let b = Var::from_tensor(&tensor::<E>(&pb.init, &pb.shape)).unwrap();
    let config = ProfitConfig { delta, ..case.profit_config()? };
    let vars = vec![("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
    let mut opt = CandleProfit::with_names(vars, config, access).map_err(|e| e.to_string())?;
    let resolved = if access == Access::Auto { Access::InPlace } else { access };
    assert_eq!(opt.access(), resolved);
    let mut worst = 0.0f64;
    for (call, (rows, rec)) in p.batches.iter().zip(&case.trajectory).enumerate() {
        let at = |m: String| format!("{} [{} {access:?}] call {call}: {m}", case.name, delta_name(delta));
        let idx =
            Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), &Device::Cpu)
                .unwrap();
        let (x, y) = (x_all.index_select(&idx, 0).unwrap(), y_all.index_select(&idx, 0).unwrap());
        // loss = 0.5 * sum((x @ w + b - y)^2) / m, differentiated by candle.
        let r = x.matmul(&w).unwrap().broadcast_add(&b).unwrap().sub(&y).unwrap();
        let loss = (r.sqr().unwrap().sum_all().unwrap() * (0.5 / rows.len() as f64)).unwrap();
        let grads = loss.backward().map_err(|e| at(e.to_string()))?;
        let report = opt.try_step(&grads).map_err(|e| at(e.to_string()))?;
        let params = [("w", values::<E>(w.as_tensor())), ("b", values::<E>(b.as_tensor()))];
        let main = report.main.map(|m| m.projected);
        let err = rec.check(
            report.phase,
            &params,
            main,
            || opt.tensor_reports().iter().map(|r| r.projected).collect(),
            tol,
        );
        worst = worst.max(err.map_err(at)?);
    }
    Ok(worst)
}

fn replay_all<E: CandleElement>() {
    for access in [Access::Auto, Access::Copy, Access::TensorOps] {
        let label = format!("candle-{}-{}", <E as Element>::DTYPE, format!("{access:?}").to_lowercase());
        golden::replay_every_case(&label, <E as Element>::DTYPE, |case, delta, tol| {
            replay::<E>(case, delta, tol, access)
        });
    }
}

#[test]
fn golden_replay_through_candle_autodiff_f32() {
    replay_all::<f32>();
}

#[test]
fn golden_replay_through_candle_autodiff_f64() {
    replay_all::<f64>();
}
