//! `CandleProfit` as a candle user sees it: the `Optimizer` trait, typed errors that change
//! nothing (on every path), the in-place and copying paths agreeing bitwise, checkpoints
//! resumed mid-cycle (on every path, and from one path into another).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{linear, Linear, Optimizer, VarBuilder, VarMap};
use profit_candle::{Access, CandleProfit, CandleProfitError};
use profit_core::{Adam, LoadOptions, Phase, ProfitConfig, ProfitError, SaveOptions, Sgd};

fn config() -> ProfitConfig {
    ProfitConfig {
        n_ref: 2,
        ..ProfitConfig::new(
            Sgd { lr: 1e-3, momentum: 0.9, ..Default::default() },
            Adam { lr: 1e-2, ..Default::default() },
        )
    }
}

struct Mlp {
    a: Linear,
    b: Linear,
}

impl Mlp {
    fn new(vm: &VarMap, dtype: DType) -> Self {
        let vb = VarBuilder::from_varmap(vm, dtype, &Device::Cpu);
        Mlp { a: linear(4, 8, vb.pp("a")).unwrap(), b: linear(8, 3, vb.pp("b")).unwrap() }
    }
    fn loss(&self, step: usize, dtype: DType) -> Tensor {
        let x =
            Tensor::arange(0u32, 24, &Device::Cpu).unwrap().to_dtype(dtype).unwrap().reshape((6, 4)).unwrap();
        let x = ((x * (0.1 + step as f64 * 0.01)).unwrap().sin()).unwrap();
        let h = self.a.forward(&x).unwrap().relu().unwrap();
        let y = self.b.forward(&h).unwrap();
        candle_nn::ops::log_softmax(&y, D::Minus1).unwrap().mean_all().unwrap().neg().unwrap()
    }
}

fn snapshot(vm: &VarMap) -> Vec<(String, Vec<u64>)> {
    let mut v: Vec<(String, Vec<u64>)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, var)| {
            let t = var.as_tensor().flatten_all().unwrap().to_dtype(DType::F64).unwrap();
            (n.clone(), t.to_vec1::<f64>().unwrap().iter().map(|x| x.to_bits()).collect())
        })
        .collect();
    v.sort();
    v
}

fn copy_varmap(from: &VarMap, dtype: DType) -> (VarMap, Mlp) {
    let vm = VarMap::new();
    let m = Mlp::new(&vm, dtype);
    for (n, var) in from.data().lock().unwrap().iter() {
        vm.data().lock().unwrap()[n].set(var.as_tensor()).unwrap();
    }
    (vm, m)
}

#[test]
fn optimizer_trait_steps_and_sets_rates() {
    let vm = VarMap::new();
    let m = Mlp::new(&vm, DType::F32);
    let mut opt = CandleProfit::new(vm.all_vars(), config()).unwrap();
    assert_eq!(opt.names().len(), 4);
    let before = snapshot(&vm);
    for step in 0..6 {
        opt.backward_step(&m.loss(step, DType::F32)).unwrap();
    }
    assert_eq!(opt.calls(), 6);
    assert_ne!(snapshot(&vm), before);
    assert_eq!(opt.learning_rate(), 1e-2);
    opt.set_learning_rate(1e-3);
    assert_eq!(opt.learning_rate(), 1e-3);
    assert!((opt.ref_lr() - 1e-4).abs() < 1e-18, "fixed ratio: {}", opt.ref_lr());
    opt.set_learning_rate(-1.0); // ignored
    assert_eq!(opt.learning_rate(), 1e-3);
}

#[test]
fn in_place_and_copy_paths_agree_bitwise() {
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let vm = VarMap::new();
        let m = Mlp::new(&vm, dtype);
        let (vm2, m2) = copy_varmap(&vm, dtype);
        let mut a = CandleProfit::from_varmap(&vm, config()).unwrap();
        let mut b = CandleProfit::from_varmap_with(&vm2, config(), Access::Copy).unwrap();
        assert!(!a.copies() && b.copies());
        assert_eq!((a.access(), b.access()), (Access::InPlace, Access::Copy));
        assert_eq!(a.dtype(), dtype);
        for step in 0..9 {
            let ra = a.try_step(&m.loss(step, dtype).backward().unwrap()).unwrap();
            let rb = b.try_step(&m2.loss(step, dtype).backward().unwrap()).unwrap();
            assert_eq!(ra, rb);
            assert_eq!(snapshot(&vm), snapshot(&vm2), "{dtype:?} step {step}");
        }
        assert_eq!(
            a.save_checkpoint(SaveOptions::default()).unwrap(),
            b.save_checkpoint(SaveOptions::default()).unwrap()
        );
    }
}

#[test]
fn checkpoint_resumes_mid_cycle_bitwise() {
    for access in [Access::Auto, Access::Copy, Access::TensorOps] {
        let vm = VarMap::new();
        let m = Mlp::new(&vm, DType::F32);
        let mut opt = CandleProfit::from_varmap_with(&vm, config(), access).unwrap();
        for step in 0..4 {
            opt.try_step(&m.loss(step, DType::F32).backward().unwrap()).unwrap();
        }
        // Call 4 is the second reference call of the second cycle (n_ref = 2): mid-cycle.
        let bytes = opt.save_checkpoint(SaveOptions::default()).unwrap();
        let (vm2, m2) = copy_varmap(&vm, DType::F32);
        let mut resumed = CandleProfit::from_varmap_with(&vm2, ProfitConfig::default(), access).unwrap();
        // A different configuration with the same state layout? The default has no momentum:
        // its layout differs, and the load is refused with nothing changed.
        assert!(resumed.load_checkpoint(&bytes, LoadOptions::default()).is_err());
        // Other weights (a fresh initialisation): the state belongs to the saved ones.
        let other = VarMap::new();
        let _m3 = Mlp::new(&other, DType::F32);
        let mut wrong = CandleProfit::from_varmap_with(&other, config(), access).unwrap();
        let fresh = snapshot(&other);
        assert!(wrong.load_checkpoint(&bytes, LoadOptions::default()).is_err());
        assert_eq!(snapshot(&other), fresh);
        assert_eq!(wrong.calls(), 0);
        // A file with the parameters restores them into the other vars.
        let whole = opt.save_checkpoint(SaveOptions::with_params()).unwrap();
        wrong.load_checkpoint(&whole, LoadOptions::default()).unwrap();
        assert_eq!(snapshot(&other), snapshot(&vm));
        assert_eq!(wrong.calls(), 4);
        let mut resumed = CandleProfit::from_varmap_with(&vm2, config(), access).unwrap();
        resumed.load_checkpoint(&bytes, LoadOptions::default()).unwrap();
        assert_eq!(resumed.calls(), 4);
        for step in 4..10 {
            let ra = opt.try_step(&m.loss(step, DType::F32).backward().unwrap()).unwrap();
            let rb = resumed.try_step(&m2.loss(step, DType::F32).backward().unwrap()).unwrap();
            assert_eq!(ra, rb);
            assert_eq!(snapshot(&vm), snapshot(&vm2));
        }
        assert_eq!(
            opt.save_checkpoint(SaveOptions::default()).unwrap(),
            resumed.save_checkpoint(SaveOptions::default()).unwrap()
        );
    }
}

#[test]
fn missing_gradient_is_typed_and_changes_nothing() {
    for access in [Access::Auto, Access::Copy, Access::TensorOps] {
        let vm = VarMap::new();
        let m = Mlp::new(&vm, DType::F32);
        let mut opt = CandleProfit::from_varmap_with(&vm, config(), access).unwrap();
        opt.try_step(&m.loss(0, DType::F32).backward().unwrap()).unwrap();
        let before = snapshot(&vm);
        let state = opt.save_checkpoint(SaveOptions::default()).unwrap();
        // Only the first layer takes part.
        let x = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
        let grads = m.a.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
        match opt.try_step(&grads) {
            Err(CandleProfitError::MissingGradient { name }) => assert!(name.starts_with("b."), "{name}"),
            other => panic!("expected MissingGradient, got {other:?}"),
        }
        assert_eq!(snapshot(&vm), before);
        assert_eq!(opt.calls(), 1);
        assert_eq!(opt.save_checkpoint(SaveOptions::default()).unwrap(), state);
    }
}

#[test]
fn bad_gradients_are_typed_and_change_nothing() {
    for access in [Access::Auto, Access::Copy, Access::TensorOps] {
        bad_gradients(access);
    }
}

fn bad_gradients(access: Access) {
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::new(&[0.5f32, -0.5], &dev).unwrap()).unwrap();
    let vars = vec![("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
    let mut opt = CandleProfit::with_names(vars, config(), access).unwrap();
    let vals = |v: &Var| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (w0, b0) = (vals(&w), vals(&b));
    let good_b = Tensor::new(&[1f32, 1.], &dev).unwrap();
    let mut cases: Vec<(Tensor, &str)> = vec![
        (Tensor::ones(4, DType::F32, &dev).unwrap(), "shape"),
        (Tensor::ones((2, 2), DType::F64, &dev).unwrap(), "dtype"),
        (Tensor::new(&[[f32::NAN, 0.], [0., 0.]], &dev).unwrap(), "nan"),
        (Tensor::new(&[[0., f32::INFINITY], [0., 0.]], &dev).unwrap(), "inf"),
    ];
    if access == Access::Auto {
        // The var's own tensor as its gradient: shares its storage (would deadlock a lock).
        // The other paths read the gradient before writing the var, and take it.
        cases.push((w.as_tensor().clone(), "alias"));
    }
    for (g, what) in cases {
        let mut store = GradStore::default();
        store.insert(w.as_tensor(), g);
        store.insert(b.as_tensor(), good_b.clone());
        let e = opt.try_step(&store).unwrap_err();
        match (what, &e) {
            ("shape" | "dtype", CandleProfitError::GradientMismatch { name, .. }) => assert_eq!(name, "w"),
            ("nan" | "inf", CandleProfitError::Profit(ProfitError::NonFiniteGradient { name })) => {
                assert_eq!(name, "w")
            }
            ("alias", CandleProfitError::Profit(ProfitError::Backend(_))) => {}
            _ => panic!("{access:?} {what}: unexpected {e:?}"),
        }
        assert_eq!((vals(&w), vals(&b)), (w0.clone(), b0.clone()), "{access:?} {what}");
        assert_eq!(opt.calls(), 0);
    }
    // A non-contiguous gradient is used (in place: made contiguous), same as its contiguous copy.
    let g = Tensor::new(&[[1f32, 3.], [2., 4.]], &dev).unwrap().t().unwrap();
    assert!(!g.is_contiguous());
    let mut store = GradStore::default();
    store.insert(w.as_tensor(), g);
    store.insert(b.as_tensor(), good_b);
    assert_eq!(opt.try_step(&store).unwrap().phase, Phase::Reference);
    let w1 = vals(&w);
    let expected: Vec<f32> = w0.iter().zip([1f32, 2., 3., 4.]).map(|(w, g)| w - 1e-3 * g).collect();
    assert_eq!(w1, expected, "{access:?}");
}

/// A run checkpointed on one path resumes on another (a CPU run moved to a GPU takes the
/// tensor-ops path): f32 results stay bitwise those of the uninterrupted in-place run here.
#[test]
fn checkpoint_moves_between_paths() {
    for (from, to) in [(Access::InPlace, Access::TensorOps), (Access::TensorOps, Access::InPlace)] {
        let vm = VarMap::new();
        let m = Mlp::new(&vm, DType::F32);
        let mut opt = CandleProfit::from_varmap_with(&vm, config(), from).unwrap();
        for step in 0..4 {
            opt.try_step(&m.loss(step, DType::F32).backward().unwrap()).unwrap();
        }
        let bytes = opt.save_checkpoint(SaveOptions::default()).unwrap();
        let (vm2, m2) = copy_varmap(&vm, DType::F32);
        let mut resumed = CandleProfit::from_varmap_with(&vm2, config(), to).unwrap();
        assert_eq!(resumed.access(), to);
        resumed.load_checkpoint(&bytes, LoadOptions::default()).unwrap();
        for step in 4..10 {
            let ra = opt.try_step(&m.loss(step, DType::F32).backward().unwrap()).unwrap();
            let rb = resumed.try_step(&m2.loss(step, DType::F32).backward().unwrap()).unwrap();
            assert_eq!(ra.phase, rb.phase);
            assert_eq!(snapshot(&vm), snapshot(&vm2), "{from:?} -> {to:?} call {step}");
        }
    }
}

#[test]
fn unsupported_and_inconsistent_vars_are_refused() {
    let dev = Device::Cpu;
    let f = |dtype| Var::zeros((2, 2), dtype, &dev).unwrap();
    let named =
        |vs: Vec<Var>| vs.into_iter().enumerate().map(|(i, v)| (format!("v{i}"), v)).collect::<Vec<_>>();
    let e = CandleProfit::with_names(named(vec![f(DType::F8E4M3)]), config(), Access::Auto).err().unwrap();
    assert!(matches!(e, CandleProfitError::UnsupportedDtype { dtype: DType::F8E4M3, .. }), "{e:?}");
    let e = CandleProfit::with_names(named(vec![f(DType::BF16), f(DType::F32)]), config(), Access::Auto)
        .err()
        .unwrap();
    assert!(matches!(e, CandleProfitError::MixedDtypes { .. }), "{e:?}");
    let e = CandleProfit::with_names(named(vec![f(DType::F32), f(DType::F64)]), config(), Access::Auto)
        .err()
        .unwrap();
    assert!(matches!(e, CandleProfitError::MixedDtypes { .. }), "{e:?}");
    let v = f(DType::F32);
    let e = CandleProfit::with_names(named(vec![v.clone(), v]), config(), Access::Auto).err().unwrap();
    assert!(matches!(e, CandleProfitError::SharedStorage(..)), "{e:?}");
    let e = CandleProfit::with_names(named(vec![f(DType::U32)]), config(), Access::Auto).err().unwrap();
    assert!(matches!(e, CandleProfitError::NoVars), "{e:?}");
    // Integer vars are left out, as candle's optimizers do.
    let opt =
        CandleProfit::with_names(named(vec![f(DType::U32), f(DType::F64)]), config(), Access::Auto).unwrap();
    assert_eq!(opt.names(), ["v1"]);
    let bad = ProfitConfig { n_ref: 0, ..config() };
    let e = CandleProfit::with_names(named(vec![f(DType::F32)]), bad, Access::Auto).err().unwrap();
    assert!(matches!(e, CandleProfitError::Profit(ProfitError::InvalidHyperparameter { .. })), "{e:?}");
}

#[test]
fn an_external_main_optimizer_is_refused() {
    let vm = VarMap::new();
    let _m = Mlp::new(&vm, DType::F32);
    let cfg = ProfitConfig { main: profit_core::optim::External::default().into(), ..config() };
    for access in [Access::Auto, Access::Copy, Access::TensorOps] {
        assert!(matches!(
            CandleProfit::from_varmap_with(&vm, cfg, access),
            Err(CandleProfitError::Profit(ProfitError::InvalidConfig(_)))
        ));
    }
    assert!(CandleProfit::from_varmap(&vm, config()).is_ok());
}
