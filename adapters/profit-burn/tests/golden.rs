//! Every golden trajectory replayed through burn itself: the least-squares model as a burn
//! `Module` with two `Param`s on an autodiff device, the loss built from burn ops, gradients
//! from burn's `backward()` (`GradientsParams::from_grads`), and [`BurnProfit::try_step`].
//!
//! Modes and tolerances (golden READMEs): f32 parameters replay the float64 files with the
//! accumulated delta within 1e-4 and the float32 files with the realized delta within 1e-5;
//! f64 parameters replay the float64 files in both delta modes within 1e-10.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use profit_burn::{BurnElement, BurnProfit};
use profit_conformance::delta_name;
use profit_conformance::golden::{self, GoldenCase};
use profit_core::element::Element;
use profit_core::{Delta, ProfitConfig};

#[derive(Module, Debug)]
struct Affine {
    w: Param<Tensor<2>>,
    b: Param<Tensor<1>>,
}

fn tensor<E: BurnElement, const D: usize>(data: &[f64], shape: &[usize], device: &Device) -> Tensor<D> {
    let v: Vec<E> = data.iter().map(|&x| <E as Element>::from_f64(x)).collect();
    Tensor::from_data(TensorData::new(v, shape.to_vec()), (device, E::BURN_DTYPE))
}

fn values<E: BurnElement, const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().as_slice::<E>().unwrap().iter().map(|x| x.as_f64()).collect()
}

/// Replay one case; returns the worst parameter error.
fn replay<E: BurnElement>(case: &GoldenCase, delta: Delta, tol: f64) -> Result<f64, String> {
    let device = Device::default().autodiff();
    let p = &case.problem;
    let (pw, pb) = (&p.params[0], &p.params[1]);
    let (d, k) = (p.features.shape[1], p.targets.shape[1]);
    let mut model = Affine {
        w: Param::from_tensor(tensor::<E, 2>(&pw.init, &pw.shape, &device)),
        b: Param::from_tensor(tensor::<E, 1>(&pb.init, &pb.shape, &device)),
    };
    let config = ProfitConfig { delta, ..case.profit_config()? };
    let mut opt = BurnProfit::new(&model, config).map_err(|e| e.to_string())?;
    if opt.names() != ["w", "b"] {
        return Err(format!("registered {:?}", opt.names()));
    }
    let mut worst = 0.0f64;
    for (call, (rows, rec)) in p.batches.iter().zip(&case.trajectory).enumerate() {
        let at = |m: String| format!("{} [{}] call {call}: {m}", case.name, delta_name(delta));
        let pick = |m: &[f64], w: usize| {
            rows.iter().flat_map(|&r| m[r * w..(r + 1) * w].iter().copied()).collect::<Vec<_>>()
        };
        let x = tensor::<E, 2>(&pick(&p.features.data, d), &[rows.len(), d], &device);
        let y = tensor::<E, 2>(&pick(&p.targets.data, k), &[rows.len(), k], &device);
        // loss = 0.5 * sum((x @ w + b - y)^2) / m, differentiated by burn.
        let r = x.matmul(model.w.val()) + model.b.val().unsqueeze_dim::<2>(0) - y;
        let loss = r.powi_scalar(2).sum().mul_scalar(0.5 / rows.len() as f64);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (next, report) = opt.try_step(model, &grads).map_err(|f| at(f.error.to_string()))?;
        model = next;
        let params = [("w", values::<E, 2>(model.w.val())), ("b", values::<E, 1>(model.b.val()))];
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

fn replay_all<E: BurnElement>() {
    let label = format!("burn-{}", <E as Element>::DTYPE);
    golden::replay_every_case(&label, <E as Element>::DTYPE, replay::<E>);
}

#[test]
fn golden_replay_through_burn_autodiff_f32() {
    replay_all::<f32>();
}

#[test]
fn golden_replay_through_burn_autodiff_f64() {
    replay_all::<f64>();
}
