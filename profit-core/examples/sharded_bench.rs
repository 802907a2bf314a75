//! Time per PROFIT cycle (n_ref = 1, SGD reference, Adam main, `f32`, default
//! `NonFinitePolicy::Error`: one reference call plus one main call) single-process and sharded
//! over 1, 2 and 4 in-process ranks (the numbers in `BENCHMARKS.md`, "Sharded state").
//!
//! - `single`: one [`Profit`] over the full parameters.
//! - `ranks`: one long-lived thread per rank, each stepping its own shard (state included) with
//!   a [`ThreadCollective`]; the wall time of a cycle with all ranks running. This is what a
//!   sharded training loop pays in the optimizer: the same passes over `1/world` of the
//!   elements per rank, plus one all-reduce of `3 x tensors` `f64`s per call.
//! - `engine`: [`ShardedProfit::step`] over the full parameters: `ranks` plus, every call,
//!   spawning the rank threads and copying each rank's shard of the parameters and gradients in
//!   and the updated parameters out (what a multi-process run does with its own collectives).
//!
//! `cargo run --release -p profit-core --example sharded_bench [-- SIZES]` (SIZES: parameters,
//! comma-separated; default `1000000,16000000`), 8 equal tensors.

use std::sync::Barrier;
use std::time::Instant;

use profit_core::collective::ThreadCollective;
use profit_core::host::{VecBackend, VecTensor};
use profit_core::shard::{ShardPlan, ShardedProfit, DEFAULT_ALIGN};
use profit_core::{Adam, ParamGroup, Profit, ProfitConfig, Sgd};

const TENSORS: usize = 8;
const REPS: usize = 5;

/// Deterministic values in `[-1, 1)`.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32) / ((1u64 << 23) as f32) - 1.0
        })
        .collect()
}

fn config() -> ProfitConfig {
    ProfitConfig::new(Sgd { lr: 1e-5, ..Default::default() }, Adam { lr: 1e-2, ..Default::default() })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Cycles per timed repetition: about 1 GB moved at 64 bytes per parameter.
fn cycles(params: usize) -> usize {
    (1e9 / (64.0 * params as f64)).ceil().max(2.0) as usize
}

/// Median seconds per cycle of `step` over the full parameters (one warm-up repetition).
fn time_cycles(
    params: &mut [VecTensor<f32>],
    grads: &[VecTensor<f32>],
    mut step: impl FnMut(&mut [&mut VecTensor<f32>], &[&VecTensor<f32>]),
) -> f64 {
    let g: Vec<&VecTensor<f32>> = grads.iter().collect();
    let n = cycles(params.iter().map(|t| t.data.len()).sum());
    let mut times = vec![];
    for rep in 0..=REPS {
        let t = Instant::now();
        for _ in 0..2 * n {
            step(&mut params.iter_mut().collect::<Vec<_>>(), &g);
        }
        if rep > 0 {
            times.push(t.elapsed().as_secs_f64() / n as f64);
        }
    }
    median(times)
}

fn named(params: &[VecTensor<f32>]) -> Vec<ParamGroup<'_, VecTensor<f32>>> {
    vec![ParamGroup::new(params.iter().enumerate().map(|(i, t)| (i.to_string(), t)))]
}

fn single(params: &mut [VecTensor<f32>], grads: &[VecTensor<f32>]) -> f64 {
    let mut opt = Profit::<VecBackend<f32>>::with_groups(config(), named(params)).unwrap();
    time_cycles(params, grads, |p, g| {
        opt.step(p, g).unwrap();
    })
}

fn ranks(params: &[VecTensor<f32>], grads: &[VecTensor<f32>], world: usize) -> f64 {
    let shapes: Vec<Vec<usize>> = params.iter().map(|t| t.shape.clone()).collect();
    let plan = ShardPlan::new(&shapes, world, DEFAULT_ALIGN).unwrap();
    let groups = named(params);
    let n = cycles(params.iter().map(|t| t.data.len()).sum());
    let barrier = Barrier::new(world);
    let full_g: Vec<&[f32]> = grads.iter().map(|g| &g.data[..]).collect();
    let rank_opts: Vec<_> = ThreadCollective::new(world)
        .unwrap()
        .into_iter()
        .map(|c| plan.rank_optimizer(config(), &groups, c).unwrap())
        .collect();
    let times: Vec<Vec<f64>> = std::thread::scope(|s| {
        let threads: Vec<_> = rank_opts
            .into_iter()
            .enumerate()
            .map(|(rank, (mut opt, mut shard))| {
                let (barrier, plan, full_g) = (&barrier, &plan, &full_g);
                s.spawn(move || {
                    let g = plan.scatter(rank, full_g).unwrap();
                    let g: Vec<&VecTensor<f32>> = g.iter().collect();
                    let mut times = vec![];
                    for rep in 0..=REPS {
                        barrier.wait();
                        let t = Instant::now();
                        for _ in 0..2 * n {
                            opt.step(&mut shard.iter_mut().collect::<Vec<_>>(), &g).unwrap();
                        }
                        barrier.wait();
                        if rep > 0 {
                            times.push(t.elapsed().as_secs_f64() / n as f64);
                        }
                    }
                    times
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    median(times[0].clone())
}

fn engine(params: &mut [VecTensor<f32>], grads: &[VecTensor<f32>], world: usize) -> f64 {
    let mut opt = ShardedProfit::new(config(), named(params), world, DEFAULT_ALIGN).unwrap();
    time_cycles(params, grads, |p, g| {
        opt.step(p, g).unwrap();
    })
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .nth(1)
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 16_000_000]);
    println!(
        "PROFIT cycle (reference + main call), f32, {TENSORS} tensors, median of {REPS} repetitions; \
         cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:>10} {:<8} {:>5} {:>10} {:>8}", "params", "variant", "world", "ms/cycle", "GB/s");
    for &size in &sizes {
        let per = size / TENSORS;
        let mut params: Vec<VecTensor<f32>> =
            (0..TENSORS).map(|i| VecTensor::new(&[per], values(per, i as u64)).unwrap()).collect();
        let grads: Vec<VecTensor<f32>> =
            (0..TENSORS).map(|i| VecTensor::new(&[per], values(per, 100 + i as u64)).unwrap()).collect();
        let total = per * TENSORS;
        let row = |variant: &str, world: usize, secs: f64| {
            println!(
                "{total:>10} {variant:<8} {world:>5} {:>10.3} {:>8.1}",
                secs * 1e3,
                64.0 * total as f64 / secs / 1e9
            );
        };
        row("single", 1, single(&mut params, &grads));
        for world in [1, 2, 4] {
            row("ranks", world, ranks(&params, &grads, world));
        }
        for world in [1, 2, 4] {
            row("engine", world, engine(&mut params, &grads, world));
        }
        // Again, for the drift of a shared machine over the rows.
        row("single", 1, single(&mut params, &grads));
    }
}
