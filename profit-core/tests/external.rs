//! The external main optimizer ([`External`], [`Rule::Capture`](profit_core::optim::Rule::Capture)) on the
//! host loops: what it captures, what it leaves in the weights, checkpoints, refusals.

use profit_core::backend::TensorOps;
use profit_core::error::BackendError;
use profit_core::host::{VecBackend, VecTensor};
use profit_core::optim::External;
use profit_core::plain::Plain;
use profit_core::{
    Adam, Delta, InnerConfig, LoadOptions, NonFinitePolicy, Phase, Profit, ProfitConfig, ProfitError,
    Projection, SaveOptions, Sgd,
};

/// Values in [-1, 1) from a 64-bit LCG.
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 11) as f64) / ((1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

fn t32(v: &[f64]) -> VecTensor<f32> {
    VecTensor::from_f64(&[v.len()], v).expect("shape")
}

fn external(lr_ref: f64, lr: f64) -> ProfitConfig {
    ProfitConfig::new(Sgd { lr: lr_ref, ..Default::default() }, External { lr })
}

/// The hand computation of a main call's gradient in f64 from the f32 weights: `delta =
/// theta' - anchor` (exact in f64), `omega = <delta, g>`, `g - omega / |delta|^2 * delta` when
/// `omega < 0`, over all tensors (global projection) or each tensor alone.
fn hand_projection(
    anchor: &[Vec<f32>],
    displaced: &[Vec<f32>],
    g: &[Vec<f32>],
    global: bool,
) -> Vec<Vec<f64>> {
    let delta: Vec<Vec<f64>> = anchor
        .iter()
        .zip(displaced)
        .map(|(a, p)| a.iter().zip(p).map(|(a, p)| *p as f64 - *a as f64).collect())
        .collect();
    let dot = |x: &[f64], y: &[f32]| x.iter().zip(y).map(|(a, b)| a * *b as f64).sum::<f64>();
    let coef = |i: &[usize]| {
        let om: f64 = i.iter().map(|&i| dot(&delta[i], &g[i])).sum();
        let dd: f64 = i.iter().map(|&i| delta[i].iter().map(|d| d * d).sum::<f64>()).sum();
        if om < 0.0 && dd > 0.0 {
            om / dd
        } else {
            0.0
        }
    };
    let all: Vec<usize> = (0..g.len()).collect();
    (0..g.len())
        .map(|i| {
            let c = if global { coef(&all) } else { coef(&[i]) };
            g[i].iter().zip(&delta[i]).map(|(g, d)| *g as f64 - c * d).collect()
        })
        .collect()
}

fn captured(opt: &Profit<VecBackend<f32>>, n: usize) -> Vec<Vec<f32>> {
    (0..n).map(|i| opt.captured_grad(i).expect("captured").data.clone()).collect()
}

/// At a main call the weights end bitwise on the anchor and the captured gradient is the
/// projected one (checked against the f64 hand computation to f32 rounding), for global and
/// per-tensor projection; the per-tensor case also runs the fused reduce-and-apply path
/// (`NonFinitePolicy::Propagate`).
#[test]
fn main_call_restores_and_captures_the_projected_gradient() {
    for (projection, policy) in [
        (Projection::Global, NonFinitePolicy::Error),
        (Projection::PerTensor, NonFinitePolicy::Error),
        (Projection::PerTensor, NonFinitePolicy::Propagate),
    ] {
        let global = projection == Projection::Global;
        let config = ProfitConfig { projection, non_finite: policy, ..external(1e-2, 1e-1) };
        let sizes = [37usize, 5];
        let mut w: Vec<VecTensor<f32>> =
            sizes.iter().enumerate().map(|(i, &n)| t32(&values(n, i as u64))).collect();
        let w0: Vec<Vec<f32>> = w.iter().map(|t| t.data.clone()).collect();
        let mut opt = Profit::<VecBackend<f32>>::new(config, &w.iter().collect::<Vec<_>>()).unwrap();
        let g1: Vec<VecTensor<f32>> =
            sizes.iter().enumerate().map(|(i, &n)| t32(&values(n, 10 + i as u64))).collect();
        let r = opt.step(&mut w.iter_mut().collect::<Vec<_>>(), &g1.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(r.phase, Phase::Reference);
        // A reference call leaves the captured gradient alone (zero since the build).
        assert!(captured(&opt, 2).iter().flatten().all(|x| *x == 0.0));
        let displaced: Vec<Vec<f32>> = w.iter().map(|t| t.data.clone()).collect();
        // g2 = g1 + noise: <delta, g2> < 0 (delta = -lr_ref * g1), so the projection fires.
        let g2: Vec<VecTensor<f32>> = g1
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let noise = values(g.data.len(), 20 + i as u64);
                t32(&g.data.iter().zip(noise).map(|(g, e)| *g as f64 + 0.5 * e).collect::<Vec<_>>())
            })
            .collect();
        let r = opt.step(&mut w.iter_mut().collect::<Vec<_>>(), &g2.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(r.phase, Phase::Main);
        assert!(r.main.unwrap().projected, "{projection:?}");
        for (t, a) in w.iter().zip(&w0) {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&t.data), bits(a), "restored to the anchor, {projection:?}");
        }
        let g2v: Vec<Vec<f32>> = g2.iter().map(|t| t.data.clone()).collect();
        let want = hand_projection(&w0, &displaced, &g2v, global);
        let got = captured(&opt, 2);
        let mut changed = 0.0f64;
        for i in 0..2 {
            for (j, (&c, &h)) in got[i].iter().zip(&want[i]).enumerate() {
                // f32 math: `g - c * delta` rounds g, c, the product and the difference,
                // each within eps/2 of the operands' size.
                let g = g2v[i][j] as f64;
                let tol = 4.0 * f32::EPSILON as f64 * (g.abs() + (g - h).abs());
                assert!((c as f64 - h).abs() <= tol, "{projection:?} tensor {i}[{j}]: {c} vs {h}");
                changed = changed.max((g - h).abs());
            }
        }
        // The projection changed the gradient by far more than the tolerance.
        assert!(changed > 1e-2, "{projection:?}: {changed}");
    }
}

/// Warm-up calls capture the clipped gradient `s * g` and leave the weights bitwise as they
/// are (negative zeros included); skipped calls change nothing.
#[test]
fn warmup_captures_the_clipped_gradient_and_leaves_the_weights() {
    let config = ProfitConfig {
        warmup_steps: 3,
        max_grad_norm: Some(0.5),
        non_finite: NonFinitePolicy::Skip,
        ..external(1e-3, 1e-2)
    };
    let mut wv = values(9, 3);
    wv[0] = -0.0;
    wv[1] = 0.0;
    let mut w = t32(&wv);
    let before = w.clone();
    let mut opt = Profit::<VecBackend<f32>>::new(config, &[&w]).unwrap();
    let g = t32(&values(9, 4));
    let r = opt.step(&mut [&mut w], &[&g]).unwrap();
    assert_eq!(r.phase, Phase::Warmup);
    assert!(r.grad_scale < 1.0, "clipping must act: {}", r.grad_scale);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&w.data), bits(&before.data));
    let s = r.grad_scale as f32;
    let want: Vec<f32> = g.data.iter().map(|g| s * g).collect();
    assert_eq!(bits(&opt.captured_grad(0).unwrap().data), bits(&want));
    // A non-finite gradient is skipped: the capture keeps the previous call's gradient.
    let mut bad = g.clone();
    bad.data[2] = f32::NAN;
    let r = opt.step(&mut [&mut w], &[&bad]).unwrap();
    assert_eq!(r.phase, Phase::Skipped);
    assert_eq!(bits(&opt.captured_grad(0).unwrap().data), bits(&want));
    assert_eq!(bits(&w.data), bits(&before.data));
    assert_eq!(opt.calls(), 1);
}

/// The external optimizer only as the main one: refused as reference and alone in `Plain`;
/// its learning rate is validated; the capture slot counts in PROFIT's overhead.
#[test]
fn external_is_refused_outside_the_main_role() {
    let w = t32(&values(4, 1));
    let as_ref = ProfitConfig::new(External::default(), Adam::default());
    assert!(matches!(as_ref.validate(), Err(ProfitError::InvalidConfig(_))));
    assert!(matches!(Profit::<VecBackend<f32>>::new(as_ref, &[&w]), Err(ProfitError::InvalidConfig(_))));
    assert!(matches!(
        Plain::<VecBackend<f32>>::new(External::default().into(), &[&w]),
        Err(ProfitError::InvalidConfig(_))
    ));
    let bad_lr = external(1e-3, -1.0);
    assert!(matches!(bad_lr.validate(), Err(ProfitError::InvalidHyperparameter { name: "lr", .. })));
    let opt = Profit::<VecBackend<f32>>::new(external(1e-3, 1.0), &[&w]).unwrap();
    // Anchor + the captured gradient, 4 bytes each per parameter.
    assert_eq!(opt.profit_overhead_bytes(), 4 * 4 * 2);
    assert_eq!(opt.config().main.slot_names(), ["grad"]);
    assert_eq!(opt.config().main.kind(), "external");
    // Other main optimizers capture nothing.
    let adam = Profit::<VecBackend<f32>>::new(ProfitConfig::default(), &[&w]).unwrap();
    assert!(adam.captured_grad(0).is_none());
}

/// A checkpoint of an external-main run (mid-cycle and after a main call) resumes bitwise:
/// same weights, same captured gradients, same reports; the configuration round-trips through
/// the file and through serde as `{"kind": "external", "lr": ...}`; loading it into a run with
/// another main optimizer is refused and changes nothing.
#[test]
fn checkpoint_round_trip() {
    let json = serde_json::to_string(&InnerConfig::from(External { lr: 0.25 })).unwrap();
    assert_eq!(json, r#"{"kind":"external","lr":0.25}"#);
    let back: InnerConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, InnerConfig::External(External { lr: 0.25 }));
    for delta in [Delta::Realized, Delta::Accumulated] {
        let config = ProfitConfig { delta, n_ref: 2, warmup_steps: 1, ..external(1e-2, 1e-1) };
        let grads: Vec<VecTensor<f32>> = (0..9).map(|k| t32(&values(6, 100 + k))).collect();
        for split in [2usize, 4, 5] {
            let mut w = t32(&values(6, 7));
            let mut a = Profit::<VecBackend<f32>>::new(config, &[&w]).unwrap();
            for g in &grads[..split] {
                a.step(&mut [&mut w], &[g]).unwrap();
            }
            let bytes = a.save_checkpoint(&[&w], SaveOptions::default()).unwrap();
            let mut w2 = w.clone();
            let mut b = Profit::<VecBackend<f32>>::new(config, &[&w2]).unwrap();
            b.load_checkpoint(&bytes, &mut [&mut w2], LoadOptions::default()).unwrap();
            assert_eq!(b.config(), a.config());
            assert_eq!(b.captured_grad(0), a.captured_grad(0));
            // Another main optimizer: refused, nothing changed.
            let mut w3 = w.clone();
            let mut c = Profit::<VecBackend<f32>>::new(
                ProfitConfig { main: Adam { lr: 1e-1, ..Default::default() }.into(), ..config },
                &[&w3],
            )
            .unwrap();
            let err = c.load_checkpoint(&bytes, &mut [&mut w3], LoadOptions::default().adopt_config());
            assert!(matches!(err, Err(ProfitError::Checkpoint(_))), "{err:?}");
            assert_eq!(c.calls(), 0);
            assert_eq!(w3, w);
            for g in &grads[split..] {
                let ra = a.step(&mut [&mut w], &[g]).unwrap();
                let rb = b.step(&mut [&mut w2], &[g]).unwrap();
                assert_eq!(ra, rb);
                assert_eq!(w, w2);
                assert_eq!(a.captured_grad(0), b.captured_grad(0));
            }
        }
    }
}

/// A backend with only the four required methods: every pass goes through the provided slow
/// path (host copies).
struct Slow;

impl TensorOps for Slow {
    type Elem = f32;
    type Tensor = VecTensor<f32>;
    const NAME: &'static str = "slow";
    fn shape(t: &VecTensor<f32>) -> Vec<usize> {
        t.shape.clone()
    }
    fn zeros_like(t: &VecTensor<f32>) -> Result<VecTensor<f32>, BackendError> {
        Ok(VecTensor { data: vec![0.0; t.data.len()], shape: t.shape.clone() })
    }
    fn read(t: &VecTensor<f32>, out: &mut [f32]) -> Result<(), BackendError> {
        out.copy_from_slice(&t.data);
        Ok(())
    }
    fn write(t: &mut VecTensor<f32>, src: &[f32]) -> Result<(), BackendError> {
        t.data.copy_from_slice(src);
        Ok(())
    }
}

/// The slow path (host copies) and the fused host loops capture bitwise the same gradients
/// and leave bitwise the same weights, over warm-up, reference and main calls.
#[test]
fn slow_path_equals_fused_loops() {
    for projection in [Projection::Global, Projection::PerTensor] {
        let config =
            ProfitConfig { projection, warmup_steps: 1, max_grad_norm: Some(2.0), ..external(1e-2, 1e-1) };
        let mut wf = vec![t32(&values(40, 1)), t32(&values(3, 2))];
        let mut ws = wf.clone();
        let mut f = Profit::<VecBackend<f32>>::new(config, &wf.iter().collect::<Vec<_>>()).unwrap();
        let mut s = Profit::<Slow>::new(config, &ws.iter().collect::<Vec<_>>()).unwrap();
        for k in 0..7u64 {
            let g = [t32(&values(40, 50 + k)), t32(&values(3, 60 + k))];
            let gr: Vec<&VecTensor<f32>> = g.iter().collect();
            let rf = f.step(&mut wf.iter_mut().collect::<Vec<_>>(), &gr).unwrap();
            let rs = s.step(&mut ws.iter_mut().collect::<Vec<_>>(), &gr).unwrap();
            assert_eq!(rf, rs);
            assert_eq!(wf, ws);
            for i in 0..2 {
                assert_eq!(f.captured_grad(i), s.captured_grad(i), "{projection:?} call {k}");
            }
        }
    }
}
