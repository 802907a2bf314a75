//! Fine-tune a burn MLP with PROFIT and with burn's own AdamW, on the UCI digits.
//!
//! `cargo run --release -p profit-burn --example burn_digits [-- --seeds N] [--task transposed]
//! [--main burn-adamw]` (3 seeds by default)
//!
//! The task of `profit digits` (profit-cli), with the same data, split and new tasks
//! (`profit-digits`): a 64-128-128-10 ReLU MLP (burn `Linear`s, a derived `Module`, ndarray
//! backend with autodiff) is pre-trained with burn's AdamW on the 8x8 images as they are (the
//! *old* task), then fine-tuned on the new task (by default the images rotated 15 degrees and
//! moved one pixel; `--task transposed`: rows and columns swapped) for 400 steps of batch 128,
//! once with `burn::optim::AdamWConfig` and once with `BurnProfit` (`ProfitConfig::default()`:
//! SGD reference at lr 1e-6, Adam main at lr 1e-3, n_ref 1), from the same weights with the
//! same batches. With `--main burn-adamw` a third arm runs PROFIT with burn's own
//! `AdamWConfig::new().init()` as the main optimizer (`BurnProfit::with_main_optimizer`,
//! `config.main = External { lr: 1e-3 }`, the same SGD reference), from the same weights with
//! the same batches. Printed: test accuracy on both tasks before and after.

use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use profit_burn::BurnProfit;
use profit_core::optim::External;
use profit_core::ProfitConfig;
use profit_digits::{Set, CLASSES, PIXELS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PRETRAIN_STEPS: usize = 2000;
const PRETRAIN_BATCH: usize = 64;
const FINETUNE_STEPS: usize = 400;
const BATCH: usize = 128;
const LR: f64 = 1e-3;

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
    pred.iter().zip(&s.y).filter(|(&p, &y)| p == y as i64).count() as f64 / s.len() as f64
}

/// Train for `steps` batches drawn with `seed`: `step` takes the model and the batch's
/// gradients and returns the updated model.
fn train(
    mut m: Mlp,
    data: &Set,
    (steps, batch): (usize, usize),
    seed: u64,
    device: &Device,
    mut step: impl FnMut(Mlp, GradientsParams) -> Mlp,
) -> Mlp {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..steps {
        let ids: Vec<usize> = (0..batch).map(|_| rng.gen_range(0..data.len())).collect();
        let b = data.take(&ids);
        let y: Vec<i64> = b.y.iter().map(|&c| c as i64).collect();
        let x = Tensor::<2>::from_data(TensorData::new(b.x, [batch, PIXELS]), device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(y, [batch]), device);
        let loss = loss_fn.forward(m.forward(x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        m = step(m, grads);
    }
    m
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let seeds: u64 = arg("--seeds").map_or(Ok(3), |s| s.parse())?;
    let transposed = match arg("--task").as_deref() {
        None | Some("proximal") => false,
        Some("transposed") => true,
        Some(other) => return Err(format!("--task {other}: proximal or transposed").into()),
    };
    let burn_main = match arg("--main").as_deref() {
        None | Some("profit-adam") => false,
        Some("burn-adamw") => true,
        Some(other) => return Err(format!("--main {other}: profit-adam or burn-adamw").into()),
    };
    let t0 = Instant::now();
    let device = Device::default().autodiff();
    let (train_old, test_old) = profit_digits::split(&profit_digits::embedded()?);
    let new_task = |s: &Set| if transposed { s.transposed() } else { s.proximal() };
    let (train_new, test_new) = (new_task(&train_old), new_task(&test_old));
    println!(
        "digits: {} train / {} test images; MLP 64-128-128-10; pre-train {PRETRAIN_STEPS} steps (burn AdamW, batch {PRETRAIN_BATCH}), fine-tune {FINETUNE_STEPS} steps on the {} images, batch {BATCH}",
        train_old.len(),
        test_old.len(),
        if transposed { "transposed" } else { "rotated and shifted" }
    );
    println!("{:<6} {:<28} {:>10} {:>10}", "seed", "arm", "old task", "new task");
    for seed in 0..seeds {
        device.seed(seed);
        let report = |arm: &str, m: &Mlp| {
            println!(
                "{seed:<6} {arm:<28} {:>10.4} {:>10.4}",
                accuracy(m, &test_old, &device),
                accuracy(m, &test_new, &device)
            );
        };
        let mut pre = AdamWConfig::new().init();
        let model = train(
            Mlp::new(&device),
            &train_old,
            (PRETRAIN_STEPS, PRETRAIN_BATCH),
            seed + 1000,
            &device,
            |m, g| pre.step(LR, m, g),
        );
        report("pre-trained", &model);

        let mut adamw = AdamWConfig::new().init();
        let tuned =
            train(model.clone(), &train_new, (FINETUNE_STEPS, BATCH), seed + 2000, &device, |m, g| {
                adamw.step(LR, m, g)
            });
        report("burn AdamW (lr 1e-3)", &tuned);

        let mut opt = BurnProfit::new(&model, ProfitConfig::default())?;
        let tuned =
            train(model.clone(), &train_new, (FINETUNE_STEPS, BATCH), seed + 2000, &device, |m, g| {
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

        if burn_main {
            // The same reference optimizer and ratio; burn's AdamW (its defaults, as the
            // baseline arm above) takes the main steps.
            let config = ProfitConfig { main: External { lr: LR }.into(), ..ProfitConfig::default() };
            let mut opt = BurnProfit::with_main_optimizer(&model, config, AdamWConfig::new().init())?;
            let tuned = train(model, &train_new, (FINETUNE_STEPS, BATCH), seed + 2000, &device, |m, g| {
                let m = opt.step(LR, m, g);
                if let Some(e) = opt.last_error() {
                    panic!("PROFIT step failed: {e}");
                }
                m
            });
            report("PROFIT (SGD ref, burn AdamW)", &tuned);
            println!(
                "{seed:<6} PROFIT + burn AdamW: {} main calls, projection fired at {}, stalled at {}",
                FINETUNE_STEPS / 2,
                opt.projected_calls(),
                opt.stalled_calls()
            );
        }
    }
    println!("{:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
