//! Fine-tune a candle MLP with PROFIT and with candle's own AdamW, on the UCI digits.
//!
//! `cargo run --release -p profit-candle --example digits [-- --seeds N]` (3 seeds by default)
//!
//! The task of `profit digits` (profit-cli): a 64-128-128-10 ReLU MLP (candle_nn `Linear`s in a
//! `VarMap`) is pre-trained with candle's AdamW on the 8x8 images as they are (the *old* task),
//! then fine-tuned on the transposed images (the *new* task, same labels) for 400 steps, once
//! with `candle_nn::AdamW` and once with `CandleProfit` (SGD reference at lr 1e-3 / 1e4, Adam
//! main at lr 1e-3, n_ref 1), from the same weights with the same batches. Printed: test
//! accuracy on both tasks before and after.

use std::io::Read;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{linear, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use profit_candle::CandleProfit;
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
    y: Vec<u32>,
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
    fn tensors(&self, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            Tensor::from_slice(&self.x, (self.len(), PIXELS), dev)?,
            Tensor::from_slice(&self.y, self.len(), dev)?,
        ))
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
        all.y.push(v[PIXELS] as u32);
    }
    let mut idx: Vec<usize> = (0..all.len()).collect();
    let mut rng = Rng(12345);
    for i in (1..idx.len()).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    let n_train = (all.len() as f64 * 0.7).round() as usize;
    Ok((all.take(&idx[..n_train]), all.take(&idx[n_train..])))
}

struct Mlp {
    l1: Linear,
    l2: Linear,
    l3: Linear,
}

impl Mlp {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Mlp {
            l1: linear(PIXELS, 128, vb.pp("l1"))?,
            l2: linear(128, 128, vb.pp("l2"))?,
            l3: linear(128, CLASSES, vb.pp("l3"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.l3.forward(&self.l2.forward(&self.l1.forward(x)?.relu()?)?.relu()?)
    }
}

fn accuracy(m: &Mlp, s: &Set, dev: &Device) -> candle_core::Result<f64> {
    let (x, y) = s.tensors(dev)?;
    let pred = m.forward(&x)?.argmax(D::Minus1)?;
    let correct = pred.eq(&y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok(correct as f64 / s.len() as f64)
}

/// Train for `steps` batches drawn with `seed`, calling `step` with each batch's loss.
fn train(
    m: &Mlp,
    data: &Set,
    steps: usize,
    seed: u64,
    dev: &Device,
    mut step: impl FnMut(&Tensor) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let mut rng = Rng(seed);
    let (mut xb, mut yb) = (vec![0f32; BATCH * PIXELS], vec![0u32; BATCH]);
    for _ in 0..steps {
        for k in 0..BATCH {
            let i = rng.below(data.len());
            xb[k * PIXELS..(k + 1) * PIXELS].copy_from_slice(&data.x[i * PIXELS..(i + 1) * PIXELS]);
            yb[k] = data.y[i];
        }
        let x = Tensor::from_slice(&xb, (BATCH, PIXELS), dev)?;
        let y = Tensor::from_slice(&yb, BATCH, dev)?;
        let loss = candle_nn::loss::cross_entropy(&m.forward(&x)?, &y)?;
        step(&loss)?;
    }
    Ok(())
}

/// A fresh model with a copy of `from`'s weights.
fn clone_model(from: &VarMap, dev: &Device) -> candle_core::Result<(VarMap, Mlp)> {
    let vm = VarMap::new();
    let m = Mlp::new(VarBuilder::from_varmap(&vm, DType::F32, dev))?;
    for (name, var) in from.data().lock().unwrap().iter() {
        vm.data().lock().unwrap()[name].set(var.as_tensor())?;
    }
    Ok((vm, m))
}

/// Seeded initialization (candle's CPU generator cannot be seeded): each layer uniform in
/// `+-1/sqrt(fan_in)`, as `candle_nn::linear` draws it.
fn init(vm: &VarMap, seed: u64, dev: &Device) -> candle_core::Result<()> {
    let mut rng = Rng(seed);
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let fan_in = if name.starts_with("l1") { PIXELS } else { 128 } as f64;
        let bound = 1.0 / fan_in.sqrt();
        let v: Vec<f32> = (0..var.elem_count())
            .map(|_| ((rng.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * bound)
            .map(|x| x as f32)
            .collect();
        var.set(&Tensor::from_vec(v, var.dims(), dev)?)?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seeds: u64 = match std::env::args().skip_while(|a| a != "--seeds").nth(1) {
        Some(s) => s.parse()?,
        None => 3,
    };
    let t0 = Instant::now();
    let dev = Device::Cpu;
    let (train_old, test_old) = load()?;
    let (train_new, test_new) = (train_old.transposed(), test_old.transposed());
    println!(
        "digits: {} train / {} test images; MLP 64-128-128-10; pre-train {PRETRAIN_STEPS} steps (candle AdamW), fine-tune {FINETUNE_STEPS} steps on the transposed images, batch {BATCH}",
        train_old.len(),
        test_old.len()
    );
    println!("{:<6} {:<26} {:>10} {:>10}", "seed", "arm", "old task", "new task");
    for seed in 0..seeds {
        let vm = VarMap::new();
        let model = Mlp::new(VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        init(&vm, seed, &dev)?;
        let adamw = |lr| ParamsAdamW { lr, ..Default::default() };
        let mut pre = AdamW::new(vm.all_vars(), adamw(LR))?;
        train(&model, &train_old, PRETRAIN_STEPS, seed + 1000, &dev, |loss| pre.backward_step(loss))?;
        let report = |arm: &str, m: &Mlp| -> candle_core::Result<()> {
            println!(
                "{seed:<6} {arm:<26} {:>10.4} {:>10.4}",
                accuracy(m, &test_old, &dev)?,
                accuracy(m, &test_new, &dev)?
            );
            Ok(())
        };
        report("pre-trained", &model)?;

        let (vm_a, m_a) = clone_model(&vm, &dev)?;
        let mut opt = AdamW::new(vm_a.all_vars(), adamw(LR))?;
        train(&m_a, &train_new, FINETUNE_STEPS, seed + 2000, &dev, |loss| opt.backward_step(loss))?;
        report("candle AdamW (lr 1e-3)", &m_a)?;

        let (vm_p, m_p) = clone_model(&vm, &dev)?;
        let config = ProfitConfig::new(
            Sgd { lr: LR / RATIO, ..Default::default() },
            Adam { lr: LR, ..Default::default() },
        );
        let mut opt = CandleProfit::from_varmap(&vm_p, config)?;
        train(&m_p, &train_new, FINETUNE_STEPS, seed + 2000, &dev, |loss| opt.backward_step(loss))?;
        report("PROFIT (SGD ref, Adam)", &m_p)?;
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
