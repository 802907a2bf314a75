//! Fine-tune a candle MLP with PROFIT and with candle's own AdamW, on the UCI digits.
//!
//! `cargo run --release -p profit-candle --example candle_digits [-- --seeds N] [--task transposed]`
//! (3 seeds by default)
//!
//! The task of `profit digits` (profit-cli), with the same data, split and new tasks
//! (`profit-digits`): a 64-128-128-10 ReLU MLP (candle_nn `Linear`s in a `VarMap`) is
//! pre-trained with candle's AdamW on the 8x8 images as they are (the *old* task), then
//! fine-tuned on the new task (by default the images rotated 15 degrees and moved one pixel;
//! `--task transposed`: rows and columns swapped) for 400 steps of batch 128, once with
//! `candle_nn::AdamW` and once with `CandleProfit` (`ProfitConfig::default()`: SGD reference at
//! lr 1e-6, Adam main at lr 1e-3, n_ref 1), from the same weights with the same batches.
//! Printed: test accuracy on both tasks before and after.

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{linear, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use profit_candle::CandleProfit;
use profit_core::ProfitConfig;
use profit_digits::{Set, CLASSES, PIXELS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PRETRAIN_STEPS: usize = 2000;
const PRETRAIN_BATCH: usize = 64;
const FINETUNE_STEPS: usize = 400;
const BATCH: usize = 128;
const LR: f64 = 1e-3;

fn tensors(s: &Set, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let y: Vec<u32> = s.y.iter().map(|&c| c as u32).collect();
    Ok((Tensor::from_slice(&s.x, (s.len(), PIXELS), dev)?, Tensor::from_vec(y, s.len(), dev)?))
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
    let (x, y) = tensors(s, dev)?;
    let pred = m.forward(&x)?.argmax(D::Minus1)?;
    let correct = pred.eq(&y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok(correct as f64 / s.len() as f64)
}

/// Train for `steps` batches drawn with `seed`, calling `step` with each batch's loss.
fn train(
    m: &Mlp,
    data: &Set,
    (steps, batch): (usize, usize),
    seed: u64,
    dev: &Device,
    mut step: impl FnMut(&Tensor) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..steps {
        let ids: Vec<usize> = (0..batch).map(|_| rng.gen_range(0..data.len())).collect();
        let (x, y) = tensors(&data.take(&ids), dev)?;
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
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let fan_in = if name.starts_with("l1") { PIXELS } else { 128 } as f64;
        let bound = 1.0 / fan_in.sqrt();
        let v: Vec<f32> =
            (0..var.elem_count()).map(|_| rng.gen_range(-1.0..1.0) * bound).map(|x| x as f32).collect();
        var.set(&Tensor::from_vec(v, var.dims(), dev)?)?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let seeds: u64 = arg("--seeds").map_or(Ok(3), |s| s.parse())?;
    let transposed = match arg("--task").as_deref() {
        None | Some("proximal") => false,
        Some("transposed") => true,
        Some(other) => return Err(format!("--task {other}: proximal or transposed").into()),
    };
    let t0 = Instant::now();
    let dev = Device::Cpu;
    let (train_old, test_old) = profit_digits::split(&profit_digits::embedded()?);
    let new_task = |s: &Set| if transposed { s.transposed() } else { s.proximal() };
    let (train_new, test_new) = (new_task(&train_old), new_task(&test_old));
    println!(
        "digits: {} train / {} test images; MLP 64-128-128-10; pre-train {PRETRAIN_STEPS} steps (candle AdamW, batch {PRETRAIN_BATCH}), fine-tune {FINETUNE_STEPS} steps on the {} images, batch {BATCH}",
        train_old.len(),
        test_old.len(),
        if transposed { "transposed" } else { "rotated and shifted" }
    );
    println!("{:<6} {:<26} {:>10} {:>10}", "seed", "arm", "old task", "new task");
    for seed in 0..seeds {
        let vm = VarMap::new();
        let model = Mlp::new(VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        init(&vm, seed, &dev)?;
        let adamw = |lr| ParamsAdamW { lr, ..Default::default() };
        let mut pre = AdamW::new(vm.all_vars(), adamw(LR))?;
        train(&model, &train_old, (PRETRAIN_STEPS, PRETRAIN_BATCH), seed + 1000, &dev, |loss| {
            pre.backward_step(loss)
        })?;
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
        train(&m_a, &train_new, (FINETUNE_STEPS, BATCH), seed + 2000, &dev, |loss| opt.backward_step(loss))?;
        report("candle AdamW (lr 1e-3)", &m_a)?;

        let (vm_p, m_p) = clone_model(&vm, &dev)?;
        let mut opt = CandleProfit::from_varmap(&vm_p, ProfitConfig::default())?;
        train(&m_p, &train_new, (FINETUNE_STEPS, BATCH), seed + 2000, &dev, |loss| opt.backward_step(loss))?;
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
