//! Writes format-version-1 checkpoints (accumulated delta) of golden cases mid-run, with the
//! parameters at save time and the parameters after every later call of the uninterrupted run.
use profit_conformance::golden::GoldenCase;
use profit_core::host::{VecBackend, VecTensor};
use profit_core::{Element, Profit};
use std::path::Path;

fn run<E: Element>(case: &GoldenCase, save_at: usize, out: &Path) {
    let cfg = case.profit_config().unwrap();
    let mut params: Vec<VecTensor<E>> = case
        .problem
        .params
        .iter()
        .map(|p| VecTensor::new(&p.shape, p.init.iter().map(|&x| E::from_f64(x)).collect()).unwrap())
        .collect();
    let named: Vec<(&str, &VecTensor<E>)> =
        case.problem.params.iter().zip(&params).map(|(p, t)| (p.name.as_str(), t)).collect();
    let mut opt = Profit::<VecBackend<E>>::with_names(cfg, &named).unwrap();
    let mut saved = None;
    let mut after = vec![];
    for (i, rows) in case.problem.batches.iter().enumerate() {
        if i == save_at {
            let vals: Vec<Vec<f64>> = params.iter().map(|t| t.data.iter().map(|x| x.as_f64()).collect()).collect();
            saved = Some((opt.save_checkpoint().unwrap(), vals));
        }
        let cur: Vec<Vec<f64>> = params.iter().map(|t| t.data.iter().map(|x| x.as_f64()).collect()).collect();
        let (g, _) = case.gradients(rows, &cur);
        let gt: Vec<VecTensor<E>> = case
            .problem
            .params
            .iter()
            .zip(&g)
            .map(|(p, v)| VecTensor::new(&p.shape, v.iter().map(|&x| E::from_f64(x)).collect()).unwrap())
            .collect();
        let mut pm: Vec<&mut VecTensor<E>> = params.iter_mut().collect();
        let gr: Vec<&VecTensor<E>> = gt.iter().collect();
        opt.step(&mut pm, &gr).unwrap();
        if i >= save_at {
            after.push(params.iter().map(|t| t.data.iter().map(|x| x.as_f64()).collect::<Vec<f64>>()).collect::<Vec<_>>());
        }
    }
    let (bytes, vals) = saved.unwrap();
    let stem = format!("v1_{}_{}_call{}", case.name, E::DTYPE, save_at);
    std::fs::write(out.join(format!("{stem}.safetensors")), bytes).unwrap();
    let json = serde_json::json!({
        "case": case.name, "dtype": E::DTYPE, "saved_before_call": save_at,
        "params_at_save": vals, "params_after_each_later_call": after,
    });
    std::fs::write(out.join(format!("{stem}.json")), serde_json::to_string(&json).unwrap()).unwrap();
}

fn main() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    std::fs::create_dir_all(&out).unwrap();
    for (file, at) in [("sgd_adam_nref1", 3), ("sgd_adamw_nref2_wd", 4), ("x_sgdmom_adamams_nref3", 6)] {
        let case = GoldenCase::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("golden").join(format!("{file}.json"))).unwrap();
        run::<f32>(&case, at, &out);
        run::<f64>(&case, at, &out);
    }
}
