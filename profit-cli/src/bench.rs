//! `profit bench`: time a PROFIT cycle and a plain Adam step on every CPU backend, beside the
//! machine's copy bandwidth measured in the same run (ALGORITHM.md, section 7).
//!
//! Byte counts are what the code moves per parameter, `f32`, counting every array read or
//! written once (no write-allocate traffic), the same convention as the copy bandwidth
//! (`bytes read + bytes written`):
//!
//! | step | passes | bytes / param |
//! |---|---|---|
//! | `profit_cycle` (default `NonFinitePolicy::Error`, realized delta) | reference: `|g|^2` pre-pass 4 + fused 16 (read theta, g; write theta, anchor); main: reductions 12 (read theta', anchor, g) + fused 32 (read anchor, theta', g, m, v; write theta, m, v) | 64 |
//! | `profit_cycle_propagate` (`NonFinitePolicy::Propagate`: no pre-pass) | 16 + 12 + 32 | 60 |
//! | `adam` (`Plain`, always checks gradients) | `|g|^2` pre-pass 4 + fused 28 (read theta, g, m, v; write theta, m, v) | 32 |
//!
//! The floors are 60 bytes per cycle and 28 per Adam step; `floor` in the table is the
//! floor time (`spec_bytes / copy bandwidth`) divided by the measured time.

use std::hint::black_box;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use profit_core::backend::TensorOps;
use profit_core::plain::Plain;
use profit_core::{Adam, NonFinitePolicy, Profit, ProfitConfig, Projection, Sgd};
use profit_nalgebra::Nalgebra;
use profit_ndarray::NdArray;
use serde::Serialize;

/// Bench options.
#[derive(clap::Args)]
pub struct Args {
    /// Parameter counts, comma separated; `K` = 1e3, `M` = 1e6 (default `1M,16M,64M`).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<String>>,
    /// Tensor counts the parameters are split into (equal sizes), comma separated (default `1,1000`).
    #[arg(long, value_delimiter = ',')]
    tensors: Option<Vec<usize>>,
    /// Timed repetitions per row (the median is reported), after one warm-up repetition.
    #[arg(long)]
    reps: Option<usize>,
    /// Small sizes and few repetitions: a smoke test for CI (seconds, even in a debug build).
    #[arg(long)]
    quick: bool,
    /// Only these backends (`ndarray`, `nalgebra`), comma separated.
    #[arg(long, value_delimiter = ',')]
    backends: Option<Vec<String>>,
    /// Size in MB of each of the two buffers of the copy-bandwidth measurement (default 256).
    #[arg(long)]
    copy_mb: Option<usize>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// One row of the results.
#[derive(Serialize, Clone, Debug)]
struct Row {
    backend: String,
    step: &'static str,
    params: usize,
    tensors: usize,
    /// Median seconds per iteration (one PROFIT cycle = two calls, or one Adam step).
    seconds: f64,
    /// Bytes per parameter the code moves per iteration.
    bytes_per_param: f64,
    /// `bytes_per_param * params / seconds`, in 1e9 bytes per second.
    gbs: f64,
    /// Copy bandwidth sampled between this row's repetitions (median), GB/s.
    copy_gbs_row: f64,
    /// `gbs / copy_gbs_row`.
    copy_ratio: f64,
    /// The floor bytes per parameter for this step (60 per cycle, 28 per Adam step).
    spec_bytes_per_param: f64,
    /// floor time (`spec_bytes_per_param * params / copy_gbs_row`) over measured time.
    floor_ratio: f64,
    /// Repetitions timed and iterations per repetition.
    reps: usize,
    iters_per_rep: usize,
}

/// The JSON document `--json` writes.
#[derive(Serialize)]
struct Report {
    /// The run's copy bandwidth: median over every sample of the faster of the single-threaded
    /// and the threaded copy.
    copy_gbs: f64,
    /// Median of the single-threaded samples.
    copy_gbs_single_thread: f64,
    /// Median of the threaded samples.
    copy_gbs_threads: f64,
    /// Bytes per copy buffer.
    copy_bytes: usize,
    /// Read-only bandwidth (integer sum over the copy source on all threads), GB/s, for reference.
    read_gbs: f64,
    threads: usize,
    /// How bytes are counted.
    convention: &'static str,
    results: Vec<Row>,
}

const CONVENTION: &str = "bytes read + bytes written per iteration (a copy of N bytes counts 2N); \
                          write-allocate (read-for-ownership) traffic is not counted; GB = 1e9 bytes";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Cycle,
    CyclePropagate,
    /// The `Propagate` cycle with per-tensor projection: reductions fused with the update tensor
    /// by tensor, so the main call's second read of delta and g comes from cache.
    CyclePerTensor,
    Adam,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Cycle => "profit_cycle",
            Step::CyclePropagate => "profit_cycle_propagate",
            Step::CyclePerTensor => "profit_cycle_per_tensor_propagate",
            Step::Adam => "adam",
        }
    }
    fn bytes(self) -> f64 {
        match self {
            Step::Cycle => 64.0,
            Step::CyclePropagate | Step::CyclePerTensor => 60.0,
            Step::Adam => 32.0,
        }
    }
    fn spec_bytes(self) -> f64 {
        match self {
            Step::Cycle | Step::CyclePropagate | Step::CyclePerTensor => 60.0,
            Step::Adam => 28.0,
        }
    }
}

/// One warm-up repetition, then `reps` timed ones of `iters` iterations each, sampling the copy
/// bandwidth before every timed repetition; pushes seconds per iteration into `times`.
fn time_reps(
    reps: usize,
    iters: usize,
    copier: &mut Copier,
    times: &mut Vec<f64>,
    copies: &mut Vec<f64>,
    mut iteration: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    for r in 0..reps + 1 {
        if r > 0 {
            copies.push(copier.sample());
        }
        let t0 = Instant::now();
        for _ in 0..iters {
            iteration()?;
        }
        if r > 0 {
            times.push(t0.elapsed().as_secs_f64() / iters as f64);
        }
    }
    Ok(())
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad size `{s}`"))?;
    let n = (v * mult).round();
    if !(1.0..1e12).contains(&n) {
        return Err(format!("bad size `{s}`"));
    }
    Ok(n as usize)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Deterministic "random-ish" values in `[-1, 1)` (a 64-bit LCG).
fn fill(out: &mut [f32], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for o in out {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *o = ((x >> 40) as f32) / ((1u64 << 23) as f32) - 1.0;
    }
}

/// The copy-bandwidth probe: two buffers, copied with `copy_from_slice` on one thread and split
/// over scoped threads. Each sample is the faster of the two, in GB/s (read + write bytes).
struct Copier {
    src: Vec<f32>,
    dst: Vec<f32>,
    threads: usize,
    /// Every sample taken, single-threaded and threaded.
    single: Vec<f64>,
    par: Vec<f64>,
}

impl Copier {
    fn new(bytes: usize, threads: usize) -> Self {
        let n = bytes / 4;
        let mut src = vec![0f32; n];
        fill(&mut src, 7);
        // Touch every page of the destination so the first sample does not time page faults.
        let dst = vec![1f32; n];
        Copier { src, dst, threads, single: vec![], par: vec![] }
    }

    fn once(&mut self, par: bool) -> f64 {
        let n = self.src.len();
        let t0 = Instant::now();
        if par && self.threads > 1 {
            let per = n.div_ceil(self.threads);
            std::thread::scope(|s| {
                for (d, c) in self.dst.chunks_mut(per).zip(self.src.chunks(per)) {
                    s.spawn(move || d.copy_from_slice(c));
                }
            });
        } else {
            self.dst.copy_from_slice(&self.src);
        }
        black_box(&mut self.dst);
        2.0 * (n * 4) as f64 / t0.elapsed().as_secs_f64() / 1e9
    }

    /// Read-only bandwidth of the source buffer on all threads (an integer sum, which
    /// vectorizes), GB/s: the ceiling for loops that mostly read.
    fn read_once(&self) -> f64 {
        let n = self.src.len();
        let per = n.div_ceil(self.threads.max(1));
        let t0 = Instant::now();
        let total = std::thread::scope(|s| {
            let hs: Vec<_> = self
                .src
                .chunks(per)
                .map(|c| s.spawn(move || c.iter().fold(0u32, |a, x| a.wrapping_add(x.to_bits()))))
                .collect();
            hs.into_iter().fold(0u32, |a, h| a.wrapping_add(h.join().unwrap_or(0)))
        });
        black_box(total);
        (n * 4) as f64 / t0.elapsed().as_secs_f64() / 1e9
    }

    /// One sample (both ways, recorded), returning the faster.
    fn sample(&mut self) -> f64 {
        let a = self.once(false);
        let b = self.once(true);
        self.single.push(a);
        self.par.push(b);
        a.max(b)
    }

    /// The run's copy bandwidth: median over all samples of the faster of the two ways.
    fn gbs(&self) -> f64 {
        median(self.single.iter().zip(&self.par).map(|(a, b)| a.max(*b)).collect())
    }
}

/// How a backend makes an `f32` tensor of `n` elements filled from `data`.
trait Make: TensorOps<Elem = f32> {
    fn make(data: &[f32]) -> Self::Tensor;
}

impl Make for NdArray<f32> {
    fn make(data: &[f32]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(&[data.len()]), data.to_vec()).expect("shape")
    }
}

impl Make for Nalgebra<f32> {
    fn make(data: &[f32]) -> nalgebra::DMatrix<f32> {
        nalgebra::DMatrix::from_column_slice(data.len(), 1, data)
    }
}

/// Iterations per timed repetition: enough that one repetition moves about 1 GB.
fn iters_for(params: usize, bytes: f64, quick: bool) -> usize {
    if quick {
        return 2;
    }
    ((1e9 / (params as f64 * bytes)).ceil() as usize).clamp(1, 1000)
}

/// Time one row. Each timed repetition is preceded by a copy-bandwidth sample, so that the row's
/// ratio compares against the bandwidth of the same moment (other processes share the machine).
fn bench_one<B: Make>(
    step: Step,
    params: usize,
    tensors: usize,
    reps: usize,
    quick: bool,
    copier: &mut Copier,
) -> Result<Row, String> {
    let per = params / tensors;
    if per == 0 {
        return Err(format!("{params} parameters cannot be split into {tensors} tensors"));
    }
    let mut buf = vec![0f32; per];
    let mut ps: Vec<B::Tensor> = (0..tensors)
        .map(|i| {
            fill(&mut buf, 1 + i as u64);
            B::make(&buf)
        })
        .collect();
    // Constant gradients with mixed signs; tiny learning rates keep everything finite forever.
    let gs: Vec<B::Tensor> = (0..tensors)
        .map(|i| {
            fill(&mut buf, 1_000_003 + i as u64);
            buf.iter_mut().for_each(|x| *x *= 1e-2);
            B::make(&buf)
        })
        .collect();
    drop(buf);
    let grefs: Vec<&B::Tensor> = gs.iter().collect();
    let adam = Adam { lr: 1e-7, ..Default::default() };
    let iters = iters_for(params, step.bytes(), quick);
    let e = |err: profit_core::ProfitError| err.to_string();
    let mut times = Vec::with_capacity(reps);
    let mut copies = Vec::with_capacity(reps);
    match step {
        Step::Cycle | Step::CyclePropagate | Step::CyclePerTensor => {
            let mut config = ProfitConfig::new(Sgd { lr: 1e-9, ..Default::default() }, adam);
            if step == Step::CyclePropagate || step == Step::CyclePerTensor {
                config.non_finite = NonFinitePolicy::Propagate;
            }
            if step == Step::CyclePerTensor {
                config.projection = Projection::PerTensor;
            }
            let mut opt = Profit::<B>::new(config, &ps.iter().collect::<Vec<_>>()).map_err(e)?;
            let mut prefs: Vec<&mut B::Tensor> = ps.iter_mut().collect();
            time_reps(reps, iters, copier, &mut times, &mut copies, || {
                opt.step(&mut prefs, &grefs).map_err(e)?;
                opt.step(&mut prefs, &grefs).map(|_| ()).map_err(e)
            })?;
        }
        Step::Adam => {
            let mut opt = Plain::<B>::new(adam.into(), &ps.iter().collect::<Vec<_>>()).map_err(e)?;
            let mut prefs: Vec<&mut B::Tensor> = ps.iter_mut().collect();
            time_reps(reps, iters, copier, &mut times, &mut copies, || {
                opt.step(&mut prefs, &grefs).map(|_| ()).map_err(e)
            })?;
        }
    }
    black_box(&ps);
    let n = per * tensors;
    let seconds = median(times);
    let gbs = step.bytes() * n as f64 / seconds / 1e9;
    Ok(Row {
        backend: format!("{}-f32", B::NAME),
        step: step.name(),
        params: n,
        tensors,
        seconds,
        bytes_per_param: step.bytes(),
        gbs,
        copy_gbs_row: median(copies),
        copy_ratio: 0.0,
        spec_bytes_per_param: step.spec_bytes(),
        floor_ratio: 0.0,
        reps,
        iters_per_rep: iters,
    })
}

fn fmt_count(n: usize) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n % 1000 == 0 {
        format!("{}K", n / 1000)
    } else {
        n.to_string()
    }
}

/// Run the benchmark.
pub fn run(args: Args) -> Result<(), String> {
    let quick = args.quick;
    let sizes: Vec<usize> = match &args.sizes {
        Some(s) => s.iter().map(|x| parse_size(x)).collect::<Result<_, _>>()?,
        None if quick => vec![20_000],
        None => vec![1_000_000, 16_000_000, 64_000_000],
    };
    let tensors = args.tensors.clone().unwrap_or_else(|| if quick { vec![1, 100] } else { vec![1, 1000] });
    let reps = args.reps.unwrap_or(if quick { 2 } else { 5 }).max(1);
    let copy_mb = args.copy_mb.unwrap_or(if quick { 4 } else { 256 });
    let backends = args.backends.clone().unwrap_or_else(|| vec!["ndarray".into(), "nalgebra".into()]);
    for b in &backends {
        if b != "ndarray" && b != "nalgebra" {
            return Err(format!("unknown backend `{b}` (ndarray, nalgebra)"));
        }
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let mut copier = Copier::new(copy_mb << 20, threads);
    for _ in 0..reps.max(3) + 1 {
        copier.sample();
    }
    let read = median((0..reps.max(3)).map(|_| copier.read_once()).collect());
    println!(
        "copy bandwidth before the rows ({copy_mb} MB copy_from_slice, read + write bytes): \
         {:.1} GB/s on 1 thread, {:.1} GB/s on {threads} threads; read-only: {read:.1} GB/s",
        median(copier.single.clone()),
        median(copier.par.clone())
    );
    println!(
        "{:<14} {:<23} {:>7} {:>7} {:>10} {:>5} {:>7} {:>7} {:>6} {:>6}",
        "backend", "step", "params", "tensors", "ms/iter", "B/par", "GB/s", "copy", "copy%", "floor%"
    );
    let mut rows = vec![];
    for &n in &sizes {
        for &t in &tensors {
            for b in &backends {
                for step in [Step::Cycle, Step::CyclePropagate, Step::CyclePerTensor, Step::Adam] {
                    let mut row = match b.as_str() {
                        "ndarray" => bench_one::<NdArray<f32>>(step, n, t, reps, quick, &mut copier)?,
                        _ => bench_one::<Nalgebra<f32>>(step, n, t, reps, quick, &mut copier)?,
                    };
                    let copy = row.copy_gbs_row;
                    row.copy_ratio = row.gbs / copy;
                    row.floor_ratio =
                        row.spec_bytes_per_param * row.params as f64 / (copy * 1e9) / row.seconds;
                    println!(
                        "{:<14} {:<23} {:>7} {:>7} {:>10.3} {:>5} {:>7.1} {:>7.1} {:>5.0}% {:>5.0}%",
                        row.backend,
                        row.step,
                        fmt_count(row.params),
                        row.tensors,
                        row.seconds * 1e3,
                        row.bytes_per_param,
                        row.gbs,
                        copy,
                        row.copy_ratio * 100.0,
                        row.floor_ratio * 100.0
                    );
                    rows.push(row);
                }
            }
        }
    }
    let copy = copier.gbs();
    println!(
        "copy bandwidth over the whole run (median of {} samples, faster of 1 and {threads} threads): {copy:.1} GB/s",
        copier.single.len()
    );
    if let Some(path) = &args.json {
        let report = Report {
            copy_gbs: copy,
            copy_gbs_single_thread: median(copier.single.clone()),
            copy_gbs_threads: median(copier.par.clone()),
            copy_bytes: copier.src.len() * 4,
            read_gbs: read,
            threads,
            convention: CONVENTION,
            results: rows,
        };
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16M").unwrap(), 16_000_000);
        assert_eq!(parse_size("20k").unwrap(), 20_000);
        assert_eq!(parse_size("1.5M").unwrap(), 1_500_000);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert!(parse_size("x").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn median_is_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
