//! GPU benchmark of the CUDA backend against the cost floors of ALGORITHM.md, section 7.
//!
//! ```text
//! cargo run --release -p profit-cuda --example bench -- [--sizes 16M,256M] [--tensors 1,1000]
//!     [--dtypes f32,bf16] [--reps 20] [--warmup 3] [--require-gpu]
//! ```
//!
//! Times (CUDA events on the backend's stream, median of `--reps` after `--warmup`):
//! - `profit cycle`: one PROFIT cycle, n_ref = 1, SGD reference, Adam main, f32, anchor kept,
//!   `NonFinitePolicy::Propagate` (no gradient check): the 60 B/param floor
//!   (reference 20, reductions 8, project + restore + Adam 32);
//! - `profit cycle, checked`: the same with the default non-finite check (the reference call
//!   also reads `g` once for `|g|^2`): 64 B/param;
//! - `..., host-decided`: the same cycles with `CudaBackend::set_decide_on_device(false)`: the
//!   host waits for each call's reductions, decides, then launches the update (the rows
//!   without it decide on the device and wait once per call, at its end);
//! - `adam fused`: one plain Adam step as one fused pass (`TensorOps::apply_all`): 28 B/param;
//! - `adam (Plain)`: `profit_core::plain::Plain` Adam, which checks the gradient first: 32 B/param;
//! - with `bf16` in `--dtypes` (default): the same in `half::bf16` (parameters, gradients,
//!   anchor, delta and moments stored in 16 bits, math in f32): `profit cycle, realized, bf16`
//!   and `profit cycle, accumulated, bf16` (30 B/param, half the f32 floor) and `adam fused,
//!   bf16` (14 B/param); the bytes are counted in bf16, so `% of copy` compares each row's own
//!   traffic with the copy bandwidth;
//!
//! against the device-to-device copy bandwidth measured on the same card (`cuMemcpyDtoD`,
//! read + write counted). Prints a markdown table. Without a CUDA device it says so and exits
//! 0 (1 with `--require-gpu`).

use std::process::ExitCode;
use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaStream};
use profit_core::backend::{Batch, Grads, Kernel, Pass, Reduction, TensorOps, TensorState};
use profit_core::element::{Dtype, Real};
use profit_core::plain::Plain;
use profit_core::{Adam, Delta, InnerConfig, NonFinitePolicy, Profit, ProfitConfig, Sgd};
use profit_cuda::{Cuda, CudaBackend, CudaElement, CudaTensor};

struct Args {
    sizes: Vec<usize>,
    tensors: Vec<usize>,
    /// `f32` and/or `bf16`.
    dtypes: Vec<String>,
    reps: usize,
    warmup: usize,
    require_gpu: bool,
}

fn parse_count(s: &str) -> Result<usize, String> {
    let (num, mul) = match s.strip_suffix(['M', 'm']) {
        Some(n) => (n, 1 << 20),
        None => match s.strip_suffix(['K', 'k']) {
            Some(n) => (n, 1 << 10),
            None => (s, 1),
        },
    };
    num.parse::<usize>().map(|n| n * mul).map_err(|e| format!("bad count `{s}`: {e}"))
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        sizes: vec![16 << 20, 256 << 20],
        tensors: vec![1, 1000],
        dtypes: vec!["f32".into(), "bf16".into()],
        reps: 20,
        warmup: 3,
        require_gpu: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => a.sizes = value()?.split(',').map(parse_count).collect::<Result<_, _>>()?,
            "--tensors" => a.tensors = value()?.split(',').map(parse_count).collect::<Result<_, _>>()?,
            "--dtypes" => {
                a.dtypes = value()?.split(',').map(|d| d.trim().to_string()).collect();
                if let Some(bad) = a.dtypes.iter().find(|d| !["f32", "bf16"].contains(&d.as_str())) {
                    return Err(format!("unknown dtype `{bad}` (f32, bf16)"));
                }
            }
            "--reps" => a.reps = parse_count(&value()?)?.max(1),
            "--warmup" => a.warmup = parse_count(&value()?)?,
            "--require-gpu" => a.require_gpu = true,
            "-h" | "--help" => {
                println!(
                    "usage: bench [--sizes 16M,256M] [--tensors 1,1000] [--dtypes f32,bf16] [--reps 20] [--warmup 3] [--require-gpu]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(a)
}

type Res<T> = Result<T, String>;

fn s<T: std::fmt::Debug>(e: T) -> String {
    format!("{e:?}")
}

/// Median of `reps` timings (ms) of `f`, after `warmup` untimed runs, with CUDA events.
fn time_ms(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Res<()>,
) -> Res<f64> {
    for _ in 0..warmup {
        f()?;
    }
    stream.synchronize().map_err(s)?;
    let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(s)?;
    let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(s)?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        start.record(stream).map_err(s)?;
        f()?;
        end.record(stream).map_err(s)?;
        end.synchronize().map_err(s)?;
        t.push(start.elapsed_ms(&end).map_err(s)? as f64);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Tensor lengths: `n` split into `k` near-equal parts.
fn split(n: usize, k: usize) -> Vec<usize> {
    (0..k).map(|i| n / k + usize::from(i < n % k)).collect()
}

fn upload_all<E: CudaElement>(gpu: &CudaBackend, lens: &[usize], pattern: &[E]) -> Res<Vec<CudaTensor<E>>> {
    let mut off = 0;
    lens.iter()
        .map(|&n| {
            let t = gpu.upload(&[n], &pattern[off..off + n]).map_err(s);
            off += n;
            t
        })
        .collect()
}

struct Row {
    what: String,
    n: usize,
    tensors: usize,
    ms: f64,
    bytes_per_param: f64,
    batches: f64,
}

/// The rows of one size and tensor count in element type `E`: for f32 those of the module docs;
/// for a 16-bit type the two unchecked PROFIT cycles and fused Adam, labelled with the type
/// and their floor bytes scaled to its size.
fn bench_config<E: CudaElement>(
    gpu: &CudaBackend,
    args: &Args,
    n: usize,
    k: usize,
    pattern: &[E],
    rows: &mut Vec<Row>,
) -> Res<()> {
    let full = E::DTYPE == Dtype::F32;
    let suffix = if full { String::new() } else { format!(", {}", E::DTYPE) };
    let (ctx, stream) = (gpu.context(), gpu.stream());
    let lens = split(n, k);
    let sgd = Sgd { lr: 1e-5, ..Default::default() };
    let adam = Adam { lr: 1e-3, ..Default::default() };
    // The floors of ALGORITHM.md, section 7, are counted for 4-byte elements.
    let scale = std::mem::size_of::<E>() as f64 / 4.0;
    let label = |what: &str| format!("{what}{suffix}");

    // The last two: the same cycles with every call decided by the core on the host (the host
    // waits for the reductions before it launches the update), to measure what deciding on the
    // device saves.
    let cycles = [
        ("profit cycle, realized", NonFinitePolicy::Propagate, Delta::Realized, 60.0, true),
        ("profit cycle, accumulated", NonFinitePolicy::Propagate, Delta::Accumulated, 60.0, true),
        ("profit cycle, realized, checked", NonFinitePolicy::Error, Delta::Realized, 64.0, true),
        ("profit cycle, realized, host-decided", NonFinitePolicy::Propagate, Delta::Realized, 60.0, false),
        (
            "profit cycle, realized, checked, host-decided",
            NonFinitePolicy::Error,
            Delta::Realized,
            64.0,
            false,
        ),
    ];
    for (what, policy, delta, bytes, on_device) in cycles.into_iter().take(if full { 5 } else { 2 }) {
        gpu.set_decide_on_device(on_device);
        let mut params = upload_all(gpu, &lens, pattern)?;
        let grads = upload_all(gpu, &lens, pattern)?;
        let config = ProfitConfig { non_finite: policy, delta, ..ProfitConfig::new(sgd, adam) };
        let mut opt = Profit::<Cuda<E>>::new(config, &params.iter().collect::<Vec<_>>()).map_err(s)?;
        let mut pr: Vec<&mut CudaTensor<E>> = params.iter_mut().collect();
        let gr: Vec<&CudaTensor<E>> = grads.iter().collect();
        let ms = time_ms(ctx, stream, args.warmup, args.reps, || {
            opt.step(&mut pr, &gr).map_err(s)?;
            opt.step(&mut pr, &gr).map_err(s)?;
            Ok(())
        })?;
        rows.push(Row { what: label(what), n, tensors: k, ms, bytes_per_param: bytes * scale, batches: 2.0 });
    }
    gpu.set_decide_on_device(true);

    {
        let mut params = upload_all(gpu, &lens, pattern)?;
        let grads = upload_all(gpu, &lens, pattern)?;
        let mut states = params
            .iter()
            .map(|p| {
                Ok(TensorState {
                    anchor: None,
                    delta: None,
                    ref_slots: vec![],
                    main_slots: vec![
                        Cuda::<E>::zeros_like(p).map_err(s)?,
                        Cuda::<E>::zeros_like(p).map_err(s)?,
                    ],
                })
            })
            .collect::<Res<Vec<_>>>()?;
        let inner = InnerConfig::from(adam);
        let mut kernels = vec![
            Kernel {
                pass: Pass::Plain,
                rule: inner.rule::<E::Real>(1, adam.lr, 0.0),
                grad_scale: <E::Real as Real>::from_f64(1.0),
                proj: Default::default(),
                delta_scale: <E::Real as Real>::from_f64(1.0),
            };
            k
        ];
        let active = vec![true; k];
        let mut pr: Vec<&mut CudaTensor<E>> = params.iter_mut().collect();
        let gr: Vec<&CudaTensor<E>> = grads.iter().collect();
        let mut out = vec![Reduction::default(); k];
        let mut step = 0u64;
        let ms = time_ms(ctx, stream, args.warmup, args.reps, || {
            step += 1;
            let rule = inner.rule::<E::Real>(step, adam.lr, 0.0);
            kernels.iter_mut().for_each(|kk| kk.rule = rule);
            let grads = Grads::Every(&gr);
            let mut batch =
                Batch::new(&active, &mut kernels, &mut pr, grads, &mut states, &mut out).map_err(s)?;
            Cuda::<E>::apply_all(&mut batch).map_err(s)
        })?;
        rows.push(Row {
            what: label("adam fused"),
            n,
            tensors: k,
            ms,
            bytes_per_param: 28.0 * scale,
            batches: 1.0,
        });
    }
    if !full {
        return Ok(());
    }

    {
        let mut params = upload_all(gpu, &lens, pattern)?;
        let grads = upload_all(gpu, &lens, pattern)?;
        let mut opt = Plain::<Cuda<E>>::new(adam.into(), &params.iter().collect::<Vec<_>>()).map_err(s)?;
        let mut pr: Vec<&mut CudaTensor<E>> = params.iter_mut().collect();
        let gr: Vec<&CudaTensor<E>> = grads.iter().collect();
        let ms =
            time_ms(ctx, stream, args.warmup, args.reps, || opt.step(&mut pr, &gr).map(|_| ()).map_err(s))?;
        rows.push(Row {
            what: label("adam (Plain, checked)"),
            n,
            tensors: k,
            ms,
            bytes_per_param: 32.0,
            batches: 1.0,
        });
    }
    Ok(())
}

fn copy_bandwidth(gpu: &CudaBackend, args: &Args, n: usize) -> Res<f64> {
    type E = f32;
    let stream = gpu.stream();
    let src = stream.alloc_zeros::<E>(n).map_err(s)?;
    let mut dst = stream.alloc_zeros::<E>(n).map_err(s)?;
    let ms = time_ms(gpu.context(), stream, args.warmup, args.reps, || {
        stream.memcpy_dtod(&src, &mut dst).map_err(s)
    })?;
    Ok(2.0 * (n * std::mem::size_of::<E>()) as f64 / (ms * 1e-3) / 1e9)
}

fn label(n: usize) -> String {
    if n % (1 << 20) == 0 {
        format!("{}M", n >> 20)
    } else {
        n.to_string()
    }
}

fn run(args: &Args, gpu: &CudaBackend) -> Res<()> {
    println!(
        "device: {} ({} SMs), kernels from {:?} PTX, {}, median of {} reps after {} warm-up",
        gpu.device_name(),
        gpu.sm_count(),
        gpu.ptx_source(),
        args.dtypes.join(" + "),
        args.reps,
        args.warmup
    );
    let max = args.sizes.iter().copied().max().unwrap_or(0);
    let copy = copy_bandwidth(gpu, args, max)?;
    println!("device-to-device copy bandwidth ({}, read + write): {copy:.0} GB/s\n", label(max));
    let value = |i: usize| ((i % 1999) as f32 - 999.0) * 1e-3;
    let mut rows = vec![];
    for dtype in &args.dtypes {
        // One dtype's pattern at a time (the f32 one is 1 GiB of host memory at 256M).
        match dtype.as_str() {
            "f32" => {
                let pattern: Vec<f32> = (0..max).map(value).collect();
                for &n in &args.sizes {
                    for &k in &args.tensors {
                        bench_config(gpu, args, n, k, &pattern[..n], &mut rows)?;
                    }
                }
            }
            _ => {
                let pattern: Vec<half::bf16> = (0..max).map(|i| half::bf16::from_f32(value(i))).collect();
                for &n in &args.sizes {
                    for &k in &args.tensors {
                        bench_config(gpu, args, n, k, &pattern[..n], &mut rows)?;
                    }
                }
            }
        }
    }
    println!("| what | params | tensors | ms per call | ms per batch | B/param | GB/s | % of copy |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let gbs = r.bytes_per_param * r.n as f64 / (r.ms * 1e-3) / 1e9;
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {} | {:.0} | {:.0}% |",
            r.what,
            label(r.n),
            r.tensors,
            r.ms,
            r.ms / r.batches,
            r.bytes_per_param,
            gbs,
            100.0 * gbs / copy
        );
    }
    println!("\ncopy bandwidth: {copy:.0} GB/s on {}", gpu.device_name());
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    let gpu = match CudaBackend::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("no CUDA device: {e}");
            return if args.require_gpu { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    match run(&args, &gpu) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
