//! `profit toy`: the paper's Section 4.1 experiment (SPEC.md section 5) on dfdx.
//!
//! `f(x) = sin(10 |x|)` on `x in R^2`. Pre-train a 2-H-H-1 MLP (LayerNorm after each hidden
//! layer, ReLU) on noisy points of `[-1, 1]^2`, then fine-tune on noisy points of
//! `[0.8, 1.5]^2` three ways (full model, head only, PROFIT) and measure the MSE on noise-free
//! test points of both domains.
//!
//! Choices the paper leaves open (all printed at run time and written to the JSON):
//! - activation ReLU; batch 512 drawn uniformly with replacement from the 50,000 training points;
//! - label noise: Gaussian, standard deviation 0.1 (`--noise`);
//! - optimizers use PyTorch's formulas (profit-core): RMSprop (alpha 0.99, eps 1e-8) for
//!   pre-training, full and head-only fine-tuning and as PROFIT's main optimizer; plain SGD as
//!   PROFIT's reference optimizer with `lr_ref = lr_main / 1e4` (`--ratio`), the ratio kept
//!   fixed by the schedule; n_ref = 1;
//! - error metric: MSE on 10,000 noise-free uniform test points per domain;
//! - seeds 0.. (`--seeds`, `--first-seed`): each seed draws its own data, initialization and batches;
//!   the three fine-tuning arms of one seed start from the same pre-trained model and see the
//!   same batch sequence.
//! - step schedules: `x0.9` every `pretrain_steps / 20` steps and `x0.95` every
//!   `finetune_steps / 15` steps (500 and 100 at the paper's 10,000 and 1,500 steps).

use std::time::Instant;

use dfdx::nn::modules::{LayerNorm1D as Ln, Linear as Lin, ReLU};
use dfdx::prelude::{
    mse_loss, AsArray, Backward, Const, Cpu, DeviceBuildExt, Gradients, Module, ModuleMut, Tensor,
    TensorFromVec, Trace, ZeroGrads,
};
use profit_core::{Phase, ProfitConfig, RmsProp, Sgd};
use profit_dfdx::{DfdxPlain, DfdxProfit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use crate::common::{bar, fmt, normal, write_json, Spread, StepLr};
use crate::naive::NaiveProfit;
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
    /// Batch size (default 512).
    #[arg(long)]
    batch: Option<usize>,
    /// Main fine-tuning learning rate (paper: 5e-4).
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// PROFIT's lr_main / lr_ref.
    #[arg(long, default_value_t = 1e4)]
    ratio: f64,
    /// Standard deviation of the training-label noise.
    #[arg(long, default_value_t = 0.1)]
    noise: f32,
    #[command(flatten)]
    output: crate::common::Output,
    /// Also run the control arm `profit_lr_ref0`: PROFIT with lr_ref = 0, so delta = 0 and the
    /// projection never fires (the main optimizer steps on every other batch). It separates the
    /// projection's effect from that of halving the main optimizer's steps.
    #[arg(long)]
    control: bool,
    /// Experiment only: also run the arm `profit_naive_delta`: the same PROFIT schedule (SGD
    /// reference, RMSprop main, n_ref 1, global projection) with PyTorch-style float32
    /// arithmetic: `theta.add_(g, alpha=-lr_ref)` at the reference call and the naive
    /// `delta = theta' - anchor` in float32 at the main call, which SPEC.md section 2 forbids
    /// (see `naive.rs`).
    #[arg(long)]
    naive_delta: bool,
}

/// The resolved settings of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub preset: &'static str,
    pub hidden: usize,
    pub seeds: Vec<u64>,
    pub pretrain_steps: usize,
    pub pretrain_lr: f64,
    pub pretrain_decay_every: usize,
    pub finetune_steps: usize,
    pub finetune_lr: f64,
    pub finetune_decay_every: usize,
    pub batch: usize,
    pub train_points: usize,
    pub test_points: usize,
    pub noise_std: f32,
    pub profit_ratio: f64,
    pub profit_reference: &'static str,
    pub profit_main: &'static str,
    pub activation: &'static str,
    pub metric: &'static str,
    pub control_arm: bool,
    /// Only written when `--naive-delta` is given.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub naive_delta_arm: bool,
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
        let batch = self.batch.unwrap_or(batch);
        let n = self.seeds.unwrap_or(seeds);
        if pre == 0 || fine == 0 || batch == 0 || n == 0 {
            return Err("steps, batch and seeds must be > 0".into());
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
            finetune_steps: fine,
            finetune_lr: self.lr,
            finetune_decay_every: (fine / 15).max(1),
            batch,
            train_points: train,
            test_points: test,
            noise_std: self.noise,
            profit_ratio: self.ratio,
            profit_reference: "SGD",
            profit_main: "RMSprop",
            activation: "ReLU",
            metric: "MSE on noise-free uniform test points",
            control_arm: self.control,
            naive_delta_arm: self.naive_delta,
        })
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

fn rmsprop(lr: f64) -> RmsProp {
    RmsProp { lr, ..Default::default() }
}

/// Result of one fine-tuning arm for one seed.
#[derive(Clone, Debug, Serialize)]
struct ArmRun {
    original_error: f64,
    new_error: f64,
    /// `(step, original, new)` on 1,000-point evaluation subsets (first seed only).
    curve: Vec<(usize, f64, f64)>,
    /// PROFIT: main calls and how many were projected; mean cosine(delta, g).
    profit_main_calls: u64,
    profit_projected: u64,
    profit_mean_cosine: f64,
    /// `profit_naive_delta` only: main calls whose naive delta was exactly zero, and the means of
    /// cos(naive delta, exact update) and |naive delta| / |exact update| over the others.
    naive_zero_delta: u64,
    naive_cos_to_exact: f64,
    naive_norm_ratio: f64,
}

enum ArmKind {
    Full,
    Head,
    Profit,
    /// PROFIT with lr_ref = 0: no projection, main steps on every other batch.
    Control,
    /// PROFIT with the naive float32 delta `theta' - anchor` (experiment only).
    NaiveDelta,
}

/// Arm names in the order of [`SeedRun::errors`] (the last two only with their flags).
fn arm_names(s: &Settings) -> Vec<&'static str> {
    let mut v = vec!["pretrained", "full", "head", "profit"];
    if s.control_arm {
        v.push("profit_lr_ref0");
    }
    if s.naive_delta_arm {
        v.push("profit_naive_delta");
    }
    v
}
/// The paper's Table 1 (original / new domain).
const PAPER: [(f64, f64); 4] = [(0.0054, 1.907), (0.705, 0.504), (0.11, 0.572), (0.046, 0.501)];
/// The SPEC's PyTorch run (medians over 3 seeds, original / new).
const PYTORCH_MEDIAN: [(f64, f64); 4] = [(0.010, 6.0), (1.17, 0.026), (0.243, 0.738), (0.479, 0.010)];

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

#[allow(clippy::too_many_arguments)]
fn finetune<const H: usize>(
    s: &Settings,
    kind: ArmKind,
    pre: &Net<H>,
    data: &Data,
    batch_seed: u64,
    eval: &Eval<'_>,
    curve: bool,
    label: &str,
) -> Result<(Net<H>, ArmRun), String> {
    let dev = eval.dev;
    let mut model = pre.clone();
    let sched = StepLr { base: s.finetune_lr, gamma: 0.95, every: s.finetune_decay_every };
    let mut full = None;
    let mut head = None;
    let mut profit = None;
    let mut naive = None;
    match kind {
        ArmKind::Full => full = Some(DfdxPlain::new(&model, rmsprop(sched.base)).map_err(|e| e.to_string())?),
        ArmKind::Head => {
            head = Some(DfdxPlain::new(&model.2, rmsprop(sched.base)).map_err(|e| e.to_string())?)
        }
        ArmKind::Profit | ArmKind::Control => {
            let lr_ref = if matches!(kind, ArmKind::Control) { 0.0 } else { sched.base / s.profit_ratio };
            let config = ProfitConfig::new(Sgd { lr: lr_ref, ..Default::default() }, rmsprop(sched.base));
            profit = Some(DfdxProfit::new(&model, config).map_err(|e| e.to_string())?)
        }
        ArmKind::NaiveDelta => {
            naive = Some(NaiveProfit::new(&model, rmsprop(sched.base), sched.base / s.profit_ratio)?)
        }
    }
    let mut batches = Batches::new(batch_seed, s.batch);
    let mut grads = model.alloc_grads();
    let every = (s.finetune_steps / 30).max(1);
    let mut run = ArmRun {
        original_error: 0.0,
        new_error: 0.0,
        curve: vec![],
        profit_main_calls: 0,
        profit_projected: 0,
        profit_mean_cosine: 0.0,
        naive_zero_delta: 0,
        naive_cos_to_exact: 0.0,
        naive_norm_ratio: 0.0,
    };
    if curve {
        run.curve.push(eval.point(0, &model));
    }
    let pb = bar(s.finetune_steps as u64, label);
    let mut cos_sum = 0.0;
    for step in 0..s.finetune_steps {
        let lr = sched.at(step);
        let (x, y) = batches.next(dev, data);
        let (_, g) = grads_of(&mut model, grads, x, y);
        grads = g;
        let err = |e: String| format!("{label} step {step}: {e}");
        if let Some(o) = full.as_mut() {
            o.set_lr(lr).map_err(|e| err(e.to_string()))?;
            o.try_update(&mut model, &grads).map_err(|e| err(e.to_string()))?;
        }
        if let Some(o) = head.as_mut() {
            o.set_lr(lr).map_err(|e| err(e.to_string()))?;
            o.try_update(&mut model.2, &grads).map_err(|e| err(e.to_string()))?;
        }
        if let Some(o) = profit.as_mut() {
            o.set_lr(lr).map_err(|e| err(e.to_string()))?;
            let r = o.try_update(&mut model, &grads).map_err(|e| err(e.to_string()))?;
            if let (Phase::Main, Some(m)) = (r.phase, r.main) {
                run.profit_main_calls += 1;
                run.profit_projected += m.projected as u64;
                cos_sum += m.cosine;
            }
        }
        if let Some(o) = naive.as_mut() {
            o.set_lr(lr, lr / s.profit_ratio).map_err(err)?;
            if let Some(m) = o.step(&mut model, &grads).map_err(err)? {
                run.profit_main_calls += 1;
                run.profit_projected += m.projected as u64;
                cos_sum += m.cosine;
                if m.delta_sq == 0.0 {
                    run.naive_zero_delta += 1;
                } else {
                    run.naive_cos_to_exact += m.cos_to_exact;
                    run.naive_norm_ratio += m.norm_ratio_to_exact;
                }
            }
        }
        model.zero_grads(&mut grads);
        if curve && (step + 1) % every == 0 {
            run.curve.push(eval.point(step + 1, &model));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    run.profit_mean_cosine =
        if run.profit_main_calls > 0 { cos_sum / run.profit_main_calls as f64 } else { 0.0 };
    let nonzero = run.profit_main_calls.saturating_sub(run.naive_zero_delta).max(1) as f64;
    run.naive_cos_to_exact /= nonzero;
    run.naive_norm_ratio /= nonzero;
    run.original_error = mse(dev, &model, eval.orig);
    run.new_error = mse(dev, &model, eval.new);
    Ok((model, run))
}

/// Everything one seed produced.
struct SeedRun {
    seed: u64,
    /// Errors per arm, in [`arm_names`] order: (original, new).
    errors: Vec<(f64, f64)>,
    arms: Vec<ArmRun>,
    pretrain_curve: Vec<(f64, f64)>,
    /// Prediction maps over the grid (target, pretrained, full, head, profit).
    maps: Vec<Vec<f32>>,
    seconds: f64,
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

fn run_seed<const H: usize>(s: &Settings, seed: u64, first: bool) -> Result<SeedRun, String> {
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
    let mut batches = Batches::new(seed.wrapping_add(1_000), s.batch);
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
    let mut arms = vec![];
    let mut maps = vec![];
    let g = grid();
    if first {
        maps.push(g.chunks(2).map(|p| target(p[0], p[1])).collect());
        maps.push(predict(&dev, &model, &g));
    }
    let mut kinds = vec![(ArmKind::Full, "full"), (ArmKind::Head, "head"), (ArmKind::Profit, "profit")];
    if s.control_arm {
        kinds.push((ArmKind::Control, "profit_lr_ref0"));
    }
    if s.naive_delta_arm {
        kinds.push((ArmKind::NaiveDelta, "profit_naive_delta"));
    }
    for (kind, name) in kinds {
        let label = format!("seed {seed} {name}");
        let (m, run) = finetune::<H>(s, kind, &model, &new_data, batch_seed, &eval, first, &label)?;
        if first && !kind_is_extra(name) {
            maps.push(predict(&dev, &m, &g));
        }
        arms.push(run);
    }
    let errors =
        std::iter::once(pre_err).chain(arms.iter().map(|a| (a.original_error, a.new_error))).collect();
    Ok(SeedRun { seed, errors, arms, pretrain_curve, maps, seconds: t0.elapsed().as_secs_f64() })
}

/// The optional arms, which get no prediction map.
fn kind_is_extra(name: &str) -> bool {
    name == "profit_lr_ref0" || name == "profit_naive_delta"
}

fn run_all<const H: usize>(s: &Settings) -> Result<Vec<SeedRun>, String> {
    let names = arm_names(s);
    let mut runs = vec![];
    for (k, &seed) in s.seeds.iter().enumerate() {
        let r = run_seed::<H>(s, seed, k == 0)?;
        let cells: Vec<String> =
            names.iter().zip(&r.errors).map(|(a, &(o, n))| format!("{a} {} / {}", fmt(o), fmt(n))).collect();
        println!("  seed {seed} done in {:.1} s: {}", r.seconds, cells.join(", "));
        runs.push(r);
    }
    Ok(runs)
}

/// Run `profit toy`.
pub fn run(args: Args) -> Result<(), String> {
    let s = args.settings()?;
    println!("PROFIT toy experiment (paper Section 4.1; SPEC.md section 5), preset: {}", s.preset);
    println!(
        "  net 2-{h}-{h}-1, LayerNorm after each hidden layer, {act}; batch {b}; {tr} noisy training points per domain (noise std {nz}); {te} noise-free test points per domain",
        h = s.hidden,
        act = s.activation,
        b = s.batch,
        tr = s.train_points,
        nz = s.noise_std,
        te = s.test_points
    );
    println!(
        "  pre-train: RMSprop lr {} x0.9 every {} steps, {} steps on [-1,1]^2",
        s.pretrain_lr, s.pretrain_decay_every, s.pretrain_steps
    );
    println!(
        "  fine-tune on [0.8,1.5]^2: {} steps, lr {} x0.95 every {} steps; full and head: RMSprop; PROFIT: SGD reference (lr_main/lr_ref = {}), RMSprop main, n_ref 1",
        s.finetune_steps, s.finetune_lr, s.finetune_decay_every, s.profit_ratio
    );
    println!("  error: {}; seeds {:?}", s.metric, s.seeds);
    let t0 = Instant::now();
    let runs = match s.hidden {
        32 => run_all::<32>(&s)?,
        64 => run_all::<64>(&s)?,
        128 => run_all::<128>(&s)?,
        256 => run_all::<256>(&s)?,
        _ => run_all::<500>(&s)?,
    };
    let total = t0.elapsed().as_secs_f64();

    println!();
    println!("Per seed (MSE original domain / new domain):");
    print!("{:>6}", "seed");
    let names = arm_names(&s);
    for a in &names {
        print!("  {:>22}", a);
    }
    println!("  {:>8}", "seconds");
    for r in &runs {
        print!("{:>6}", r.seed);
        for (o, n) in &r.errors {
            print!("  {:>22}", format!("{} / {}", fmt(*o), fmt(*n)));
        }
        println!("  {:>8.1}", r.seconds);
    }
    println!();
    println!("Over {} seed(s): mean / median [min, max]", runs.len());
    println!(
        "{:<18} {:>34} {:>34}   {:>17}   {:>21}",
        "arm", "original domain", "new domain", "paper Table 1", "PyTorch run (medians)"
    );
    let mut arms_json = vec![];
    for (k, name) in names.iter().enumerate() {
        let paper = PAPER.get(k).map_or("-".into(), |p| format!("{} / {}", p.0, p.1));
        let torch = PYTORCH_MEDIAN.get(k).map_or("-".into(), |p| format!("{} / {}", p.0, p.1));
        let o: Vec<f64> = runs.iter().map(|r| r.errors[k].0).collect();
        let n: Vec<f64> = runs.iter().map(|r| r.errors[k].1).collect();
        let (so, sn) = (Spread::of(&o), Spread::of(&n));
        let cell =
            |s: Spread| format!("{} / {} [{}, {}]", fmt(s.mean), fmt(s.median), fmt(s.min), fmt(s.max));
        println!("{:<18} {:>34} {:>34}   {:>17}   {:>21}", name, cell(so), cell(sn), paper, torch);
        let per_seed: Vec<_> = runs
            .iter()
            .map(|r| json!({"seed": r.seed, "original_error": r.errors[k].0, "new_error": r.errors[k].1}))
            .collect();
        arms_json.push(json!({
            "name": name,
            "original_error": so.mean,
            "new_error": sn.mean,
            "original_error_median": so.median,
            "new_error_median": sn.median,
            "paper_original_error": PAPER.get(k).map(|p| p.0),
            "paper_new_error": PAPER.get(k).map(|p| p.1),
            "per_seed": per_seed,
        }));
    }
    // Projection statistics of the PROFIT-like arms (`arms` has no pretrained entry).
    let stats = |k: usize| -> (u64, u64, Vec<f64>) {
        let (mc, pj) = runs
            .iter()
            .map(|r| (r.arms[k].profit_main_calls, r.arms[k].profit_projected))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        (mc, pj, runs.iter().map(|r| r.arms[k].profit_mean_cosine).collect())
    };
    let (mc, pj, _) = stats(2);
    println!();
    let mut naive_fraction = None;
    for (k, name) in names.iter().enumerate().skip(3) {
        let (mc, pj, cos) = stats(k - 1);
        let label = match *name {
            "profit" => "PROFIT",
            other => other,
        };
        println!(
            "{label}: projection fired at {pj} of {mc} main calls ({:.1}%); mean cosine(delta, g) per seed {:?}",
            100.0 * pj as f64 / mc.max(1) as f64,
            cos.iter().map(|c| fmt(*c)).collect::<Vec<_>>()
        );
        if *name == "profit_naive_delta" {
            naive_fraction = Some(pj as f64 / mc.max(1) as f64);
            let a: Vec<&ArmRun> = runs.iter().map(|r| &r.arms[k - 1]).collect();
            println!(
                "  naive delta vs the exact reference update, per seed: zero at {:?} main calls; mean cosine {:?}; mean norm ratio {:?}",
                a.iter().map(|r| r.naive_zero_delta).collect::<Vec<_>>(),
                a.iter().map(|r| fmt(r.naive_cos_to_exact)).collect::<Vec<_>>(),
                a.iter().map(|r| fmt(r.naive_norm_ratio)).collect::<Vec<_>>()
            );
        }
    }
    println!("total {:.1} s", total);

    if let Some(out) = args.output.plot_dir()? {
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
        for (k, name) in names.iter().skip(1).enumerate().take(first.arms.len()) {
            let c = &first.arms[k].curve;
            series.push((format!("{name} new"), c.iter().map(|p| (p.0 as f64, p.2)).collect()));
            series.push((format!("{name} original"), c.iter().map(|p| (p.0 as f64, p.1)).collect()));
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
    if let Some(path) = &args.output.json {
        let mut value = json!({
            "experiment": "toy",
            "settings": s,
            "arms": arms_json,
            "profit_projected_fraction": pj as f64 / mc.max(1) as f64,
            "seconds": total,
        });
        if let Some(f) = naive_fraction {
            value["profit_naive_delta_projected_fraction"] = json!(f);
        }
        write_json(path, &value)?;
        println!("json: {}", path.display());
    }
    Ok(())
}
