//! `profit digits`: does PROFIT keep what a model knew, on real data?
//!
//! Data: the UCI handwritten digits (8x8 images, 1797 of them; `profit-cli/data/README.md`).
//! One fixed shuffle (seed 12345) splits them into 1,257 training and 540 test images.
//!
//! Task design: pre-train a 64-128-128-10 MLP (ReLU) with Adam on the images as they are (the
//! *old* task), then fine-tune it on the *transposed* images (the *new* task: same labels, a
//! nearby but conflicting input domain). Report test accuracy on both after fine-tuning with
//! plain SGD, plain Adam, and PROFIT (SGD reference, Adam main). All inner optimizers use
//! PyTorch's formulas (profit-core); seeds vary the initialization and the batch order.

use std::path::PathBuf;
use std::time::Instant;

use dfdx::nn::modules::{Linear as Lin, ReLU};
use dfdx::prelude::{
    cross_entropy_with_logits_loss, Backward, Const, Cpu, DeviceBuildExt, Gradients, Module, ModuleMut,
    Tensor, TensorFromVec, Trace, ZeroGrads,
};
use flate2::read::GzDecoder;
use profit_core::{Adam, InnerConfig, Phase, ProfitConfig, Sgd};
use profit_dfdx::{DfdxPlain, DfdxProfit};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use crate::common::{bar, fmt, write_json, Spread};
use crate::plot;

static DIGITS_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Arguments of `profit digits`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// CI smoke test: 200 pre-training and 40 fine-tuning steps, 2 seeds.
    #[arg(long)]
    quick: bool,
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
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Fine-tuning learning rate of Adam and of PROFIT's main (Adam) optimizer.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Fine-tuning learning rate of plain SGD.
    #[arg(long, default_value_t = 0.05)]
    sgd_lr: f64,
    /// PROFIT's lr_main / lr_ref.
    #[arg(long, default_value_t = 1e4)]
    ratio: f64,
    /// Read the data from this gzip CSV instead of the embedded copy.
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    output: crate::common::Output,
    /// Also run the control arm `profit_lr_ref0`: PROFIT with lr_ref = 0 (no projection; Adam
    /// steps on every other batch).
    #[arg(long)]
    control: bool,
}

/// The resolved settings of a run.
#[derive(Clone, Debug, Serialize)]
struct Settings {
    preset: &'static str,
    net: &'static str,
    old_task: &'static str,
    new_task: &'static str,
    split: &'static str,
    seeds: Vec<u64>,
    pretrain_steps: usize,
    pretrain_optimizer: &'static str,
    finetune_steps: usize,
    batch: usize,
    adam_lr: f64,
    sgd_lr: f64,
    profit_ratio: f64,
    profit: &'static str,
    control_arm: bool,
}

const PIXELS: usize = 64;
const CLASSES: usize = 10;
const SPLIT_SEED: u64 = 12345;
const TRAIN_FRACTION: f64 = 0.7;

/// Images scaled to [0, 1] (row-major `[n, 64]`) and labels.
#[derive(Clone, Debug)]
struct Set {
    x: Vec<f32>,
    y: Vec<usize>,
}

impl Set {
    fn len(&self) -> usize {
        self.y.len()
    }
    fn transposed(&self) -> Set {
        let mut x = self.x.clone();
        for (dst, src) in x.chunks_mut(PIXELS).zip(self.x.chunks(PIXELS)) {
            for r in 0..8 {
                for c in 0..8 {
                    dst[r * 8 + c] = src[c * 8 + r];
                }
            }
        }
        Set { x, y: self.y.clone() }
    }
}

fn parse(gz: &[u8]) -> Result<Set, String> {
    use std::io::Read;
    let mut text = String::new();
    GzDecoder::new(gz).read_to_string(&mut text).map_err(|e| format!("digits data: {e}"))?;
    let mut set = Set { x: vec![], y: vec![] };
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let vals: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("digits data line {}: {e}", i + 1))?;
        if vals.len() != PIXELS + 1 {
            return Err(format!("digits data line {}: {} values, expected 65", i + 1, vals.len()));
        }
        let label = vals[PIXELS];
        if !(label >= 0.0 && label < CLASSES as f32 && label.fract() == 0.0) {
            return Err(format!("digits data line {}: label {label}", i + 1));
        }
        set.x.extend(vals[..PIXELS].iter().map(|v| v / 16.0));
        set.y.push(label as usize);
    }
    if set.len() < 20 {
        return Err(format!("digits data: only {} rows", set.len()));
    }
    Ok(set)
}

fn split(all: &Set) -> (Set, Set) {
    let mut idx: Vec<usize> = (0..all.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(SPLIT_SEED));
    let n_train = (all.len() as f64 * TRAIN_FRACTION).round() as usize;
    let take = |ids: &[usize]| Set {
        x: ids.iter().flat_map(|&i| all.x[i * PIXELS..(i + 1) * PIXELS].iter().copied()).collect(),
        y: ids.iter().map(|&i| all.y[i]).collect(),
    };
    (take(&idx[..n_train]), take(&idx[n_train..]))
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

enum Opt {
    Plain(Box<DfdxPlain<Net>>),
    Profit(Box<DfdxProfit<Net>>),
}

/// Train `m` for `steps` steps on `data`; returns `(step, old acc, new acc)` every few steps
/// when `curve` holds the test sets.
#[allow(clippy::too_many_arguments)]
fn train(
    dev: &Cpu,
    m: &mut Net,
    opt: &mut Opt,
    data: &Set,
    steps: usize,
    batch: usize,
    seed: u64,
    curve: Option<(&Set, &Set)>,
    label: &str,
) -> Result<(Curve, u64, u64), String> {
    let mut batches = Batches::new(seed, batch);
    let mut grads = m.alloc_grads();
    let mut points = vec![];
    let every = (steps / 25).max(1);
    let (mut mains, mut projected) = (0u64, 0u64);
    if let Some((o, n)) = curve {
        points.push((0, accuracy(dev, m, o), accuracy(dev, m, n)));
    }
    let pb = bar(steps as u64, label);
    for step in 0..steps {
        let (x, y) = batches.next(dev, data);
        grads = grads_of(m, grads, x, y);
        let err = |e: String| format!("{label} step {step}: {e}");
        match opt {
            Opt::Plain(o) => o.try_update(m, &grads).map_err(|e| err(e.to_string()))?,
            Opt::Profit(o) => {
                let r = o.try_update(m, &grads).map_err(|e| err(e.to_string()))?;
                if let (Phase::Main, Some(mr)) = (r.phase, r.main) {
                    mains += 1;
                    projected += mr.projected as u64;
                }
            }
        }
        m.zero_grads(&mut grads);
        if let Some((o, n)) = curve {
            if (step + 1) % every == 0 {
                points.push((step + 1, accuracy(dev, m, o), accuracy(dev, m, n)));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok((points, mains, projected))
}

const ARMS: [&str; 5] = ["pretrained", "sgd", "adam", "profit", "profit_lr_ref0"];

struct SeedRun {
    seed: u64,
    /// (old accuracy, new accuracy) per arm.
    acc: Vec<(f64, f64)>,
    curves: Vec<Curve>,
    profit_mains: u64,
    profit_projected: u64,
    seconds: f64,
}

fn run_seed(s: &Settings, seed: u64, first: bool, sets: &[Set; 4]) -> Result<SeedRun, String> {
    let t0 = Instant::now();
    let [old_train, old_test, new_train, new_test] = sets;
    let dev = Cpu::seed_from_u64(seed);
    let mut model: Net = dev.build_module::<Arch, f32>();
    let adam = |lr: f64| InnerConfig::Adam(Adam { lr, ..Default::default() });
    let mut opt = Opt::Plain(Box::new(DfdxPlain::new(&model, adam(1e-3)).map_err(|e| e.to_string())?));
    let label = format!("seed {seed} pre-train");
    train(&dev, &mut model, &mut opt, old_train, s.pretrain_steps, s.batch, seed + 1_000, None, &label)?;
    let arms = if s.control_arm { 5 } else { 4 };
    let mut acc = vec![(accuracy(&dev, &model, old_test), accuracy(&dev, &model, new_test)); arms];
    let mut curves = vec![];
    let (mut profit_mains, mut profit_projected) = (0, 0);
    for (k, name) in ARMS.iter().enumerate().take(arms).skip(1) {
        let mut m = model.clone();
        let mut opt = match k {
            1 => {
                let sgd = Sgd { lr: s.sgd_lr, ..Default::default() };
                Opt::Plain(Box::new(DfdxPlain::new(&m, sgd).map_err(|e| e.to_string())?))
            }
            2 => Opt::Plain(Box::new(DfdxPlain::new(&m, adam(s.adam_lr)).map_err(|e| e.to_string())?)),
            _ => {
                let lr_ref = if k == 4 { 0.0 } else { s.adam_lr / s.profit_ratio };
                let config = ProfitConfig::new(Sgd { lr: lr_ref, ..Default::default() }, adam(s.adam_lr));
                Opt::Profit(Box::new(DfdxProfit::new(&m, config).map_err(|e| e.to_string())?))
            }
        };
        let curve = first.then_some((old_test, new_test));
        let label = format!("seed {seed} {name}");
        let (points, mains, proj) =
            train(&dev, &mut m, &mut opt, new_train, s.finetune_steps, s.batch, seed + 2_000, curve, &label)?;
        if k == 3 {
            (profit_mains, profit_projected) = (mains, proj);
        }
        curves.push(points);
        acc[k] = (accuracy(&dev, &m, old_test), accuracy(&dev, &m, new_test));
    }
    Ok(SeedRun { seed, acc, curves, profit_mains, profit_projected, seconds: t0.elapsed().as_secs_f64() })
}

/// Run `profit digits`.
pub fn run(args: Args) -> Result<(), String> {
    let (preset, seeds, pre, fine) =
        if args.quick { ("quick", 2, 200, 40) } else { ("default", 5, 2_000, 400) };
    let n = args.seeds.unwrap_or(seeds);
    let s = Settings {
        preset,
        net: "64-128-128-10 MLP, ReLU, cross-entropy",
        old_task: "UCI digits as they are",
        new_task: "the same digits transposed (rows <-> columns)",
        split: "one fixed shuffle (seed 12345): 70% train, 30% test; the test images of both tasks are the same images",
        seeds: (args.first_seed..args.first_seed + n).collect(),
        pretrain_steps: args.pretrain_steps.unwrap_or(pre),
        pretrain_optimizer: "Adam lr 1e-3",
        finetune_steps: args.finetune_steps.unwrap_or(fine),
        batch: args.batch,
        adam_lr: args.lr,
        sgd_lr: args.sgd_lr,
        profit_ratio: args.ratio,
        profit: "SGD reference (lr = adam_lr / ratio), Adam main (lr = adam_lr), n_ref 1, global projection",
        control_arm: args.control,
    };
    if n == 0 || s.pretrain_steps == 0 || s.finetune_steps == 0 || s.batch == 0 {
        return Err("steps, batch and seeds must be > 0".into());
    }
    for (name, v) in [("--lr", s.adam_lr), ("--sgd-lr", s.sgd_lr), ("--ratio", s.profit_ratio)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{name} must be finite and > 0"));
        }
    }
    let all = match &args.data {
        Some(p) => parse(&std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?)?,
        None => parse(DIGITS_GZ)?,
    };
    let (old_train, old_test) = split(&all);
    let sets = [old_train.transposed(), old_test.transposed()];
    let sets = [old_train, old_test, sets[0].clone(), sets[1].clone()];

    println!("PROFIT on real data: UCI digits, preset: {}", s.preset);
    println!("  {}; old task: {}; new task: {}", s.net, s.old_task, s.new_task);
    println!("  {} train / {} test images; split: {}", sets[0].len(), sets[1].len(), s.split);
    println!(
        "  pre-train: {}, {} steps, batch {}; fine-tune on the new task: {} steps, batch {}",
        s.pretrain_optimizer, s.pretrain_steps, s.batch, s.finetune_steps, s.batch
    );
    println!(
        "  arms: SGD lr {}; Adam lr {}; PROFIT: {} with ratio {}; seeds {:?}",
        s.sgd_lr, s.adam_lr, s.profit, s.profit_ratio, s.seeds
    );
    let t0 = Instant::now();
    let runs: Vec<SeedRun> = s
        .seeds
        .iter()
        .enumerate()
        .map(|(k, &seed)| run_seed(&s, seed, k == 0, &sets))
        .collect::<Result<_, _>>()?;
    let total = t0.elapsed().as_secs_f64();

    println!();
    println!("Per seed (test accuracy old task / new task):");
    print!("{:>6}", "seed");
    let names = &ARMS[..runs[0].acc.len()];
    for a in names {
        print!("  {:>16}", a);
    }
    println!("  {:>8}", "seconds");
    for r in &runs {
        print!("{:>6}", r.seed);
        for &(o, n) in &r.acc {
            print!("  {:>16}", format!("{:.4} / {:.4}", o, n));
        }
        println!("  {:>8.1}", r.seconds);
    }
    println!();
    println!("Over {} seed(s): mean / median [min, max]", runs.len());
    println!("{:<14} {:>34} {:>34}", "arm", "old task accuracy", "new task accuracy");
    let mut arms_json = vec![];
    for (k, name) in names.iter().enumerate() {
        let o: Vec<f64> = runs.iter().map(|r| r.acc[k].0).collect();
        let n: Vec<f64> = runs.iter().map(|r| r.acc[k].1).collect();
        let (so, sn) = (Spread::of(&o), Spread::of(&n));
        let cell =
            |s: Spread| format!("{} / {} [{}, {}]", fmt(s.mean), fmt(s.median), fmt(s.min), fmt(s.max));
        println!("{:<14} {:>34} {:>34}", name, cell(so), cell(sn));
        let per_seed: Vec<_> = runs
            .iter()
            .map(|r| json!({"seed": r.seed, "old_accuracy": r.acc[k].0, "new_accuracy": r.acc[k].1}))
            .collect();
        arms_json.push(json!({
            "name": name,
            "old_accuracy": so.mean,
            "new_accuracy": sn.mean,
            "old_accuracy_median": so.median,
            "new_accuracy_median": sn.median,
            "per_seed": per_seed,
        }));
    }
    let (mc, pj) = runs.iter().fold((0, 0), |a, r| (a.0 + r.profit_mains, a.1 + r.profit_projected));
    println!();
    println!(
        "PROFIT: projection fired at {pj} of {mc} main calls ({:.1}%)",
        100.0 * pj as f64 / mc.max(1) as f64
    );
    println!("total {total:.1} s");
    if let Some(out) = args.output.plot_dir()? {
        let mut series = vec![];
        for (k, name) in names.iter().enumerate().skip(1) {
            let c = &runs[0].curves[k - 1];
            series.push((format!("{name} new"), c.iter().map(|p| (p.0 as f64, 1.0 - p.2)).collect()));
            series.push((format!("{name} original"), c.iter().map(|p| (p.0 as f64, 1.0 - p.1)).collect()));
        }
        let path = out.join("digits_finetune_curves.svg");
        let title =
            format!("digits fine-tuning on transposed images: test error rate (seed {})", runs[0].seed);
        plot::curves(&path, &title, "step", "error rate (1 - accuracy)", &series)?;
        println!("plot: {}", path.display());
    }
    if let Some(path) = &args.output.json {
        let value = json!({
            "experiment": "digits",
            "settings": s,
            "arms": arms_json,
            "profit_projected_fraction": pj as f64 / mc.max(1) as f64,
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
    use std::io::Write;

    fn gz(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn embedded_data_parses_and_splits() {
        let all = parse(DIGITS_GZ).unwrap();
        assert_eq!(all.len(), 1797);
        assert!(all.x.iter().all(|v| (0.0..=1.0).contains(v)));
        let (train, test) = split(&all);
        assert_eq!(train.len() + test.len(), 1797);
        assert_eq!(train.len(), 1258);
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let t = Set { x, y: vec![3] }.transposed();
        assert_eq!(t.x[1], 8.0);
        assert_eq!(t.x[8], 1.0);
        assert_eq!(t.transposed().x, (0..64).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn malformed_data_is_an_error() {
        let row = |label: &str| format!("{}{label}\n", "0,".repeat(64));
        assert!(parse(b"not gzip").is_err());
        assert!(parse(&gz("1,2,3\n")).is_err());
        assert!(parse(&gz(&row("12").repeat(30))).unwrap_err().contains("label"));
        assert!(parse(&gz(&row("x").repeat(30))).is_err());
        assert_eq!(parse(&gz(&row("7").repeat(30))).unwrap().len(), 30);
    }
}
