//! PROFIT on dfdx: the conformance suite on `profit-dfdx`'s host backend ([`Flat`], f32), and every
//! golden trajectory replayed through the real dfdx path: a dfdx model holding `w` and `b`,
//! gradients in a dfdx `Gradients`, `Optimizer::update`.

use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::nn::ZeroGrads;
use dfdx::optim::Optimizer;
use dfdx::prelude::*;
use profit_conformance::golden::{golden_files, param_error, GoldenCase};
use profit_conformance::{conformance_suite, Harness};
use profit_core::Phase;
use profit_dfdx::{DfdxProfit, Flat, FlatTensor};
use serde_json::Value;

struct FlatHarness;

impl Harness for FlatHarness {
    type B = Flat;
    fn label(&self) -> String {
        "dfdx-host-f32".into()
    }
    fn tensor(&self, shape: &[usize], data: &[f64]) -> FlatTensor {
        FlatTensor::new(shape, data.iter().map(|&x| x as f32).collect()).expect("shape matches data")
    }
    fn values(&self, t: &FlatTensor) -> Vec<f64> {
        t.data.iter().map(|&x| x as f64).collect()
    }
}

conformance_suite!(dfdx_host_f32, || Ok::<_, String>(FlatHarness));

/// The golden least-squares model as a dfdx module: `pred = x @ w + b`.
struct Affine<const D: usize, const K: usize, E: Dtype, Dev: Storage<E>> {
    w: Tensor<Rank2<D, K>, E, Dev>,
    b: Tensor<Rank1<K>, E, Dev>,
}

impl<const D: usize, const K: usize, E: Dtype, Dev: Device<E>> TensorCollection<E, Dev>
    for Affine<D, K, E, Dev>
{
    type To<E2: Dtype, D2: Device<E2>> = Affine<D, K, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor("w", |s| &s.w, |s| &mut s.w, TensorOptions::reset_to_zeros()),
                Self::tensor("b", |s| &s.b, |s| &mut s.b, TensorOptions::reset_to_zeros()),
            ),
            |(w, b)| Affine { w, b },
        )
    }
}

const TOL: f64 = 1e-4;

fn bools(v: &Value) -> Vec<bool> {
    match v {
        Value::Array(a) => a.iter().filter_map(Value::as_bool).collect(),
        other => other.as_bool().into_iter().collect(),
    }
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Replay one case through dfdx; returns the worst parameter error.
fn replay<const D: usize, const K: usize>(case: &GoldenCase) -> Result<f64, String> {
    let dev = Cpu::default();
    let config = case.profit_config()?;
    let (pw, pb) = (&case.problem.params[0], &case.problem.params[1]);
    let mut model = Affine::<D, K, f32, Cpu> {
        w: dev.tensor_from_vec(to_f32(&pw.init), (Const::<D>, Const::<K>)),
        b: dev.tensor_from_vec(to_f32(&pb.init), (Const::<K>,)),
    };
    let mut opt = DfdxProfit::new(&model, config).map_err(|e| e.to_string())?;
    if opt.names() != ["w", "b"] {
        return Err(format!("registered {:?}", opt.names()));
    }
    let mut worst = 0.0f64;
    for (call, (rows, rec)) in case.problem.batches.iter().zip(&case.trajectory).enumerate() {
        let at = |m: String| format!("{} call {call}: {m}", case.name);
        let current: Vec<Vec<f64>> = [model.w.as_vec(), model.b.as_vec()]
            .iter()
            .map(|v| v.iter().map(|&x| x as f64).collect())
            .collect();
        let (g, _) = case.gradients(rows, &current);
        let mut grads = model.alloc_grads();
        grads.get_or_alloc_mut(&model.w).map_err(|e| at(e.to_string()))?.copy_from_slice(&to_f32(&g[0]));
        grads.get_or_alloc_mut(&model.b).map_err(|e| at(e.to_string()))?.copy_from_slice(&to_f32(&g[1]));
        opt.update(&mut model, &grads).map_err(|e| at(format!("{e} ({:?})", opt.last_error())))?;
        let report = *opt.last_report().ok_or_else(|| at("no report".into()))?;
        let phase = match report.phase {
            Phase::Warmup => "warmup",
            Phase::Reference => "reference",
            Phase::Main => "main",
            Phase::Skipped => "skipped",
        };
        if phase != rec.phase {
            return Err(at(format!("phase {phase}, expected {}", rec.phase)));
        }
        for (name, got) in [("w", model.w.as_vec()), ("b", model.b.as_vec())] {
            let exp = rec.params.get(name).ok_or_else(|| at(format!("no {name}")))?;
            let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
            let err = param_error(&got, exp);
            worst = worst.max(err);
            if err.is_nan() || err > TOL {
                return Err(at(format!("param {name} error {err:.3e} > {TOL:.0e}")));
            }
        }
        if let (Some(exp), Some(main)) = (&rec.projected, report.main) {
            let got: Vec<bool> = if exp.is_array() {
                opt.profit().tensor_reports().iter().map(|r| r.projected).collect()
            } else {
                vec![main.projected]
            };
            if bools(exp) != got {
                return Err(at(format!("projected {got:?}, expected {exp}")));
            }
        }
    }
    Ok(worst)
}

#[test]
fn golden_replay_through_dfdx_optimizer() {
    let files = golden_files().expect("golden files");
    assert!(!files.is_empty(), "no golden cases");
    let mut failures = vec![];
    for f in &files {
        let case = match GoldenCase::load(f) {
            Ok(c) => c,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let shapes: Vec<&[usize]> = case.problem.params.iter().map(|p| p.shape.as_slice()).collect();
        let result = match shapes.as_slice() {
            [[5, 3], [3]] => replay::<5, 3>(&case),
            other => Err(format!("{}: shapes {other:?} not instantiated in this test", case.name)),
        };
        match result {
            Ok(worst) => println!(
                "golden {:<28} dfdx-optimizer-f32  worst param error {worst:.3e} (tol {TOL:.0e})",
                case.name
            ),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}
