//! Calls in which some tensors have no gradient (`Profit::step_partial`, `torch.optim`'s
//! `grad is None`): such a tensor sits the call out (no step, state and step counts unchanged,
//! nothing in the sums), but is anchored at a cycle's start and restored at its main call.

use approx::assert_abs_diff_eq;
use profit_core::host::{VecBackend, VecTensor};
use profit_core::{Adam, Delta, LoadOptions, Phase, Profit, ProfitConfig, Restore, SaveOptions, Sgd};

type B = VecBackend<f64>;

fn t(v: &[f64]) -> VecTensor<f64> {
    VecTensor::new(&[v.len()], v.to_vec()).expect("shape")
}

fn grad(call: usize, n: usize, seed: f64) -> VecTensor<f64> {
    t(&(0..n).map(|i| ((call * 7 + i * 3) as f64 * 0.37 + seed).sin()).collect::<Vec<_>>())
}

fn config(delta: Delta, restore: Restore) -> ProfitConfig {
    let mut c =
        ProfitConfig::new(Sgd { lr: 0.05, ..Default::default() }, Adam { lr: 0.01, ..Default::default() });
    (c.delta, c.restore, c.n_ref) = (delta, restore, 2);
    c
}

fn modes() -> [(Delta, Restore); 3] {
    [
        (Delta::Realized, Restore::Anchor),
        (Delta::Accumulated, Restore::Anchor),
        (Delta::Accumulated, Restore::Subtract),
    ]
}

/// A tensor that never has a gradient never changes, and the others follow exactly the run
/// of an optimizer built over them alone.
#[test]
fn a_tensor_without_gradients_is_left_out_entirely() {
    for (delta, restore) in modes() {
        let (mut w, mut b) = (t(&[0.5, -0.25, 1.0]), t(&[2.0, -3.0]));
        let mut w_alone = w.clone();
        let b0 = b.clone();
        let mut opt = Profit::<B>::with_names(config(delta, restore), &[("w", &w), ("b", &b)]).unwrap();
        let mut alone = Profit::<B>::with_names(config(delta, restore), &[("w", &w_alone)]).unwrap();
        for call in 0..12 {
            let g = grad(call, 3, 0.1);
            let r = opt.step_partial(&mut [&mut w, &mut b], &[Some(&g), None]).unwrap();
            let s = alone.step(&mut [&mut w_alone], &[&g]).unwrap();
            assert_eq!(r.phase, s.phase);
            assert_eq!(r.main.map(|m| (m.omega, m.projected)), s.main.map(|m| (m.omega, m.projected)));
            assert_eq!(w, w_alone, "{delta:?} {restore:?} call {call}");
            assert_eq!(b, b0, "{delta:?} {restore:?} call {call}");
        }
        let steps: Vec<_> = opt.state().unwrap().meta.params.iter().map(|p| p.steps).collect();
        assert_eq!((steps[0].reference, steps[0].main), (8, 4));
        assert_eq!((steps[1].reference, steps[1].main), (0, 0));
    }
}

/// A tensor with gradients at the reference calls but none at the main call goes back to its
/// anchor (exactly, with the anchor kept), and its main optimizer state does not move.
#[test]
fn a_tensor_missing_at_the_main_call_is_restored() {
    for (delta, restore) in modes() {
        let (mut w, mut b) = (t(&[0.5, -0.25, 1.0]), t(&[2.0, -3.0]));
        let mut opt = Profit::<B>::with_names(config(delta, restore), &[("w", &w), ("b", &b)]).unwrap();
        let start = b.clone();
        for call in 0..3 {
            let (gw, gb) = (grad(call, 3, 0.1), grad(call, 2, 0.7));
            let gb = (call < 2).then_some(&gb);
            let r = opt.step_partial(&mut [&mut w, &mut b], &[Some(&gw), gb]).unwrap();
            if call < 2 {
                assert_eq!(r.phase, Phase::Reference);
                assert_ne!(b, start, "the reference steps move b");
            } else {
                assert_eq!(r.phase, Phase::Main);
            }
        }
        match restore {
            Restore::Anchor => assert_eq!(b, start, "{delta:?}"),
            Restore::Subtract => {
                assert_abs_diff_eq!(b.data.as_slice(), start.data.as_slice(), epsilon = 1e-15)
            }
        }
        let state = opt.state().unwrap();
        for buf in state.buffers.iter().filter(|b| b.key.starts_with("b/main/")) {
            assert!(buf.tensor.data.iter().all(|&x| x == 0.0), "{} moved", buf.key);
        }
        let b_steps = state.meta.params[1].steps;
        assert_eq!((b_steps.reference, b_steps.main), (2, 0));
    }
}

/// Per-tensor step counts drive each tensor's bias correction, survive a checkpoint, and a
/// resumed run continues bitwise.
#[test]
fn per_tensor_steps_resume_bitwise() {
    let present = |call: usize| [Some(true), Some(call % 5 != 2)];
    let run = |calls: std::ops::Range<usize>,
               opt: &mut Profit<B>,
               w: &mut VecTensor<f64>,
               b: &mut VecTensor<f64>| {
        for call in calls {
            let (gw, gb) = (grad(call, 3, 0.1), grad(call, 2, 0.7));
            let p = present(call);
            let grads = [p[0].map(|_| &gw), p[1].filter(|&x| x).map(|_| &gb)];
            opt.step_partial(&mut [&mut *w, &mut *b], &grads).unwrap();
        }
    };
    let c = config(Delta::Realized, Restore::Anchor);
    let (mut w, mut b) = (t(&[0.5, -0.25, 1.0]), t(&[2.0, -3.0]));
    let mut opt = Profit::<B>::with_names(c, &[("w", &w), ("b", &b)]).unwrap();
    run(0..10, &mut opt, &mut w, &mut b);
    let bytes = opt.save_checkpoint(&[&w, &b], SaveOptions::with_params()).unwrap();
    let (mut w2, mut b2) = (w.clone(), b.clone());
    run(10..25, &mut opt, &mut w, &mut b);

    let mut resumed = Profit::<B>::with_names(c, &[("w", &w2), ("b", &b2)]).unwrap();
    resumed.load_checkpoint(&bytes, &mut [&mut w2, &mut b2], LoadOptions::default()).unwrap();
    let steps = |o: &Profit<B>| o.state().unwrap().meta.params.iter().map(|p| p.steps).collect::<Vec<_>>();
    let loaded = steps(&resumed);
    assert_ne!(loaded[0], loaded[1], "b sat calls out");
    run(10..25, &mut resumed, &mut w2, &mut b2);
    assert_eq!((w, b), (w2, b2));
    assert_eq!(steps(&opt), steps(&resumed));
}

/// A missing gradient where the tensor is frozen, or a gradient of the wrong shape, is
/// checked before anything changes.
#[test]
fn a_bad_gradient_beside_a_missing_one_changes_nothing() {
    let (mut w, mut b) = (t(&[0.5, -0.25, 1.0]), t(&[2.0, -3.0]));
    let mut opt = Profit::<B>::with_names(ProfitConfig::default(), &[("w", &w), ("b", &b)]).unwrap();
    let wrong = t(&[1.0]);
    let before = (w.clone(), b.clone());
    assert!(opt.step_partial(&mut [&mut w, &mut b], &[None, Some(&wrong)]).is_err());
    assert_eq!((w, b), before);
    assert_eq!(opt.main_steps() + opt.reference_steps(), 0);
}
