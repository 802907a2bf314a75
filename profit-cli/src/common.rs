//! Helpers shared by the `toy` and `digits` experiments: schedules, statistics over seeds,
//! progress bars, JSON output.

use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use profit_core::schedule::Schedule;
use rand::Rng;

/// `torch.optim.lr_scheduler.StepLR`: `base * gamma^(step / every)`.
#[derive(Clone, Copy, Debug)]
pub struct StepLr {
    pub base: f64,
    pub gamma: f64,
    pub every: usize,
}

impl StepLr {
    /// The rate at `step`, from profit-core's `StepLr` schedule.
    pub fn at(&self, step: usize) -> f64 {
        let s = profit_core::schedule::StepLr { step_size: self.every as u64, gamma: self.gamma };
        self.base * s.factor(step as u64)
    }
}

/// Mean, sample standard deviation, median, min and max of per-seed values.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Spread {
    pub mean: f64,
    /// Sample standard deviation (`n - 1`); NaN for fewer than two values.
    pub std: f64,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(v: &[f64]) -> Spread {
        let mut s: Vec<f64> = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        if n == 0 {
            return Spread { mean: f64::NAN, std: f64::NAN, median: f64::NAN, min: f64::NAN, max: f64::NAN };
        }
        let median = if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) };
        let mean = s.iter().sum::<f64>() / n as f64;
        let std = if n < 2 {
            f64::NAN
        } else {
            (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        };
        Spread { mean, std, median, min: s[0], max: s[n - 1] }
    }
}

/// Run `f(k, seeds[k])` for every seed, `jobs` seeds at a time on their own threads (seeds are
/// independent: each builds its own data, model and device); results in seed order, or the
/// first error.
pub fn per_seed<T: Send>(
    seeds: &[u64],
    jobs: usize,
    f: impl Fn(usize, u64) -> Result<T, String> + Sync,
) -> Result<Vec<T>, String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Result<T, String>>>> = Mutex::new((0..seeds.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, seeds.len().max(1)) {
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn_scoped(scope, || loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= seeds.len() {
                        break;
                    }
                    let r = f(k, seeds[k]);
                    out.lock().unwrap_or_else(|e| e.into_inner())[k] = Some(r);
                })
                .map_err(|e| format!("cannot start a thread: {e}"))?;
        }
        Ok::<(), String>(())
    })?;
    out.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("a seed did not run".into())))
        .collect()
}

/// Threads for independent seeds: `--jobs`, else the machine's parallelism.
pub fn jobs(arg: Option<usize>) -> usize {
    arg.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

/// A progress bar on stderr (hidden when stderr is not a terminal, as in CI).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix:>24} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// A standard normal sample (Box-Muller).
pub fn normal<R: Rng>(rng: &mut R) -> f32 {
    let u1: f64 = rng.gen::<f64>().max(1e-300);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// PROFIT's delta mode on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaArg {
    /// `theta' - anchor`, the difference of the stored weights (the library's default).
    Realized,
    /// The sum of the reference updates as computed.
    Accumulated,
}

impl From<DeltaArg> for profit_core::Delta {
    fn from(d: DeltaArg) -> Self {
        match d {
            DeltaArg::Realized => profit_core::Delta::Realized,
            DeltaArg::Accumulated => profit_core::Delta::Accumulated,
        }
    }
}

/// The output options `toy` and `digits` share.
#[derive(clap::Args, Clone, Debug)]
pub struct Output {
    /// Output folder for plots.
    #[arg(long, default_value = "out")]
    pub out: std::path::PathBuf,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Skip the SVG plots.
    #[arg(long)]
    pub no_plots: bool,
    /// Seeds run in parallel, one thread each (default: the number of CPUs). Results do not
    /// depend on it.
    #[arg(long)]
    pub jobs: Option<usize>,
}

impl Output {
    /// The plot folder, created, or `None` with `--no-plots`.
    pub fn plot_dir(&self) -> Result<Option<&Path>, String> {
        if self.no_plots {
            return Ok(None);
        }
        std::fs::create_dir_all(&self.out).map_err(|e| format!("{}: {e}", self.out.display()))?;
        Ok(Some(&self.out))
    }
}

/// Write a JSON value to `path`, creating its folder.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Format a number for the tables: 4 significant digits.
pub fn fmt(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{x:.3e}")
    } else {
        let digits = if a == 0.0 { 3 } else { (3 - a.log10().floor() as i32).clamp(0, 6) as usize };
        format!("{x:.digits$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lr_matches_torch_step_lr() {
        let s = StepLr { base: 1e-2, gamma: 0.9, every: 500 };
        assert_eq!(s.at(0), 1e-2);
        assert_eq!(s.at(499), 1e-2);
        assert!((s.at(500) - 9e-3).abs() < 1e-15);
        assert!((s.at(9_999) - 1e-2 * 0.9f64.powi(19)).abs() < 1e-15);
    }

    #[test]
    fn spread_of_values() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.mean, s.median, s.min, s.max), (4.0, 2.5, 1.0, 10.0));
        assert_eq!(Spread::of(&[5.0, 1.0, 2.0]).median, 2.0);
        // Sample standard deviation: sum of squares 50 over n - 1 = 3.
        assert!((s.std - (50.0f64 / 3.0).sqrt()).abs() < 1e-12, "{s:?}");
        assert!(Spread::of(&[1.0]).std.is_nan());
        assert!(Spread::of(&[]).mean.is_nan());
    }

    #[test]
    fn numbers_format_to_four_digits() {
        assert_eq!(fmt(0.12345), "0.1235");
        assert_eq!(fmt(3.99), "3.990");
        assert_eq!(fmt(0.0001234), "1.234e-4");
        assert_eq!(fmt(f64::NAN), "NaN");
    }
}
