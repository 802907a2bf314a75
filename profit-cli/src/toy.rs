//! `profit toy`: the paper's Section 4.1 experiment (see `EXPERIMENTS.md`) on dfdx.
//!
//! `f(x) = sin(10 |x|)` on `x in R^2`. Pre-train a 2-H-H-1 MLP (LayerNorm after each hidden
//! layer, ReLU) on noisy points of `[-1, 1]^2`, then fine-tune on noisy points of
//! `[0.8, 1.5]^2` (full model, head only, PROFIT) and measure the MSE on noise-free test points
//! of both domains.
//!
//! Choices the paper leaves open (all printed at run time and written to the JSON):
//! - activation ReLU; batches drawn uniformly with replacement from the 50,000 training points
//!   (pre-training batch 512; fine-tuning batch `--batch`, default 512);
//! - label noise: Gaussian, standard deviation 0.1 (`--noise`);
//! - optimizers use PyTorch's formulas (profit-core): RMSprop (alpha 0.99, eps 1e-8) for
//!   pre-training, full and head-only fine-tuning and as PROFIT's main optimizer; plain SGD as
//!   PROFIT's reference optimizer with `lr_ref = lr_main / --ratio`, the ratio kept fixed by the
//!   schedule; n_ref = 1; `--delta` realized (default) or accumulated;
//! - error metric: MSE on 10,000 noise-free uniform test points per domain;
//! - seeds 0.. (`--seeds`, `--first-seed`): each seed draws its own data, initialization and
//!   batches; every fine-tuning arm of one seed starts from the same pre-trained model and arms
//!   with the same batch size see the same batch sequence;
//! - step schedules: `x0.9` every `pretrain_steps / 20` steps and `x0.95` every
//!   `steps / 15` steps of the arm (500 and 100 at the paper's 10,000 and 1,500 steps).
//!
//! Every PROFIT arm is paired with its equal-steps control (PROFIT with `lr_ref = 0` and the same
//! `n_ref`: the same main steps on the same batches, without the projection); the default run
//! includes it (`--no-control` drops it) and prints the paired difference over seeds.
//!
//! `--sweep` runs the whole grid of `EXPERIMENTS.md`: delta mode x `lr_main / lr_ref` x batch,
//! each against full fine-tuning with the same batches and with the same main steps, head-only
//! and the `lr_ref = 0` control. `--sweep-scale` (with `--full`: the paper's width) runs the
//! ratios, both delta modes and `n_ref` 1-3, each against its own control, over 5 seeds.

use std::time::Instant;

use dfdx::nn::modules::{LayerNorm1D as Ln, Linear as Lin, ReLU};
use dfdx::prelude::{
    mse_loss, AsArray, Backward, Const, Cpu, DeviceBuildExt, Gradients, Module, ModuleMut, Tensor,
    TensorFromVec, Trace, ZeroGrads,
};
use profit_core::{Delta, ProfitConfig, RmsProp, Sgd};
use profit_dfdx::{DfdxPlain, DfdxProfit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use crate::arms::{pareto, print_table, Arm, Kind, Metrics, ProjStats, SeedResult, Summary};
use crate::common::{bar, fmt, normal, write_json, DeltaArg, StepLr};
use crate::plot;

/// Arguments of `profit toy`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// CI smoke test: width 32, 300 + 60 steps, batch 128, 4,000 train / 1,000 test points, 2 seeds.
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Paper scale: width 500 (5-10 minutes per seed on 2 cores).
    #[arg(long)]
    full: bool,
    /// Hidden width (one of 32, 64, 128, 256, 500). Default 128 (500 with --full).
    #[arg(long)]
    hidden: Option<usize>,
    /// Number of seeds (default 3; 2 with --quick).
    #[arg(long)]
    seeds: Option<u64>,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Pre-training steps (default 10,000, the paper's).
    #[arg(long)]
    pretrain_steps: Option<usize>,
    /// Fine-tuning steps (default 1,500, the paper's).
    #[arg(long)]
    finetune_steps: Option<usize>,
    /// Fine-tuning batch size (default 512; 128 with --quick).
    #[arg(long)]
    batch: Option<usize>,
    /// Main fine-tuning learning rate (paper: 5e-4).
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// PROFIT's lr_main / lr_ref.
    #[arg(long, default_value_t = DEFAULT_RATIO)]
    ratio: f64,
    /// PROFIT's delta: `realized` (theta' - anchor, the default) or `accumulated`.
    #[arg(long, value_enum, default_value_t = DeltaArg::Realized)]
    delta: DeltaArg,
    /// Standard deviation of the training-label noise.
    #[arg(long, default_value_t = 0.1)]
    noise: f32,
    #[command(flatten)]
    output: crate::common::Output,
    /// Leave out the equal-steps control arm `profit_lr_ref0`, which runs by default: PROFIT with
    /// lr_ref = 0, so delta = 0 and the projection never fires (the main optimizer steps on every
    /// other batch, as PROFIT's does). It separates the projection's effect from that of halving
    /// the main optimizer's steps; PROFIT is reported against it, paired over seeds.
    #[arg(long)]
    no_control: bool,
    /// Accepted for compatibility: the control arm now runs by default.
    #[arg(long, hide = true, conflicts_with = "no_control")]
    control: bool,
    /// Run the sweep instead: delta {realized, accumulated} x ratio {10, 1e2, 1e3, 1e4, 1e5} x
    /// batch {64, 512}, each against full fine-tuning (same batches and same main steps),
    /// head-only and the lr_ref = 0 control; writes old-vs-new scatter plots.
    #[arg(long, conflicts_with_all = ["control", "no_control", "ratio", "delta", "batch", "sweep_scale"])]
    sweep: bool,
    /// Run the scale study instead (use with --full for the paper's width 500; 5 seeds by
    /// default): full, head, PROFIT realized at ratios {1e2, 1e3, 1e4, 1e5}, accumulated at 1e4,
    /// realized 1e4 with n_ref {2, 3}, each paired over seeds with its own equal-steps control
    /// (lr_ref = 0, same n_ref); writes an old-vs-new scatter plot (`toy_scale_sweep_b<batch>.svg`).
    #[arg(long, conflicts_with_all = ["control", "no_control", "ratio", "delta"])]
    sweep_scale: bool,
}

/// The default `lr_main / lr_ref` of `profit toy`.
pub const DEFAULT_RATIO: f64 = 1e4;
/// The sweep's ratios and fine-tuning batches.
const SWEEP_RATIOS: [f64; 5] = [10.0, 1e2, 1e3, 1e4, 1e5];
const SWEEP_BATCHES: [usize; 2] = [64, 512];
/// The scale study's realized ratios, the ratio of its accumulated and `n_ref` arms, and its
/// `n_ref`s.
const SCALE_RATIOS: [f64; 4] = [1e2, 1e3, 1e4, 1e5];
const SCALE_RATIO: f64 = 1e4;
const SCALE_NREFS: [u64; 3] = [1, 2, 3];

/// The resolved settings of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub preset: &'static str,
    pub hidden: usize,
    pub seeds: Vec<u64>,
    pub pretrain_steps: usize,
    pub pretrain_lr: f64,
    pub pretrain_decay_every: usize,
    pub pretrain_batch: usize,
    pub finetune_steps: usize,
    pub finetune_lr: f64,
    pub batch: usize,
    pub train_points: usize,
    pub test_points: usize,
    pub noise_std: f32,
    pub profit_ratio: f64,
    pub profit_delta: &'static str,
    pub profit_reference: &'static str,
    pub profit_main: &'static str,
    pub activation: &'static str,
    pub metric: &'static str,
    pub control_arm: bool,
    pub sweep: bool,
    pub sweep_scale: bool,
}

impl Settings {
    /// A sweep of many arms (no per-seed detail, maps or curves).
    fn grid(&self) -> bool {
        self.sweep || self.sweep_scale
    }
}

/// `profit_lr_ref0`, `profit_lr_ref0_nref2`, ...: the equal-steps control of PROFIT arms with
/// this `n_ref`.
fn control_name(n_ref: u64) -> String {
    if n_ref == 1 {
        "profit_lr_ref0".into()
    } else {
        format!("profit_lr_ref0_nref{n_ref}")
    }
}

/// A scale-study PROFIT arm, against its control: `profit_realized_r1e4`, `..._nref2`.
fn scale_arm(delta: Delta, ratio: f64, n_ref: u64, batch: usize) -> Arm {
    let mut name = format!("profit_{}_r{}", crate::arms::delta_name(delta), crate::arms::ratio_name(ratio));
    if n_ref != 1 {
        name += &format!("_nref{n_ref}");
    }
    Arm::new(name, Kind::Profit { delta, ratio }, batch).with_n_ref(n_ref).against(control_name(n_ref))
}

impl Args {
    fn settings(&self) -> Result<Settings, String> {
        let (preset, hidden, seeds, pre, fine, batch, train, test) = if self.quick {
            ("quick", 32, 2, 300, 60, 128, 4_000, 1_000)
        } else if self.full {
            ("full (paper scale)", 500, 3, 10_000, 1_500, 512, 50_000, 10_000)
        } else {
            ("default (width 128)", 128, 3, 10_000, 1_500, 512, 50_000, 10_000)
        };
        let hidden = self.hidden.unwrap_or(hidden);
        if ![32, 64, 128, 256, 500].contains(&hidden) {
            return Err(format!("--hidden {hidden}: supported widths are 32, 64, 128, 256, 500"));
        }
        let pre = self.pretrain_steps.unwrap_or(pre);
        let fine = self.finetune_steps.unwrap_or(fine);
        let pretrain_batch = batch;
        let batch = self.batch.unwrap_or(batch);
        let n = self.seeds.unwrap_or(if self.sweep_scale && !self.quick { 5 } else { seeds });
        if pre == 0 || fine < 2 || batch == 0 || n == 0 {
            return Err("steps (fine-tuning: >= 2), batch and seeds must be > 0".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.ratio.is_finite() && self.ratio > 0.0) {
            return Err("--lr and --ratio must be finite and > 0".into());
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return Err("--noise must be finite and >= 0".into());
        }
        Ok(Settings {
            preset,
            hidden,
            seeds: (self.first_seed..self.first_seed + n).collect(),
            pretrain_steps: pre,
            pretrain_lr: 1e-2,
            pretrain_decay_every: (pre / 20).max(1),
            pretrain_batch,
            finetune_steps: fine,
            finetune_lr: self.lr,
            batch,
            train_points: train,
            test_points: test,
            noise_std: self.noise,
            profit_ratio: self.ratio,
            profit_delta: crate::arms::delta_name(self.delta.into()),
            profit_reference: "SGD",
            profit_main: "RMSprop",
            activation: "ReLU",
            metric: "MSE on noise-free uniform test points",
            control_arm: !self.no_control && !self.sweep && !self.sweep_scale,
            sweep: self.sweep,
            sweep_scale: self.sweep_scale,
        })
    }

    /// The fine-tuning arms of this run (after `pretrained`).
    fn arms(&self, s: &Settings) -> Vec<Arm> {
        let fine = s.finetune_steps;
        let mut v = vec![Arm::new("pretrained", Kind::Pretrained, s.batch)];
        if s.sweep_scale {
            let b = s.batch;
            v.push(Arm::new("full", Kind::Full { steps: fine }, b));
            v.push(Arm::new("head", Kind::Head, b));
            for n in SCALE_NREFS {
                v.push(Arm::new(control_name(n), Kind::Control, b).with_n_ref(n));
            }
            for r in SCALE_RATIOS {
                v.push(scale_arm(Delta::Realized, r, 1, b));
            }
            v.push(scale_arm(Delta::Accumulated, SCALE_RATIO, 1, b));
            for n in SCALE_NREFS.into_iter().filter(|&n| n != 1) {
                v.push(scale_arm(Delta::Realized, SCALE_RATIO, n, b));
            }
            return v;
        }
        if !s.sweep {
            v.push(Arm::new("full", Kind::Full { steps: fine }, s.batch));
            v.push(Arm::new("head", Kind::Head, s.batch));
            let kind = Kind::Profit { delta: self.delta.into(), ratio: s.profit_ratio };
            let profit = Arm::new("profit", kind, s.batch);
            if s.control_arm {
                v.push(profit.against(control_name(1)));
                v.push(Arm::new(control_name(1), Kind::Control, s.batch));
            } else {
                v.push(profit);
            }
            return v;
        }
        let batches: Vec<usize> = if self.quick { vec![32, s.batch] } else { SWEEP_BATCHES.to_vec() };
        for b in batches {
            v.push(Arm::new(format!("full_b{b}"), Kind::Full { steps: fine }, b));
            v.push(Arm::new(format!("full_same_main_steps_b{b}"), Kind::Full { steps: fine / 2 }, b));
            v.push(Arm::new(format!("head_b{b}"), Kind::Head, b));
            v.push(Arm::new(format!("profit_lr_ref0_b{b}"), Kind::Control, b));
            for delta in [Delta::Realized, Delta::Accumulated] {
                for r in SWEEP_RATIOS {
                    v.push(Arm::profit(delta, r, b).against(format!("profit_lr_ref0_b{b}")));
                }
            }
        }
        v
    }
}

type Arch<const H: usize> = (
    (dfdx::prelude::Linear<2, H>, dfdx::prelude::LayerNorm1D<H>, dfdx::prelude::ReLU),
    (dfdx::prelude::Linear<H, H>, dfdx::prelude::LayerNorm1D<H>, dfdx::prelude::ReLU),
    dfdx::prelude::Linear<H, 1>,
);
type Net<const H: usize> = (
    (Lin<2, H, f32, Cpu>, Ln<H, f32, Cpu>, ReLU),
    (Lin<H, H, f32, Cpu>, Ln<H, f32, Cpu>, ReLU),
    Lin<H, 1, f32, Cpu>,
);

/// Points and targets; `x` is row-major `[n, 2]`.
struct Data {
    x: Vec<f32>,
    y: Vec<f32>,
}

fn target(x0: f32, x1: f32) -> f32 {
    (10.0 * (x0 * x0 + x1 * x1).sqrt()).sin()
}

fn sample(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32, noise: f32) -> Data {
    let mut x = Vec::with_capacity(2 * n);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let (a, b) = (rng.gen_range(lo..hi), rng.gen_range(lo..hi));
        x.extend([a, b]);
        y.push(target(a, b) + if noise > 0.0 { noise * normal(rng) } else { 0.0 });
    }
    Data { x, y }
}

/// Predictions of the model at `x` (row-major `[n, 2]`), in chunks.
fn predict<const H: usize>(dev: &Cpu, model: &Net<H>, x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() / 2);
    for chunk in x.chunks(2 * 2048) {
        let n = chunk.len() / 2;
        let t: Tensor<(usize, Const<2>), f32, Cpu> = dev.tensor_from_vec(chunk.to_vec(), (n, Const::<2>));
        out.extend(model.forward(t).as_vec());
    }
    out
}

fn mse<const H: usize>(dev: &Cpu, model: &Net<H>, d: &Data) -> f64 {
    let p = predict(dev, model, &d.x);
    p.iter().zip(&d.y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / d.y.len().max(1) as f64
}

/// A batch of inputs, `[batch, 2]`.
type Points = Tensor<(usize, Const<2>), f32, Cpu>;
/// A batch of targets, `[batch, 1]`.
type Targets = Tensor<(usize, Const<1>), f32, Cpu>;

/// A batch sampler with preallocated buffers.
struct Batches {
    rng: ChaCha8Rng,
    xb: Vec<f32>,
    yb: Vec<f32>,
}

impl Batches {
    fn new(seed: u64, batch: usize) -> Self {
        Batches { rng: ChaCha8Rng::seed_from_u64(seed), xb: vec![0.0; 2 * batch], yb: vec![0.0; batch] }
    }
    fn next(&mut self, dev: &Cpu, d: &Data) -> (Points, Targets) {
        let b = self.yb.len();
        for k in 0..b {
            let i = self.rng.gen_range(0..d.y.len());
            self.xb[2 * k..2 * k + 2].copy_from_slice(&d.x[2 * i..2 * i + 2]);
            self.yb[k] = d.y[i];
        }
        (
            dev.tensor_from_vec(self.xb.clone(), (b, Const::<2>)),
            dev.tensor_from_vec(self.yb.clone(), (b, Const::<1>)),
        )
    }
}

/// One forward/backward pass; returns the batch loss and the gradients.
fn grads_of<const H: usize>(
    model: &mut Net<H>,
    grads: Gradients<f32, Cpu>,
    x: Points,
    y: Targets,
) -> (f32, Gradients<f32, Cpu>) {
    let pred = model.forward_mut(x.traced(grads));
    let loss = mse_loss(pred, y);
    let value = loss.array();
    (value, loss.backward())
}

const GRID: usize = 60;
const GRID_LO: f64 = -1.0;
const GRID_HI: f64 = 1.5;

fn grid() -> Vec<f32> {
    let cell = (GRID_HI - GRID_LO) / GRID as f64;
    let mut x = Vec::with_capacity(2 * GRID * GRID);
    for j in 0..GRID {
        for i in 0..GRID {
            x.extend([
                (GRID_LO + (i as f64 + 0.5) * cell) as f32,
                (GRID_LO + (j as f64 + 0.5) * cell) as f32,
            ]);
        }
    }
    x
}

fn rmsprop(lr: f64) -> RmsProp {
    RmsProp { lr, ..Default::default() }
}

/// The paper's Table 1 (original / new domain), for the arms it has.
fn paper(name: &str) -> Option<(f64, f64)> {
    match name {
        "pretrained" => Some((0.0054, 1.907)),
        "full" => Some((0.705, 0.504)),
        "head" => Some((0.11, 0.572)),
        "profit" => Some((0.046, 0.501)),
        _ => None,
    }
}

struct Eval<'a> {
    dev: &'a Cpu,
    orig: &'a Data,
    new: &'a Data,
    orig_small: Data,
    new_small: Data,
}

impl Eval<'_> {
    fn point<const H: usize>(&self, step: usize, m: &Net<H>) -> (usize, f64, f64) {
        (step, mse(self.dev, m, &self.orig_small), mse(self.dev, m, &self.new_small))
    }
}

fn head_of(d: &Data, n: usize) -> Data {
    let n = n.min(d.y.len());
    Data { x: d.x[..2 * n].to_vec(), y: d.y[..n].to_vec() }
}

/// The optimizer of one fine-tuning arm.
enum Trainer<const H: usize> {
    /// RMSprop on every parameter.
    Full(Box<DfdxPlain<Net<H>>>),
    /// RMSprop on the last layer only.
    Head(Box<DfdxPlain<Lin<H, 1, f32, Cpu>>>),
    /// PROFIT (SGD reference, RMSprop main).
    Profit(Box<DfdxProfit<Net<H>>>),
}

impl<const H: usize> Trainer<H> {
    fn new(arm: &Arm, model: &Net<H>, lr: f64) -> Result<Self, String> {
        let e = |e: profit_dfdx::DfdxError| e.to_string();
        Ok(match arm.kind {
            Kind::Full { .. } | Kind::Sgd | Kind::Pretrained => {
                Trainer::Full(Box::new(DfdxPlain::new(model, rmsprop(lr)).map_err(e)?))
            }
            Kind::Head => Trainer::Head(Box::new(DfdxPlain::new(&model.2, rmsprop(lr)).map_err(e)?)),
            Kind::Profit { delta, ratio } => {
                let config = ProfitConfig {
                    delta,
                    n_ref: arm.n_ref,
                    ..ProfitConfig::new(Sgd { lr: lr / ratio, ..Sgd::default() }, rmsprop(lr))
                };
                Trainer::Profit(Box::new(DfdxProfit::new(model, config).map_err(e)?))
            }
            Kind::Control => {
                let config = ProfitConfig {
                    n_ref: arm.n_ref,
                    ..ProfitConfig::new(Sgd { lr: 0.0, ..Sgd::default() }, rmsprop(lr))
                };
                Trainer::Profit(Box::new(DfdxProfit::new(model, config).map_err(e)?))
            }
        })
    }

    /// Set the main rate (PROFIT's reference rate follows at its fixed ratio) and step.
    fn step(
        &mut self,
        model: &mut Net<H>,
        grads: &Gradients<f32, Cpu>,
        lr: f64,
        stats: &mut ProjStats,
    ) -> Result<(), String> {
        let s = |e: &dyn std::fmt::Display| e.to_string();
        match self {
            Trainer::Full(o) => {
                o.set_lr(lr).map_err(|e| s(&e))?;
                o.try_update(model, grads).map_err(|e| s(&e))
            }
            Trainer::Head(o) => {
                o.set_lr(lr).map_err(|e| s(&e))?;
                o.try_update(&mut model.2, grads).map_err(|e| s(&e))
            }
            Trainer::Profit(o) => {
                o.set_lr(lr).map_err(|e| s(&e))?;
                let r = o.try_update(model, grads).map_err(|e| s(&e))?;
                if let Some(m) = &r.main {
                    stats.record(m);
                }
                Ok(())
            }
        }
    }
}

/// One fine-tuning arm for one seed.
struct ArmRun {
    original_error: f64,
    new_error: f64,
    /// `(step, original, new)` on 1,000-point evaluation subsets (first seed only).
    curve: Vec<(usize, f64, f64)>,
    proj: ProjStats,
}

#[allow(clippy::too_many_arguments)]
fn finetune<const H: usize>(
    s: &Settings,
    arm: &Arm,
    pre: &Net<H>,
    data: &Data,
    batch_seed: u64,
    eval: &Eval<'_>,
    curve: bool,
    label: &str,
) -> Result<(Net<H>, ArmRun), String> {
    let dev = eval.dev;
    let mut model = pre.clone();
    let steps = match arm.kind {
        Kind::Full { steps } => steps,
        _ => s.finetune_steps,
    };
    let sched = StepLr { base: s.finetune_lr, gamma: 0.95, every: (steps / 15).max(1) };
    let mut trainer = Trainer::new(arm, &model, sched.base)?;
    let mut batches = Batches::new(batch_seed, arm.batch);
    let mut grads = model.alloc_grads();
    let every = (steps / 30).max(1);
    let mut run = ArmRun { original_error: 0.0, new_error: 0.0, curve: vec![], proj: ProjStats::default() };
    if curve {
        run.curve.push(eval.point(0, &model));
    }
    let pb = bar(steps as u64, label);
    for step in 0..steps {
        let (x, y) = batches.next(dev, data);
        let (_, g) = grads_of(&mut model, grads, x, y);
        grads = g;
        trainer
            .step(&mut model, &grads, sched.at(step), &mut run.proj)
            .map_err(|e| format!("{label} step {step}: {e}"))?;
        model.zero_grads(&mut grads);
        if curve && (step + 1) % every == 0 {
            run.curve.push(eval.point(step + 1, &model));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    run.original_error = mse(dev, &model, eval.orig);
    run.new_error = mse(dev, &model, eval.new);
    Ok((model, run))
}

/// Everything one seed produced.
struct SeedRun {
    seed: u64,
    /// One result per arm, in the run's arm order (the first is `pretrained`).
    results: Vec<SeedResult>,
    /// Learning curves per fine-tuning arm (first seed of a default run only).
    curves: Vec<Vec<(usize, f64, f64)>>,
    pretrain_curve: Vec<(f64, f64)>,
    /// Prediction maps over the grid (target, pretrained, full, head, profit), first seed of a
    /// default run only.
    maps: Vec<Vec<f32>>,
    seconds: f64,
}

fn run_seed<const H: usize>(s: &Settings, arms: &[Arm], seed: u64, first: bool) -> Result<SeedRun, String> {
    let t0 = Instant::now();
    let dev = Cpu::seed_from_u64(seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pre_data = sample(&mut rng, s.train_points, -1.0, 1.0, s.noise_std);
    let new_data = sample(&mut rng, s.train_points, 0.8, 1.5, s.noise_std);
    let orig_test = sample(&mut rng, s.test_points, -1.0, 1.0, 0.0);
    let new_test = sample(&mut rng, s.test_points, 0.8, 1.5, 0.0);

    // Pre-training.
    let mut model: Net<H> = dev.build_module::<Arch<H>, f32>();
    let sched = StepLr { base: s.pretrain_lr, gamma: 0.9, every: s.pretrain_decay_every };
    let mut opt = DfdxPlain::new(&model, rmsprop(sched.base)).map_err(|e| e.to_string())?;
    let mut batches = Batches::new(seed.wrapping_add(1_000), s.pretrain_batch);
    let mut grads = model.alloc_grads();
    let mut pretrain_curve = vec![];
    let (mut acc, mut cnt) = (0.0f64, 0usize);
    let every = (s.pretrain_steps / 100).max(1);
    let pb = bar(s.pretrain_steps as u64, &format!("seed {seed} pre-train"));
    for step in 0..s.pretrain_steps {
        opt.set_lr(sched.at(step)).map_err(|e| e.to_string())?;
        let (x, y) = batches.next(&dev, &pre_data);
        let (loss, g) = grads_of(&mut model, grads, x, y);
        grads = g;
        opt.try_update(&mut model, &grads).map_err(|e| format!("pre-train step {step}: {e}"))?;
        model.zero_grads(&mut grads);
        acc += loss as f64;
        cnt += 1;
        if (step + 1) % every == 0 {
            pretrain_curve.push(((step + 1) as f64, acc / cnt as f64));
            pb.set_message(format!("batch MSE {:.4}", acc / cnt as f64));
            (acc, cnt) = (0.0, 0);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();

    let eval = Eval {
        dev: &dev,
        orig: &orig_test,
        new: &new_test,
        orig_small: head_of(&orig_test, 1_000),
        new_small: head_of(&new_test, 1_000),
    };
    let pre_err = (mse(&dev, &model, &orig_test), mse(&dev, &model, &new_test));
    let batch_seed = seed.wrapping_add(2_000);
    let detail = first && !s.grid();
    let g = grid();
    let mut maps = vec![];
    if detail {
        maps.push(g.chunks(2).map(|p| target(p[0], p[1])).collect());
        maps.push(predict(&dev, &model, &g));
    }
    let mut results = vec![];
    let mut curves = vec![];
    for arm in arms {
        if arm.kind == Kind::Pretrained {
            results.push(SeedResult { seed, old: pre_err.0, new: pre_err.1, proj: ProjStats::default() });
            continue;
        }
        let label = format!("seed {seed} {}", arm.name);
        let (m, run) = finetune::<H>(s, arm, &model, &new_data, batch_seed, &eval, detail, &label)?;
        if detail && ["full", "head", "profit"].contains(&arm.name.as_str()) {
            maps.push(predict(&dev, &m, &g));
        }
        curves.push(run.curve);
        results.push(SeedResult { seed, old: run.original_error, new: run.new_error, proj: run.proj });
    }
    Ok(SeedRun { seed, results, curves, pretrain_curve, maps, seconds: t0.elapsed().as_secs_f64() })
}

fn run_all<const H: usize>(s: &Settings, arms: &[Arm], jobs: usize) -> Result<Vec<SeedRun>, String> {
    crate::common::per_seed(&s.seeds, jobs, |k, seed| {
        let r = run_seed::<H>(s, arms, seed, k == 0)?;
        // The scale study prints its seeds too (a long run leaves its finished seeds behind);
        // the old sweep's 28 arms would not fit a line.
        let cells: Vec<String> = if s.sweep {
            vec![]
        } else {
            arms.iter()
                .zip(&r.results)
                .map(|(a, x)| format!("{} {} / {}", a.name, fmt(x.old), fmt(x.new)))
                .collect()
        };
        println!("  seed {seed} done in {:.1} s {}", r.seconds, cells.join(", "));
        Ok(r)
    })
}

/// Run `profit toy`.
pub fn run(args: Args) -> Result<(), String> {
    let s = args.settings()?;
    let arms = args.arms(&s);
    println!(
        "PROFIT toy experiment (the paper's Section 4.1), preset: {}{}",
        s.preset,
        if s.sweep {
            ", sweep"
        } else if s.sweep_scale {
            ", scale study"
        } else {
            ""
        }
    );
    println!(
        "  net 2-{h}-{h}-1, LayerNorm after each hidden layer, {act}; {tr} noisy training points per domain (noise std {nz}); {te} noise-free test points per domain",
        h = s.hidden,
        act = s.activation,
        tr = s.train_points,
        nz = s.noise_std,
        te = s.test_points
    );
    println!(
        "  pre-train: RMSprop lr {} x0.9 every {} steps, {} steps of batch {} on [-1,1]^2",
        s.pretrain_lr, s.pretrain_decay_every, s.pretrain_steps, s.pretrain_batch
    );
    if s.sweep_scale {
        println!(
            "  fine-tune on [0.8,1.5]^2: {} calls of batch {}, lr {} x0.95 every {} calls; full and head: RMSprop; PROFIT: SGD reference (lr_ref = lr_main / ratio), RMSprop main, n_ref 1 unless named; each PROFIT arm against profit_lr_ref0[_nref<n>] (lr_ref = 0, same n_ref); {} arms per seed",
            s.finetune_steps,
            s.batch,
            s.finetune_lr,
            (s.finetune_steps / 15).max(1),
            arms.len() - 1
        );
    } else if s.sweep {
        println!(
            "  fine-tune on [0.8,1.5]^2: {} calls, lr {} x0.95 every calls/15; RMSprop main; PROFIT: SGD reference, n_ref 1; {} arms per seed",
            s.finetune_steps,
            s.finetune_lr,
            arms.len() - 1
        );
    } else {
        println!(
            "  fine-tune on [0.8,1.5]^2: {} steps of batch {}, lr {} x0.95 every {} steps; full and head: RMSprop; PROFIT: SGD reference (lr_main/lr_ref = {}), RMSprop main, n_ref 1, {} delta",
            s.finetune_steps,
            s.batch,
            s.finetune_lr,
            (s.finetune_steps / 15).max(1),
            s.profit_ratio,
            s.profit_delta
        );
    }
    println!("  error: {}; seeds {:?}", s.metric, s.seeds);
    let jobs = crate::common::jobs(args.output.jobs);
    let t0 = Instant::now();
    let runs = match s.hidden {
        32 => run_all::<32>(&s, &arms, jobs)?,
        64 => run_all::<64>(&s, &arms, jobs)?,
        128 => run_all::<128>(&s, &arms, jobs)?,
        256 => run_all::<256>(&s, &arms, jobs)?,
        _ => run_all::<500>(&s, &arms, jobs)?,
    };
    let total = t0.elapsed().as_secs_f64();

    let summaries: Vec<Summary> = arms
        .iter()
        .enumerate()
        .map(|(k, a)| Summary { arm: a.clone(), seeds: runs.iter().map(|r| r.results[k]).collect() })
        .collect();
    let metrics = Metrics { old_key: "original_error", new_key: "new_error", higher_is_better: false };
    let front = pareto(&summaries, &metrics);
    let pairs = crate::arms::pairs(&summaries, &metrics)?;
    println!();
    if !s.grid() {
        println!("Per seed (MSE original domain / new domain):");
        print!("{:>6}", "seed");
        for a in &arms {
            print!("  {:>22}", a.name);
        }
        println!("  {:>8}", "seconds");
        for r in &runs {
            print!("{:>6}", r.seed);
            for x in &r.results {
                print!("  {:>22}", format!("{} / {}", fmt(x.old), fmt(x.new)));
            }
            println!("  {:>8.1}", r.seconds);
        }
        println!();
        println!("Over {} seed(s): mean / median [min, max]; the paper's Table 1 for reference", runs.len());
        println!("{:<16} {:>34} {:>34}   {:>17}", "arm", "original domain", "new domain", "paper Table 1");
        for x in &summaries {
            let cell = |s: crate::common::Spread| {
                format!("{} / {} [{}, {}]", fmt(s.mean), fmt(s.median), fmt(s.min), fmt(s.max))
            };
            let p = paper(&x.arm.name).map_or("-".into(), |p| format!("{} / {}", p.0, p.1));
            println!("{:<16} {:>34} {:>34}   {:>17}", x.arm.name, cell(x.old_task()), cell(x.new_task()), p);
        }
        println!();
        for x in summaries.iter().filter(|x| x.arm.is_profit()) {
            println!("{}: {}", x.arm.name, x.proj().line());
        }
    } else {
        println!("Over {} seed(s) (MSE, lower is better; * = on the original/new Pareto front):", runs.len());
        print_table(&summaries, &metrics, &front);
    }
    println!();
    crate::arms::print_pairs(&summaries, &pairs, &metrics);
    println!("total {:.1} s", total);

    if let Some(out) = args.output.plot_dir()? {
        if s.grid() {
            for path in crate::arms::scatter_per_batch(
                out,
                if s.sweep_scale { "toy_scale" } else { "toy" },
                &summaries,
                &metrics,
                &front,
                "original-domain MSE",
                "new-domain MSE",
                true,
            )? {
                println!("plot: {}", path.display());
            }
        } else {
            let first = &runs[0];
            let titles = ["target sin(10|x|)", "pre-trained", "full fine-tune", "head only", "PROFIT"];
            let panels: Vec<plot::Panel> = titles
                .iter()
                .zip(&first.maps)
                .map(|(t, v)| plot::Panel { title: format!("{t} (seed {})", first.seed), values: v.clone() })
                .collect();
            let maps = out.join("toy_predictions.svg");
            plot::heatmaps(&maps, GRID, GRID_LO, GRID_HI, &panels, &[(-1.0, 1.0), (0.8, 1.5)])?;
            let mut series = vec![];
            for (a, c) in arms.iter().skip(1).zip(&first.curves) {
                series.push((format!("{} new", a.name), c.iter().map(|p| (p.0 as f64, p.2)).collect()));
                series.push((format!("{} original", a.name), c.iter().map(|p| (p.0 as f64, p.1)).collect()));
            }
            let curves = out.join("toy_finetune_curves.svg");
            plot::curves(&curves, "fine-tuning: test MSE (1,000 points per domain)", "step", "MSE", &series)?;
            let pre = out.join("toy_pretrain_curve.svg");
            plot::curves(
                &pre,
                "pre-training: batch MSE",
                "step",
                "MSE",
                &[("train batch".into(), first.pretrain_curve.clone())],
            )?;
            println!("plots: {}, {}, {}", maps.display(), curves.display(), pre.display());
        }
    }
    if let Some(path) = &args.output.json {
        let arms_json: Vec<_> = summaries
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let mut v = x.json(&metrics, front.contains(&i));
                if let Some(p) = paper(&x.arm.name).filter(|_| !s.grid()) {
                    v["paper_original_error"] = json!(p.0);
                    v["paper_new_error"] = json!(p.1);
                }
                v
            })
            .collect();
        let front_names: Vec<&str> = front.iter().map(|&i| summaries[i].arm.name.as_str()).collect();
        let value = json!({
            "experiment": "toy",
            "settings": s,
            "arms": arms_json,
            "pareto_front": front_names,
            "pairs": crate::arms::pairs_json(&summaries, &pairs, &metrics),
            "seconds": total,
        });
        write_json(path, &value)?;
        println!("json: {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn arms_of(argv: &[&str]) -> (Settings, Vec<Arm>) {
        let cli = Cli::try_parse_from(std::iter::once("toy").chain(argv.iter().copied())).unwrap();
        let s = cli.args.settings().unwrap();
        let arms = cli.args.arms(&s);
        (s, arms)
    }

    /// Every arm that names a control finds it in the run, as a `Control` arm with the same
    /// `n_ref` and batch (so the same main steps on the same batches).
    fn controls_match(arms: &[Arm]) -> usize {
        let mut n = 0;
        for a in arms.iter().filter(|a| a.control.is_some()) {
            let c = arms.iter().find(|c| Some(&c.name) == a.control.as_ref()).expect("control in the run");
            assert_eq!(c.kind, Kind::Control, "{}", a.name);
            assert_eq!((c.n_ref, c.batch), (a.n_ref, a.batch), "{}", a.name);
            n += 1;
        }
        n
    }

    #[test]
    fn scale_study_pairs_each_profit_arm_with_its_own_control() {
        let (s, arms) = arms_of(&["--full", "--sweep-scale"]);
        assert_eq!((s.hidden, s.seeds.len(), s.batch), (500, 5, 512));
        let names: Vec<&str> = arms.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "pretrained",
                "full",
                "head",
                "profit_lr_ref0",
                "profit_lr_ref0_nref2",
                "profit_lr_ref0_nref3",
                "profit_realized_r1e2",
                "profit_realized_r1e3",
                "profit_realized_r1e4",
                "profit_realized_r1e5",
                "profit_accumulated_r1e4",
                "profit_realized_r1e4_nref2",
                "profit_realized_r1e4_nref3",
            ]
        );
        assert_eq!(controls_match(&arms), 7);
        let nref3 = arms.iter().find(|a| a.name == "profit_realized_r1e4_nref3").unwrap();
        assert_eq!(nref3.n_ref, 3);
        assert_eq!(nref3.control.as_deref(), Some("profit_lr_ref0_nref3"));
        assert!(arms.iter().all(|a| a.control.is_none() || a.is_profit()));
    }

    #[test]
    fn the_default_run_has_the_control_and_pairs_profit_with_it() {
        let (s, arms) = arms_of(&[]);
        assert!(s.control_arm);
        let names: Vec<&str> = arms.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["pretrained", "full", "head", "profit", "profit_lr_ref0"]);
        assert_eq!(controls_match(&arms), 1);
        let (_, arms) = arms_of(&["--no-control"]);
        assert_eq!(arms.len(), 4);
        assert_eq!(controls_match(&arms), 0);
        // The old flag is still accepted.
        assert_eq!(arms_of(&["--control"]).1.len(), 5);
        // The sweep pairs all 20 PROFIT arms with the control of their batch size.
        assert_eq!(controls_match(&arms_of(&["--sweep"]).1), 20);
    }
}
