//! The `profit` binary end to end: `toy --quick` and `digits --quick` write JSON of the
//! documented structure with finite numbers, and bad arguments fail with a message, not a panic.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("profit-cli-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_profit")).args(args).output().expect("run profit")
}

/// Check `{"arms": [{"name", <keys>..., "per_seed": [{"seed", <keys>...}]}]}` and return the arms
/// by name.
fn check_arms(v: &Value, names: &[&str], keys: &[&str], seeds: usize) -> Vec<(String, Vec<f64>)> {
    let arms = v["arms"].as_array().expect("arms is an array");
    let got: Vec<&str> = arms.iter().map(|a| a["name"].as_str().expect("name")).collect();
    assert_eq!(got, names);
    let mut out = vec![];
    for a in arms {
        let mut vals = vec![];
        for k in keys {
            let x = a[*k].as_f64().unwrap_or_else(|| panic!("{k} missing in {a}"));
            assert!(x.is_finite(), "{k} = {x}");
            vals.push(x);
        }
        let per = a["per_seed"].as_array().expect("per_seed");
        assert_eq!(per.len(), seeds);
        for k in keys {
            let xs: Vec<f64> = per.iter().map(|p| p[*k].as_f64().expect("per-seed value")).collect();
            assert!(xs.iter().all(|x| x.is_finite()));
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            assert!((mean - a[*k].as_f64().unwrap()).abs() <= 1e-12 * mean.abs().max(1.0), "{k} is the mean");
        }
        out.push((a["name"].as_str().unwrap().to_string(), vals));
    }
    out
}

/// The default run pairs `profit` with `profit_lr_ref0`: the JSON difference is the mean of
/// the per-seed differences, inside its 95 % interval.
fn check_pair(v: &Value, key: &str, seeds: usize) {
    let pairs = v["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 1);
    let p = &pairs[0];
    assert_eq!((p["arm"].as_str(), p["control"].as_str()), (Some("profit"), Some("profit_lr_ref0")));
    let per = |name: &str| -> Vec<f64> {
        let a = v["arms"].as_array().unwrap().iter().find(|a| a["name"] == name).expect("arm");
        a["per_seed"].as_array().unwrap().iter().map(|s| s[key].as_f64().unwrap()).collect()
    };
    let d: Vec<f64> = per("profit").iter().zip(per("profit_lr_ref0")).map(|(a, b)| a - b).collect();
    let mean = d.iter().sum::<f64>() / seeds as f64;
    let m = p[key]["mean"].as_f64().unwrap();
    assert!((m - mean).abs() <= 1e-12, "{m} vs {mean}");
    assert_eq!(p[key]["seeds"].as_u64(), Some(seeds as u64));
    let (lo, hi) = (p[key]["ci_lo"].as_f64().unwrap(), p[key]["ci_hi"].as_f64().unwrap());
    assert!(lo <= m && m <= hi, "{p}");
}

#[test]
fn toy_quick_writes_json_and_plots() {
    let dir = tmp("toy");
    let json = dir.join("toy.json");
    let out = run(&["toy", "--quick", "--out", dir.to_str().unwrap(), "--json", json.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("paper Table 1"), "{stdout}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let arms = check_arms(
        &v,
        &["pretrained", "full", "head", "profit", "profit_lr_ref0"],
        &["original_error", "new_error"],
        2,
    );
    // Errors are MSEs: non-negative.
    assert!(arms.iter().all(|(_, x)| x.iter().all(|&e| e >= 0.0)));
    check_pair(&v, "original_error", 2);
    assert!(stdout.contains("against its equal-steps control"), "{stdout}");
    for f in ["toy_predictions.svg", "toy_finetune_curves.svg", "toy_pretrain_curve.svg"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(text.starts_with("<svg"), "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn digits_quick_writes_json() {
    let dir = tmp("digits");
    let json = dir.join("digits.json");
    let out = run(&["digits", "--quick", "--out", dir.to_str().unwrap(), "--json", json.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let arms = check_arms(
        &v,
        &["pretrained", "sgd", "adam", "profit", "profit_lr_ref0"],
        &["old_accuracy", "new_accuracy"],
        2,
    );
    check_pair(&v, "old_accuracy", 2);
    assert!(arms.iter().all(|(_, x)| x.iter().all(|&a| (0.0..=1.0).contains(&a))));
    // Pre-training on 200 steps learns the old task far above chance (10%).
    assert!(arms[0].1[0] > 0.5, "pre-trained old-task accuracy {}", arms[0].1[0]);
    assert!(dir.join("digits_proximal_finetune_curves.svg").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The PROFIT arms of a sweep carry `delta`, `ratio` and `batch` and their projection
/// statistics; every arm has `pareto`; the front is non-empty and named in `pareto_front`.
fn check_sweep(v: &Value, deltas_ratios: usize) {
    let arms = v["arms"].as_array().expect("arms");
    let profit: Vec<&Value> = arms.iter().filter(|a| a["delta"].is_string()).collect();
    assert_eq!(profit.len(), deltas_ratios, "PROFIT arms");
    for a in &profit {
        assert!(["realized", "accumulated"].contains(&a["delta"].as_str().unwrap()));
        assert!(a["ratio"].as_f64().unwrap() >= 10.0);
        assert!(a["batch"].as_u64().unwrap() > 0);
        for k in ["projected_share", "mean_removed", "stalled_share"] {
            let x = a[k].as_f64().unwrap_or_else(|| panic!("{k} in {a}"));
            assert!((0.0..=1.0).contains(&x), "{k} = {x}");
        }
        assert!((-1.0..=1.0).contains(&a["mean_cosine"].as_f64().unwrap()));
    }
    assert!(arms.iter().all(|a| a["pareto"].is_boolean()));
    let front = v["pareto_front"].as_array().expect("front");
    assert!(!front.is_empty());
    let on: Vec<&str> =
        arms.iter().filter(|a| a["pareto"] == true).map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(front.iter().map(|x| x.as_str().unwrap()).collect::<Vec<_>>(), on);
}

#[test]
fn sweeps_write_json_and_scatter_plots() {
    let dir = tmp("sweep");
    let toy = dir.join("toy.json");
    let out = run(&[
        "toy",
        "--quick",
        "--sweep",
        "--seeds",
        "1",
        "--out",
        dir.to_str().unwrap(),
        "--json",
        toy.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&toy).unwrap()).unwrap();
    check_sweep(&v, 2 * 2 * 5);
    for b in [32, 128] {
        assert!(std::fs::read_to_string(dir.join(format!("toy_sweep_b{b}.svg")))
            .unwrap()
            .starts_with("<svg"));
    }
    let digits = dir.join("digits.json");
    let out = run(&[
        "digits",
        "--quick",
        "--sweep",
        "--task",
        "proximal",
        "--seeds",
        "1",
        "--out",
        dir.to_str().unwrap(),
        "--json",
        digits.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&digits).unwrap()).unwrap();
    check_sweep(&v, 2 * 5);
    assert_eq!(v["settings"]["task"], "proximal");
    assert!(dir.join("digits_proximal_sweep_b128.svg").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn default_runs_print_the_projection_statistics() {
    let out = run(&["digits", "--quick", "--control", "--no-plots", "--seeds", "1"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "profit: projection fired at",
        "profit_lr_ref0: projection fired at 0 of",
        "share of |g|^2 removed",
        "stalled",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
}

#[test]
fn bad_arguments_fail_politely() {
    for args in [
        &["toy", "--quick", "--hidden", "7", "--no-plots"][..],
        &["toy", "--quick", "--ratio", "-1", "--no-plots"][..],
        &["digits", "--quick", "--data", "/nonexistent/digits.csv.gz", "--no-plots"][..],
        &["digits", "--quick", "--seeds", "0", "--no-plots"][..],
        &["toy", "--quick", "--delta", "sideways", "--no-plots"][..],
        &["toy", "--quick", "--sweep", "--ratio", "10", "--no-plots"][..],
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn delta_precision_reports_each_dtype_and_ratio() {
    let dir = std::env::temp_dir().join(format!("profit-cli-test-{}-precision", std::process::id()));
    let json = dir.join("p.json");
    let out =
        run(&["digits", "--quick", "--delta-precision", "--seeds", "1", "--json", json.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 15, "3 dtypes x 5 ratios");
    let moved = |dtype: &str, ratio: f64| {
        rows.iter()
            .find(|r| r["dtype"] == dtype && r["ratio"].as_f64() == Some(ratio))
            .and_then(|r| r["moved"].as_f64())
            .expect("row")
    };
    // f32 keeps most updates at ratio 10, bf16 (8 significant bits) loses more than f32 at every ratio.
    assert!(moved("f32", 10.0) > 0.5, "{v}");
    for ratio in [10.0, 1e2, 1e3, 1e4, 1e5] {
        assert!(moved("bf16", ratio) <= moved("f32", ratio), "{ratio}: {v}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
