//! Checkpoint conformance: resume after every call of every golden case matches the
//! uninterrupted run bitwise; files that do not fit are refused and change nothing.

use profit_core::backend::TensorOps;
use profit_core::checkpoint::{LoadOptions, SaveOptions};
use profit_core::{Delta, Profit, ProfitConfig, ProfitError};
use serde_json::Value;

use crate::golden::{golden_files, GoldenCase};
use crate::Harness;

type T<H> = <<H as Harness>::B as TensorOps>::Tensor;

struct Run<H: Harness> {
    opt: Profit<H::B>,
    params: Vec<T<H>>,
}

fn build<H: Harness>(h: &H, case: &GoldenCase, config: ProfitConfig, init: &[Vec<f64>]) -> Run<H> {
    let params: Vec<T<H>> =
        case.problem.params.iter().zip(init).map(|(p, v)| h.tensor(&p.shape, v)).collect();
    let named: Vec<(&str, &T<H>)> =
        case.problem.params.iter().zip(&params).map(|(p, t)| (p.name.as_str(), t)).collect();
    let opt = Profit::<H::B>::with_names(config, &named).expect("golden config builds");
    Run { opt, params }
}

fn call<H: Harness>(h: &H, case: &GoldenCase, run: &mut Run<H>, i: usize) {
    let current: Vec<Vec<f64>> = run.params.iter().map(|t| h.values(t)).collect();
    let (grads, _) = case.gradients(&case.problem.batches[i], &current);
    let g: Vec<T<H>> = case.problem.params.iter().zip(&grads).map(|(p, v)| h.tensor(&p.shape, v)).collect();
    let mut pm: Vec<&mut T<H>> = run.params.iter_mut().collect();
    let gr: Vec<&T<H>> = g.iter().collect();
    run.opt.step(&mut pm, &gr).expect("golden step");
}

fn values<H: Harness>(h: &H, run: &Run<H>) -> Vec<Vec<f64>> {
    run.params.iter().map(|t| h.values(t)).collect()
}

fn init(case: &GoldenCase) -> Vec<Vec<f64>> {
    case.problem.params.iter().map(|p| p.init.clone()).collect()
}

impl<H: Harness> Run<H> {
    fn save(&self, opts: SaveOptions) -> Vec<u8> {
        self.opt.save_checkpoint(&self.params.iter().collect::<Vec<_>>(), opts).expect("save")
    }

    fn load(&mut self, bytes: &[u8], opts: LoadOptions) -> Result<(), ProfitError> {
        let mut pm: Vec<&mut T<H>> = self.params.iter_mut().collect();
        self.opt.load_checkpoint(bytes, &mut pm, opts)
    }
}

/// For every golden case, in both delta modes: save after every call (every
/// [`Harness::resume_stride`]-th on slow backends, and at the end), load into a fresh
/// optimizer with the weights of that moment, continue, and match the uninterrupted run
/// bitwise at every later call; save(load(x)) == x. At one mid-cycle call per case also: a
/// file with the parameters restores them into zeroed weights and continues bitwise; weights
/// from another call are refused by the fingerprint (accepted with `skip_fingerprint`); an
/// optimizer built with another learning rate refuses the file, listing the difference, and
/// with `adopt_config` takes the checkpoint's and continues bitwise.
pub fn resume_every_call<H: Harness>(h: &H) {
    let mut total_bytes = 0usize;
    let mut cases = 0;
    let files = golden_files().expect("golden files");
    for (f, delta) in files.iter().flat_map(|f| [(f, Delta::Realized), (f, Delta::Accumulated)]) {
        let case = GoldenCase::load(&f.path).expect("golden case");
        let config = ProfitConfig { delta, ..case.profit_config().expect("config") };
        let n = case.trajectory.len();
        if n == 0 {
            eprintln!("{}: no calls, nothing to resume", case.name);
            continue;
        }
        let mut a = build::<H>(h, &case, config, &init(&case));
        let mut saved = vec![];
        let mut after = vec![];
        for i in 0..n {
            saved.push((a.save(SaveOptions::default()), values(h, &a)));
            call(h, &case, &mut a, i);
            after.push(values(h, &a));
        }
        // And the end of the run (so that every call has a next moment, even the last).
        saved.push((a.save(SaveOptions::default()), values(h, &a)));
        let continue_from = |b: &mut Run<H>, k: usize, what: &str| {
            for (i, expected) in after.iter().enumerate().skip(k) {
                call(h, &case, b, i);
                assert_eq!(
                    &values(h, b),
                    expected,
                    "{} on {} ({what}): resumed at call {k}, call {i} differs from the uninterrupted run",
                    case.name,
                    h.label()
                );
            }
        };
        let stride = h.resume_stride().max(1);
        for (k, (bytes, params)) in saved.iter().enumerate().filter(|(k, _)| k % stride == 0 || *k == n) {
            let mut b = build::<H>(h, &case, config, params);
            b.load(bytes, LoadOptions::default())
                .unwrap_or_else(|e| panic!("{} call {k}: load: {e}", case.name));
            assert_eq!(
                &b.save(SaveOptions::default()),
                bytes,
                "{}: save(load(x)) != x at call {k}",
                case.name
            );
            continue_from(&mut b, k, "same weights");
        }
        // One mid-cycle moment: after the first reference call of the first cycle.
        let k = (config.warmup_steps as usize + 1).min(n - 1);
        let (bytes, params) = &saved[k];
        // The weights saved in the file.
        let with_params = {
            let mut src = build::<H>(h, &case, config, params);
            src.load(bytes, LoadOptions::default()).expect("load");
            src.save(SaveOptions::with_params())
        };
        let zeros: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        let mut b = build::<H>(h, &case, config, &zeros);
        b.load(&with_params, LoadOptions::default()).expect("load with parameters");
        assert_eq!(&values(h, &b), params, "{}: the file's parameters were not restored", case.name);
        continue_from(&mut b, k, "parameters from the file");
        // Weights from another call: refused by the fingerprint, nothing changed.
        let other = &saved[k + 1].1;
        if other != params {
            let mut b = build::<H>(h, &case, config, other);
            let before = b.save(SaveOptions::default());
            match b.load(bytes, LoadOptions::default()) {
                Err(ProfitError::Checkpoint(m)) if m.contains("fingerprint") => {}
                r => panic!("{}: weights from another call accepted: {r:?}", case.name),
            }
            assert_eq!(
                b.save(SaveOptions::default()),
                before,
                "{}: a refused load changed the state",
                case.name
            );
            b.load(bytes, LoadOptions::default().skip_fingerprint()).expect("skip_fingerprint loads");
        }
        // Another learning rate: refused with the difference listed; adopted on request.
        let mut other = config;
        other.main = other.main.with_lr(other.main.lr() * 3.0 + 1.0);
        let mut b = build::<H>(h, &case, other, params);
        match b.load(bytes, LoadOptions::default()) {
            Err(ProfitError::Checkpoint(m)) if m.contains("main.lr") => {}
            r => panic!("{}: a differing configuration was accepted: {r:?}", case.name),
        }
        b.load(bytes, LoadOptions::default().adopt_config()).expect("adopt_config loads");
        assert_eq!(b.opt.config(), &config);
        continue_from(&mut b, k, "adopted configuration");
        total_bytes = saved.last().map_or(0, |s| s.0.len());
        cases += 1;
    }
    println!(
        "checkpoint {:<18} {cases} case/mode pairs resumed after every call, bitwise; last file {total_bytes} bytes",
        h.label()
    );
}

/// Split a safetensors file into its JSON header and the rest.
fn split(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header json");
    (header, bytes[8 + n..].to_vec())
}

fn join(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).expect("json");
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// Rewrite the PROFIT metadata JSON inside a checkpoint and recompute its checksum, so that the
/// edit is caught by the loader's own check for it, not by the checksum.
fn edit_meta(bytes: &[u8], f: impl Fn(&mut Value)) -> Vec<u8> {
    profit_core::checkpoint::reseal(&edit_meta_unsealed(bytes, f)).expect("reseal")
}

/// [`edit_meta`] without recomputing the checksum.
fn edit_meta_unsealed(bytes: &[u8], f: impl Fn(&mut Value)) -> Vec<u8> {
    let (mut header, data) = split(bytes);
    let meta = header["__metadata__"]["profit"].as_str().expect("profit metadata").to_string();
    let mut m: Value = serde_json::from_str(&meta).expect("meta json");
    f(&mut m);
    header["__metadata__"]["profit"] = Value::String(m.to_string());
    join(&header, &data)
}

/// Checkpoints that do not fit are refused with `ProfitError::Checkpoint`, and the optimizer
/// then continues in lockstep with a twin that never saw them.
pub fn refuse_bad<H: Harness>(h: &H) {
    let file = golden_files()
        .expect("golden files")
        .into_iter()
        .find(|f| f.path.to_string_lossy().contains("sgd_adam_nref1"));
    let case = GoldenCase::load(&file.expect("sgd_adam_nref1.json present").path).expect("case");
    let config = case.profit_config().expect("config");
    let mut a = build::<H>(h, &case, config, &init(&case));
    let mut twin = build::<H>(h, &case, config, &init(&case));
    for i in 0..3 {
        call(h, &case, &mut a, i);
        call(h, &case, &mut twin, i);
    }
    let good = a.save(SaveOptions::default());
    let fresh_save = |c: ProfitConfig, names: [&str; 2]| {
        let params: Vec<T<H>> = case.problem.params.iter().map(|p| h.tensor(&p.shape, &p.init)).collect();
        let o =
            Profit::<H::B>::with_names(c, &[(names[0], &params[0]), (names[1], &params[1])]).expect("build");
        o.save_checkpoint(&params.iter().collect::<Vec<_>>(), SaveOptions::default()).expect("save")
    };
    // Checkpoints of optimizers that do not fit this one.
    let other_names = fresh_save(config, ["weight", "b"]);
    let other_layout = fresh_save(
        ProfitConfig {
            main: profit_core::Sgd { lr: 0.1, momentum: 0.9, ..Default::default() }.into(),
            ..config
        },
        ["w", "b"],
    );
    let other_delta = fresh_save(ProfitConfig { delta: Delta::Accumulated, ..config }, ["w", "b"]);
    let (header, data) = split(&good);
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    let mut bad: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), vec![]),
        ("not safetensors".into(), b"definitely not a checkpoint".to_vec()),
        ("flipped payload byte".into(), flipped),
        ("other parameter names".into(), other_names),
        ("other optimizer layout".into(), other_layout),
        ("other delta mode".into(), other_delta),
        ("wrong version".into(), edit_meta(&good, |m| m["version"] = 99.into())),
        ("unknown header key".into(), edit_meta(&good, |m| m["comment"] = "hello".into())),
        ("unknown configuration key".into(), edit_meta(&good, |m| m["config"]["n_reff"] = 2.into())),
        (
            "version-1 checksum in a version-2 file".into(),
            edit_meta_unsealed(&good, |m| m["crc32"] = 7.into()),
        ),
        (
            "fingerprint removed".into(),
            edit_meta(&good, |m| {
                m.as_object_mut().expect("object").remove("fingerprint");
            }),
        ),
        ("wrong format".into(), edit_meta(&good, |m| m["format"] = "pytorch".into())),
        (
            "wrong dtype in header".into(),
            edit_meta(&good, |m| m["dtype"] = if m["dtype"] == "f32" { "f64".into() } else { "f32".into() }),
        ),
        (
            "shape mismatch in header".into(),
            edit_meta(&good, |m| m["params"][0]["shape"] = serde_json::json!([2, 2])),
        ),
        (
            "extra parameter in header".into(),
            edit_meta(&good, |m| {
                let mut extra = m["params"][0].clone();
                extra["name"] = "ghost".into();
                m["params"].as_array_mut().expect("params").push(extra);
            }),
        ),
        ("more projected than main calls".into(), edit_meta(&good, |m| m["projected_calls"] = 1000.into())),
        ("more stalled than projected calls".into(), edit_meta(&good, |m| m["stalled_calls"] = 1000.into())),
        (
            "step counters inconsistent with the calls".into(),
            edit_meta(&good, |m| {
                m["ref_steps"] = 5.into();
                m["main_steps"] = 7.into();
            }),
        ),
        ("huge call counter".into(), edit_meta(&good, |m| m["calls"] = u64::MAX.into())),
        (
            "negative lr ratio".into(),
            edit_meta(&good, |m| m["groups"][0]["ratio_bits"] = (-1.0f64).to_bits().into()),
        ),
        ("negative lr in header".into(), edit_meta(&good, |m| m["groups"][0]["lr"] = (-1.0).into())),
        ("invalid config in header".into(), edit_meta(&good, |m| m["config"]["n_ref"] = 0.into())),
        ("no PROFIT metadata".into(), {
            let mut hd = header.clone();
            hd["__metadata__"] = serde_json::json!({});
            join(&hd, &data)
        }),
        ("tensor renamed".into(), {
            let mut hd = header.clone();
            let obj = hd.as_object_mut().expect("object");
            let key = obj.keys().find(|k| k.ends_with("/anchor")).expect("anchor key").clone();
            let v = obj.remove(&key).expect("value");
            obj.insert(format!("{key}x"), v);
            join(&hd, &data)
        }),
    ];
    for cut in [1, 8, 9, good.len() / 2, good.len() - 1] {
        bad.push((format!("truncated to {cut} bytes"), good[..cut].to_vec()));
    }
    // The resealing helper itself must produce loadable files, or every edit above would be
    // refused for the wrong reason.
    let resealed = edit_meta(&good, |_| {});
    let mut probe = build::<H>(h, &case, config, &values(h, &a));
    probe.load(&resealed, LoadOptions::default()).expect("a resealed unedited checkpoint loads");
    for (what, bytes) in &bad {
        match a.load(bytes, LoadOptions::default()) {
            Err(ProfitError::Checkpoint(_)) => {}
            other => panic!("{}: {what}: expected a checkpoint error, got {other:?}", h.label()),
        }
    }
    for i in 3..case.trajectory.len() {
        call(h, &case, &mut a, i);
        call(h, &case, &mut twin, i);
        assert_eq!(values(h, &a), values(h, &twin), "{}: a refused checkpoint changed the state", h.label());
    }
    println!("checkpoint {:<18} {} bad files refused, state unchanged", h.label(), bad.len());
}
