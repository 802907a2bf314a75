//! The tensor-ops path ([`Access::TensorOps`], forced onto the CPU) against the in-place host
//! path, through `CandleProfit`: the same model, the same gradients at every call (the in-place
//! model's, handed to both), every inner rule and every pass variant, in f32, f64, bf16 and f16.
//! Both compute the same element math (16-bit: in f32, one rounding per stored value); only the
//! reductions are summed in another order (candle's `sum_all` against profit-core's 8-lane
//! tree), which can move the projection coefficient, and so a main step's result, by a rounding.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Linear, VarMap};
use profit_candle::{Access, CandleProfit, CandleProfitError};
use profit_core::{
    Adam, AdamW, Delta, InnerConfig, Phase, ProfitConfig, ProfitError, Projection, Restore, RmsProp,
    SaveOptions, Sgd,
};

struct Mlp {
    a: Linear,
    b: Linear,
}

impl Mlp {
    /// Deterministic weights (candle's own initialisers draw from an unseeded generator), as
    /// vars registered in `vm`.
    fn new(vm: &VarMap, dtype: DType) -> Self {
        let mut k = 0u32;
        let mut var = |name: &str, shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f64> = (0..n)
                .map(|_| {
                    k += 1;
                    0.4 * ((k as f64) * 0.7713).sin()
                })
                .collect();
            let t = Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let var = Var::from_tensor(&t).unwrap();
            vm.data().lock().unwrap().insert(name.to_string(), var.clone());
            var.as_tensor().clone()
        };
        let a = Linear::new(var("a.weight", &[16, 6]), Some(var("a.bias", &[16])));
        let b = Linear::new(var("b.weight", &[3, 16]), Some(var("b.bias", &[3])));
        Mlp { a, b }
    }
    fn loss(&self, step: usize, dtype: DType) -> Tensor {
        let x =
            Tensor::arange(0u32, 48, &Device::Cpu).unwrap().to_dtype(dtype).unwrap().reshape((8, 6)).unwrap();
        let x = ((x * (0.1 + (step % 5) as f64 * 0.013)).unwrap().sin()).unwrap();
        let h = self.a.forward(&x).unwrap().relu().unwrap();
        let y = self.b.forward(&h).unwrap();
        let loss = candle_nn::ops::log_softmax(&y, D::Minus1).unwrap().mean_all().unwrap().neg().unwrap();
        // f16: loss scaling, so that squared gradients stay in f16's normal range.
        if dtype == DType::F16 {
            (loss * 64.0).unwrap()
        } else {
            loss
        }
    }
}

fn sorted_vars(vm: &VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> =
        vm.data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn values(vm: &VarMap) -> Vec<Vec<f64>> {
    sorted_vars(vm)
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap())
        .collect()
}

fn twin(from: &VarMap, dtype: DType) -> VarMap {
    let vm = VarMap::new();
    let _ = Mlp::new(&vm, dtype);
    for (n, var) in from.data().lock().unwrap().iter() {
        vm.data().lock().unwrap()[n].set(var.as_tensor()).unwrap();
    }
    vm
}

/// The same gradients, keyed by the other model's vars.
fn regrad(grads: &GradStore, from: &VarMap, to: &VarMap) -> GradStore {
    let mut store = GradStore::default();
    for ((_, a), (_, b)) in sorted_vars(from).iter().zip(&sorted_vars(to)) {
        store.insert(b.as_tensor(), grads.get(a).unwrap().copy().unwrap());
    }
    store
}

/// Significand bits (with the implicit one) of each dtype.
fn precision(dtype: DType) -> i32 {
    match dtype {
        DType::F64 => 53,
        DType::F32 => 24,
        DType::BF16 => 8,
        _ => 11,
    }
}

/// `|a - b|` in units of the element type's spacing at `max(|a|, |b|)` (normal range).
fn ulps(a: f64, b: f64, dtype: DType) -> f64 {
    if a == b {
        return 0.0;
    }
    let m = a.abs().max(b.abs()).max(f64::MIN_POSITIVE);
    let spacing = 2f64.powi(m.log2().floor() as i32 - (precision(dtype) - 1));
    (a - b).abs() / spacing
}

fn configs() -> Vec<(&'static str, ProfitConfig)> {
    let sgd = |lr: f64| Sgd { lr, ..Default::default() };
    let base =
        |r: InnerConfig, m: InnerConfig| ProfitConfig { reference: r, main: m, ..ProfitConfig::default() };
    vec![
        // RefAnchor, MainRealized; Adam.
        ("sgd/adam realized", base(sgd(1e-2).into(), Adam { lr: 1e-2, ..Default::default() }.into())),
        // Warm-up (Plain), RefFirstAnchor, RefAcc, MainAnchor; nesterov; AdamW amsgrad.
        (
            "nesterov/adamw-amsgrad accumulated n_ref 2 warmup",
            ProfitConfig {
                n_ref: 2,
                warmup_steps: 2,
                delta: Delta::Accumulated,
                ..base(
                    Sgd { lr: 1e-2, momentum: 0.9, nesterov: true, ..Default::default() }.into(),
                    AdamW { lr: 1e-2, amsgrad: true, ..Default::default() }.into(),
                )
            },
        ),
        // RefFirst, RefAcc, MainSub; dampened momentum; centered RMSprop with momentum.
        (
            "sgd-mom-damp/rms-centered-mom subtract n_ref 2",
            ProfitConfig {
                n_ref: 2,
                delta: Delta::Accumulated,
                restore: Restore::Subtract,
                ..base(
                    Sgd { lr: 1e-2, momentum: 0.5, dampening: 0.3, weight_decay: 1e-2, ..Default::default() }
                        .into(),
                    RmsProp { lr: 1e-3, momentum: 0.9, centered: true, ..Default::default() }.into(),
                )
            },
        ),
        // Realized with n_ref 2 (later reference steps are Plain); per tensor; clipping; RMSprop.
        (
            "sgd-wd/rms per-tensor clip realized n_ref 2",
            ProfitConfig {
                n_ref: 2,
                projection: Projection::PerTensor,
                max_grad_norm: Some(0.05),
                ..base(
                    Sgd { lr: 1e-2, weight_decay: 1e-3, ..Default::default() }.into(),
                    RmsProp { lr: 1e-3, weight_decay: 1e-2, ..Default::default() }.into(),
                )
            },
        ),
        // RMSprop centered only and momentum only; Adam with L2 decay, maximize.
        (
            "rms-centered/rms-mom accumulated",
            ProfitConfig {
                delta: Delta::Accumulated,
                ..base(
                    RmsProp { lr: 1e-3, centered: true, ..Default::default() }.into(),
                    RmsProp { lr: 1e-3, momentum: 0.5, alpha: 0.9, ..Default::default() }.into(),
                )
            },
        ),
        (
            "adam-l2-maximize/sgd-mom main",
            ProfitConfig {
                delta: Delta::Accumulated,
                ..base(
                    Adam { lr: 1e-3, weight_decay: 1e-2, maximize: true, ..Default::default() }.into(),
                    Sgd { lr: 1e-2, momentum: 0.9, ..Default::default() }.into(),
                )
            },
        ),
    ]
}

/// In f16 the second moments of these small gradients underflow (f16's smallest normal is
/// 6e-5) and an `eps` of 1e-8 lets a step blow up, as it does in PyTorch: use 1e-3 there.
fn for_dtype(mut c: ProfitConfig, dtype: DType) -> ProfitConfig {
    if dtype == DType::F16 {
        for inner in [&mut c.reference, &mut c.main] {
            match inner {
                InnerConfig::Adam(a) => a.eps = 1e-3,
                InnerConfig::AdamW(a) => a.eps = 1e-3,
                InnerConfig::RmsProp(r) => r.eps = 1e-3,
                _ => {}
            }
        }
    }
    c
}

/// Run both paths over `calls` calls (until both refuse a non-finite gradient); returns (worst
/// error in ulps, elements differing at the end, main calls that projected, calls run).
fn compare(dtype: DType, config: ProfitConfig, calls: usize) -> (f64, usize, u64, usize) {
    let vm = VarMap::new();
    let m = Mlp::new(&vm, dtype);
    let vm2 = twin(&vm, dtype);
    let mut host = CandleProfit::from_varmap_with(&vm, config, Access::InPlace).unwrap();
    let mut ops = CandleProfit::from_varmap_with(&vm2, config, Access::TensorOps).unwrap();
    assert_eq!((host.access(), ops.access()), (Access::InPlace, Access::TensorOps));
    let mut worst = 0.0f64;
    let mut differing = 0;
    for step in 0..calls {
        let g = m.loss(step, dtype).backward().unwrap();
        let g2 = regrad(&g, &vm, &vm2);
        let (ra, rb) = match (host.try_step(&g), ops.try_step(&g2)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string());
                return (worst, differing, host.projected_calls(), step);
            }
            (a, b) => panic!("{dtype:?} call {step}: {a:?} against {b:?}"),
        };
        assert_eq!(ra.phase, rb.phase);
        assert_eq!(ra.main.map(|r| r.projected), rb.main.map(|r| r.projected), "{dtype:?} call {step}");
        differing = 0;
        for (a, b) in values(&vm).iter().zip(&values(&vm2)) {
            for (x, y) in a.iter().zip(b) {
                if x.is_nan() && y.is_nan() {
                    continue;
                }
                let e = if x.is_finite() && y.is_finite() { ulps(*x, *y, dtype) } else { f64::INFINITY };
                worst = worst.max(e);
                differing += (x != y) as usize;
            }
        }
    }
    (worst, differing, host.projected_calls(), calls)
}

/// Stated tolerance, in units of the element type's spacing, at any call. Measured on the
/// configurations above (printed by the test): bf16, f16 and f32 bitwise equal (0 ulps); f64 up
/// to 18048 ulps (4e-12 relative) where the projection fired, 0 where it never did. With the
/// host's reduction order substituted (an experiment, not kept) every dtype was bitwise equal:
/// the f64 differences come from the sums' order alone, amplified where the projection cancels
/// most of a gradient and Adam or RMSprop divide by what is left. In bf16 and f16 the f64 sums
/// of these products are exact in any order; in f32 a different order could, on other data,
/// move the f32 projection coefficient by a rounding (not seen here).
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 65536.0, // 1.5e-11 relative
        _ => 0.0,
    }
}

#[test]
fn tensor_ops_path_matches_in_place_path() {
    let mut failures = vec![];
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        for (name, config) in configs() {
            let (worst, differing, projected, calls) = compare(dtype, for_dtype(config, dtype), 13);
            println!(
                "{dtype:?} {name:<50} {calls} calls: worst {worst:.0} ulps, {differing} elements differ at the end, {projected} projected main calls"
            );
            if worst > tolerance(dtype) {
                failures.push(format!("{dtype:?} {name}: {worst} ulps"));
            }
            // Without a projection the reductions' order cannot matter: bitwise in every dtype.
            if projected == 0 && worst != 0.0 {
                failures.push(format!("{dtype:?} {name}: {worst} ulps with no projection"));
            }
            if calls < 6 {
                failures.push(format!("{dtype:?} {name}: only {calls} calls before a non-finite gradient"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// The var's own tensor as its gradient: the tensor-ops path reads it before writing the var,
/// and SGD momentum's first buffer (which is the gradient itself, without weight decay) must
/// not share the var's storage, or the in-place write would change it. The same steps with a
/// copy of the var as gradient, in place, agree bitwise.
#[test]
fn gradient_sharing_the_var_storage() {
    let dev = Device::Cpu;
    let config = ProfitConfig {
        n_ref: 2,
        delta: Delta::Accumulated,
        ..ProfitConfig::new(
            Sgd { lr: 1e-2, momentum: 0.9, ..Default::default() },
            Adam { lr: 1e-2, ..Default::default() },
        )
    };
    let init = Tensor::new(&[[1f32, -2.], [3., 0.5]], &dev).unwrap();
    let w = Var::from_tensor(&init).unwrap();
    let w2 = Var::from_tensor(&init).unwrap();
    let mut ops = CandleProfit::with_names(vec![("w".into(), w.clone())], config, Access::TensorOps).unwrap();
    let mut host = CandleProfit::with_names(vec![("w".into(), w2.clone())], config, Access::InPlace).unwrap();
    let vals = |v: &Var| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for call in 0..7 {
        let mut a = GradStore::default();
        a.insert(w.as_tensor(), w.as_tensor().clone());
        let mut b = GradStore::default();
        b.insert(w2.as_tensor(), w2.as_tensor().copy().unwrap());
        let (ra, rb) = (ops.try_step(&a).unwrap(), host.try_step(&b).unwrap());
        assert_eq!(ra.phase, rb.phase);
        assert_eq!(vals(&w), vals(&w2), "call {call}");
    }
    assert_ne!(vals(&w), init.flatten_all().unwrap().to_vec1::<f32>().unwrap());
}

/// Refused on the tensor-ops path with a typed error and nothing changed: a gradient of
/// another dtype or shape, a missing one, a non-finite one (`Error` policy), at a reference and
/// at a main call.
#[test]
fn bad_input_on_tensor_ops_path_changes_nothing() {
    for dtype in [DType::F32, DType::BF16] {
        let vm = VarMap::new();
        let m = Mlp::new(&vm, dtype);
        let config = ProfitConfig { delta: Delta::Accumulated, ..configs()[1].1 };
        let mut opt = CandleProfit::from_varmap_with(&vm, config, Access::TensorOps).unwrap();
        for call in 0..6 {
            let good = m.loss(call, dtype).backward().unwrap();
            let before = values(&vm);
            let state = opt.save_checkpoint(SaveOptions::default()).unwrap();
            let vars = sorted_vars(&vm);
            let (name, var) = &vars[1];
            let bad: Vec<(GradStore, &str)> = vec![
                (swap(&good, var, Tensor::ones(var.dims(), DType::F64, &Device::Cpu).unwrap()), "dtype"),
                (swap(&good, var, Tensor::ones(7, dtype, &Device::Cpu).unwrap()), "shape"),
                (swap(&good, var, (var.ones_like().unwrap() * f64::NAN).unwrap()), "nan"),
                (without(&good, var), "missing"),
            ];
            for (store, what) in bad {
                let e = opt.try_step(&store).unwrap_err();
                let ok = match (what, &e) {
                    ("dtype" | "shape", CandleProfitError::GradientMismatch { name: n, .. }) => n == name,
                    ("nan", CandleProfitError::Profit(ProfitError::NonFiniteGradient { name: n })) => {
                        n == name
                    }
                    ("missing", CandleProfitError::MissingGradient { name: n }) => n == name,
                    _ => false,
                };
                assert!(ok, "{dtype:?} call {call} {what}: {e:?}");
                assert_eq!(values(&vm), before, "{dtype:?} call {call} {what}");
                assert_eq!(opt.calls(), call as u64);
                assert_eq!(opt.save_checkpoint(SaveOptions::default()).unwrap(), state);
            }
            let phase = opt.try_step(&good).unwrap().phase;
            assert!(call != 0 || phase == Phase::Warmup);
        }
    }
}

fn swap(good: &GradStore, var: &Var, g: Tensor) -> GradStore {
    let mut s = without(good, var);
    s.insert(var.as_tensor(), g);
    s
}

fn without(good: &GradStore, var: &Var) -> GradStore {
    let mut s = GradStore::default();
    for id in good.get_ids() {
        if *id != var.as_tensor().id() {
            let t = good.get_id(*id).unwrap();
            s.insert_id(*id, t.clone());
        }
    }
    s
}

/// Empty vars (a zero-sized dimension) and scalar vars (rank 0) are carried along, on both
/// paths, in every configuration: the tensor-ops path runs no op on them (candle hands an empty tensor's own
/// storage back from some ops, which an in-place write refuses). The empty var comes second,
/// so a failure on it would follow a stepped first var.
#[test]
fn empty_and_scalar_vars_are_stepped_alongside() {
    let dev = Device::Cpu;
    for (name, config) in configs() {
        let mut finals = vec![];
        for access in [Access::InPlace, Access::TensorOps] {
            let a = Var::from_tensor(&Tensor::new(&[0.5f32, -0.5], &dev).unwrap()).unwrap();
            let e = Var::from_tensor(&Tensor::zeros((0, 3), DType::F32, &dev).unwrap()).unwrap();
            let z = Var::from_tensor(&Tensor::new(0.25f32, &dev).unwrap()).unwrap();
            let vars = vec![("a".into(), a.clone()), ("e".into(), e.clone()), ("z".into(), z.clone())];
            let mut opt = CandleProfit::with_names(vars, config, access).unwrap();
            for call in 0..6 {
                let mut s = GradStore::default();
                s.insert(a.as_tensor(), Tensor::new(&[0.1f32, -0.2 + call as f32 * 0.1], &dev).unwrap());
                s.insert(e.as_tensor(), Tensor::zeros((0, 3), DType::F32, &dev).unwrap());
                s.insert(z.as_tensor(), Tensor::new(0.3f32 - call as f32 * 0.1, &dev).unwrap());
                opt.try_step(&s).unwrap_or_else(|err| panic!("{name} {access:?} call {call}: {err}"));
            }
            assert_eq!(e.dims(), [0, 3]);
            let mut v = a.as_tensor().to_vec1::<f32>().unwrap();
            v.push(z.as_tensor().to_vec0::<f32>().unwrap());
            assert_ne!(v[2], 0.25, "{name} {access:?}: the scalar var moved");
            finals.push(v);
        }
        assert_eq!(finals[0], finals[1], "{name}");
    }
}
