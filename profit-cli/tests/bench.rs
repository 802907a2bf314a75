//! `profit bench --quick --json FILE` runs and writes the documented JSON schema.

use std::process::Command;

#[test]
fn bench_quick_writes_json_schema() {
    let path = std::env::temp_dir().join(format!("profit-bench-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_profit"))
        .args(["bench", "--quick", "--json"])
        .arg(&path)
        .output()
        .expect("run profit bench");
    assert!(out.status.success(), "profit bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("copy bandwidth"), "{stdout}");

    let text = std::fs::read_to_string(&path).expect("json written");
    let _ = std::fs::remove_file(&path);
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let copy = v["copy_gbs"].as_f64().expect("copy_gbs is a number");
    assert!(copy.is_finite() && copy > 0.0);
    let results = v["results"].as_array().expect("results is an array");
    // 2 backends x 4 steps x 2 tensor layouts at one size.
    assert_eq!(results.len(), 16);
    let mut steps = std::collections::BTreeSet::new();
    for r in results {
        let backend = r["backend"].as_str().expect("backend");
        assert!(backend == "ndarray-f32" || backend == "nalgebra-f32", "{backend}");
        let step = r["step"].as_str().expect("step");
        assert!(
            ["profit_cycle", "profit_cycle_propagate", "profit_cycle_per_tensor_propagate", "adam"]
                .contains(&step),
            "{step}"
        );
        steps.insert(step.to_string());
        assert!(r["params"].as_u64().expect("params") > 0);
        assert!(r["tensors"].as_u64().expect("tensors") > 0);
        for key in ["seconds", "bytes_per_param", "gbs", "copy_ratio"] {
            let x = r[key].as_f64().unwrap_or_else(|| panic!("{key} is a number"));
            assert!(x.is_finite() && x > 0.0, "{key} = {x}");
        }
        let bytes = r["bytes_per_param"].as_f64().unwrap();
        let expected = match step {
            "profit_cycle" => 64.0,
            "profit_cycle_propagate" | "profit_cycle_per_tensor_propagate" => 60.0,
            _ => 32.0,
        };
        assert_eq!(bytes, expected, "{step}");
    }
    assert_eq!(steps.len(), 4);
}
