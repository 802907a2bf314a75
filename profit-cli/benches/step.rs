//! Criterion benchmarks of the fused CPU steps (issue 5): a PROFIT cycle (n_ref = 1, SGD
//! reference, Adam main: one reference call plus one main call), the same cycle with
//! `NonFinitePolicy::Propagate` (no gradient pre-pass), a plain Adam step, and a memory copy
//! for scale, on the ndarray and nalgebra backends in `f32`, as one tensor and as 1000 equal
//! tensors.
//!
//! Throughput is reported in bytes moved as the code moves them (see `profit bench`): 64, 60 and
//! 32 bytes per parameter; a copy of N bytes counts 2N. Sizes default to 1M parameters;
//! `PROFIT_BENCH_SIZES=1000000,16000000 cargo bench -p profit-cli` runs others.
//!
//! `profit bench` (the CLI) is the measurement of record: it samples the copy bandwidth between
//! repetitions and prints the ratios. This file is for `cargo bench` comparisons across commits.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nalgebra::DMatrix;
use ndarray::{ArrayD, IxDyn};
use profit_core::backend::TensorOps;
use profit_core::plain::Plain;
use profit_core::{Adam, NonFinitePolicy, Profit, ProfitConfig, Sgd};
use profit_nalgebra::Nalgebra;
use profit_ndarray::NdArray;

/// Deterministic values in `[-1, 1)`.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            scale * (((x >> 40) as f32) / ((1u64 << 23) as f32) - 1.0)
        })
        .collect()
}

fn sizes() -> Vec<usize> {
    std::env::var("PROFIT_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000])
}

#[derive(Clone, Copy)]
enum Step {
    Cycle,
    CyclePropagate,
    Adam,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Cycle => "profit_cycle",
            Step::CyclePropagate => "profit_cycle_propagate",
            Step::Adam => "adam",
        }
    }
    fn bytes(self) -> u64 {
        match self {
            Step::Cycle => 64,
            Step::CyclePropagate => 60,
            Step::Adam => 32,
        }
    }
}

fn bench_backend<B: TensorOps<Elem = f32>>(c: &mut Criterion, make: impl Fn(Vec<f32>) -> B::Tensor) {
    for n in sizes() {
        for tensors in [1usize, 1000] {
            let per = n / tensors;
            if per == 0 {
                continue;
            }
            let mut ps: Vec<B::Tensor> = (0..tensors).map(|i| make(values(per, 1 + i as u64, 1.0))).collect();
            let gs: Vec<B::Tensor> =
                (0..tensors).map(|i| make(values(per, 1_000_003 + i as u64, 1e-2))).collect();
            let grefs: Vec<&B::Tensor> = gs.iter().collect();
            let adam = Adam { lr: 1e-7, ..Default::default() };
            for step in [Step::Cycle, Step::CyclePropagate, Step::Adam] {
                let mut group = c.benchmark_group(format!("{}-f32/{}", B::NAME, step.name()));
                group.throughput(Throughput::Bytes(step.bytes() * (per * tensors) as u64));
                let id = BenchmarkId::new(format!("{tensors}_tensors"), per * tensors);
                let init: Vec<&B::Tensor> = ps.iter().collect();
                match step {
                    Step::Cycle | Step::CyclePropagate => {
                        let mut config = ProfitConfig::new(Sgd { lr: 1e-9, ..Default::default() }, adam);
                        if matches!(step, Step::CyclePropagate) {
                            config.non_finite = NonFinitePolicy::Propagate;
                        }
                        let mut opt = Profit::<B>::new(config, &init).expect("optimizer");
                        let mut prefs: Vec<&mut B::Tensor> = ps.iter_mut().collect();
                        group.bench_function(id, |b| {
                            b.iter(|| {
                                opt.step(&mut prefs, &grefs).expect("reference call");
                                opt.step(&mut prefs, &grefs).expect("main call");
                            })
                        });
                    }
                    Step::Adam => {
                        let mut opt = Plain::<B>::new(adam.into(), &init).expect("optimizer");
                        let mut prefs: Vec<&mut B::Tensor> = ps.iter_mut().collect();
                        group.bench_function(id, |b| b.iter(|| opt.step(&mut prefs, &grefs).expect("step")));
                    }
                }
                group.finish();
            }
            black_box(&ps);
        }
    }
}

fn ndarray_steps(c: &mut Criterion) {
    bench_backend::<NdArray<f32>>(c, |v| ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("shape"));
}

fn nalgebra_steps(c: &mut Criterion) {
    bench_backend::<Nalgebra<f32>>(c, |v| DMatrix::from_vec(v.len(), 1, v));
}

/// A 256 MB `copy_from_slice`, for scale (throughput counts read + write bytes).
fn copy(c: &mut Criterion) {
    let n = 64 << 20;
    let src = values(n, 7, 1.0);
    let mut dst = vec![1f32; n];
    let mut group = c.benchmark_group("copy");
    group.throughput(Throughput::Bytes(2 * 4 * n as u64));
    group.bench_function("copy_from_slice_256MB", |b| {
        b.iter(|| {
            dst.copy_from_slice(&src);
            black_box(&mut dst);
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = copy, ndarray_steps, nalgebra_steps
}
criterion_main!(benches);
