//! Golden trajectories (format `profit-golden/1`, see `golden/README.md`) and their replay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use profit_core::backend::TensorOps;
use profit_core::{Phase, Profit, ProfitConfig, StepReport};
use serde::Deserialize;
use serde_json::Value;

use crate::Harness;

/// A row-major matrix from a golden file.
#[derive(Clone, Debug, Deserialize)]
pub struct Matrix {
    /// `[rows, cols]`.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f64>,
}

/// One parameter of the least-squares problem.
#[derive(Clone, Debug, Deserialize)]
pub struct ParamInit {
    /// `w` or `b`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major initial values.
    pub init: Vec<f64>,
}

/// The least-squares problem a case runs on.
#[derive(Clone, Debug, Deserialize)]
pub struct Problem {
    /// `X`, `[n, d]`.
    pub features: Matrix,
    /// `Y`, `[n, k]`.
    pub targets: Matrix,
    /// `w` (`[d, k]`) and `b` (`[k]`), in optimizer order.
    pub params: Vec<ParamInit>,
    /// Row indices of each call's batch.
    pub batches: Vec<Vec<usize>>,
}

/// The state right after one call.
#[derive(Clone, Debug, Deserialize)]
pub struct Record {
    /// `warmup`, `reference` or `main`.
    pub phase: String,
    /// Loss at the parameters the gradient was taken at.
    pub loss: f64,
    /// Parameters after the call, by name.
    pub params: BTreeMap<String, Vec<f64>>,
    /// Main calls: `|g|^2` before projection (a list per tensor for per-tensor projection).
    #[serde(default)]
    pub grad_norm_sq: Option<Value>,
    /// Main calls: omega.
    #[serde(default)]
    pub omega: Option<Value>,
    /// Main calls: `|delta|^2`.
    #[serde(default)]
    pub delta_norm_sq: Option<Value>,
    /// Main calls: whether the projection fired.
    #[serde(default)]
    pub projected: Option<Value>,
}

/// One golden case.
#[derive(Clone, Debug, Deserialize)]
pub struct GoldenCase {
    /// Case name.
    pub name: String,
    /// `"float32"` for trajectories made in float32 with the realized delta; absent (float64)
    /// otherwise.
    #[serde(default)]
    pub dtype: Option<String>,
    /// 16-bit trajectories (`golden16/`): how the file formed PROFIT's delta, `"accumulated"`
    /// or `"realized"`; absent otherwise.
    #[serde(default)]
    pub delta: Option<String>,
    /// 16-bit trajectories: `"per_op"` (torch.optim in the 16-bit dtype, every op rounded) or
    /// `"once"` (the same ops in float32, every stored value rounded once per step).
    #[serde(default)]
    pub rounding: Option<String>,
    /// The problem.
    pub problem: Problem,
    /// PROFIT configuration, in the golden format (PyTorch names).
    pub config: Value,
    /// One record per call.
    pub trajectory: Vec<Record>,
}

impl GoldenCase {
    /// Read and parse one file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let case: GoldenCase = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if case.trajectory.len() != case.problem.batches.len() {
            return Err(format!("{}: trajectory and batches differ in length", path.display()));
        }
        Ok(case)
    }

    /// The configuration as a [`ProfitConfig`]: the golden file's fields, the rest at their
    /// defaults (so the delta mode is the default, realized, unless the caller sets it).
    pub fn profit_config(&self) -> Result<ProfitConfig, String> {
        serde_json::from_value(self.config.clone()).map_err(|e| format!("{}: config: {e}", self.name))
    }

    /// Whether this is a float32 trajectory (`"dtype": "float32"`).
    pub fn is_float32(&self) -> bool {
        self.dtype.as_deref() == Some("float32")
    }

    /// The element type of a 16-bit trajectory (`"dtype": "bfloat16"` or `"float16"`, made by
    /// PyTorch in that dtype; `golden16/README.md`), `None` for float64 and float32 files.
    pub fn dtype16(&self) -> Option<profit_core::element::Dtype> {
        match self.dtype.as_deref() {
            Some("bfloat16") => Some(profit_core::element::Dtype::Bf16),
            Some("float16") => Some(profit_core::element::Dtype::F16),
            _ => None,
        }
    }

    /// The delta mode a 16-bit trajectory was made with (its `"delta"` field).
    pub fn delta_mode(&self) -> Result<profit_core::Delta, String> {
        match self.delta.as_deref() {
            Some("accumulated") => Ok(profit_core::Delta::Accumulated),
            Some("realized") => Ok(profit_core::Delta::Realized),
            other => Err(format!("{}: delta {other:?}, expected \"accumulated\" or \"realized\"", self.name)),
        }
    }

    /// `lr_main / lr_ref` of the configuration (infinite for `lr_ref = 0`; 0 if unreadable).
    pub fn ratio(&self) -> f64 {
        self.profit_config().map_or(0.0, |c| c.main.lr() / c.reference.lr())
    }

    /// Gradients (row-major, per parameter) and loss of the least-squares loss on `rows`, at
    /// `params` (row-major `w` then `b`), in f64.
    pub fn gradients(&self, rows: &[usize], params: &[Vec<f64>]) -> (Vec<Vec<f64>>, f64) {
        lstsq_gradients(&self.problem, rows, params)
    }
}

/// `loss = 0.5 * sum(r*r) / m` with `r = X[rows] @ w + b - Y[rows]`; returns `([grad_w, grad_b], loss)`.
pub fn lstsq_gradients(p: &Problem, rows: &[usize], params: &[Vec<f64>]) -> (Vec<Vec<f64>>, f64) {
    let d = p.features.shape[1];
    let k = p.targets.shape[1];
    let (w, b) = (&params[0], &params[1]);
    let m = rows.len() as f64;
    let mut gw = vec![0.0; d * k];
    let mut gb = vec![0.0; k];
    let mut loss = 0.0;
    for &row in rows {
        let x = &p.features.data[row * d..(row + 1) * d];
        let y = &p.targets.data[row * k..(row + 1) * k];
        for j in 0..k {
            let mut pred = b[j];
            for i in 0..d {
                pred += x[i] * w[i * k + j];
            }
            let r = pred - y[j];
            loss += 0.5 * r * r;
            gb[j] += r / m;
            for i in 0..d {
                gw[i * k + j] += x[i] * r / m;
            }
        }
    }
    (vec![gw, gb], loss / m)
}

/// A golden file and whether it is one of this crate's own.
#[derive(Clone, Debug)]
pub struct GoldenFile {
    /// Its path.
    pub path: PathBuf,
    /// From `golden/` or `golden32/` (not from `$PROFIT_GOLDEN_DIR`).
    pub own: bool,
}

/// Golden files: the suite's own (`golden/`, float64; `golden32/`, float32), plus every
/// `*.json` in `$PROFIT_GOLDEN_DIR` when set (which must hold at least one; each file's `dtype`
/// field says which kind it is).
pub fn golden_files() -> Result<Vec<GoldenFile>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![];
    for dir in ["golden", "golden32"] {
        files.extend(json_files(&root.join(dir))?.into_iter().map(|path| GoldenFile { path, own: true }));
    }
    if let Ok(dir) = std::env::var("PROFIT_GOLDEN_DIR") {
        let extra = json_files(Path::new(&dir))?;
        if extra.is_empty() {
            return Err(format!("PROFIT_GOLDEN_DIR={dir} holds no *.json golden case"));
        }
        files.extend(extra.into_iter().map(|path| GoldenFile { path, own: false }));
    }
    Ok(files)
}

fn json_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    Ok(v)
}

/// The 16-bit golden files (`golden16/`, made by PyTorch in bfloat16 and float16; see its
/// README), each replayed only on its own element type.
pub fn golden16_files() -> Result<Vec<PathBuf>, String> {
    json_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("golden16"))
}

/// How a 16-bit golden file is replayed (`golden16/README.md`): its delta mode, the parameter
/// tolerance and the relative tolerance of omega, `|delta|^2` and `|g|^2`. Files rounded once
/// per stored value must be matched bitwise (both tolerances 0); files made with torch's
/// per-op rounding within the measured tolerances of their dtype.
pub fn plan16(case: &GoldenCase) -> Result<(profit_core::Delta, f64, f64), String> {
    use profit_core::element::Dtype;
    let delta = case.delta_mode()?;
    let dtype = case.dtype16().ok_or_else(|| format!("{}: not a 16-bit file", case.name))?;
    match (case.rounding.as_deref(), dtype) {
        (Some("once"), _) => Ok((delta, 0.0, 0.0)),
        (Some("per_op"), Dtype::Bf16) => {
            Ok((delta, crate::TOLERANCE_TORCH_BF16, crate::STATS_TOLERANCE_TORCH_BF16))
        }
        (Some("per_op"), _) => Ok((delta, crate::TOLERANCE_TORCH_F16, crate::STATS_TOLERANCE_TORCH_F16)),
        (other, _) => Err(format!("{}: rounding {other:?}, expected \"per_op\" or \"once\"", case.name)),
    }
}

/// Replay every 16-bit golden file of the harness's element type (`golden16/`) with its delta
/// mode and tolerances ([`plan16`]); print one line per file; panic listing every failure, or
/// if none ran. Returns each file's name, rounding and replay statistics.
pub fn golden16_all<H: Harness>(h: &H) -> Vec<(String, String, ReplayStats)> {
    let dtype = <<H::B as TensorOps>::Elem as profit_core::element::Element>::DTYPE;
    let (mut done, mut failures) = (vec![], vec![]);
    for path in golden16_files().unwrap_or_else(|e| panic!("{e}")) {
        let run = || -> Result<Option<(String, String, ReplayStats)>, String> {
            let case = GoldenCase::load(&path)?;
            if case.dtype16() != Some(dtype) {
                return Ok(None);
            }
            let (delta, tol, stats_tol) = plan16(&case)?;
            let s = replay_checked(h, &case, tol, stats_tol, |c| ProfitConfig { delta, ..c })
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let file = path.file_stem().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let rounding = case.rounding.clone().unwrap_or_default();
            println!(
                "golden16 {file:<38} {:<12} {:<11} worst param error {:.3e} (tol {tol:.1e}), stats {:.3e} (tol {stats_tol:.1e})",
                h.label(),
                crate::delta_name(delta),
                s.worst_param,
                s.worst_stats
            );
            Ok(Some((file, rounding, s)))
        };
        match run() {
            Ok(Some(r)) => done.push(r),
            Ok(None) => {}
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{} failure(s) on {}:\n{}", failures.len(), h.label(), failures.join("\n"));
    assert!(!done.is_empty(), "no 16-bit golden file for {}", h.label());
    done
}

/// Worst errors of one replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayStats {
    /// Worst parameter error over all calls (golden README metric).
    pub worst_param: f64,
    /// Worst relative error of omega / |delta|^2 / |g|^2 over main calls.
    pub worst_stats: f64,
    /// Main calls checked.
    pub main_calls: usize,
}

fn values(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().filter_map(Value::as_f64).collect(),
        other => other.as_f64().into_iter().collect(),
    }
}

/// A golden `projected` field (one flag, or one per tensor) as a list.
pub fn bools(v: &Value) -> Vec<bool> {
    match v {
        Value::Array(a) => a.iter().filter_map(Value::as_bool).collect(),
        other => other.as_bool().into_iter().collect(),
    }
}

/// Golden README error: `max |got - exp| / max(1, max |exp|)`.
pub fn param_error(got: &[f64], exp: &[f64]) -> f64 {
    let scale = exp.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    got.iter().zip(exp).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())) / scale
}

/// Replay one case on a harness; `Err` describes the first mismatch.
pub fn replay<H: Harness>(h: &H, case: &GoldenCase, tol: f64) -> Result<ReplayStats, String> {
    replay_with(h, case, tol, |c| c)
}

/// Relative tolerance of omega, `|delta|^2` and `|g|^2` when the parameters are 16-bit.
/// Measured worst over the shipped cases: 0.155 (bf16) and 0.233 (f16, ratio 1e3, where the
/// accumulated delta of ~1e-7 is subnormal in f16 and keeps only a few bits).
pub const STATS_TOLERANCE_16: f64 = 0.5;

/// Replay one case with its configuration modified by `edit` (e.g. another restore mode), the
/// statistics' tolerance chosen from `tol` (see [`replay_checked`] to give it).
pub fn replay_with<H: Harness>(
    h: &H,
    case: &GoldenCase,
    tol: f64,
    edit: impl Fn(ProfitConfig) -> ProfitConfig,
) -> Result<ReplayStats, String> {
    // Relative tolerance of the reported statistics: tight in f64, loose in f32 where omega
    // carries the rounding of every element (none for an unbounded replay).
    let stats_tol = if tol < 1e-6 {
        1e-8
    } else if tol >= 1e-2 && tol.is_finite() {
        // 16-bit parameters.
        STATS_TOLERANCE_16
    } else if tol.is_finite() {
        1e-3
    } else {
        f64::INFINITY
    };
    replay_checked(h, case, tol, stats_tol, edit)
}

/// [`replay_with`] with the relative tolerance of omega, `|delta|^2` and `|g|^2` given.
pub fn replay_checked<H: Harness>(
    h: &H,
    case: &GoldenCase,
    tol: f64,
    stats_tol: f64,
    edit: impl Fn(ProfitConfig) -> ProfitConfig,
) -> Result<ReplayStats, String> {
    let config = edit(case.profit_config()?);
    let named: Vec<(String, <H::B as TensorOps>::Tensor)> =
        case.problem.params.iter().map(|p| (p.name.clone(), h.tensor(&p.shape, &p.init))).collect();
    let refs: Vec<(&str, &<H::B as TensorOps>::Tensor)> =
        named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut opt = Profit::<H::B>::with_names(config, &refs).map_err(|e| e.to_string())?;
    let mut tensors: Vec<_> = named.into_iter().map(|(_, t)| t).collect();
    let mut stats = ReplayStats::default();
    for (call, (rows, rec)) in case.problem.batches.iter().zip(&case.trajectory).enumerate() {
        let at = |msg: String| format!("{} call {call}: {msg}", case.name);
        let current: Vec<Vec<f64>> = tensors.iter().map(|t| h.values(t)).collect();
        let (grads, _loss) = case.gradients(rows, &current);
        let gts: Vec<_> =
            case.problem.params.iter().zip(&grads).map(|(p, g)| h.tensor(&p.shape, g)).collect();
        let mut pm: Vec<&mut _> = tensors.iter_mut().collect();
        let gr: Vec<&_> = gts.iter().collect();
        let report: StepReport = opt.step(&mut pm, &gr).map_err(|e| at(e.to_string()))?;
        let phase = report.phase.name();
        if phase != rec.phase {
            return Err(at(format!("phase {phase}, expected {}", rec.phase)));
        }
        for (p, t) in case.problem.params.iter().zip(&tensors) {
            let exp = rec.params.get(&p.name).ok_or_else(|| at(format!("no params for {}", p.name)))?;
            let err = param_error(&h.values(t), exp);
            stats.worst_param = stats.worst_param.max(err);
            // NaN errors must fail too.
            if err.is_nan() || err > tol {
                return Err(at(format!("param {} error {err:.3e} > {tol:.1e}", p.name)));
            }
        }
        if report.phase == Phase::Main {
            stats.main_calls += 1;
            let main = report.main.ok_or_else(|| at("main call without report".into()))?;
            let per_tensor = opt.tensor_reports();
            // Each field is a list (one per tensor, per-tensor projection) or one global number.
            let pick =
                |v: &Value, each: fn(&profit_core::report::TensorReport) -> f64, global: f64| -> Vec<f64> {
                    if v.is_array() {
                        per_tensor.iter().map(each).collect()
                    } else {
                        vec![global]
                    }
                };
            if let Some(p) = &rec.projected {
                let got: Vec<bool> = if p.is_array() {
                    per_tensor.iter().map(|r| r.projected).collect()
                } else {
                    vec![main.projected]
                };
                if bools(p) != got {
                    return Err(at(format!("projected {got:?}, expected {p}")));
                }
            }
            let fields = [
                (&rec.omega, pick(rec.omega.as_ref().unwrap_or(&Value::Null), |r| r.omega, main.omega)),
                (
                    &rec.delta_norm_sq,
                    pick(
                        rec.delta_norm_sq.as_ref().unwrap_or(&Value::Null),
                        |r| r.delta_norm_sq,
                        main.delta_norm_sq,
                    ),
                ),
                (
                    &rec.grad_norm_sq,
                    pick(
                        rec.grad_norm_sq.as_ref().unwrap_or(&Value::Null),
                        |r| r.grad_norm_sq,
                        main.grad_norm_sq,
                    ),
                ),
            ];
            for (field, got) in fields {
                if let Some(v) = field {
                    let exp = values(v);
                    if exp.len() != got.len() {
                        return Err(at(format!(
                            "statistic has {} entries, expected {}",
                            got.len(),
                            exp.len()
                        )));
                    }
                    for (a, b) in got.iter().zip(exp) {
                        let err = (a - b).abs() / b.abs().max(1e-300);
                        stats.worst_stats = stats.worst_stats.max(err);
                        if err.is_nan() || err > stats_tol {
                            return Err(at(format!("omega/|delta|^2/|g|^2 {a:e}, expected {b:e}")));
                        }
                    }
                }
            }
        }
    }
    Ok(stats)
}

impl Record {
    /// Check one call of a replay through a framework against this record: the phase, every
    /// parameter within `tol` (the README metric), and at main calls the `projected` flags
    /// (`main_projected` for a global flag, `tensor_projected` for per-tensor ones). Returns
    /// the worst parameter error, or what differs.
    pub fn check(
        &self,
        phase: profit_core::Phase,
        params: &[(&str, Vec<f64>)],
        main_projected: Option<bool>,
        tensor_projected: impl FnOnce() -> Vec<bool>,
        tol: f64,
    ) -> Result<f64, String> {
        if phase.name() != self.phase {
            return Err(format!("phase {}, expected {}", phase.name(), self.phase));
        }
        let mut worst = 0.0f64;
        for (name, got) in params {
            let exp = self.params.get(*name).ok_or_else(|| format!("no {name} in the record"))?;
            let err = param_error(got, exp);
            worst = worst.max(err);
            if err.is_nan() || err > tol {
                return Err(format!("param {name} error {err:.3e} > {tol:.0e}"));
            }
        }
        if let (Some(exp), Some(main)) = (&self.projected, main_projected) {
            let got = if exp.is_array() { tensor_projected() } else { vec![main] };
            if bools(exp) != got {
                return Err(format!("projected {got:?}, expected {exp}"));
            }
        }
        Ok(worst)
    }
}

/// The delta modes and tolerances (golden READMEs) a case is replayed in for an element type:
/// float64 files in both modes at 1e-10 on f64 and in the accumulated mode at 1e-4 on f32;
/// float32 files in the realized mode at 1e-5 on f32 (skipped on f64); 16-bit files
/// (`golden16/`) on their own element type only, as [`plan16`] says. 16-bit element types get
/// no plan for wider files: [`crate::stepwise16`] checks those.
pub fn plan(case: &GoldenCase, dtype: profit_core::element::Dtype) -> Vec<(profit_core::Delta, f64)> {
    use profit_core::element::Dtype;
    use profit_core::Delta;
    // A 16-bit trajectory (`golden16/`, or one in `$PROFIT_GOLDEN_DIR`) is replayed only on its
    // own element type.
    if let Some(own) = case.dtype16() {
        return match plan16(case) {
            Ok((delta, tol, _)) if own == dtype => vec![(delta, tol)],
            _ => vec![],
        };
    }
    match (case.is_float32(), dtype) {
        (false, Dtype::F64) => vec![(Delta::Realized, 1e-10), (Delta::Accumulated, 1e-10)],
        (false, Dtype::F32) => vec![(Delta::Accumulated, 1e-4)],
        (true, Dtype::F32) => vec![(Delta::Realized, crate::TOLERANCE_F32_FILES)],
        (true, Dtype::F64) => vec![],
        // A 16-bit run drifts from any wider trajectory by design (and parts from it for good
        // once a projection decision differs): no tolerance against the file is valid. Such
        // runs are checked call by call instead ([`crate::stepwise16`]).
        (_, Dtype::Bf16 | Dtype::F16) => vec![],
    }
}

/// Replay every golden case in every mode of [`plan`] for `dtype` with `replay` (which returns
/// the worst parameter error or what differs), print one line per replay labelled `label`, and
/// panic listing every failure (or if nothing ran).
pub fn replay_every_case(
    label: &str,
    dtype: profit_core::element::Dtype,
    mut replay: impl FnMut(&GoldenCase, profit_core::Delta, f64) -> Result<f64, String>,
) {
    let files = golden_files().unwrap_or_else(|e| panic!("{e}"));
    let (mut runs, mut failures) = (0, vec![]);
    for f in &files {
        let case = match GoldenCase::load(&f.path) {
            Ok(c) => c,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        for (delta, tol) in plan(&case, dtype) {
            runs += 1;
            match replay(&case, delta, tol) {
                Ok(worst) => println!(
                    "golden {:<28} {label:<16} {:<11} worst param error {worst:.3e} (tol {tol:.0e})",
                    case.name,
                    crate::delta_name(delta)
                ),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(runs > 0, "no golden replay ran for {label}");
    assert!(failures.is_empty(), "{} failure(s) on {label}:\n{}", failures.len(), failures.join("\n"));
}
