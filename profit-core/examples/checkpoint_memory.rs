//! Peak memory of saving and loading a checkpoint: `cargo run --release -p profit-core
//! --example checkpoint_memory -- [params, default 50000000]`.
//!
//! Builds a PROFIT optimizer over one f32 tensor (SGD reference, Adam main, accumulated delta:
//! anchor, delta, exp_avg, exp_avg_sq, so a checkpoint of 16 bytes per parameter), takes two
//! steps so that every buffer is in memory, then saves to a file and loads it back into a
//! second optimizer, reading the process's peak resident memory (`VmHWM`, Linux) before and
//! after each. Extra = how much the peak grew beyond the optimizer and the parameters.

use profit_core::checkpoint::{LoadOptions, SaveOptions};
use profit_core::host::{VecBackend, VecTensor};
use profit_core::{Adam, Delta, Profit, ProfitConfig, Sgd};

/// Peak resident set size so far, in bytes (0 where /proc is absent).
fn peak() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mb(b: u64) -> String {
    format!("{:.0} MB", b as f64 / 1e6)
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(50_000_000);
    let config = ProfitConfig {
        delta: Delta::Accumulated,
        ..ProfitConfig::new(Sgd { lr: 1e-4, ..Sgd::default() }, Adam::default())
    };
    let mut w = VecTensor::new(&[n], vec![0.5f32; n]).unwrap();
    let g = VecTensor::new(&[n], vec![0.25f32; n]).unwrap();
    let mut opt = Profit::<VecBackend<f32>>::with_names(config, &[("w", &w)]).unwrap();
    for _ in 0..2 {
        opt.step(&mut [&mut w], &[&g]).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("profit-ckpt-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.safetensors");

    let before = peak();
    let t = std::time::Instant::now();
    opt.save_checkpoint_file(&path, &[&w], SaveOptions::default()).unwrap();
    let save_s = t.elapsed().as_secs_f64();
    let after_save = peak();
    let size = std::fs::metadata(&path).unwrap().len();

    let mut w2 = w.clone();
    let mut other = Profit::<VecBackend<f32>>::with_names(config, &[("w", &w2)]).unwrap();
    for _ in 0..2 {
        other.step(&mut [&mut w2], &[&g]).unwrap();
    }
    let mut w3 = w.clone();
    let before_load = peak();
    let t = std::time::Instant::now();
    other.load_checkpoint_file(&path, &mut [&mut w3], LoadOptions::default()).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let after_load = peak();
    std::fs::remove_dir_all(&dir).ok();
    println!(
        "{n} f32 parameters, checkpoint {}: save {save_s:.2} s, peak +{} over {}; load {load_s:.2} s, peak +{} over {}",
        mb(size),
        mb(after_save - before),
        mb(before),
        mb(after_load - before_load),
        mb(before_load)
    );
}
