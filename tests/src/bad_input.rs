//! Bad input: every case returns its typed error and changes nothing, at every position of
//! the cycle. "Nothing" is checked strictly: after the refused call the optimizer continues in
//! lockstep, bitwise, with a twin that never saw it.

use profit_core::backend::TensorOps;
use profit_core::{
    Adam, AdamW, Delta, InnerConfig, NonFinitePolicy, Phase, Profit, ProfitConfig, ProfitError, RmsProp, Sgd,
};

use crate::Harness;

type T<H> = <<H as Harness>::B as TensorOps>::Tensor;

const SHAPES: [&[usize]; 2] = [&[3, 2], &[2]];

fn data(seed: usize, n: usize) -> Vec<f64> {
    (0..n).map(|i| (((seed * 31 + i * 17) % 23) as f64 - 11.0) / 7.0).collect()
}

fn set<H: Harness>(h: &H, seed: usize) -> Vec<T<H>> {
    SHAPES.iter().enumerate().map(|(i, s)| h.tensor(s, &data(seed + i, s.iter().product()))).collect()
}

fn config(main: InnerConfig, n_ref: u64, warmup: u64) -> ProfitConfig {
    ProfitConfig {
        n_ref,
        warmup_steps: warmup,
        ..ProfitConfig::new(Sgd { lr: 0.05, momentum: 0.5, ..Sgd::default() }, main)
    }
}

fn mains() -> Vec<InnerConfig> {
    vec![
        Sgd { lr: 0.1, momentum: 0.9, nesterov: true, ..Sgd::default() }.into(),
        Adam { lr: 0.01, amsgrad: true, ..Adam::default() }.into(),
        AdamW { lr: 0.01, ..AdamW::default() }.into(),
        RmsProp { lr: 0.01, centered: true, momentum: 0.5, ..RmsProp::default() }.into(),
    ]
}

fn good_step<H: Harness>(h: &H, opt: &mut Profit<H::B>, params: &mut [T<H>], seed: usize) -> Phase {
    let g = set(h, seed);
    let mut p: Vec<&mut T<H>> = params.iter_mut().collect();
    let gr: Vec<&T<H>> = g.iter().collect();
    opt.step(&mut p, &gr).unwrap_or_else(|e| panic!("good step failed: {e}")).phase
}

fn read<H: Harness>(h: &H, ts: &[T<H>]) -> Vec<Vec<f64>> {
    ts.iter().map(|t| h.values(t)).collect()
}

type BadCall<H> = fn(&H, &mut Profit<<H as Harness>::B>, &mut [T<H>]) -> Result<Phase, ProfitError>;

fn with_nan<H: Harness>(h: &H, v: f64) -> Vec<T<H>> {
    let mut d1 = data(5, 2);
    d1[1] = v;
    vec![h.tensor(SHAPES[0], &data(4, 6)), h.tensor(SHAPES[1], &d1)]
}

/// A bad call, its description, and the error it must return.
type Case<H> = (&'static str, BadCall<H>, fn(&ProfitError) -> bool);

fn calls<H: Harness>() -> Vec<Case<H>> {
    vec![
        (
            "too few parameters",
            |h, o, p| {
                let g = set(h, 9);
                o.step(&mut [&mut p[0]], &[&g[0], &g[1]]).map(|r| r.phase)
            },
            |e| matches!(e, ProfitError::CountMismatch { what: "parameter", expected: 2, got: 1 }),
        ),
        (
            "too few gradients",
            |h, o, p| {
                let g = set(h, 9);
                let (a, b) = p.split_at_mut(1);
                o.step(&mut [&mut a[0], &mut b[0]], &[&g[0]]).map(|r| r.phase)
            },
            |e| matches!(e, ProfitError::CountMismatch { what: "gradient", expected: 2, got: 1 }),
        ),
        (
            "gradient of the wrong shape",
            |h, o, p| {
                let g = [h.tensor(SHAPES[0], &data(1, 6)), h.tensor(&[3], &data(2, 3))];
                let (a, b) = p.split_at_mut(1);
                o.step(&mut [&mut a[0], &mut b[0]], &[&g[0], &g[1]]).map(|r| r.phase)
            },
            |e| matches!(e, ProfitError::ShapeMismatch { what: "gradient", .. }),
        ),
        (
            "parameters swapped (shape mismatch)",
            |h, o, p| {
                let g = set(h, 9);
                let (a, b) = p.split_at_mut(1);
                o.step(&mut [&mut b[0], &mut a[0]], &[&g[0], &g[1]]).map(|r| r.phase)
            },
            |e| matches!(e, ProfitError::ShapeMismatch { what: "parameter", .. }),
        ),
        (
            "NaN gradient",
            |h, o, p| {
                let g = with_nan(h, f64::NAN);
                let (a, b) = p.split_at_mut(1);
                o.step(&mut [&mut a[0], &mut b[0]], &[&g[0], &g[1]]).map(|r| r.phase)
            },
            |e| matches!(e, ProfitError::NonFiniteGradient { name } if name == "b"),
        ),
        (
            "infinite gradient",
            |h, o, p| {
                let g = with_nan(h, f64::NEG_INFINITY);
                let (a, b) = p.split_at_mut(1);
                o.step(&mut [&mut a[0], &mut b[0]], &[&g[0], &g[1]]).map(|r| r.phase)
            },
            |e| matches!(e, ProfitError::NonFiniteGradient { .. }),
        ),
    ]
}

fn build<H: Harness>(h: &H, cfg: ProfitConfig) -> (Profit<H::B>, Vec<T<H>>) {
    let params = set(h, 0);
    let opt = Profit::<H::B>::with_names(cfg, &[("w", &params[0]), ("b", &params[1])]).expect("valid config");
    (opt, params)
}

/// Every bad call, at every cycle position, for every main optimizer kind; then the bad
/// hyperparameters and the skip policy.
pub fn all<H: Harness>(h: &H) {
    let mut checked = 0;
    for (k, main) in mains().into_iter().enumerate() {
        for (n_ref, warmup) in [(1, 0), (2, 1)] {
            // Both delta modes, alternating over the main optimizers.
            let delta = if k % 2 == 0 { Delta::Realized } else { Delta::Accumulated };
            let cfg = ProfitConfig { delta, ..config(main, n_ref, warmup) };
            for prefix in 0..(warmup + 2 * (n_ref + 1)) as usize {
                for (what, bad, is_expected) in calls::<H>() {
                    let (mut opt, mut params) = build(h, cfg);
                    let (mut twin, mut twin_params) = build(h, cfg);
                    for s in 0..prefix {
                        good_step(h, &mut opt, &mut params, 100 + s);
                        good_step(h, &mut twin, &mut twin_params, 100 + s);
                    }
                    let before = read(h, &params);
                    let phase = opt.next_phase();
                    match bad(h, &mut opt, &mut params) {
                        Err(e) if is_expected(&e) => {}
                        other => panic!("{}: {what} at {phase:?} call {prefix}: got {other:?}", h.label()),
                    }
                    assert_eq!(read(h, &params), before, "{}: {what} changed the parameters", h.label());
                    assert_eq!(opt.calls(), prefix as u64, "{what} was counted");
                    for s in 0..(n_ref as usize + 2) {
                        let a = good_step(h, &mut opt, &mut params, 200 + s);
                        let b = good_step(h, &mut twin, &mut twin_params, 200 + s);
                        assert_eq!(a, b);
                        assert_eq!(
                            read(h, &params),
                            read(h, &twin_params),
                            "{}: after {what} at {phase:?} the run diverged from its twin (hidden state changed)",
                            h.label()
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    skip_policy(h);
    bad_hyperparameters(h);
    hostile_numerics(h);
    println!(
        "bad input {:<18} {checked} refused calls checked, plus skip policy and hyperparameters",
        h.label()
    );
}

/// `NonFinitePolicy::Skip`: the call is counted as skipped and changes nothing.
fn skip_policy<H: Harness>(h: &H) {
    let cfg = ProfitConfig { non_finite: NonFinitePolicy::Skip, ..config(mains()[1], 1, 0) };
    let (mut opt, mut params) = build(h, cfg);
    let (mut twin, mut twin_params) = build(h, cfg);
    for s in 0..5 {
        good_step(h, &mut opt, &mut params, s);
        good_step(h, &mut twin, &mut twin_params, s);
        let before = read(h, &params);
        let g = with_nan(h, f64::NAN);
        let (a, b) = params.split_at_mut(1);
        let r = opt.step(&mut [&mut a[0], &mut b[0]], &[&g[0], &g[1]]).expect("skip policy returns Ok");
        assert_eq!(r.phase, Phase::Skipped);
        assert_eq!(read(h, &params), before);
        assert_eq!(opt.skipped(), s as u64 + 1);
        assert_eq!(opt.calls(), twin.calls());
    }
    assert_eq!(read(h, &params), read(h, &twin_params));
}

fn bad_hyperparameters<H: Harness>(h: &H) {
    let params = set(h, 0);
    let ok_ref = InnerConfig::from(Sgd { lr: 1e-3, ..Sgd::default() });
    let bad_configs: Vec<(&str, ProfitConfig)> = vec![
        ("negative lr", ProfitConfig::new(ok_ref, Sgd { lr: -0.1, ..Sgd::default() })),
        ("NaN lr", ProfitConfig::new(ok_ref, Adam { lr: f64::NAN, ..Adam::default() })),
        ("negative reference lr", ProfitConfig::new(Sgd { lr: -1e-3, ..Sgd::default() }, Adam::default())),
        ("beta1 = 1", ProfitConfig::new(ok_ref, Adam { betas: (1.0, 0.999), ..Adam::default() })),
        ("beta2 < 0", ProfitConfig::new(ok_ref, AdamW { betas: (0.9, -0.1), ..AdamW::default() })),
        ("negative eps", ProfitConfig::new(ok_ref, Adam { eps: -1e-8, ..Adam::default() })),
        (
            "negative weight decay",
            ProfitConfig::new(ok_ref, AdamW { weight_decay: -0.1, ..AdamW::default() }),
        ),
        ("negative momentum", ProfitConfig::new(ok_ref, Sgd { momentum: -0.9, ..Sgd::default() })),
        ("nesterov without momentum", ProfitConfig::new(ok_ref, Sgd { nesterov: true, ..Sgd::default() })),
        (
            "nesterov with dampening",
            ProfitConfig::new(
                ok_ref,
                Sgd { nesterov: true, momentum: 0.9, dampening: 0.1, ..Sgd::default() },
            ),
        ),
        ("negative alpha", ProfitConfig::new(ok_ref, RmsProp { alpha: -0.5, ..RmsProp::default() })),
        ("n_ref = 0", ProfitConfig { n_ref: 0, ..ProfitConfig::new(ok_ref, Adam::default()) }),
        (
            "realized delta with restore by subtraction",
            ProfitConfig {
                restore: profit_core::Restore::Subtract,
                ..ProfitConfig::new(ok_ref, Adam::default())
            },
        ),
        (
            "max_grad_norm = 0",
            ProfitConfig { max_grad_norm: Some(0.0), ..ProfitConfig::new(ok_ref, Adam::default()) },
        ),
    ];
    for (what, cfg) in bad_configs {
        match Profit::<H::B>::new(cfg, &[&params[0], &params[1]]) {
            Err(ProfitError::InvalidHyperparameter { .. } | ProfitError::InvalidConfig(_)) => {}
            Err(e) => panic!("{what}: wrong error {e}"),
            Ok(_) => panic!("{}: {what} was accepted", h.label()),
        }
    }
    let cfg = config(mains()[0], 1, 0);
    assert!(matches!(
        Profit::<H::B>::with_names(cfg, &[("w", &params[0]), ("w", &params[1])]),
        Err(ProfitError::DuplicateName(_))
    ));
    assert!(matches!(Profit::<H::B>::new(cfg, &[]), Err(ProfitError::NoParameters)));
    let (mut opt, _) = build(h, cfg);
    let (lr, ref_lr) = (opt.lr(), opt.ref_lr());
    assert!(opt.set_lr(-1.0).is_err());
    assert!(opt.set_lr(f64::INFINITY).is_err());
    // A huge but finite rate is blamed on `lr`, the value the caller passed.
    match opt.set_lr(1e308) {
        Err(ProfitError::InvalidHyperparameter { name: "lr", value, .. }) => assert_eq!(value, 1e308),
        other => panic!("set_lr(1e308): {other:?}"),
    }
    assert!(opt.set_ref_lr(-1.0).is_err());
    assert!(matches!(opt.set_group_lr(3, 0.1), Err(ProfitError::NoSuchGroup { index: 3, count: 1 })));
    assert_eq!((opt.lr(), opt.ref_lr()), (lr, ref_lr), "a refused learning rate changed the rates");
}

/// Finite input that once produced NaN weights: a main gradient far larger than the reference
/// displacement (`|g| / |delta|` beyond the f32 range: `lr_ref` 1e-8 with a main gradient of
/// 1e30, `lr_ref` 1e-40 with 0.1). Each call either succeeds with finite weights or is refused
/// with a typed error that changes nothing; in both delta modes and with both projections.
/// Here the projected gradient is representable, so every call must in fact succeed.
fn hostile_numerics<H: Harness>(h: &H) {
    let mut checked = 0;
    let mut refused = 0;
    for (lr_ref, g_ref, g_main) in
        [(1e-8, 0.1, 1e30), (1e-40, 0.1, 0.1), (1e-30, 1e-3, 1e30), (1e-8, 1e30, 1e30)]
    {
        for delta in [Delta::Realized, Delta::Accumulated] {
            for projection in [profit_core::Projection::Global, profit_core::Projection::PerTensor] {
                let cfg = ProfitConfig {
                    delta,
                    projection,
                    ..ProfitConfig::new(
                        Sgd { lr: lr_ref, ..Sgd::default() },
                        Sgd { lr: 1e-3, ..Sgd::default() },
                    )
                };
                let (mut opt, mut params) = build(h, cfg);
                let grads = |v: f64| -> Vec<T<H>> {
                    SHAPES.iter().map(|s| h.tensor(s, &vec![v; s.iter().product()])).collect()
                };
                for (g, expect_main) in [(grads(g_ref), false), (grads(g_main), true)] {
                    let before = read(h, &params);
                    let calls = opt.calls();
                    let (a, b) = params.split_at_mut(1);
                    match opt.step(&mut [&mut a[0], &mut b[0]], &[&g[0], &g[1]]) {
                        Ok(r) => {
                            assert_eq!(r.phase == Phase::Main, expect_main);
                            let after = read(h, &params);
                            assert!(
                                after.iter().flatten().all(|x| x.is_finite()),
                                "{}: lr_ref {lr_ref:e}, g {g_ref:e} then {g_main:e}, {delta:?} {projection:?}: weights not finite: {after:?}",
                                h.label()
                            );
                        }
                        Err(ProfitError::ProjectionOverflow { .. }) => {
                            assert_eq!(
                                read(h, &params),
                                before,
                                "{}: a refused step changed the weights",
                                h.label()
                            );
                            assert_eq!(opt.calls(), calls);
                            refused += 1;
                        }
                        Err(e) => panic!("{}: lr_ref {lr_ref:e}: unexpected error {e}", h.label()),
                    }
                    checked += 1;
                }
            }
        }
    }
    println!("hostile numerics {:<18} {checked} calls: finite weights, {refused} refused", h.label());
    assert_eq!(refused, 0, "{}: representable projections were refused", h.label());
}
