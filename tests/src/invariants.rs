//! The algorithm's invariants as property tests (proptest), generic over any backend.

use profit_core::backend::TensorOps;
use profit_core::element::Element;
use profit_core::host::realized;
use profit_core::Delta;
use profit_core::{
    Adam, AdamW, GroupOptions, InnerConfig, ParamGroup, Phase, Profit, ProfitConfig, Projection, RmsProp, Sgd,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::Harness;

type T<H> = <<H as Harness>::B as TensorOps>::Tensor;

const SHAPES: [&[usize]; 2] = [&[3, 4], &[5]];

/// Any inner optimizer with valid hyperparameters; `lr` given.
pub fn arb_inner(lr: f64) -> BoxedStrategy<InnerConfig> {
    prop_oneof![
        (0.0..0.95f64, 0.0..0.5f64, any::<bool>(), 0.0..0.1f64).prop_map(move |(m, d, n, wd)| {
            let nesterov = n && m > 0.0;
            InnerConfig::Sgd(Sgd {
                lr,
                momentum: m,
                dampening: if nesterov { 0.0 } else { d },
                nesterov,
                weight_decay: wd,
                maximize: false,
            })
        }),
        (0.5..0.95f64, 0.9..0.9999f64, 1e-8..1e-3f64, 0.0..0.1f64, any::<bool>()).prop_map(
            move |(b1, b2, eps, wd, ams)| InnerConfig::Adam(Adam {
                lr,
                betas: (b1, b2),
                eps,
                weight_decay: wd,
                amsgrad: ams,
                maximize: false,
            })
        ),
        (0.5..0.95f64, 0.9..0.9999f64, 1e-8..1e-3f64, 0.0..0.1f64, any::<bool>()).prop_map(
            move |(b1, b2, eps, wd, ams)| InnerConfig::AdamW(AdamW {
                lr,
                betas: (b1, b2),
                eps,
                weight_decay: wd,
                amsgrad: ams,
                maximize: false,
            })
        ),
        (0.8..0.999f64, 1e-8..1e-3f64, 0.0..0.1f64, 0.0..0.9f64, any::<bool>()).prop_map(
            move |(alpha, eps, wd, m, c)| InnerConfig::RmsProp(RmsProp {
                lr,
                alpha,
                eps,
                weight_decay: wd,
                momentum: m,
                centered: c,
                maximize: false,
            })
        ),
    ]
    .boxed()
}

/// Either delta mode: every invariant holds in both.
pub fn arb_delta() -> impl Strategy<Value = Delta> {
    prop_oneof![Just(Delta::Realized), Just(Delta::Accumulated)]
}

/// The delta a main call would see now: the accumulated buffer, or the realized
/// `param - anchor` rounded to the element type.
fn delta_of<H: Harness>(h: &H, opt: &Profit<H::B>, params: &[T<H>]) -> Vec<Vec<f64>> {
    type E<H> = <<H as Harness>::B as TensorOps>::Elem;
    (0..params.len())
        .map(|i| match opt.delta(i) {
            Some(d) => h.values(d),
            None => {
                let a = h.values(opt.anchor(i).expect("the realized delta keeps the anchor"));
                let p = h.values(&params[i]);
                p.iter()
                    .zip(&a)
                    .map(|(&p, &a)| realized(E::<H>::from_f64(p), E::<H>::from_f64(a)).as_f64())
                    .collect()
            }
        })
        .collect()
}

fn vals(n: usize) -> impl Strategy<Value = Vec<f64>> {
    proptest::collection::vec(-2.0..2.0f64, n)
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Random values for every tensor of `SHAPES`, `k` times.
fn arb_sets(k: usize) -> impl Strategy<Value = Vec<Vec<Vec<f64>>>> {
    proptest::collection::vec(SHAPES.iter().map(|s| vals(numel(s))).collect::<Vec<_>>(), k)
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() })
}

fn tensors<H: Harness>(h: &H, shapes: &[&[usize]], v: &[Vec<f64>]) -> Vec<T<H>> {
    shapes.iter().zip(v).map(|(s, d)| h.tensor(s, d)).collect()
}

fn step<H: Harness>(
    opt: &mut Profit<H::B>,
    params: &mut [T<H>],
    grads: &[T<H>],
) -> Result<profit_core::StepReport, TestCaseError> {
    let mut p: Vec<&mut T<H>> = params.iter_mut().collect();
    let g: Vec<&T<H>> = grads.iter().collect();
    opt.step(&mut p, &g).map_err(|e| TestCaseError::fail(e.to_string()))
}

fn read<H: Harness>(h: &H, ts: &[T<H>]) -> Vec<Vec<f64>> {
    ts.iter().map(|t| h.values(t)).collect()
}

fn dot(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| x * y).sum()
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

fn run<S: Strategy>(label: String, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    if let Err(e) = runner().run(&strategy, test) {
        panic!("{label}: {e}");
    }
}

/// With `lr_main = 0` the main call returns the parameters exactly (bitwise) to the anchor.
pub fn lr_zero_restores_anchor<H: Harness>(h: &H) {
    let strategy = (
        arb_inner(0.0),
        1u64..4,
        1e-4..1e-1f64,
        arb_sets(4),
        vals(numel(SHAPES[0])),
        vals(numel(SHAPES[1])),
        arb_delta(),
    );
    run(h.label(), strategy, |(main, n_ref, lr_ref, grads, p0, p1, delta)| {
        let config =
            ProfitConfig { n_ref, delta, ..ProfitConfig::new(Sgd { lr: lr_ref, ..Sgd::default() }, main) };
        let init = vec![p0, p1];
        let mut params = tensors(h, &SHAPES, &init);
        let refs: Vec<&T<H>> = params.iter().collect();
        let mut opt = Profit::<H::B>::new(config, &refs).map_err(|e| fail(e.to_string()))?;
        let anchor = read(h, &params);
        for i in 0..=n_ref as usize {
            let g = tensors(h, &SHAPES, &grads[i % grads.len()]);
            let r = step::<H>(&mut opt, &mut params, &g)?;
            if i < n_ref as usize {
                prop_assert_eq!(r.phase, Phase::Reference);
            } else {
                prop_assert_eq!(r.phase, Phase::Main);
            }
        }
        prop_assert_eq!(read(h, &params), anchor, "main call with lr 0 did not restore the anchor bitwise");
        Ok(())
    });
}

/// Main SGD with lr 1 recovers the gradient it used: `g_used = anchor - theta`.
fn sgd_unit_config(lr_ref: f64, delta: Delta) -> ProfitConfig {
    ProfitConfig {
        delta,
        ..ProfitConfig::new(Sgd { lr: lr_ref, ..Sgd::default() }, Sgd { lr: 1.0, ..Sgd::default() })
    }
}

fn used_gradient(anchor: &[Vec<f64>], after: &[Vec<f64>]) -> Vec<Vec<f64>> {
    anchor.iter().zip(after).map(|(a, p)| a.iter().zip(p).map(|(x, y)| x - y).collect()).collect()
}

/// Relative tolerance for recovered gradients in this element type.
fn rel_tol<H: Harness>() -> f64 {
    if crate::tolerance::<H>() < 1e-6 {
        1e-9
    } else {
        1e-3
    }
}

/// After a projection the gradient used is orthogonal to delta; the projection fires exactly
/// when `<delta, g> < 0`.
pub fn projection_orthogonal<H: Harness>(h: &H) {
    let strategy = (
        1e-3..1e-1f64,
        arb_sets(2),
        0.1..2.0f64,
        arb_sets(1),
        vals(numel(SHAPES[0])),
        vals(numel(SHAPES[1])),
        arb_delta(),
    );
    run(h.label(), strategy, |(lr_ref, g, c, noise, p0, p1, mode)| {
        let mut params = tensors(h, &SHAPES, &[p0, p1]);
        let refs: Vec<&T<H>> = params.iter().collect();
        let mut opt =
            Profit::<H::B>::new(sgd_unit_config(lr_ref, mode), &refs).map_err(|e| fail(e.to_string()))?;
        let anchor = read(h, &params);
        step::<H>(&mut opt, &mut params, &tensors(h, &SHAPES, &g[0]))?;
        let delta = delta_of(h, &opt, &params);
        // Main gradient leaning against delta, so that the projection fires most of the time.
        let g2: Vec<Vec<f64>> = g[1]
            .iter()
            .zip(&delta)
            .zip(&noise[0])
            .map(|((a, d), n)| {
                a.iter().zip(d).zip(n).map(|((a, d), n)| 0.2 * a * n - c * d / lr_ref).collect()
            })
            .collect();
        let g2t = tensors(h, &SHAPES, &g2);
        let g2r = read(h, &g2t);
        let r = step::<H>(&mut opt, &mut params, &g2t)?;
        let omega = dot(&delta, &g2r);
        let main = r.main.ok_or_else(|| fail("no main report".into()))?;
        prop_assert_eq!(main.projected, omega < 0.0, "projected flag vs omega {}", omega);
        let used = used_gradient(&anchor, &read(h, &params));
        let norm = |v: &[Vec<f64>]| dot(v, v).sqrt();
        if main.projected {
            let cos = dot(&used, &delta) / (norm(&used) * norm(&delta)).max(1e-300);
            prop_assert!(cos.abs() <= rel_tol::<H>(), "<g_used, delta> not ~0: cos {}", cos);
        }
        Ok(())
    });
}

/// With `omega >= 0`, or `delta = 0`, the gradient reaches the main optimizer unchanged.
pub fn unprojected_gradient_unchanged<H: Harness>(h: &H) {
    let strategy = (
        prop_oneof![Just(0.0), 1e-3..1e-1f64],
        arb_sets(2),
        vals(numel(SHAPES[0])),
        vals(numel(SHAPES[1])),
        arb_delta(),
    );
    run(h.label(), strategy, |(lr_ref, g, p0, p1, mode)| {
        let mut params = tensors(h, &SHAPES, &[p0, p1]);
        let refs: Vec<&T<H>> = params.iter().collect();
        let mut opt =
            Profit::<H::B>::new(sgd_unit_config(lr_ref, mode), &refs).map_err(|e| fail(e.to_string()))?;
        let anchor = read(h, &params);
        step::<H>(&mut opt, &mut params, &tensors(h, &SHAPES, &g[0]))?;
        let delta = delta_of(h, &opt, &params);
        let g2t = tensors(h, &SHAPES, &g[1]);
        let g2 = read(h, &g2t);
        let omega = dot(&delta, &g2);
        prop_assume!(omega >= 0.0);
        let r = step::<H>(&mut opt, &mut params, &g2t)?;
        prop_assert!(!r.main.expect("main").projected);
        let used = used_gradient(&anchor, &read(h, &params));
        let scale = anchor.iter().flatten().chain(g2.iter().flatten()).fold(1.0f64, |m, x| m.max(x.abs()));
        for (u, g) in used.iter().flatten().zip(g2.iter().flatten()) {
            prop_assert!((u - g).abs() <= rel_tol::<H>() * scale, "gradient changed: {} vs {}", u, g);
        }
        Ok(())
    });
}

/// Per-tensor projection on a single tensor is the global projection, bitwise.
pub fn per_tensor_single_equals_global<H: Harness>(h: &H) {
    let shape: &[usize] = &[4, 3];
    let strategy = (arb_inner(1e-2), 1u64..3, proptest::collection::vec(vals(12), 7), vals(12), arb_delta());
    run(h.label(), strategy, |(main, n_ref, grads, p, delta)| {
        let mut out = vec![];
        for projection in [Projection::Global, Projection::PerTensor] {
            let config = ProfitConfig {
                n_ref,
                projection,
                delta,
                ..ProfitConfig::new(Sgd { lr: 1e-2, ..Sgd::default() }, main)
            };
            let mut params = vec![h.tensor(shape, &p)];
            let mut opt = Profit::<H::B>::new(config, &[&params[0]]).map_err(|e| fail(e.to_string()))?;
            let mut flags = vec![];
            for g in &grads {
                let r = step::<H>(&mut opt, &mut params, &[h.tensor(shape, g)])?;
                flags.push(r.main.map(|m| m.projected));
            }
            out.push((h.values(&params[0]), flags));
        }
        prop_assert_eq!(&out[0], &out[1]);
        Ok(())
    });
}

/// A frozen group is never changed and stays out of the projection: the trainable tensors
/// follow exactly the run of an optimizer built over them alone.
pub fn frozen_groups_untouched<H: Harness>(h: &H) {
    let strategy =
        (arb_inner(1e-2), arb_sets(6), vals(numel(SHAPES[0])), vals(numel(SHAPES[1])), arb_delta());
    run(h.label(), strategy, |(main, grads, p0, p1, delta)| {
        let config = ProfitConfig { delta, ..ProfitConfig::new(Sgd { lr: 1e-2, ..Sgd::default() }, main) };
        let mut both = tensors(h, &SHAPES, &[p0.clone(), p1.clone()]);
        let groups = vec![
            ParamGroup::new([("w", &both[0])]),
            ParamGroup::new([("b", &both[1])]).options(GroupOptions { frozen: true, ..Default::default() }),
        ];
        let mut opt = Profit::<H::B>::with_groups(config, groups).map_err(|e| fail(e.to_string()))?;
        let mut alone = vec![h.tensor(SHAPES[0], &p0)];
        let mut opt_alone = Profit::<H::B>::new(config, &[&alone[0]]).map_err(|e| fail(e.to_string()))?;
        let frozen_before = h.values(&both[1]);
        for g in &grads {
            let gt = tensors(h, &SHAPES, g);
            let r1 = step::<H>(&mut opt, &mut both, &gt)?;
            let r2 = step::<H>(&mut opt_alone, &mut alone, &gt[..1])?;
            prop_assert_eq!(r1.main.map(|m| m.projected), r2.main.map(|m| m.projected));
        }
        prop_assert_eq!(h.values(&both[1]), frozen_before, "frozen tensor changed");
        prop_assert_eq!(
            h.values(&both[0]),
            h.values(&alone[0]),
            "frozen tensor leaked into the trainable run"
        );
        Ok(())
    });
}

/// Clipping by global norm equals feeding gradients pre-scaled by
/// `min(1, max_norm / (|g| + 1e-6))` (`torch.nn.utils.clip_grad_norm_`).
pub fn clipping_equals_prescaled<H: Harness>(h: &H) {
    let strategy = (
        arb_inner(1e-2),
        0.05..3.0f64,
        arb_sets(6),
        vals(numel(SHAPES[0])),
        vals(numel(SHAPES[1])),
        arb_delta(),
    );
    run(h.label(), strategy, |(main, max_norm, grads, p0, p1, delta)| {
        let base = ProfitConfig { delta, ..ProfitConfig::new(Sgd { lr: 1e-2, ..Sgd::default() }, main) };
        let clipped = ProfitConfig { max_grad_norm: Some(max_norm), ..base };
        let mut pa = tensors(h, &SHAPES, &[p0.clone(), p1.clone()]);
        let mut pb = tensors(h, &SHAPES, &[p0, p1]);
        let mut a =
            Profit::<H::B>::new(clipped, &pa.iter().collect::<Vec<_>>()).map_err(|e| fail(e.to_string()))?;
        let mut b =
            Profit::<H::B>::new(base, &pb.iter().collect::<Vec<_>>()).map_err(|e| fail(e.to_string()))?;
        for g in &grads {
            let gt = tensors(h, &SHAPES, g);
            let gv = read(h, &gt);
            let norm = dot(&gv, &gv).sqrt();
            let s = (max_norm / (norm + 1e-6)).min(1.0);
            let scaled: Vec<Vec<f64>> = gv.iter().map(|t| t.iter().map(|x| x * s).collect()).collect();
            let ra = step::<H>(&mut a, &mut pa, &gt)?;
            let rb = step::<H>(&mut b, &mut pb, &tensors(h, &SHAPES, &scaled))?;
            prop_assert!((ra.grad_scale - s).abs() <= 1e-12 * s.max(1.0), "scale {} vs {}", ra.grad_scale, s);
            prop_assert_eq!(ra.main.map(|m| m.projected), rb.main.map(|m| m.projected));
        }
        let (va, vb) = (read(h, &pa), read(h, &pb));
        for (x, y) in va.iter().flatten().zip(vb.iter().flatten()) {
            prop_assert!(
                (x - y).abs() <= rel_tol::<H>() * x.abs().max(1.0),
                "clipped run {} vs prescaled {}",
                x,
                y
            );
        }
        Ok(())
    });
}

/// Per-group learning rates and weight decay: with per-tensor projection, two groups follow
/// exactly (bitwise) two optimizers built over each group alone with those rates.
pub fn group_rates_match_separate<H: Harness>(h: &H) {
    let strategy = (
        arb_inner(1e-2),
        1e-3..1e-1f64,
        1e-4..1e-2f64,
        0.0..0.1f64,
        arb_sets(6),
        vals(numel(SHAPES[0])),
        vals(numel(SHAPES[1])),
        arb_delta(),
    );
    run(h.label(), strategy, |(main, lr, ref_lr, wd, grads, p0, p1, delta)| {
        let config = ProfitConfig {
            projection: Projection::PerTensor,
            delta,
            ..ProfitConfig::new(Sgd { lr: 1e-3, ..Sgd::default() }, main)
        };
        let mut both = tensors(h, &SHAPES, &[p0.clone(), p1.clone()]);
        let opts = GroupOptions { lr: Some(lr), ref_lr: Some(ref_lr), weight_decay: Some(wd), frozen: false };
        let groups =
            vec![ParamGroup::new([("w", &both[0])]), ParamGroup::new([("b", &both[1])]).options(opts)];
        let mut grouped = Profit::<H::B>::with_groups(config, groups).map_err(|e| fail(e.to_string()))?;
        let mut w = vec![h.tensor(SHAPES[0], &p0)];
        let mut b = vec![h.tensor(SHAPES[1], &p1)];
        let mut ow = Profit::<H::B>::new(config, &[&w[0]]).map_err(|e| fail(e.to_string()))?;
        let own = ProfitConfig {
            reference: config.reference.with_lr(ref_lr),
            main: with_weight_decay(config.main.with_lr(lr), wd),
            ..config
        };
        let mut ob = Profit::<H::B>::new(own, &[&b[0]]).map_err(|e| fail(e.to_string()))?;
        for g in &grads {
            let gt = tensors(h, &SHAPES, g);
            step::<H>(&mut grouped, &mut both, &gt)?;
            step::<H>(&mut ow, &mut w, &gt[..1])?;
            step::<H>(&mut ob, &mut b, &gt[1..])?;
        }
        prop_assert_eq!(h.values(&both[0]), h.values(&w[0]));
        prop_assert_eq!(h.values(&both[1]), h.values(&b[0]));
        Ok(())
    });
}

fn with_weight_decay(c: InnerConfig, wd: f64) -> InnerConfig {
    match c {
        InnerConfig::Sgd(s) => InnerConfig::Sgd(Sgd { weight_decay: wd, ..s }),
        InnerConfig::Adam(s) => InnerConfig::Adam(Adam { weight_decay: wd, ..s }),
        InnerConfig::AdamW(s) => InnerConfig::AdamW(AdamW { weight_decay: wd, ..s }),
        InnerConfig::RmsProp(s) => InnerConfig::RmsProp(RmsProp { weight_decay: wd, ..s }),
        // No weight decay of its own: the external optimizer applies its own.
        c @ InnerConfig::External(_) => c,
    }
}

/// Restore by subtraction (`theta' - delta`, no anchor kept) with `lr_main = 0`: measures how
/// far the restored weights land from the anchor, in units of the element type's epsilon at the
/// golden README's scale (`|restored - anchor| / (eps * max(1, |anchor|))`); exact restore (anchor mode) is checked bitwise by
/// [`lr_zero_restores_anchor`]. Bounded by a few eps per reference step.
pub fn subtract_restore_error<H: Harness>(h: &H) {
    let worst = std::cell::Cell::new(0.0f64);
    let eps = if crate::tolerance::<H>() < 1e-6 { f64::EPSILON } else { f32::EPSILON as f64 };
    let strategy = (1u64..4, 1e-7..1e-1f64, arb_sets(4), vals(numel(SHAPES[0])), vals(numel(SHAPES[1])));
    run(h.label(), strategy, |(n_ref, lr_ref, grads, p0, p1)| {
        let config = ProfitConfig {
            n_ref,
            restore: profit_core::Restore::Subtract,
            delta: Delta::Accumulated,
            ..ProfitConfig::new(Sgd { lr: lr_ref, ..Sgd::default() }, Sgd { lr: 0.0, ..Sgd::default() })
        };
        let mut params = tensors(h, &SHAPES, &[p0, p1]);
        let refs: Vec<&T<H>> = params.iter().collect();
        let mut opt = Profit::<H::B>::new(config, &refs).map_err(|e| fail(e.to_string()))?;
        let anchor = read(h, &params);
        for i in 0..=n_ref as usize {
            step::<H>(&mut opt, &mut params, &tensors(h, &SHAPES, &grads[i % grads.len()]))?;
        }
        for (a, b) in anchor.iter().flatten().zip(read(h, &params).iter().flatten()) {
            let ulps = (a - b).abs() / (eps * a.abs().max(1.0));
            worst.set(worst.get().max(ulps));
            prop_assert!(ulps <= 8.0 * (n_ref as f64 + 1.0), "restored {} vs anchor {}: {} eps", b, a, ulps);
        }
        Ok(())
    });
    println!(
        "restore=subtract {:<18} worst restore error {:.2} eps * max(1, |anchor|) (anchor mode: 0, bitwise)",
        h.label(),
        worst.get()
    );
}
