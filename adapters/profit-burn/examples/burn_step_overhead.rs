//! Per-step cost of `BurnProfit` against burn's own `AdamW` (`ModuleOptimizer`), on the same
//! model (ndarray backend with autodiff).
//!
//! `cargo run --release -p profit-burn --example burn_step_overhead [-- --steps N]`
//!
//! For each model size and call, a forward/backward pass gives fresh `GradientsParams` (burn's
//! optimizers consume them; not timed); only the optimizer call is timed. PROFIT's calls
//! alternate reference and main steps (n_ref = 1); the mean over all calls is printed with the
//! median of each kind.

use std::time::Instant;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Tensor};
use profit_burn::BurnProfit;
use profit_core::{Adam, Phase, ProfitConfig, Sgd};

#[derive(Module, Debug)]
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn new(widths: &[usize], device: &Device) -> Self {
        Mlp { layers: widths.windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect() }
    }
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let n = self.layers.len();
        self.layers.iter().enumerate().fold(x, |h, (i, l)| {
            let h = l.forward(h);
            if i + 1 < n {
                relu(h)
            } else {
                h
            }
        })
    }
    fn num(&self) -> usize {
        self.num_params()
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

/// Time `steps` optimizer calls (after 5 untimed ones); `step` returns the model and the
/// call's phase (`None` for a plain optimizer).
fn time(
    label: &str,
    name: &str,
    mut m: Mlp,
    x: &Tensor<2>,
    steps: usize,
    mut step: impl FnMut(Mlp, GradientsParams) -> (Mlp, Option<Phase>),
) {
    let params = m.num();
    let (mut refs, mut mains, mut total) = (vec![], vec![], 0.0);
    for i in 0..steps + 5 {
        let grads = GradientsParams::from_grads(m.forward(x.clone()).powi_scalar(2).mean().backward(), &m);
        let t = Instant::now();
        let (next, phase) = step(m, grads);
        let dt = t.elapsed().as_secs_f64() * 1e6;
        m = next;
        if i >= 5 {
            total += dt;
            match phase {
                Some(Phase::Reference) => refs.push(dt),
                _ => mains.push(dt),
            }
        }
    }
    let fmt = |v: f64| if v.is_nan() { "-".to_string() } else { format!("{v:.0} us") };
    let (r, mn) = (median(&mut refs), median(&mut mains));
    println!(
        "{label:<30} {params:>10} {name:<28} {:>11} {:>11} {:>11}",
        fmt(total / steps as f64),
        fmt(r),
        fmt(mn)
    );
}

fn main() {
    let steps: usize = match std::env::args().skip_while(|a| a != "--steps").nth(1) {
        Some(s) => s.parse().expect("--steps N"),
        None => 100,
    };
    let device = Device::default().autodiff();
    device.seed(0);
    println!(
        "{:<30} {:>10} {:<28} {:>11} {:>11} {:>11}",
        "model", "params", "optimizer", "mean/call", "median ref", "median main"
    );
    for widths in [vec![64, 128, 128, 10], vec![784, 1024, 1024, 10], vec![1024, 2048, 2048, 2048, 10]] {
        let model = Mlp::new(&widths, &device);
        let x = Tensor::<2>::random([32, widths[0]], Distribution::Normal(0.0, 1.0), &device);
        let label = format!("MLP {widths:?}");
        let mut adamw = AdamWConfig::new().init();
        time(&label, "burn AdamW", model.clone(), &x, steps, |m, g| (adamw.step(1e-3, m, g), None));
        let config = ProfitConfig::new(Sgd { lr: 1e-7, ..Default::default() }, Adam::default());
        let mut opt = BurnProfit::new(&model, config).unwrap();
        time(&label, "BurnProfit", model, &x, steps, |m, g| {
            let (m, r) = opt.try_step(m, &g).map_err(|f| f.error).unwrap();
            (m, Some(r.phase))
        });
    }
}
