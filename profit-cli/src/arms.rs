//! What `toy` and `digits` share about fine-tuning arms: their description, the projection
//! statistics PROFIT arms collect, summaries over seeds, the old/new Pareto front, JSON and the
//! old-vs-new scatter plot.

use profit_core::{Delta, MainReport, STALL_SHARE};
use serde_json::{json, Value};

use crate::common::{fmt, Spread};
use crate::plot::{scatter, Marker, Point};

/// What an arm runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// The model before fine-tuning.
    Pretrained,
    /// Every parameter with the plain main optimizer, for `steps` steps.
    Full { steps: usize },
    /// Only the head (last layer) with the plain main optimizer.
    Head,
    /// Plain SGD on every parameter (digits).
    Sgd,
    /// PROFIT: SGD reference at `lr / ratio`, the main optimizer at `lr`, `n_ref = 1`.
    Profit { delta: Delta, ratio: f64 },
    /// PROFIT with `lr_ref = 0`: no projection, main steps on every other batch.
    Control,
}

/// One fine-tuning arm: what it runs and on which batch size.
#[derive(Clone, Debug)]
pub struct Arm {
    pub name: String,
    pub kind: Kind,
    pub batch: usize,
}

impl Arm {
    pub fn new(name: impl Into<String>, kind: Kind, batch: usize) -> Self {
        Arm { name: name.into(), kind, batch }
    }

    /// `profit_<delta>_r<ratio>_b<batch>`.
    pub fn profit(delta: Delta, ratio: f64, batch: usize) -> Self {
        let name = format!("profit_{}_r{}_b{batch}", delta_name(delta), ratio_name(ratio));
        Arm::new(name, Kind::Profit { delta, ratio }, batch)
    }

    /// Whether this arm runs PROFIT (and so has projection statistics).
    pub fn is_profit(&self) -> bool {
        matches!(self.kind, Kind::Profit { .. } | Kind::Control)
    }
}

pub fn delta_name(d: Delta) -> &'static str {
    match d {
        Delta::Realized => "realized",
        Delta::Accumulated => "accumulated",
    }
}

/// `10`, `1e2`, ... for powers of ten; the plain number otherwise.
pub fn ratio_name(r: f64) -> String {
    let e = r.log10();
    if (e - e.round()).abs() < 1e-9 && e >= 2.0 {
        format!("1e{}", e.round() as i32)
    } else {
        format!("{r}")
    }
}

/// The projection statistics of one PROFIT run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProjStats {
    pub main_calls: u64,
    pub projected: u64,
    pub stalled: u64,
    pub cos_sum: f64,
    pub removed_sum: f64,
}

impl ProjStats {
    pub fn record(&mut self, m: &MainReport) {
        self.main_calls += 1;
        self.projected += m.projected as u64;
        self.stalled += (m.removed > STALL_SHARE) as u64;
        self.cos_sum += m.cosine;
        self.removed_sum += m.removed;
    }

    pub fn add(&mut self, o: &ProjStats) {
        self.main_calls += o.main_calls;
        self.projected += o.projected;
        self.stalled += o.stalled;
        self.cos_sum += o.cos_sum;
        self.removed_sum += o.removed_sum;
    }

    fn per_call(&self, x: f64) -> f64 {
        if self.main_calls == 0 {
            0.0
        } else {
            x / self.main_calls as f64
        }
    }

    pub fn projected_share(&self) -> f64 {
        self.per_call(self.projected as f64)
    }
    pub fn mean_cosine(&self) -> f64 {
        self.per_call(self.cos_sum)
    }
    pub fn mean_removed(&self) -> f64 {
        self.per_call(self.removed_sum)
    }
    pub fn stalled_share(&self) -> f64 {
        self.per_call(self.stalled as f64)
    }

    /// One line for reports.
    pub fn line(&self) -> String {
        format!(
            "projection fired at {} of {} main calls ({:.1}%); mean cos(delta, g) {}; mean share of |g|^2 removed {}; stalled (>{:.0}% removed) at {} ({:.1}%)",
            self.projected,
            self.main_calls,
            100.0 * self.projected_share(),
            fmt(self.mean_cosine()),
            fmt(self.mean_removed()),
            100.0 * STALL_SHARE,
            self.stalled,
            100.0 * self.stalled_share()
        )
    }
}

/// One arm's result for one seed.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeedResult {
    pub seed: u64,
    /// Old-task metric (toy: MSE on the original domain; digits: accuracy on the old task).
    pub old: f64,
    /// New-task metric.
    pub new: f64,
    pub proj: ProjStats,
}

/// How the two metrics read.
#[derive(Clone, Copy, Debug)]
pub struct Metrics {
    /// JSON keys: old and new.
    pub old_key: &'static str,
    pub new_key: &'static str,
    /// Whether larger is better (accuracy) or smaller (error).
    pub higher_is_better: bool,
}

/// An arm with its per-seed results.
pub struct Summary {
    pub arm: Arm,
    pub seeds: Vec<SeedResult>,
}

impl Summary {
    pub fn old_task(&self) -> Spread {
        Spread::of(&self.seeds.iter().map(|s| s.old).collect::<Vec<_>>())
    }
    pub fn new_task(&self) -> Spread {
        Spread::of(&self.seeds.iter().map(|s| s.new).collect::<Vec<_>>())
    }
    pub fn proj(&self) -> ProjStats {
        let mut p = ProjStats::default();
        self.seeds.iter().for_each(|s| p.add(&s.proj));
        p
    }

    /// The arm as JSON: `name`, the two means (and medians), `per_seed`, and for PROFIT arms
    /// `delta`, `ratio` and `batch` and the projection statistics.
    pub fn json(&self, m: &Metrics, pareto: bool) -> Value {
        let (o, n) = (self.old_task(), self.new_task());
        let per_seed: Vec<Value> =
            self.seeds.iter().map(|s| json!({"seed": s.seed, m.old_key: s.old, m.new_key: s.new})).collect();
        let mut v = json!({
            "name": self.arm.name,
            m.old_key: o.mean,
            m.new_key: n.mean,
            format!("{}_median", m.old_key): o.median,
            format!("{}_median", m.new_key): n.median,
            "batch": self.arm.batch,
            "pareto": pareto,
            "per_seed": per_seed,
        });
        match self.arm.kind {
            Kind::Profit { delta, ratio } => {
                v["delta"] = json!(delta_name(delta));
                v["ratio"] = json!(ratio);
            }
            Kind::Control => v["ratio"] = json!(f64::INFINITY.to_string()),
            Kind::Full { steps } => v["steps"] = json!(steps),
            _ => {}
        }
        if self.arm.is_profit() {
            let p = self.proj();
            v["projected_share"] = json!(p.projected_share());
            v["mean_cosine"] = json!(p.mean_cosine());
            v["mean_removed"] = json!(p.mean_removed());
            v["stalled_share"] = json!(p.stalled_share());
        }
        v
    }
}

/// Indices of the arms on the old/new Pareto front (by means over seeds): no other arm is at
/// least as good on both metrics and better on one. The pre-trained model is left out.
pub fn pareto(s: &[Summary], m: &Metrics) -> Vec<usize> {
    let score = |x: &Summary| {
        let (o, n) = (x.old_task().mean, x.new_task().mean);
        if m.higher_is_better {
            (o, n)
        } else {
            (-o, -n)
        }
    };
    let eligible = |x: &Summary| x.arm.kind != Kind::Pretrained;
    (0..s.len())
        .filter(|&i| eligible(&s[i]))
        .filter(|&i| {
            let (a0, a1) = score(&s[i]);
            !s.iter().filter(|x| eligible(x)).any(|x| {
                let (b0, b1) = score(x);
                b0 >= a0 && b1 >= a1 && (b0 > a0 || b1 > a1)
            })
        })
        .collect()
}

/// Print the summary table (mean / median of both metrics, projection statistics).
pub fn print_table(s: &[Summary], m: &Metrics, front: &[usize]) {
    println!(
        "{:<34} {:>24} {:>24} {:>9} {:>9} {:>9} {:>9}  pareto",
        "arm",
        format!("{} mean / median", m.old_key),
        format!("{} mean / median", m.new_key),
        "projected",
        "cos",
        "removed",
        "stalled"
    );
    for (i, x) in s.iter().enumerate() {
        let (o, n) = (x.old_task(), x.new_task());
        let p = x.proj();
        let stats = if x.arm.is_profit() {
            format!(
                "{:>8.1}% {:>9} {:>9} {:>8.1}%",
                100.0 * p.projected_share(),
                fmt(p.mean_cosine()),
                fmt(p.mean_removed()),
                100.0 * p.stalled_share()
            )
        } else {
            format!("{:>9} {:>9} {:>9} {:>9}", "-", "-", "-", "-")
        };
        println!(
            "{:<34} {:>24} {:>24} {stats}  {}",
            x.arm.name,
            format!("{} / {}", fmt(o.mean), fmt(o.median)),
            format!("{} / {}", fmt(n.mean), fmt(n.median)),
            if front.contains(&i) { "*" } else { "" }
        );
    }
}

/// One old-vs-new scatter plot per fine-tuning batch size (`{prefix}_sweep_b{batch}.svg`):
/// one point per arm (means over seeds), baselines and the pre-trained model in black, PROFIT
/// realized in blue, accumulated in red, the `lr_ref = 0` control in grey; points on the Pareto
/// front (of all batch sizes) ringed.
#[allow(clippy::too_many_arguments)]
pub fn scatter_per_batch(
    out: &std::path::Path,
    prefix: &str,
    s: &[Summary],
    m: &Metrics,
    front: &[usize],
    x_label: &str,
    y_label: &str,
    log: bool,
) -> Result<Vec<std::path::PathBuf>, String> {
    let mut batches: Vec<usize> =
        s.iter().filter(|x| x.arm.kind != Kind::Pretrained).map(|x| x.arm.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    let mut paths = vec![];
    for b in batches {
        let points: Vec<Point> = s
            .iter()
            .enumerate()
            .filter(|(_, x)| x.arm.batch == b || x.arm.kind == Kind::Pretrained)
            .map(|(i, x)| {
                let (marker, label) = match x.arm.kind {
                    Kind::Profit { delta: Delta::Realized, ratio } => (Marker::Realized, ratio_name(ratio)),
                    Kind::Profit { delta: Delta::Accumulated, ratio } => {
                        (Marker::Accumulated, ratio_name(ratio))
                    }
                    Kind::Control => (Marker::Control, "lr_ref=0".into()),
                    _ => (Marker::Baseline, x.arm.name.trim_end_matches(&format!("_b{b}")).to_string()),
                };
                Point { x: x.old_task().mean, y: x.new_task().mean, label, marker, front: front.contains(&i) }
            })
            .collect();
        let path = out.join(format!("{prefix}_sweep_b{b}.svg"));
        let title = format!(
            "{prefix}: old vs new task after fine-tuning, batch {b}, means over seeds ({} is better)",
            if m.higher_is_better { "up-right" } else { "down-left" }
        );
        scatter(&path, &title, x_label, y_label, &points, log)?;
        paths.push(path);
    }
    Ok(paths)
}
