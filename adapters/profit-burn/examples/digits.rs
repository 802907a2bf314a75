//! Fine-tune a burn MLP with PROFIT and with burn's own AdamW, on the UCI digits.
//!
//! `cargo run --release -p profit-burn --example digits [-- --seeds N]` (3 seeds by default)
//!
//! The task of `profit digits` (profit-cli): a 64-128-128-10 ReLU MLP (burn `Linear`s, a
//! derived `Module`, ndarray backend with autodiff) is pre-trained with burn's AdamW on the 8x8
//! images as they are (the *old* task), then fine-tuned on the transposed images (the *new*
//! task, same labels) for 400 steps, once with `burn::optim::AdamWConfig` and once with
//! `BurnProfit` (SGD reference at lr 1e-3 / 1e4, Adam main at lr 1e-3, n_ref 1), from the same
//! weights with the same batches. Printed: test accuracy on both tasks before and after.

use std::io::Read;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use profit_burn::BurnProfit;
use profit_core::{Adam, ProfitConfig, Sgd};

const DIGITS_GZ: &[u8] = include_bytes!("../../../profit-cli/data/digits.csv.gz");
const PIXELS: usize = 64;
const CLASSES: usize = 10;
const PRETRAIN_STEPS: usize = 2000;
const FINETUNE_STEPS: usize = 400;
const BATCH: usize = 64;
const LR: f64 = 1e-3;
const RATIO: f64 = 1e4;

/// splitmix64: batches and the split without extra dependencies.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Images scaled to [0, 1] (row-major `[n, 64]`) and labels.
#[derive(Clone)]
struct Set {
    x: Vec<f32>,
    y: Vec<i64>,
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
    fn take(&self, ids: &[usize]) -> Set {
        Set {
            x: ids.iter().flat_map(|&i| self.x[i * PIXELS..(i + 1) * PIXELS].iter().copied()).collect(),
            y: ids.iter().map(|&i| self.y[i]).collect(),
        }
    }
}

/// Parse the gzip CSV (64 pixel values 0..16, then the label) and split it 70/30.
fn load() -> Result<(Set, Set), String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_GZ).read_to_string(&mut text).map_err(|e| e.to_string())?;
    let mut all = Set { x: vec![], y: vec![] };
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Vec<f32> = line
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        if v.len() != PIXELS + 1 {
            return Err(format!("line {}: {} values", i + 1, v.len()));
        }
        all.x.extend(v[..PIXELS].iter().map(|p| p / 16.0));
        all.y.push(v[PIXELS] as i64);
    }
    let mut idx: Vec<usize> = (0..all.len()).collect();
    let mut rng = Rng(12345);
    for i in (1..idx.len()).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    let n_train = (all.len() as f64 * 0.7).round() as usize;
    Ok((all.take(&idx[..n_train]), all.take(&idx[n_train..])))
}

#[derive(Module, Debug)]
struct Mlp {
    l1: Linear,
    l2: Linear,
    l3: Linear,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Mlp {
            l1: LinearConfig::new(PIXELS, 128).init(device),
            l2: LinearConfig::new(128, 128).init(device),
            l3: LinearConfig::new(128, CLASSES).init(device),
        }
    }
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.l3.forward(relu(self.l2.forward(relu(self.l1.forward(x)))))
    }
}

fn accuracy(m: &Mlp, s: &Set, device: &Device) -> f64 {
    let m = m.valid();
    let x = Tensor::<2>::from_data(TensorData::new(s.x.clone(), [s.len(), PIXELS]), &device.clone().inner());
    let pred = m.forward(x).argmax(1).into_data().convert::<i64>();
    let pred = pred.as_slice::<i64>().expect("i64 after convert");
    pred.iter().zip(&s.y).filter(|(p, y)| p == y).count() as f64 / s.len() as f64
}

/// Train for `steps` batches drawn with `seed`: `step` takes the model and the batch's
/// gradients and returns the updated model.
fn train(
    mut m: Mlp,
    data: &Set,
    steps: usize,
    seed: u64,
    device: &Device,
    mut step: impl FnMut(Mlp, GradientsParams) -> Mlp,
) -> Mlp {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = Rng(seed);
    let (mut xb, mut yb) = (vec![0f32; BATCH * PIXELS], vec![0i64; BATCH]);
    for _ in 0..steps {
        for k in 0..BATCH {
            let i = rng.below(data.len());
            xb[k * PIXELS..(k + 1) * PIXELS].copy_from_slice(&data.x[i * PIXELS..(i + 1) * PIXELS]);
            yb[k] = data.y[i];
        }
        let x = Tensor::<2>::from_data(TensorData::new(xb.clone(), [BATCH, PIXELS]), device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(yb.clone(), [BATCH]), device);
        let loss = loss_fn.forward(m.forward(x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        m = step(m, grads);
    }
    m
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seeds: u64 = match std::env::args().skip_while(|a| a != "--seeds").nth(1) {
        Some(s) => s.parse()?,
        None => 3,
    };
    let t0 = Instant::now();
    let device = Device::default().autodiff();
    let (train_old, test_old) = load()?;
    let (train_new, test_new) = (train_old.transposed(), test_old.transposed());
    println!(
        "digits: {} train / {} test images; MLP 64-128-128-10; pre-train {PRETRAIN_STEPS} steps (burn AdamW), fine-tune {FINETUNE_STEPS} steps on the transposed images, batch {BATCH}",
        train_old.len(),
        test_old.len()
    );
    println!("{:<6} {:<26} {:>10} {:>10}", "seed", "arm", "old task", "new task");
    for seed in 0..seeds {
        device.seed(seed);
        let report = |arm: &str, m: &Mlp| {
            println!(
                "{seed:<6} {arm:<26} {:>10.4} {:>10.4}",
                accuracy(m, &test_old, &device),
                accuracy(m, &test_new, &device)
            );
        };
        let mut pre = AdamWConfig::new().init();
        let model = train(Mlp::new(&device), &train_old, PRETRAIN_STEPS, seed + 1000, &device, |m, g| {
            pre.step(LR, m, g)
        });
        report("pre-trained", &model);

        let mut adamw = AdamWConfig::new().init();
        let tuned = train(model.clone(), &train_new, FINETUNE_STEPS, seed + 2000, &device, |m, g| {
            adamw.step(LR, m, g)
        });
        report("burn AdamW (lr 1e-3)", &tuned);

        let config = ProfitConfig::new(
            Sgd { lr: LR / RATIO, ..Default::default() },
            Adam { lr: LR, ..Default::default() },
        );
        let mut opt = BurnProfit::new(&model, config)?;
        let tuned = train(model, &train_new, FINETUNE_STEPS, seed + 2000, &device, |m, g| {
            let m = opt.step(LR, m, g);
            if let Some(e) = opt.last_error() {
                panic!("PROFIT step failed: {e}");
            }
            m
        });
        report("PROFIT (SGD ref, Adam)", &tuned);
        println!(
            "{seed:<6} PROFIT: {} main calls, projection fired at {}, stalled (>95% of |g|^2 removed) at {}",
            FINETUNE_STEPS / 2,
            opt.projected_calls(),
            opt.stalled_calls()
        );
    }
    println!("{:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
