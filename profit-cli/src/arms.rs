//! What `toy` and `digits` share about fine-tuning arms: their description, the projection
//! statistics PROFIT arms collect, summaries over seeds, the old/new Pareto front, JSON and the
//! old-vs-new scatter plot.

use profit_core::report::STALL_SHARE;
use profit_core::{Delta, MainReport};
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
    /// PROFIT: SGD reference at `lr / ratio`, the main optimizer at `lr`, `n_ref` from the arm.
    Profit { delta: Delta, ratio: f64 },
    /// PROFIT with `lr_ref = 0`: no projection, a main step on every `n_ref + 1`-th batch.
    Control,
}

/// One fine-tuning arm: what it runs and on which batch size.
#[derive(Clone, Debug)]
pub struct Arm {
    pub name: String,
    pub kind: Kind,
    pub batch: usize,
    /// PROFIT's reference steps per cycle (`Profit` and `Control` arms; 1 unless set).
    pub n_ref: u64,
    /// The arm this one is compared with, paired over seeds (a PROFIT arm's equal-steps
    /// control: `lr_ref = 0` with the same `n_ref`, so the same main steps on the same batches).
    pub control: Option<String>,
}

impl Arm {
    pub fn new(name: impl Into<String>, kind: Kind, batch: usize) -> Self {
        Arm { name: name.into(), kind, batch, n_ref: 1, control: None }
    }

    /// This arm with `n_ref` reference steps per cycle.
    pub fn with_n_ref(mut self, n_ref: u64) -> Self {
        self.n_ref = n_ref;
        self
    }

    /// This arm, compared (paired over seeds) with the arm named `control`.
    pub fn against(mut self, control: impl Into<String>) -> Self {
        self.control = Some(control.into());
        self
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
        let per_seed: Vec<Value> = self
            .seeds
            .iter()
            .map(|s| {
                let mut v = json!({"seed": s.seed, m.old_key: s.old, m.new_key: s.new});
                if self.arm.is_profit() {
                    v["main_calls"] = json!(s.proj.main_calls);
                    v["projected_share"] = json!(s.proj.projected_share());
                    v["mean_cosine"] = json!(s.proj.mean_cosine());
                    v["mean_removed"] = json!(s.proj.mean_removed());
                    v["stalled_share"] = json!(s.proj.stalled_share());
                }
                v
            })
            .collect();
        let mut v = json!({
            "name": self.arm.name,
            m.old_key: o.mean,
            m.new_key: n.mean,
            format!("{}_median", m.old_key): o.median,
            format!("{}_median", m.new_key): n.median,
            format!("{}_std", m.old_key): o.std,
            format!("{}_std", m.new_key): n.std,
            "batch": self.arm.batch,
            "pareto": pareto,
            "per_seed": per_seed,
        });
        if let Some(c) = &self.arm.control {
            v["control"] = json!(c);
        }
        if self.arm.is_profit() {
            v["n_ref"] = json!(self.arm.n_ref);
        }
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
            v["main_calls"] = json!(p.main_calls);
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

/// Print the summary table (mean ± standard deviation over seeds and median of both metrics,
/// projection statistics).
pub fn print_table(s: &[Summary], m: &Metrics, front: &[usize]) {
    println!(
        "{:<34} {:>32} {:>32} {:>9} {:>9} {:>9} {:>9}  pareto",
        "arm",
        format!("{} mean ± sd / median", m.old_key),
        format!("{} mean ± sd / median", m.new_key),
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
            "{:<34} {:>32} {:>32} {stats}  {}",
            x.arm.name,
            format!("{} ± {} / {}", fmt(o.mean), fmt(o.std), fmt(o.median)),
            format!("{} ± {} / {}", fmt(n.mean), fmt(n.std), fmt(n.median)),
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
                let n_ref = if x.arm.n_ref == 1 { String::new() } else { format!(" n_ref {}", x.arm.n_ref) };
                let (marker, label) = match x.arm.kind {
                    Kind::Profit { delta: Delta::Realized, ratio } => {
                        (Marker::Realized, format!("{}{n_ref}", ratio_name(ratio)))
                    }
                    Kind::Profit { delta: Delta::Accumulated, ratio } => {
                        (Marker::Accumulated, format!("{}{n_ref}", ratio_name(ratio)))
                    }
                    Kind::Control => (Marker::Control, format!("lr_ref=0{n_ref}")),
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

/// Two-sided 95 % Student t quantile for `df` degrees of freedom (1.96 beyond 30).
pub fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        d if d <= 30 => T[d - 1],
        _ => 1.96,
    }
}

/// The paired difference `a - b` of one metric over seeds (same seed: same data, pre-trained
/// model and batch order for both arms).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Paired {
    pub seeds: usize,
    /// Mean of the per-seed differences `a - b`.
    pub mean: f64,
    /// Sample standard deviation of the per-seed differences.
    pub std: f64,
    /// Standard error of the mean difference, `std / sqrt(seeds)`.
    pub se: f64,
    /// 95 % confidence interval of the mean difference (Student t, `seeds - 1` degrees of freedom).
    pub ci_lo: f64,
    pub ci_hi: f64,
    /// Seeds where `a` is better than `b`, where `b` is better, and ties.
    pub a_better: usize,
    pub b_better: usize,
    pub ties: usize,
}

impl Paired {
    /// `a[k] - b[k]` over seeds `k`; `higher_is_better` says which sign favours `a`.
    pub fn of(a: &[f64], b: &[f64], higher_is_better: bool) -> Paired {
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let n = d.len();
        let mean = if n == 0 { f64::NAN } else { d.iter().sum::<f64>() / n as f64 };
        let std = if n < 2 {
            f64::NAN
        } else {
            (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        };
        let se = std / (n as f64).sqrt();
        let half = t95(n.saturating_sub(1)) * se;
        let better = |x: f64| if higher_is_better { x > 0.0 } else { x < 0.0 };
        let a_better = d.iter().filter(|&&x| better(x)).count();
        let ties = d.iter().filter(|&&x| x == 0.0).count();
        Paired {
            seeds: n,
            mean,
            std,
            se,
            ci_lo: mean - half,
            ci_hi: mean + half,
            a_better,
            b_better: n - a_better - ties,
            ties,
        }
    }

    /// Whether the 95 % interval excludes 0, and on which side: `Some(true)` when `a` is
    /// better beyond the spread, `Some(false)` when `b` is, `None` within it.
    pub fn beyond_spread(&self, higher_is_better: bool) -> Option<bool> {
        if !(self.ci_lo.is_finite() && self.ci_hi.is_finite()) || (self.ci_lo <= 0.0 && self.ci_hi >= 0.0) {
            return None;
        }
        Some((self.mean > 0.0) == higher_is_better)
    }

    /// `+0.0123 sd 0.0101 [-0.0002, 0.0248] 3:2`: mean and standard deviation of the per-seed
    /// differences, 95 % interval of the mean, seeds where a : b is better.
    pub fn cell(&self) -> String {
        format!(
            "{}{} sd {} [{}, {}] {}:{}",
            if self.mean >= 0.0 { "+" } else { "" },
            fmt(self.mean),
            fmt(self.std),
            fmt(self.ci_lo),
            fmt(self.ci_hi),
            self.a_better,
            self.b_better
        )
    }
}

/// One arm against its control, paired over seeds, on both metrics.
#[derive(Debug)]
pub struct Pair {
    pub arm: usize,
    pub control: usize,
    pub old: Paired,
    pub new: Paired,
}

impl Pair {
    /// `better on both`, `better on old, worse on new`, ..., `within the spread`: each metric's
    /// verdict at 95 %.
    pub fn verdict(&self, m: &Metrics) -> String {
        let word = |p: &Paired, what: &str| match p.beyond_spread(m.higher_is_better) {
            Some(true) => format!("better on {what}"),
            Some(false) => format!("worse on {what}"),
            None => format!("tie on {what}"),
        };
        format!("{}, {}", word(&self.old, "old"), word(&self.new, "new"))
    }
}

/// Every arm that names a control, paired with it over seeds (seeds must match).
pub fn pairs(s: &[Summary], m: &Metrics) -> Result<Vec<Pair>, String> {
    let mut out = vec![];
    for (i, x) in s.iter().enumerate() {
        let Some(c) = &x.arm.control else { continue };
        let j = s
            .iter()
            .position(|y| &y.arm.name == c)
            .ok_or_else(|| format!("{}: control arm {c} is not in the run", x.arm.name))?;
        let y = &s[j];
        let seeds = |z: &Summary| z.seeds.iter().map(|r| r.seed).collect::<Vec<_>>();
        if seeds(x) != seeds(y) {
            return Err(format!("{} and {c} ran on different seeds", x.arm.name));
        }
        let v = |z: &Summary, f: fn(&SeedResult) -> f64| z.seeds.iter().map(f).collect::<Vec<_>>();
        out.push(Pair {
            arm: i,
            control: j,
            old: Paired::of(&v(x, |r| r.old), &v(y, |r| r.old), m.higher_is_better),
            new: Paired::of(&v(x, |r| r.new), &v(y, |r| r.new), m.higher_is_better),
        });
    }
    Ok(out)
}

/// Print the paired comparisons: difference arm - control per metric, mean ± SE, 95 %
/// interval, seeds favouring each side, verdict.
pub fn print_pairs(s: &[Summary], pairs: &[Pair], m: &Metrics) {
    if pairs.is_empty() {
        return;
    }
    let seeds = pairs[0].old.seeds;
    println!(
        "Each PROFIT arm against its equal-steps control (lr_ref = 0, same n_ref: the same main steps on the same batches), paired over {seeds} seed(s): difference arm - control, mean, sd of the per-seed differences, [95% t interval of the mean], seeds where arm:control is better; {} is better",
        if m.higher_is_better { "positive" } else { "negative" }
    );
    println!(
        "{:<32} {:<22} {:>48} {:>48}  verdict (95%)",
        "arm",
        "control",
        format!("d {}", m.old_key),
        format!("d {}", m.new_key)
    );
    for p in pairs {
        println!(
            "{:<32} {:<22} {:>48} {:>48}  {}",
            s[p.arm].arm.name,
            s[p.control].arm.name,
            p.old.cell(),
            p.new.cell(),
            p.verdict(m)
        );
    }
}

/// The pairs as JSON.
pub fn pairs_json(s: &[Summary], pairs: &[Pair], m: &Metrics) -> Value {
    let v: Vec<Value> = pairs
        .iter()
        .map(|p| {
            json!({
                "arm": s[p.arm].arm.name,
                "control": s[p.control].arm.name,
                "difference": "arm - control, per seed",
                m.old_key: p.old,
                m.new_key: p.new,
                "verdict": p.verdict(m),
            })
        })
        .collect();
    Value::Array(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(
        name: &str,
        kind: Kind,
        control: Option<&str>,
        seeds: &[u64],
        old: &[f64],
        new: &[f64],
    ) -> Summary {
        let mut arm = Arm::new(name, kind, 8);
        if let Some(c) = control {
            arm = arm.against(c);
        }
        let seeds = seeds
            .iter()
            .zip(old.iter().zip(new))
            .map(|(&seed, (&old, &new))| SeedResult { seed, old, new, proj: ProjStats::default() })
            .collect();
        Summary { arm, seeds }
    }

    #[test]
    fn t95_is_the_student_quantile() {
        assert_eq!(t95(1), 12.706);
        assert_eq!(t95(4), 2.776);
        assert_eq!(t95(30), 2.042);
        assert_eq!(t95(100), 1.96);
        assert!(t95(0).is_nan());
        // Decreasing in the degrees of freedom, toward the normal quantile.
        assert!((1..40).all(|d| t95(d) >= t95(d + 1) && t95(d) > 1.959));
    }

    #[test]
    fn paired_difference_mean_sd_and_interval() {
        // Differences a - b: -0.1, -0.2, -0.3, -0.2, -0.2: mean -0.2, sd sqrt(0.02 / 4).
        let a = [0.9, 0.8, 0.7, 1.0, 0.6];
        let b = [1.0, 1.0, 1.0, 1.2, 0.8];
        let p = Paired::of(&a, &b, false);
        assert_eq!(p.seeds, 5);
        assert!((p.mean + 0.2).abs() < 1e-12, "{p:?}");
        let sd = (0.02f64 / 4.0).sqrt();
        assert!((p.std - sd).abs() < 1e-12, "{p:?}");
        assert!((p.se - sd / 5f64.sqrt()).abs() < 1e-12);
        let half = 2.776 * sd / 5f64.sqrt();
        assert!((p.ci_lo - (-0.2 - half)).abs() < 1e-12 && (p.ci_hi - (-0.2 + half)).abs() < 1e-12);
        assert_eq!((p.a_better, p.b_better, p.ties), (5, 0, 0));
        // Lower is better: a is better beyond the spread.
        assert_eq!(p.beyond_spread(false), Some(true));
        // Read as accuracies (higher is better) the same differences favour b.
        let q = Paired::of(&a, &b, true);
        assert_eq!((q.a_better, q.b_better), (0, 5));
        assert_eq!(q.beyond_spread(true), Some(false));
    }

    #[test]
    fn a_noisy_difference_is_within_the_spread() {
        // Mean difference -0.02 but the seeds disagree: the interval holds 0.
        let p = Paired::of(&[1.0, 1.3, 0.7, 1.0], &[1.1, 1.0, 1.0, 0.98], false);
        assert!(p.ci_lo < 0.0 && p.ci_hi > 0.0, "{p:?}");
        assert_eq!(p.beyond_spread(false), None);
        assert_eq!((p.a_better, p.b_better, p.ties), (2, 2, 0));
        // One seed: no spread, no verdict.
        let one = Paired::of(&[1.0], &[2.0], false);
        assert!(one.std.is_nan() && one.beyond_spread(false).is_none());
        // Exact ties are counted as ties.
        let t = Paired::of(&[1.0, 2.0], &[1.0, 3.0], false);
        assert_eq!((t.a_better, t.b_better, t.ties), (1, 0, 1));
    }

    #[test]
    fn pairs_match_each_arm_with_its_named_control() {
        let m = Metrics { old_key: "o", new_key: "n", higher_is_better: false };
        let s = vec![
            summary("control", Kind::Control, None, &[0, 1, 2], &[1.0, 1.1, 1.2], &[0.5, 0.6, 0.7]),
            summary(
                "profit",
                Kind::Profit { delta: Delta::Realized, ratio: 1e4 },
                Some("control"),
                &[0, 1, 2],
                &[0.5, 0.7, 0.6],
                &[0.5, 0.6, 0.7],
            ),
        ];
        let p = pairs(&s, &m).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].arm, p[0].control), (1, 0));
        assert!((p[0].old.mean + 0.5).abs() < 1e-12);
        assert_eq!(p[0].new.mean, 0.0);
        assert_eq!(p[0].verdict(&m), "better on old, tie on new");
        let j = pairs_json(&s, &p, &m);
        assert_eq!(j[0]["arm"], "profit");
        assert_eq!(j[0]["control"], "control");
        assert!((j[0]["o"]["mean"].as_f64().unwrap() + 0.5).abs() < 1e-12);

        // A missing control and mismatched seeds are errors, not silent pairs.
        let missing = vec![summary("p", Kind::Control, Some("nowhere"), &[0], &[1.0], &[1.0])];
        assert!(pairs(&missing, &m).unwrap_err().contains("nowhere"));
        let skewed = vec![
            summary("c", Kind::Control, None, &[0, 1], &[1.0, 1.0], &[1.0, 1.0]),
            summary("p", Kind::Control, Some("c"), &[0, 2], &[1.0, 1.0], &[1.0, 1.0]),
        ];
        assert!(pairs(&skewed, &m).unwrap_err().contains("different seeds"));
    }
}
