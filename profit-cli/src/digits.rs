//! `profit digits`: does PROFIT keep what a model knew, on real data?
//!
//! Data: the UCI handwritten digits (8x8 images, 1797 of them; `digits/data/README.md`).
//! One fixed shuffle (seed 12345) splits them into 1,258 training and 539 test images.
//!
//! Task design: pre-train a 64-128-128-10 MLP (ReLU) with Adam on the images as they are (the
//! *old* task), then fine-tune it on a shifted input domain with the same labels (the *new*
//! task): `--task transposed` (rows and columns swapped: a distant, conflicting domain) or
//! `--task proximal` (rotated 15 degrees and moved one pixel: a nearby domain, what the paper
//! targets). Report test accuracy on both after fine-tuning with plain SGD, plain Adam, and
//! PROFIT (SGD reference, Adam main). All inner optimizers use PyTorch's formulas
//! (profit-core); seeds vary the initialization and the batch order.
//!
//! `--sweep` runs delta mode x `lr_main / lr_ref` x batch, each against full fine-tuning with
//! Adam (same batches and same main steps), head-only Adam, SGD and the `lr_ref = 0` control.

use std::path::PathBuf;
use std::time::Instant;

use dfdx::nn::modules::{Linear as Lin, ReLU};
use dfdx::prelude::{
    cross_entropy_with_logits_loss, Backward, Const, Cpu, DeviceBuildExt, Gradients, Module, ModuleMut,
    Tensor, TensorFromVec, Trace, ZeroGrads,
};
use profit_core::{Adam, Delta, InnerConfig, ProfitConfig, Sgd};
use profit_dfdx::{DfdxPlain, DfdxProfit};
use profit_digits::{Set, CLASSES, PIXELS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use crate::arms::{pareto, print_table, Arm, Kind, Metrics, ProjStats, SeedResult, Summary};
use crate::common::{bar, fmt, write_json, DeltaArg};
use crate::plot;

/// The new task's input domain.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Rows and columns swapped.
    Transposed,
    /// Rotated 15 degrees and moved one pixel right.
    Proximal,
}

/// Arguments of `profit digits`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// CI smoke test: 200 pre-training and 40 fine-tuning steps, 2 seeds.
    #[arg(long)]
    quick: bool,
    /// The new task: `proximal` (default: a nearby domain, what PROFIT is for) or `transposed`
    /// (a distant, conflicting one).
    #[arg(long, value_enum, default_value_t = Task::Proximal)]
    task: Task,
    /// Number of seeds (default 5; 2 with --quick).
    #[arg(long)]
    seeds: Option<u64>,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Pre-training steps (default 2,000).
    #[arg(long)]
    pretrain_steps: Option<usize>,
    /// Fine-tuning steps (default 400).
    #[arg(long)]
    finetune_steps: Option<usize>,
    /// Fine-tuning batch size (pre-training always uses 64).
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Fine-tuning learning rate of Adam and of PROFIT's main (Adam) optimizer.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Fine-tuning learning rate of plain SGD.
    #[arg(long, default_value_t = 0.05)]
    sgd_lr: f64,
    /// PROFIT's lr_main / lr_ref.
    #[arg(long, default_value_t = DEFAULT_RATIO)]
    ratio: f64,
    /// PROFIT's delta: `realized` (theta' - anchor, the default) or `accumulated`.
    #[arg(long, value_enum, default_value_t = DeltaArg::Realized)]
    delta: DeltaArg,
    /// Read the data from this gzip CSV instead of the embedded copy.
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    output: crate::common::Output,
    /// Leave out the equal-steps control arm `profit_lr_ref0`, which runs by default: PROFIT with
    /// lr_ref = 0 (no projection; Adam steps on every other batch, as PROFIT's does). PROFIT is
    /// reported against it, paired over seeds.
    #[arg(long)]
    no_control: bool,
    /// Accepted for compatibility: the control arm now runs by default.
    #[arg(long, hide = true, conflicts_with = "no_control")]
    control: bool,
    /// Run the sweep instead: delta {realized, accumulated} x ratio {10, 1e2, 1e3, 1e4, 1e5} x
    /// batch {32, 128}, each against Adam (same batches and same main steps), head-only Adam,
    /// SGD and the lr_ref = 0 control; writes old-vs-new scatter plots.
    #[arg(long, conflicts_with_all = ["control", "no_control", "ratio", "delta"])]
    sweep: bool,
    /// Instead of fine-tuning: after pre-training, measure how much of one SGD reference update
    /// (at each sweep ratio) survives in the realized delta when the weights are stored in
    /// f32, bf16 and f16 (first fine-tuning batch of the new task, per seed).
    #[arg(long, conflicts_with_all = ["control", "no_control", "ratio", "delta", "sweep"])]
    delta_precision: bool,
}

/// The default `lr_main / lr_ref` of `profit digits` (on the old/new Pareto front of the
/// proximal sweep at batch 128, EXPERIMENTS.md).
pub const DEFAULT_RATIO: f64 = 1e3;
const SWEEP_RATIOS: [f64; 5] = [10.0, 1e2, 1e3, 1e4, 1e5];
const SWEEP_BATCHES: [usize; 2] = [32, 128];
const PRETRAIN_BATCH: usize = 64;

/// The resolved settings of a run.
#[derive(Clone, Debug, Serialize)]
struct Settings {
    preset: &'static str,
    net: &'static str,
    task: Task,
    old_task: &'static str,
    new_task: &'static str,
    split: &'static str,
    seeds: Vec<u64>,
    pretrain_steps: usize,
    pretrain_batch: usize,
    pretrain_optimizer: &'static str,
    finetune_steps: usize,
    batch: usize,
    adam_lr: f64,
    sgd_lr: f64,
    profit_ratio: f64,
    profit_delta: &'static str,
    profit: &'static str,
    control_arm: bool,
    sweep: bool,
}

type Arch = (
    dfdx::prelude::Linear<PIXELS, 128>,
    dfdx::prelude::ReLU,
    dfdx::prelude::Linear<128, 128>,
    dfdx::prelude::ReLU,
    dfdx::prelude::Linear<128, CLASSES>,
);
type Net = (Lin<PIXELS, 128, f32, Cpu>, ReLU, Lin<128, 128, f32, Cpu>, ReLU, Lin<128, CLASSES, f32, Cpu>);

fn accuracy(dev: &Cpu, m: &Net, s: &Set) -> f64 {
    let t: Tensor<(usize, Const<PIXELS>), f32, Cpu> = dev.tensor_from_vec(s.x.clone(), (s.len(), Const));
    let logits = m.forward(t).as_vec();
    let correct = logits
        .chunks(CLASSES)
        .zip(&s.y)
        .filter(|(l, &y)| {
            let arg = l.iter().enumerate().fold(0, |b, (i, v)| if *v > l[b] { i } else { b });
            arg == y
        })
        .count();
    correct as f64 / s.len().max(1) as f64
}

/// A batch of images, `[batch, 64]`.
type Images = Tensor<(usize, Const<PIXELS>), f32, Cpu>;
/// One-hot labels, `[batch, 10]`.
type OneHot = Tensor<(usize, Const<CLASSES>), f32, Cpu>;
/// Learning-curve points: `(step, old-task accuracy, new-task accuracy)`.
type Curve = Vec<(usize, f64, f64)>;

struct Batches {
    rng: ChaCha8Rng,
    xb: Vec<f32>,
    yb: Vec<f32>,
}

impl Batches {
    fn new(seed: u64, batch: usize) -> Self {
        Batches {
            rng: ChaCha8Rng::seed_from_u64(seed),
            xb: vec![0.0; PIXELS * batch],
            yb: vec![0.0; CLASSES * batch],
        }
    }
    fn next(&mut self, dev: &Cpu, s: &Set) -> (Images, OneHot) {
        let b = self.yb.len() / CLASSES;
        self.yb.fill(0.0);
        for k in 0..b {
            let i = self.rng.gen_range(0..s.len());
            self.xb[k * PIXELS..(k + 1) * PIXELS].copy_from_slice(&s.x[i * PIXELS..(i + 1) * PIXELS]);
            self.yb[k * CLASSES + s.y[i]] = 1.0;
        }
        (dev.tensor_from_vec(self.xb.clone(), (b, Const)), dev.tensor_from_vec(self.yb.clone(), (b, Const)))
    }
}

fn grads_of(m: &mut Net, grads: Gradients<f32, Cpu>, x: Images, y: OneHot) -> Gradients<f32, Cpu> {
    cross_entropy_with_logits_loss(m.forward_mut(x.traced(grads)), y).backward()
}

fn adam(lr: f64) -> InnerConfig {
    InnerConfig::Adam(Adam { lr, ..Default::default() })
}

/// The optimizer of one arm.
enum Trainer {
    /// A plain optimizer on every parameter.
    Full(Box<DfdxPlain<Net>>),
    /// Adam on the last layer only.
    Head(Box<DfdxPlain<Lin<128, CLASSES, f32, Cpu>>>),
    /// PROFIT (SGD reference, Adam main).
    Profit(Box<DfdxProfit<Net>>),
}

impl Trainer {
    fn new(s: &Settings, arm: &Arm, m: &Net) -> Result<Self, String> {
        let e = |e: profit_dfdx::DfdxError| e.to_string();
        let lr = s.adam_lr;
        Ok(match arm.kind {
            Kind::Sgd => Trainer::Full(Box::new(
                DfdxPlain::new(m, Sgd { lr: s.sgd_lr, ..Default::default() }).map_err(e)?,
            )),
            Kind::Full { .. } | Kind::Pretrained => {
                Trainer::Full(Box::new(DfdxPlain::new(m, adam(lr)).map_err(e)?))
            }
            Kind::Head => Trainer::Head(Box::new(DfdxPlain::new(&m.4, adam(lr)).map_err(e)?)),
            Kind::Profit { delta, ratio } => {
                let config = ProfitConfig {
                    delta,
                    n_ref: arm.n_ref,
                    ..ProfitConfig::new(Sgd { lr: lr / ratio, ..Default::default() }, adam(lr))
                };
                Trainer::Profit(Box::new(DfdxProfit::new(m, config).map_err(e)?))
            }
            Kind::Control => {
                let config = ProfitConfig {
                    n_ref: arm.n_ref,
                    ..ProfitConfig::new(Sgd { lr: 0.0, ..Default::default() }, adam(lr))
                };
                Trainer::Profit(Box::new(DfdxProfit::new(m, config).map_err(e)?))
            }
        })
    }

    fn step(
        &mut self,
        m: &mut Net,
        grads: &Gradients<f32, Cpu>,
        stats: &mut ProjStats,
    ) -> Result<(), String> {
        let s = |e: &dyn std::fmt::Display| e.to_string();
        match self {
            Trainer::Full(o) => o.try_update(m, grads).map_err(|e| s(&e)),
            Trainer::Head(o) => o.try_update(&mut m.4, grads).map_err(|e| s(&e)),
            Trainer::Profit(o) => {
                let r = o.try_update(m, grads).map_err(|e| s(&e))?;
                if let Some(main) = &r.main {
                    stats.record(main);
                }
                Ok(())
            }
        }
    }
}

/// Train `m` for `steps` steps of `batch` on `data`; returns `(step, old acc, new acc)` every
/// few steps when `curve` holds the test sets.
#[allow(clippy::too_many_arguments)]
fn train(
    dev: &Cpu,
    m: &mut Net,
    opt: &mut Trainer,
    data: &Set,
    steps: usize,
    batch: usize,
    seed: u64,
    curve: Option<(&Set, &Set)>,
    label: &str,
) -> Result<(Curve, ProjStats), String> {
    let mut batches = Batches::new(seed, batch);
    let mut grads = m.alloc_grads();
    let mut points = vec![];
    let every = (steps / 25).max(1);
    let mut stats = ProjStats::default();
    if let Some((o, n)) = curve {
        points.push((0, accuracy(dev, m, o), accuracy(dev, m, n)));
    }
    let pb = bar(steps as u64, label);
    for step in 0..steps {
        let (x, y) = batches.next(dev, data);
        grads = grads_of(m, grads, x, y);
        opt.step(m, &grads, &mut stats).map_err(|e| format!("{label} step {step}: {e}"))?;
        m.zero_grads(&mut grads);
        if let Some((o, n)) = curve {
            if (step + 1) % every == 0 {
                points.push((step + 1, accuracy(dev, m, o), accuracy(dev, m, n)));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok((points, stats))
}

struct SeedRun {
    seed: u64,
    results: Vec<SeedResult>,
    curves: Vec<Curve>,
    seconds: f64,
}

/// The images moved to the new task's domain.
fn new_task(set: &Set, task: Task) -> Set {
    match task {
        Task::Transposed => set.transposed(),
        Task::Proximal => set.proximal(),
    }
}

/// The seed's device and its model pre-trained on the old task (Adam, `s.pretrain_steps`).
fn pretrain(s: &Settings, seed: u64, old_train: &Set) -> Result<(Cpu, Net), String> {
    let dev = Cpu::seed_from_u64(seed);
    let mut model: Net = dev.build_module::<Arch, f32>();
    let mut opt = Trainer::Full(Box::new(DfdxPlain::new(&model, adam(1e-3)).map_err(|e| e.to_string())?));
    let label = format!("seed {seed} pre-train");
    train(
        &dev,
        &mut model,
        &mut opt,
        old_train,
        s.pretrain_steps,
        PRETRAIN_BATCH,
        seed + 1_000,
        None,
        &label,
    )?;
    Ok((dev, model))
}

fn run_seed(s: &Settings, arms: &[Arm], seed: u64, first: bool, sets: &[Set; 4]) -> Result<SeedRun, String> {
    let t0 = Instant::now();
    let [old_train, old_test, new_train, new_test] = sets;
    let (dev, model) = pretrain(s, seed, old_train)?;
    let pre = (accuracy(&dev, &model, old_test), accuracy(&dev, &model, new_test));
    let mut results = vec![];
    let mut curves = vec![];
    for arm in arms {
        if arm.kind == Kind::Pretrained {
            results.push(SeedResult { seed, old: pre.0, new: pre.1, proj: ProjStats::default() });
            continue;
        }
        let mut m = model.clone();
        let mut opt = Trainer::new(s, arm, &m)?;
        let steps = match arm.kind {
            Kind::Full { steps } => steps,
            _ => s.finetune_steps,
        };
        let curve = (first && !s.sweep).then_some((old_test, new_test));
        let label = format!("seed {seed} {}", arm.name);
        let (points, proj) =
            train(&dev, &mut m, &mut opt, new_train, steps, arm.batch, seed + 2_000, curve, &label)?;
        curves.push(points);
        results.push(SeedResult {
            seed,
            old: accuracy(&dev, &m, old_test),
            new: accuracy(&dev, &m, new_test),
            proj,
        });
    }
    Ok(SeedRun { seed, results, curves, seconds: t0.elapsed().as_secs_f64() })
}

/// What survives of one reference update `u = -lr_ref * g` in the realized delta
/// `round(w + u) - w` when weights and gradients are stored as `E` (the library's SGD pass:
/// widen, compute in `E::Real`, round once).
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Survival {
    /// Share of coordinates with a nonzero gradient whose update did not round away.
    moved: f64,
    /// `cos(realized delta, u)`.
    cosine: f64,
    /// `|realized delta| / |u|`.
    norm_ratio: f64,
}

fn survival<E: profit_core::element::Element>(w: &[f32], g: &[f32], lr_ref: f64) -> Survival {
    use profit_core::element::Real;
    let lr = <E::Real as Real>::from_f64(lr_ref);
    let (mut moved, mut nonzero, mut du, mut dd, mut uu) = (0usize, 0usize, 0.0f64, 0.0f64, 0.0f64);
    for (&wi, &gi) in w.iter().zip(g) {
        let (p, gr) = (E::from_f64(wi as f64), E::from_f64(gi as f64));
        let u = -(lr * gr.load());
        let d = E::store(E::store(p.load() + u).load() - p.load()).as_f64();
        let u = u.as_f64();
        nonzero += (u != 0.0) as usize;
        moved += (d != 0.0) as usize;
        du += d * u;
        dd += d * d;
        uu += u * u;
    }
    Survival {
        moved: moved as f64 / nonzero.max(1) as f64,
        cosine: if dd > 0.0 && uu > 0.0 { du / (dd * uu).sqrt() } else { 0.0 },
        norm_ratio: if uu > 0.0 { (dd / uu).sqrt() } else { 0.0 },
    }
}

/// `profit digits --delta-precision`.
fn delta_precision(s: &Settings, sets: &[Set; 4], json: Option<&std::path::Path>) -> Result<(), String> {
    let [old_train, _, new_train, _] = sets;
    println!("PROFIT's realized delta in 16-bit weights: UCI digits, {}", s.new_task);
    println!(
        "  after pre-training ({}, {} steps), one SGD reference update u = -lr_ref * g on the first fine-tuning batch ({}), lr_ref = {} / ratio",
        s.pretrain_optimizer, s.pretrain_steps, s.batch, s.adam_lr
    );
    println!("  moved: share of coordinates whose update survives rounding; cos and norm: realized delta vs u; mean over seeds {:?}", s.seeds);
    let mut rows: Vec<(&str, f64, Vec<Survival>)> = vec![];
    for &seed in &s.seeds {
        let (dev, mut model) = pretrain(s, seed, old_train)?;
        let (x, y) = Batches::new(seed + 2_000, s.batch).next(&dev, new_train);
        let fresh = model.alloc_grads();
        let grads = grads_of(&mut model, fresh, x, y);
        let mut mirror = profit_dfdx::Mirror::of(&model).map_err(|e| e.to_string())?;
        mirror.gather(&model, &grads).map_err(|e| e.to_string())?;
        let w: Vec<f32> = mirror.params().iter().flat_map(|t| t.data.iter().copied()).collect();
        let g: Vec<f32> = mirror.grads().iter().flat_map(|t| t.data.iter().copied()).collect();
        for (k, &ratio) in SWEEP_RATIOS.iter().enumerate() {
            let lr_ref = s.adam_lr / ratio;
            for (j, (name, r)) in [
                ("f32", survival::<f32>(&w, &g, lr_ref)),
                ("bf16", survival::<half::bf16>(&w, &g, lr_ref)),
                ("f16", survival::<half::f16>(&w, &g, lr_ref)),
            ]
            .into_iter()
            .enumerate()
            {
                let i = k * 3 + j;
                if rows.len() <= i {
                    rows.push((name, ratio, vec![]));
                }
                rows[i].2.push(r);
            }
        }
    }
    println!();
    println!("{:<6} {:>8} {:>9} {:>9} {:>9}", "dtype", "ratio", "moved", "cos", "norm");
    let mean = |v: &[Survival], f: fn(&Survival) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let mut out = vec![];
    for (name, ratio, v) in &rows {
        let (m, c, n) = (mean(v, |x| x.moved), mean(v, |x| x.cosine), mean(v, |x| x.norm_ratio));
        println!("{name:<6} {ratio:>8.0e} {:>8.1}% {c:>9.4} {n:>9.4}", 100.0 * m);
        out.push(
            json!({"dtype": name, "ratio": ratio, "moved": m, "cosine": c, "norm_ratio": n, "per_seed": v}),
        );
    }
    if let Some(p) = json {
        write_json(p, &json!({"experiment": "digits_delta_precision", "settings": s, "rows": out}))?;
        println!("json: {}", p.display());
    }
    Ok(())
}

impl Args {
    fn arms(&self, s: &Settings) -> Vec<Arm> {
        let fine = s.finetune_steps;
        let mut v = vec![Arm::new("pretrained", Kind::Pretrained, s.batch)];
        if !s.sweep {
            v.push(Arm::new("sgd", Kind::Sgd, s.batch));
            v.push(Arm::new("adam", Kind::Full { steps: fine }, s.batch));
            let profit =
                Arm::new("profit", Kind::Profit { delta: self.delta.into(), ratio: s.profit_ratio }, s.batch);
            if s.control_arm {
                v.push(profit.against("profit_lr_ref0"));
                v.push(Arm::new("profit_lr_ref0", Kind::Control, s.batch));
            } else {
                v.push(profit);
            }
            return v;
        }
        let batches: Vec<usize> = if self.quick { vec![s.batch] } else { SWEEP_BATCHES.to_vec() };
        for b in batches {
            v.push(Arm::new(format!("sgd_b{b}"), Kind::Sgd, b));
            v.push(Arm::new(format!("adam_b{b}"), Kind::Full { steps: fine }, b));
            v.push(Arm::new(format!("adam_same_main_steps_b{b}"), Kind::Full { steps: fine / 2 }, b));
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

/// Run `profit digits`.
pub fn run(args: Args) -> Result<(), String> {
    let (preset, seeds, pre, fine) =
        if args.quick { ("quick", 2, 200, 40) } else { ("default", 5, 2_000, 400) };
    let n = args.seeds.unwrap_or(seeds);
    let s = Settings {
        preset,
        net: "64-128-128-10 MLP, ReLU, cross-entropy",
        task: args.task,
        old_task: "UCI digits as they are",
        new_task: match args.task {
            Task::Transposed => "the same digits transposed (rows <-> columns)",
            Task::Proximal => "the same digits rotated 15 degrees and moved one pixel right (bilinear)",
        },
        split: "one fixed shuffle (seed 12345): 70% train, 30% test; the test images of both tasks are the same images",
        seeds: (args.first_seed..args.first_seed + n).collect(),
        pretrain_steps: args.pretrain_steps.unwrap_or(pre),
        pretrain_batch: PRETRAIN_BATCH,
        pretrain_optimizer: "Adam lr 1e-3",
        finetune_steps: args.finetune_steps.unwrap_or(fine),
        batch: args.batch,
        adam_lr: args.lr,
        sgd_lr: args.sgd_lr,
        profit_ratio: args.ratio,
        profit_delta: crate::arms::delta_name(args.delta.into()),
        profit: "SGD reference (lr = adam_lr / ratio), Adam main (lr = adam_lr), n_ref 1, global projection",
        control_arm: !args.no_control && !args.sweep,
        sweep: args.sweep,
    };
    if n == 0 || s.pretrain_steps == 0 || s.finetune_steps < 2 || s.batch == 0 {
        return Err("steps (fine-tuning: >= 2), batch and seeds must be > 0".into());
    }
    for (name, v) in [("--lr", s.adam_lr), ("--sgd-lr", s.sgd_lr), ("--ratio", s.profit_ratio)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{name} must be finite and > 0"));
        }
    }
    let all = match &args.data {
        Some(p) => profit_digits::parse(&std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?)?,
        None => profit_digits::embedded()?,
    };
    let (old_train, old_test) = profit_digits::split(&all);
    let (new_train, new_test) = (new_task(&old_train, s.task), new_task(&old_test, s.task));
    let sets = [old_train, old_test, new_train, new_test];
    if args.delta_precision {
        return delta_precision(&s, &sets, args.output.json.as_deref());
    }
    let arms = args.arms(&s);

    println!("PROFIT on real data: UCI digits, preset: {}{}", s.preset, if s.sweep { ", sweep" } else { "" });
    println!("  {}; old task: {}; new task: {}", s.net, s.old_task, s.new_task);
    println!("  {} train / {} test images; split: {}", sets[0].len(), sets[1].len(), s.split);
    println!(
        "  pre-train: {}, {} steps, batch {}; fine-tune on the new task: {} steps{}",
        s.pretrain_optimizer,
        s.pretrain_steps,
        s.pretrain_batch,
        s.finetune_steps,
        if s.sweep { String::new() } else { format!(", batch {}", s.batch) }
    );
    if s.sweep {
        println!(
            "  arms: {} per seed; SGD lr {}; Adam lr {}; PROFIT: {}; seeds {:?}",
            arms.len() - 1,
            s.sgd_lr,
            s.adam_lr,
            s.profit,
            s.seeds
        );
    } else {
        println!(
            "  arms: SGD lr {}; Adam lr {}; PROFIT: {} with ratio {}, {} delta; seeds {:?}",
            s.sgd_lr, s.adam_lr, s.profit, s.profit_ratio, s.profit_delta, s.seeds
        );
    }
    let t0 = Instant::now();
    let runs: Vec<SeedRun> =
        crate::common::per_seed(&s.seeds, crate::common::jobs(args.output.jobs), |k, seed| {
            let r = run_seed(&s, &arms, seed, k == 0, &sets)?;
            println!("  seed {seed} done in {:.1} s", r.seconds);
            Ok(r)
        })?;
    let total = t0.elapsed().as_secs_f64();

    let summaries: Vec<Summary> = arms
        .iter()
        .enumerate()
        .map(|(k, a)| Summary { arm: a.clone(), seeds: runs.iter().map(|r| r.results[k]).collect() })
        .collect();
    let metrics = Metrics { old_key: "old_accuracy", new_key: "new_accuracy", higher_is_better: true };
    let front = pareto(&summaries, &metrics);
    let pairs = crate::arms::pairs(&summaries, &metrics)?;
    println!();
    if !s.sweep {
        println!("Per seed (test accuracy old task / new task):");
        print!("{:>6}", "seed");
        for a in &arms {
            print!("  {:>16}", a.name);
        }
        println!("  {:>8}", "seconds");
        for r in &runs {
            print!("{:>6}", r.seed);
            for x in &r.results {
                print!("  {:>16}", format!("{:.4} / {:.4}", x.old, x.new));
            }
            println!("  {:>8.1}", r.seconds);
        }
        println!();
        println!("Over {} seed(s): mean / median [min, max]", runs.len());
        println!("{:<14} {:>34} {:>34}", "arm", "old task accuracy", "new task accuracy");
        for x in &summaries {
            let cell = |s: crate::common::Spread| {
                format!("{} / {} [{}, {}]", fmt(s.mean), fmt(s.median), fmt(s.min), fmt(s.max))
            };
            println!("{:<14} {:>34} {:>34}", x.arm.name, cell(x.old_task()), cell(x.new_task()));
        }
        println!();
        for x in summaries.iter().filter(|x| x.arm.is_profit()) {
            println!("{}: {}", x.arm.name, x.proj().line());
        }
    } else {
        println!(
            "Over {} seed(s) (accuracy, higher is better; * = on the old/new Pareto front):",
            runs.len()
        );
        print_table(&summaries, &metrics, &front);
    }
    println!();
    crate::arms::print_pairs(&summaries, &pairs, &metrics);
    println!("total {total:.1} s");
    if let Some(out) = args.output.plot_dir()? {
        let task = match s.task {
            Task::Transposed => "digits_transposed",
            Task::Proximal => "digits_proximal",
        };
        if s.sweep {
            for path in crate::arms::scatter_per_batch(
                out,
                task,
                &summaries,
                &metrics,
                &front,
                "old-task accuracy",
                "new-task accuracy",
                false,
            )? {
                println!("plot: {}", path.display());
            }
        } else {
            let mut series = vec![];
            for (a, c) in arms.iter().skip(1).zip(&runs[0].curves) {
                series.push((format!("{} new", a.name), c.iter().map(|p| (p.0 as f64, 1.0 - p.2)).collect()));
                series.push((
                    format!("{} original", a.name),
                    c.iter().map(|p| (p.0 as f64, 1.0 - p.1)).collect(),
                ));
            }
            let path = out.join(format!("{task}_finetune_curves.svg"));
            let title =
                format!("digits fine-tuning ({:?} task): test error rate (seed {})", s.task, runs[0].seed);
            plot::curves(&path, &title, "step", "error rate (1 - accuracy)", &series)?;
            println!("plot: {}", path.display());
        }
    }
    if let Some(path) = &args.output.json {
        let arms_json: Vec<_> =
            summaries.iter().enumerate().map(|(i, x)| x.json(&metrics, front.contains(&i))).collect();
        let front_names: Vec<&str> = front.iter().map(|&i| summaries[i].arm.name.as_str()).collect();
        let value = json!({
            "experiment": "digits",
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
