//! Checkpoints written by format version 1 (before the delta mode existed, so accumulated-delta)
//! still load, as accumulated-delta state, and the run continues bitwise as it did in the
//! version that wrote them (`tests/fixtures/README.md`). A realized-delta optimizer refuses them.

use std::path::Path;

use profit_conformance::golden::GoldenCase;
use profit_core::checkpoint::LoadOptions;
use profit_core::element::Element;
use profit_core::host::{VecBackend, VecTensor};
use profit_core::{Delta, Profit, ProfitConfig, ProfitError};
use serde_json::Value;

fn fixtures() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    v.sort();
    v
}

fn continue_run<E: Element>(bytes: &[u8], meta: &Value) {
    let name = meta["case"].as_str().expect("case");
    let case =
        GoldenCase::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("golden").join(format!("{name}.json")))
            .expect("golden case");
    let at = meta["saved_before_call"].as_u64().expect("call") as usize;
    let start: Vec<Vec<f64>> = serde_json::from_value(meta["params_at_save"].clone()).expect("params");
    let expected: Vec<Vec<Vec<f64>>> =
        serde_json::from_value(meta["params_after_each_later_call"].clone()).expect("trajectory");
    let mut params: Vec<VecTensor<E>> = case
        .problem
        .params
        .iter()
        .zip(&start)
        .map(|(p, v)| VecTensor::from_f64(&p.shape, v).unwrap())
        .collect();
    let build = |config: ProfitConfig, params: &[VecTensor<E>]| {
        let named: Vec<(&str, &VecTensor<E>)> =
            case.problem.params.iter().zip(params).map(|(p, t)| (p.name.as_str(), t)).collect();
        Profit::<VecBackend<E>>::with_names(config, &named).expect("build")
    };

    // The default (realized) optimizer refuses an accumulated-delta state.
    let realized = case.profit_config().expect("config");
    assert_eq!(realized.delta, Delta::Realized);
    let mut wrong = build(realized, &params);
    match wrong.load_checkpoint(bytes, &mut params.iter_mut().collect::<Vec<_>>(), LoadOptions::default()) {
        Err(ProfitError::Checkpoint(msg)) => assert!(msg.contains("Accumulated"), "{msg}"),
        other => panic!("{name}: a version-1 checkpoint loaded into a realized-delta optimizer: {other:?}"),
    }

    let config = ProfitConfig { delta: Delta::Accumulated, ..realized };
    let mut opt = build(config, &params);
    opt.load_checkpoint(bytes, &mut params.iter_mut().collect::<Vec<_>>(), LoadOptions::default())
        .unwrap_or_else(|e| panic!("{name} {}: {e}", E::DTYPE));
    assert_eq!(opt.calls(), at as u64);
    for (k, (rows, exp)) in case.problem.batches[at..].iter().zip(&expected).enumerate() {
        let cur: Vec<Vec<f64>> = params.iter().map(|t| t.to_f64()).collect();
        let (g, _) = case.gradients(rows, &cur);
        let gt: Vec<VecTensor<E>> = case
            .problem
            .params
            .iter()
            .zip(&g)
            .map(|(p, v)| VecTensor::from_f64(&p.shape, v).unwrap())
            .collect();
        let mut pm: Vec<&mut VecTensor<E>> = params.iter_mut().collect();
        opt.step(&mut pm, &gt.iter().collect::<Vec<_>>()).expect("step");
        let got: Vec<Vec<f64>> = params.iter().map(|t| t.to_f64()).collect();
        assert_eq!(
            &got,
            exp,
            "{name} {}: call {} differs from the run that wrote the file",
            E::DTYPE,
            at + k
        );
    }
    println!(
        "{name} {}: version-1 checkpoint resumed at call {at}, {} calls bitwise",
        E::DTYPE,
        expected.len()
    );
}

#[test]
fn version_1_checkpoints_resume_bitwise_as_accumulated() {
    let files = fixtures();
    assert!(files.len() >= 6, "fixtures missing: {files:?}");
    for f in files {
        let bytes = std::fs::read(&f).expect("read");
        let meta: Value =
            serde_json::from_str(&std::fs::read_to_string(f.with_extension("json")).expect("json"))
                .expect("parse");
        match meta["dtype"].as_str() {
            Some("f32") => continue_run::<f32>(&bytes, &meta),
            Some("f64") => continue_run::<f64>(&bytes, &meta),
            other => panic!("{}: dtype {other:?}", f.display()),
        }
    }
}
