//! bf16 and f16 parameters: every stored value (parameters, anchor, delta, inner-optimizer
//! state) must be the f32 computation from the same state, rounded once to the 16-bit type.
//!
//! Each call is checked on its own: before call `k` the half-precision optimizer's whole state
//! (parameters included) is loaded, widened exactly, into a fresh f32 optimizer; both take call
//! `k` with the same gradient; then the f32 optimizer's state, rounded to the 16-bit type by
//! loading it into a fresh half-precision optimizer, must save to the very bytes the
//! half-precision optimizer saves.

use half::{bf16, f16};
use profit_core::element::Element;
use profit_core::host::{VecBackend, VecTensor};
use profit_core::{
    Adam, AdamW, Delta, InnerConfig, LoadOptions, Profit, ProfitConfig, Projection, RmsProp, SaveOptions, Sgd,
};

const SHAPES: [&[usize]; 3] = [&[7, 5], &[5], &[3, 4]];

/// Deterministic values in `[-1, 1]`.
fn wave(n: usize, seed: usize) -> Vec<f64> {
    (0..n).map(|i| ((i * 7919 + seed * 104_729) as f64 * 0.618_033_988_749).sin()).collect()
}

fn tensors<E: Element>(f: impl Fn(usize, usize) -> Vec<f64>) -> Vec<VecTensor<E>> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(t, s)| {
            let n = s.iter().product();
            VecTensor::new(s, f(n, t).into_iter().map(E::from_f64).collect()).unwrap()
        })
        .collect()
}

/// Weights away from zero (`|w|` in `[0.25, 1.25]`), so that a small update never crosses it.
fn weights<E: Element>() -> Vec<VecTensor<E>> {
    tensors(|n, t| wave(n, t).into_iter().map(|x| x.signum() * (0.25 + x.abs())).collect())
}

/// The gradient of call `k`, exact in both 16-bit types (a multiple of 2^-6 in `[-1, 1]`: at
/// most 7 significant bits).
fn gradient<E: Element>(k: usize) -> Vec<VecTensor<E>> {
    tensors(|n, t| wave(n, 100 + 10 * k + t).into_iter().map(|x| (x * 64.0).round() / 64.0).collect())
}

fn build<E: Element>(config: &ProfitConfig, params: &[VecTensor<E>]) -> Profit<VecBackend<E>> {
    let names = ["a", "b", "c"];
    let named: Vec<(&str, &VecTensor<E>)> = names.iter().copied().zip(params).collect();
    Profit::with_names(*config, &named).unwrap()
}

fn save<E: Element>(opt: &Profit<VecBackend<E>>, params: &[VecTensor<E>]) -> Vec<u8> {
    opt.save_checkpoint(&params.iter().collect::<Vec<_>>(), SaveOptions::with_params()).unwrap()
}

/// A fresh optimizer of type `E` holding the state (and parameters) of `bytes`, converted.
fn load<E: Element>(config: &ProfitConfig, bytes: &[u8]) -> (Profit<VecBackend<E>>, Vec<VecTensor<E>>) {
    let mut params = weights::<E>();
    let mut opt = build(config, &params);
    let mut refs: Vec<&mut VecTensor<E>> = params.iter_mut().collect();
    opt.load_checkpoint(bytes, &mut refs, LoadOptions::default().convert_dtype()).unwrap();
    (opt, params)
}

fn step<E: Element>(opt: &mut Profit<VecBackend<E>>, params: &mut [VecTensor<E>], k: usize) {
    let g = gradient::<E>(k);
    let mut p: Vec<&mut VecTensor<E>> = params.iter_mut().collect();
    opt.step(&mut p, &g.iter().collect::<Vec<_>>()).unwrap();
}

fn configs() -> Vec<(String, ProfitConfig)> {
    let mains: Vec<InnerConfig> = vec![
        Sgd { lr: 1e-2, momentum: 0.9, nesterov: true, weight_decay: 1e-2, ..Default::default() }.into(),
        Adam { lr: 1e-3, ..Default::default() }.into(),
        AdamW { lr: 1e-3, amsgrad: true, ..Default::default() }.into(),
        RmsProp { lr: 1e-3, centered: true, momentum: 0.5, ..Default::default() }.into(),
    ];
    let refs: Vec<InnerConfig> = vec![
        Sgd { lr: 1e-3, ..Default::default() }.into(),
        Sgd { lr: 1e-3, momentum: 0.9, ..Default::default() }.into(),
        Adam { lr: 1e-4, ..Default::default() }.into(),
    ];
    let mut out = vec![];
    for (i, main) in mains.iter().enumerate() {
        for (j, reference) in refs.iter().enumerate() {
            for delta in [Delta::Realized, Delta::Accumulated] {
                let per_tensor = (i + j) % 2 == 1;
                let config = ProfitConfig {
                    n_ref: 1 + (i + j) as u64 % 2,
                    warmup_steps: (j == 0) as u64,
                    delta,
                    projection: if per_tensor { Projection::PerTensor } else { Projection::Global },
                    max_grad_norm: (i == 1).then_some(0.5),
                    ..ProfitConfig::new(*reference, *main)
                };
                out.push((
                    format!("main {main:?} ref {reference:?} {delta:?} per_tensor {per_tensor}"),
                    config,
                ));
            }
        }
    }
    out
}

fn rounded_once<H: Element<Real = f32>>() {
    let calls = 7;
    let mut projected = 0;
    for (name, config) in configs() {
        let mut params = weights::<H>();
        let mut opt = build(&config, &params);
        for k in 0..calls {
            let (mut wide, mut wide_params) = load::<f32>(&config, &save(&opt, &params));
            step(&mut wide, &mut wide_params, k);
            step(&mut opt, &mut params, k);
            let (narrowed, narrowed_params) = load::<H>(&config, &save(&wide, &wide_params));
            let (got, want) = (save(&opt, &params), save(&narrowed, &narrowed_params));
            if got != want {
                panic!("{} call {k}: {name}: {}", H::DTYPE, first_difference::<H>(&got, &want));
            }
        }
        projected += opt.projected_calls();
    }
    assert!(projected > 0, "the projection never fired: the test would not see it");
}

#[test]
fn bf16_is_the_f32_computation_rounded_once() {
    rounded_once::<bf16>();
}

#[test]
fn f16_is_the_f32_computation_rounded_once() {
    rounded_once::<f16>();
}

#[test]
fn another_dtype_is_refused_unless_converted() {
    let config = ProfitConfig::default();
    let mut params = weights::<f32>();
    let mut opt = build(&config, &params);
    step(&mut opt, &mut params, 0);
    let bytes = save(&opt, &params);
    let mut half = weights::<bf16>();
    let mut other = build(&config, &half);
    let before = save(&other, &half);
    let mut refs: Vec<&mut VecTensor<bf16>> = half.iter_mut().collect();
    let e = other.load_checkpoint(&bytes, &mut refs, LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("convert_dtype"), "{e}");
    assert_eq!(save(&other, &half), before, "a refused load changes nothing");
}

#[test]
fn state_bytes_halve_in_bf16() {
    let config = ProfitConfig::new(Sgd { lr: 1e-6, ..Default::default() }, Adam::default());
    let wide = build(&config, &weights::<f32>());
    let half = build(&config, &weights::<bf16>());
    assert_eq!(wide.state_bytes(), 2 * half.state_bytes());
    assert!(half.state_bytes() > 0);
}

/// The first stored value that differs between two checkpoints, for the failure message.
fn first_difference<H: Element>(a: &[u8], b: &[u8]) -> String {
    let (x, y) = (
        safetensors::SafeTensors::deserialize(a).unwrap(),
        safetensors::SafeTensors::deserialize(b).unwrap(),
    );
    let mut names = x.names();
    names.sort();
    for name in names {
        let (p, q) = (x.tensor(name).unwrap(), y.tensor(name).unwrap());
        let w = H::DTYPE.size();
        for (i, (u, v)) in p.data().chunks(w).zip(q.data().chunks(w)).enumerate() {
            if u != v {
                return format!(
                    "`{name}`[{i}]: {:e} here, {:e} from the f32 computation",
                    H::DTYPE.decode_f64(u),
                    H::DTYPE.decode_f64(v)
                );
            }
        }
    }
    "the headers differ".into()
}
