//! Per-step cost of `CandleProfit` (in place, through the copying path, and through the
//! tensor-ops path that vars off the CPU take, forced onto the CPU here) against candle's own
//! `AdamW`, on the same model and the same gradients.
//!
//! `cargo run --release -p profit-candle --example candle_step_overhead [-- --steps N]`
//!
//! For each model size: one backward pass gives a `GradStore`; each optimizer then takes
//! `steps` calls with it (the forward/backward pass is not timed). PROFIT's calls alternate
//! reference and main steps (n_ref = 1); the mean over all calls is printed with the median of
//! each kind.

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use profit_candle::{Access, CandleProfit};
use profit_core::{Adam, Phase, ProfitConfig, Sgd};

struct Mlp(Vec<Linear>);

impl Mlp {
    fn new(vm: &VarMap, widths: &[usize]) -> candle_core::Result<Self> {
        let vb = VarBuilder::from_varmap(vm, DType::F32, &Device::Cpu);
        let layers = widths.windows(2).enumerate().map(|(i, w)| linear(w[0], w[1], vb.pp(format!("l{i}"))));
        Ok(Mlp(layers.collect::<candle_core::Result<_>>()?))
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, l) in self.0.iter().enumerate() {
            h = l.forward(&h)?;
            if i + 1 < self.0.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn main() -> candle_core::Result<()> {
    let steps: usize = match std::env::args().skip_while(|a| a != "--steps").nth(1) {
        Some(s) => s.parse().expect("--steps N"),
        None => 200,
    };
    println!(
        "{:<30} {:>10} {:<28} {:>11} {:>11} {:>11}",
        "model", "params", "optimizer", "mean/call", "median ref", "median main"
    );
    for widths in [vec![64, 128, 128, 10], vec![784, 1024, 1024, 10], vec![1024, 2048, 2048, 2048, 10]] {
        let vm = VarMap::new();
        let m = Mlp::new(&vm, &widths)?;
        let x = Tensor::randn(0f32, 1., (32, widths[0]), &Device::Cpu)?;
        let grads = m.forward(&x)?.sqr()?.mean_all()?.backward()?;
        let params: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        let label = format!("MLP {widths:?}");
        // Warm-up and timing of one optimizer.
        let time = |name: &str, step: &mut dyn FnMut() -> Option<Phase>| {
            for _ in 0..5 {
                step();
            }
            let (mut refs, mut mains, mut total) = (vec![], vec![], 0.0);
            for _ in 0..steps {
                let t = Instant::now();
                let phase = step();
                let dt = t.elapsed().as_secs_f64() * 1e6;
                total += dt;
                match phase {
                    Some(Phase::Reference) => refs.push(dt),
                    _ => mains.push(dt),
                }
            }
            let (r, mn) = (median(&mut refs), median(&mut mains));
            let fmt = |v: f64| if v.is_nan() { "-".to_string() } else { format!("{v:.0} us") };
            println!(
                "{label:<30} {params:>10} {name:<28} {:>11} {:>11} {:>11}",
                fmt(total / steps as f64),
                fmt(r),
                fmt(mn)
            );
        };
        let mut adamw = AdamW::new(vm.all_vars(), ParamsAdamW::default())?;
        time("candle AdamW", &mut || {
            adamw.step(&grads).unwrap();
            None
        });
        let config = ProfitConfig::new(Sgd { lr: 1e-7, ..Default::default() }, Adam::default());
        for access in [Access::InPlace, Access::Copy, Access::TensorOps] {
            let mut opt = CandleProfit::from_varmap_with(&vm, config, access).unwrap();
            let name = match access {
                Access::Copy => "CandleProfit (copying)",
                Access::TensorOps => "CandleProfit (tensor ops)",
                _ => "CandleProfit (in place)",
            };
            time(name, &mut || Some(opt.try_step(&grads).unwrap().phase));
        }
    }
    Ok(())
}
