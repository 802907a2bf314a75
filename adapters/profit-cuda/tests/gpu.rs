//! GPU checks against the host backend (profit-ndarray): every test prints `SKIPPED` and
//! passes where no CUDA driver or device is present.
//!
//! The apply kernels mirror profit-core's host loops operation for operation, so plain
//! optimizer steps and fused passes must match the host **bitwise**; reductions are summed in
//! another (fixed) order, so PROFIT trajectories, whose projection coefficient comes from them,
//! match to rounding.

use ndarray::{ArrayD, IxDyn};
use profit_core::backend::{Batch, DeltaView, Grads, Kernel, Pass, Reduction, TensorOps, TensorState};
use profit_core::element::Element;
use profit_core::host::reduce_slices;
use profit_core::host::DeltaSlices;
use profit_core::plain::Plain;
use profit_core::{
    Adam, AdamW, Delta, InnerConfig, NonFinitePolicy, Profit, ProfitConfig, Projection, Restore, RmsProp, Sgd,
};
use profit_cuda::{Cuda, CudaBackend, CudaElement, CudaTensor};
use profit_ndarray::NdArray;

/// The GPU, or `None` (the test prints `SKIPPED` and passes). With `PROFIT_REQUIRE_GPU=1` (as on
/// a GPU machine) a missing GPU fails the test instead.
fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(g) => {
            println!("GPU: {} ({} SMs, PTX {:?})", g.device_name(), g.sm_count(), g.ptx_source());
            Some(g)
        }
        Err(e) if std::env::var("PROFIT_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("PROFIT_REQUIRE_GPU=1 but no usable GPU: {e}")
        }
        Err(e) => {
            println!("SKIPPED: no CUDA device: {e}");
            None
        }
    }
}

/// Deterministic values in [-1, 1).
fn data(seed: u64, n: usize) -> Vec<f64> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

fn cast<E: Element>(v: &[f64]) -> Vec<E> {
    v.iter().map(|&x| E::from_f64(x)).collect()
}

fn host<E: Element>(shape: &[usize], v: &[f64]) -> ArrayD<E> {
    ArrayD::from_shape_vec(IxDyn(shape), cast(v)).expect("shape")
}

fn dev<E: CudaElement>(g: &CudaBackend, shape: &[usize], v: &[f64]) -> CudaTensor<E> {
    g.upload(shape, &cast::<E>(v)).expect("upload")
}

/// Bit patterns, every NaN counted as one (payloads and signs of NaN differ between CPUs and GPUs).
fn bits<E: Element>(v: &[E]) -> Vec<u64> {
    v.iter().map(|x| if x.as_f64().is_nan() { u64::MAX } else { x.as_f64().to_bits() }).collect()
}

fn assert_same<E: CudaElement>(what: &str, d: &CudaTensor<E>, h: &ArrayD<E>) {
    let dv = d.to_vec().expect("download");
    let hv = h.as_slice().expect("contiguous");
    if bits(&dv) != bits(hv) {
        let (db, hb) = (bits(&dv), bits(hv));
        let i = (0..dv.len()).find(|&i| db[i] != hb[i]).unwrap_or(0);
        panic!("{what}: differs from the host at element {i} of {}: {:?} vs {:?}", dv.len(), dv[i], hv[i]);
    }
}

fn assert_close<E: CudaElement>(what: &str, d: &CudaTensor<E>, h: &ArrayD<E>, tol: f64) {
    let dv = d.to_vec().expect("download");
    for (i, (a, b)) in dv.iter().zip(h.iter()).enumerate() {
        let (a, b) = (a.as_f64(), b.as_f64());
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}: element {i}: {a} vs host {b}");
    }
}

const SHAPES: [&[usize]; 6] = [&[7, 13], &[1], &[3000], &[1024], &[1025], &[3, 4099]];

fn inner_configs() -> Vec<InnerConfig> {
    vec![
        Sgd { lr: 0.1, ..Default::default() }.into(),
        Sgd { lr: 0.05, weight_decay: 0.01, ..Default::default() }.into(),
        Sgd { lr: 0.05, momentum: 0.9, ..Default::default() }.into(),
        Sgd { lr: 0.05, momentum: 0.9, dampening: 0.1, weight_decay: 0.02, ..Default::default() }.into(),
        Sgd { lr: 0.05, momentum: 0.8, nesterov: true, ..Default::default() }.into(),
        Adam { lr: 0.01, ..Default::default() }.into(),
        Adam { lr: 0.01, weight_decay: 0.05, betas: (0.8, 0.99), ..Default::default() }.into(),
        Adam { lr: 0.01, amsgrad: true, ..Default::default() }.into(),
        AdamW { lr: 0.01, ..Default::default() }.into(),
        AdamW { lr: 0.01, amsgrad: true, weight_decay: 0.1, ..Default::default() }.into(),
        RmsProp { lr: 0.01, ..Default::default() }.into(),
        RmsProp { lr: 0.01, centered: true, weight_decay: 0.01, ..Default::default() }.into(),
        RmsProp { lr: 0.01, momentum: 0.9, ..Default::default() }.into(),
        RmsProp { lr: 0.01, momentum: 0.9, centered: true, ..Default::default() }.into(),
    ]
}

fn plain_bitwise<E: CudaElement>(g: &CudaBackend) {
    for (c, inner) in inner_configs().into_iter().enumerate() {
        let init: Vec<Vec<f64>> =
            SHAPES.iter().enumerate().map(|(i, s)| data(i as u64, s.iter().product())).collect();
        let mut hp: Vec<ArrayD<E>> = SHAPES.iter().zip(&init).map(|(s, v)| host(s, v)).collect();
        let mut dp: Vec<CudaTensor<E>> = SHAPES.iter().zip(&init).map(|(s, v)| dev(g, s, v)).collect();
        let mut ho = Plain::<NdArray<E>>::new(inner, &hp.iter().collect::<Vec<_>>()).expect("host optimizer");
        let mut dopt = Plain::<Cuda<E>>::new(inner, &dp.iter().collect::<Vec<_>>()).expect("cuda optimizer");
        for step in 0..4u64 {
            let grads: Vec<Vec<f64>> = SHAPES
                .iter()
                .enumerate()
                .map(|(i, s)| data(100 * step + i as u64 + 7, s.iter().product()))
                .collect();
            let hg: Vec<ArrayD<E>> = SHAPES.iter().zip(&grads).map(|(s, v)| host(s, v)).collect();
            let dg: Vec<CudaTensor<E>> = SHAPES.iter().zip(&grads).map(|(s, v)| dev(g, s, v)).collect();
            ho.step(&mut hp.iter_mut().collect::<Vec<_>>(), &hg.iter().collect::<Vec<_>>())
                .expect("host step");
            dopt.step(&mut dp.iter_mut().collect::<Vec<_>>(), &dg.iter().collect::<Vec<_>>())
                .expect("cuda step");
            for (i, (d, h)) in dp.iter().zip(&hp).enumerate() {
                assert_same(&format!("{} config {c} ({inner:?}) step {step} tensor {i}", E::DTYPE), d, h);
            }
        }
    }
}

#[test]
fn plain_optimizers_match_host_bitwise() {
    let Some(g) = gpu() else { return };
    plain_bitwise::<f32>(&g);
    plain_bitwise::<f64>(&g);
    plain_bitwise::<half::bf16>(&g);
    plain_bitwise::<half::f16>(&g);
}

fn profit_configs() -> Vec<ProfitConfig> {
    let base =
        ProfitConfig::new(Sgd { lr: 1e-3, ..Default::default() }, Adam { lr: 1e-2, ..Default::default() });
    let acc = ProfitConfig { delta: Delta::Accumulated, ..base };
    vec![
        base,
        acc,
        ProfitConfig { projection: Projection::PerTensor, ..base },
        ProfitConfig { projection: Projection::PerTensor, ..acc },
        ProfitConfig { restore: Restore::Subtract, ..acc },
        // Reference steps far below the f32 spacing of the weights: the realized delta is
        // mostly rounding, and the GPU must round it exactly as the host.
        ProfitConfig::new(Sgd { lr: 1e-9, ..Default::default() }, Adam { lr: 1e-2, ..Default::default() }),
        ProfitConfig { n_ref: 2, warmup_steps: 2, ..base },
        ProfitConfig { max_grad_norm: Some(0.5), ..base },
        ProfitConfig::new(
            Sgd { lr: 1e-3, momentum: 0.9, ..Default::default() },
            RmsProp { lr: 1e-2, centered: true, momentum: 0.5, ..Default::default() },
        ),
        ProfitConfig {
            n_ref: 3,
            ..ProfitConfig::new(
                Adam { lr: 1e-4, ..Default::default() },
                AdamW { lr: 1e-2, ..Default::default() },
            )
        },
    ]
}

fn profit_close<E: CudaElement>(g: &CudaBackend, tol: f64) {
    for (c, config) in profit_configs().into_iter().enumerate() {
        let init: Vec<Vec<f64>> =
            SHAPES.iter().enumerate().map(|(i, s)| data(i as u64 + 50, s.iter().product())).collect();
        let mut hp: Vec<ArrayD<E>> = SHAPES.iter().zip(&init).map(|(s, v)| host(s, v)).collect();
        let mut dp: Vec<CudaTensor<E>> = SHAPES.iter().zip(&init).map(|(s, v)| dev(g, s, v)).collect();
        let mut ho =
            Profit::<NdArray<E>>::new(config, &hp.iter().collect::<Vec<_>>()).expect("host optimizer");
        let mut dopt =
            Profit::<Cuda<E>>::new(config, &dp.iter().collect::<Vec<_>>()).expect("cuda optimizer");
        for call in 0..10u64 {
            // Gradients that alternate in sign so that the projection fires on some main calls.
            let sign = if call % 3 == 1 { -1.0 } else { 1.0 };
            let grads: Vec<Vec<f64>> = SHAPES
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let v = data(i as u64 + 9 + call % 2, s.iter().product());
                    v.iter().map(|x| sign * (x + 0.3)).collect()
                })
                .collect();
            let hg: Vec<ArrayD<E>> = SHAPES.iter().zip(&grads).map(|(s, v)| host(s, v)).collect();
            let dg: Vec<CudaTensor<E>> = SHAPES.iter().zip(&grads).map(|(s, v)| dev(g, s, v)).collect();
            let hr = ho
                .step(&mut hp.iter_mut().collect::<Vec<_>>(), &hg.iter().collect::<Vec<_>>())
                .expect("host");
            let dr = dopt
                .step(&mut dp.iter_mut().collect::<Vec<_>>(), &dg.iter().collect::<Vec<_>>())
                .expect("cuda");
            let what = format!("{} config {c} call {call}", E::DTYPE);
            assert_eq!(hr.phase, dr.phase, "{what}");
            match (hr.main, dr.main) {
                (Some(h), Some(d)) => {
                    assert_eq!(h.projected, d.projected, "{what}: projected");
                    for (a, b) in [
                        (d.omega, h.omega),
                        (d.delta_norm_sq, h.delta_norm_sq),
                        (d.grad_norm_sq, h.grad_norm_sq),
                    ] {
                        assert!(
                            (a - b).abs() <= 1e-9 * b.abs().max(1e-300),
                            "{what}: reduction {a} vs host {b}"
                        );
                    }
                }
                (None, None) => {}
                other => panic!("{what}: reports differ: {other:?}"),
            }
            for (i, (d, h)) in dp.iter().zip(&hp).enumerate() {
                assert_close(&format!("{what} tensor {i}"), d, h, tol);
                if config.max_grad_norm.is_none() && call < config.warmup_steps + config.n_ref {
                    // Before the first main call nothing depends on a reduction: bitwise.
                    assert_same(&format!("{what} tensor {i}"), d, h);
                }
            }
        }
    }
}

#[test]
fn profit_matches_host() {
    let Some(g) = gpu() else { return };
    profit_close::<f32>(&g, 1e-5);
    profit_close::<f64>(&g, 1e-12);
    // 16-bit: the reductions' summation order may move a stored value by one step (2^-8, 2^-11).
    profit_close::<half::bf16>(&g, 8e-3);
    profit_close::<half::f16>(&g, 1e-3);
}

#[test]
fn many_tensors_and_a_large_one_in_one_launch() {
    let Some(g) = gpu() else { return };
    // 1000 small tensors plus one spanning more blocks than the grid (grid-stride loop).
    let mut shapes: Vec<Vec<usize>> = (0..1000).map(|i| vec![1 + (i * 37) % 300]).collect();
    shapes.push(vec![(g.sm_count() as usize * 8 + 5) * 1024 + 17]);
    let init: Vec<Vec<f64>> = shapes.iter().enumerate().map(|(i, s)| data(i as u64, s[0])).collect();
    for delta in [Delta::Realized, Delta::Accumulated] {
        let mut hp: Vec<ArrayD<f32>> = shapes.iter().zip(&init).map(|(s, v)| host(s, v)).collect();
        let mut dp: Vec<CudaTensor<f32>> = shapes.iter().zip(&init).map(|(s, v)| dev(&g, s, v)).collect();
        let config = ProfitConfig { delta, ..Default::default() };
        let mut ho = Profit::<NdArray<f32>>::new(config, &hp.iter().collect::<Vec<_>>()).expect("host");
        let mut dopt = Profit::<Cuda<f32>>::new(config, &dp.iter().collect::<Vec<_>>()).expect("cuda");
        for call in 0..4u64 {
            let grads: Vec<Vec<f64>> =
                shapes.iter().enumerate().map(|(i, s)| data(call * 7919 + i as u64, s[0])).collect();
            let hg: Vec<ArrayD<f32>> = shapes.iter().zip(&grads).map(|(s, v)| host(s, v)).collect();
            let dg: Vec<CudaTensor<f32>> = shapes.iter().zip(&grads).map(|(s, v)| dev(&g, s, v)).collect();
            ho.step(&mut hp.iter_mut().collect::<Vec<_>>(), &hg.iter().collect::<Vec<_>>()).expect("host");
            dopt.step(&mut dp.iter_mut().collect::<Vec<_>>(), &dg.iter().collect::<Vec<_>>()).expect("cuda");
            for (i, (d, h)) in dp.iter().zip(&hp).enumerate() {
                if call == 0 {
                    assert_same(&format!("{delta:?} call {call} tensor {i}"), d, h);
                } else {
                    assert_close(&format!("{delta:?} call {call} tensor {i}"), d, h, 1e-5);
                }
            }
        }
    }
}

/// Random optimizer state for one tensor: anchor, delta and three slots, valid for every rule:
/// slot 0 in [1, 2) (RMSprop's square average), slots 1 and 2 in [0, 0.1) (second moments; a
/// centered RMSprop's gradient average, small enough that `square_avg - grad_avg^2 > 0`).
fn state_values(seed: u64, n: usize) -> [Vec<f64>; 5] {
    let scaled = |s, a: f64, b: f64| data(s, n).iter().map(|x| a + b * x.abs()).collect::<Vec<_>>();
    [
        data(seed, n),
        data(seed + 1, n),
        scaled(seed + 2, 1.0, 1.0),
        scaled(seed + 3, 0.0, 0.1),
        scaled(seed + 4, 0.0, 0.1),
    ]
}

#[test]
fn mixed_passes_and_rules_in_one_call_match_host_bitwise() {
    let Some(g) = gpu() else { return };
    let passes = [Pass::Plain, Pass::Reference { first: true }, Pass::Reference { first: false }, Pass::Main];
    let rules: Vec<InnerConfig> = inner_configs();
    let n_tensors = 40;
    let mut hk = vec![];
    let (mut hp, mut dp, mut hg, mut dg, mut hs, mut ds) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for t in 0..n_tensors {
        let n = 1 + (t * 331) % 2500;
        let shape = [n];
        let pass = passes[t % passes.len()];
        let inner = rules[t % rules.len()];
        // Every state layout: anchor and delta, delta only, anchor only (realized delta).
        let (with_anchor, with_delta) = [(true, true), (false, true), (true, false)][t % 3];
        let rule = inner.rule::<f32>(1 + (t as u64 % 3), inner.lr(), inner.weight_decay());
        let (proj, delta_scale) = if t % 2 == 0 { (-0.3, 1024.0) } else { (0.0, 1.0) };
        hk.push(Kernel { pass, rule, grad_scale: 0.75f32, proj, delta_scale });
        let [a, d, s0, s1, s2] = state_values(1000 + t as u64 * 10, n);
        let p = data(t as u64, n);
        let gr = data(t as u64 + 500, n);
        hp.push(host::<f32>(&shape, &p));
        dp.push(dev::<f32>(&g, &shape, &p));
        hg.push(host::<f32>(&shape, &gr));
        dg.push(dev::<f32>(&g, &shape, &gr));
        let slots = [&s0, &s1, &s2];
        let hslots: Vec<ArrayD<f32>> = slots.iter().map(|v| host(&shape, v)).collect();
        let dslots: Vec<CudaTensor<f32>> = slots.iter().map(|v| dev(&g, &shape, v)).collect();
        let (href, hmain, dref, dmain) = if matches!(pass, Pass::Reference { .. }) {
            (hslots, vec![], dslots, vec![])
        } else {
            (vec![], hslots, vec![], dslots)
        };
        hs.push(TensorState {
            anchor: with_anchor.then(|| host(&shape, &a)),
            delta: with_delta.then(|| host(&shape, &d)),
            ref_slots: href,
            main_slots: hmain,
        });
        ds.push(TensorState {
            anchor: with_anchor.then(|| dev(&g, &shape, &a)),
            delta: with_delta.then(|| dev(&g, &shape, &d)),
            ref_slots: dref,
            main_slots: dmain,
        });
    }
    let active: Vec<bool> = (0..n_tensors).map(|t| t % 7 != 3).collect();
    let mut out = vec![Reduction::default(); n_tensors];
    let (mut hk1, mut hk2) = (hk.clone(), hk.clone());
    let (hgr, dgr) = (hg.iter().collect::<Vec<_>>(), dg.iter().collect::<Vec<_>>());
    let mut hpr = hp.iter_mut().collect::<Vec<_>>();
    let batch = Batch::new(&active, &mut hk1, &mut hpr, Grads::Every(&hgr), &mut hs, &mut out);
    NdArray::<f32>::apply_all(&mut batch.expect("host batch")).expect("host apply_all");
    let mut dpr = dp.iter_mut().collect::<Vec<_>>();
    let batch = Batch::new(&active, &mut hk2, &mut dpr, Grads::Every(&dgr), &mut ds, &mut out);
    Cuda::<f32>::apply_all(&mut batch.expect("cuda batch")).expect("cuda apply_all");
    for t in 0..n_tensors {
        let what = format!("tensor {t} ({:?}, {:?}, active {})", hk[t].pass, hk[t].rule, active[t]);
        assert_same(&format!("{what} param"), &dp[t], &hp[t]);
        if let (Some(d), Some(h)) = (&ds[t].delta, &hs[t].delta) {
            assert_same(&format!("{what} delta"), d, h);
        }
        if let (Some(d), Some(h)) = (&ds[t].anchor, &hs[t].anchor) {
            assert_same(&format!("{what} anchor"), d, h);
        }
        for (j, (d, h)) in ds[t]
            .ref_slots
            .iter()
            .chain(&ds[t].main_slots)
            .zip(hs[t].ref_slots.iter().chain(&hs[t].main_slots))
            .enumerate()
        {
            assert_same(&format!("{what} slot {j}"), d, h);
        }
    }
}

fn reductions<E: CudaElement>(g: &CudaBackend) {
    let sizes = [1usize, 4095, 4096, 4097, 100_000, (1 << 20) + 3];
    let ds: Vec<Vec<f64>> = sizes.iter().enumerate().map(|(i, &n)| data(i as u64 + 1, n)).collect();
    let gs: Vec<Vec<f64>> = sizes.iter().enumerate().map(|(i, &n)| data(i as u64 + 77, n)).collect();
    // Parameters near 1 and anchors a small step away (a larger one in 16 bits, so that it
    // survives rounding): the realized delta `p - a`.
    let step = if E::DTYPE.size() == 2 { 4e-2 } else { 1e-5 };
    let ps: Vec<Vec<f64>> = ds.iter().map(|d| d.iter().map(|x| 1.0 + 0.5 * x).collect()).collect();
    let anchors: Vec<Vec<f64>> = ps
        .iter()
        .zip(&ds)
        .map(|(p, d)| p.iter().zip(d).map(|(p, d)| p - step * (0.5 + d.abs()) * d.signum()).collect())
        .collect();
    let grads: Vec<CudaTensor<E>> = sizes.iter().zip(&gs).map(|(&n, v)| dev(g, &[n], v)).collect();
    let mut params: Vec<CudaTensor<E>> = sizes.iter().zip(&ps).map(|(&n, v)| dev(g, &[n], v)).collect();
    let state = |i: usize, realized: bool| TensorState {
        anchor: realized.then(|| dev(g, &[sizes[i]], &anchors[i])),
        delta: (!realized).then(|| dev(g, &[sizes[i]], &ds[i])),
        ref_slots: vec![],
        main_slots: vec![],
    };
    let active = vec![true; sizes.len()];
    let gref: Vec<&CudaTensor<E>> = grads.iter().collect();
    for realized in [false, true] {
        let states: Vec<TensorState<CudaTensor<E>>> = (0..sizes.len()).map(|i| state(i, realized)).collect();
        let mut states = states;
        let mut pref: Vec<&mut CudaTensor<E>> = params.iter_mut().collect();
        let mut kernels = vec![Kernel::idle(); sizes.len()];
        let mut reduce = |with_delta: bool| {
            let mut out = vec![Reduction::default(); sizes.len()];
            let grads = Grads::Every(&gref);
            let batch = Batch::new(&active, &mut kernels, &mut pref, grads, &mut states, &mut out);
            Cuda::<E>::reduce_all(&mut batch.expect("batch"), with_delta).expect("reduce");
            out
        };
        let a = reduce(true);
        let b = reduce(true);
        assert_eq!(a, b, "reductions are not deterministic");
        let c = reduce(false);
        for i in 0..sizes.len() {
            let (d, gv, pv, av): (Vec<E>, Vec<E>, Vec<E>, Vec<E>) =
                (cast(&ds[i]), cast(&gs[i]), cast(&ps[i]), cast(&anchors[i]));
            let h = if realized {
                reduce_slices(DeltaSlices::Realized { param: &pv, anchor: &av }, &gv)
            } else {
                reduce_slices(DeltaSlices::Stored(&d), &gv)
            };
            assert!(h.delta_sq > 0.0);
            for (x, y) in [(a[i].omega, h.omega), (a[i].delta_sq, h.delta_sq), (a[i].grad_sq, h.grad_sq)] {
                assert!(
                    (x - y).abs() <= 1e-12 * y.abs().max(1e-300),
                    "{} size {} realized {realized}: {x} vs host {y}",
                    E::DTYPE,
                    sizes[i]
                );
            }
            assert_eq!(c[i].grad_sq.to_bits(), a[i].grad_sq.to_bits(), "grad-only |g|^2 differs");
            assert_eq!((c[i].omega, c[i].delta_sq), (0.0, 0.0));
            let one = Cuda::<E>::reduce(states[i].delta_view(&*pref[i]), &grads[i]).expect("reduce one");
            assert_eq!(one, a[i], "reduce and reduce_all differ");
        }
    }
}

#[test]
fn reductions_are_deterministic_and_match_host() {
    let Some(g) = gpu() else { return };
    reductions::<f32>(&g);
    reductions::<f64>(&g);
    reductions::<half::bf16>(&g);
    reductions::<half::f16>(&g);
}

#[test]
fn non_finite_gradient_shows_in_grad_sq() {
    let Some(g) = gpu() else { return };
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = vec![0.5f32; 50_000];
        v[31_337] = bad;
        let t = g.upload(&[50_000], &v).expect("upload");
        let r = Cuda::<f32>::reduce(DeltaView::None, &t).expect("reduce");
        assert!(!r.grad_sq.is_finite(), "{bad}: |g|^2 = {}", r.grad_sq);
    }
    // And the optimizer refuses the step, changing nothing.
    let mut w = g.upload(&[4], &[1.0f32, 2.0, 3.0, 4.0]).expect("upload");
    let mut opt = Profit::<Cuda<f32>>::new(ProfitConfig::default(), &[&w]).expect("optimizer");
    let bad = g.upload(&[4], &[0.0f32, f32::NAN, 0.0, 0.0]).expect("upload");
    assert!(opt.step(&mut [&mut w], &[&bad]).is_err());
    assert_eq!(w.to_vec().expect("download"), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn copies_and_empty_tensors() {
    let Some(g) = gpu() else { return };
    let a = g.upload(&[2, 3], &[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("upload");
    let mut b = Cuda::<f64>::zeros_like(&a).expect("zeros");
    let mut host = vec![0.0f64; 6];
    Cuda::<f64>::read(&a, &mut host).expect("read");
    Cuda::<f64>::write(&mut b, &host).expect("write");
    assert_eq!(b.to_vec().expect("download"), a.to_vec().expect("download"));
    assert!(g.upload(&[2, 2], &[1.0f64; 3]).is_err(), "a wrong-length upload must be refused");
    let e = g.zeros::<f32>(&[0, 4]).expect("empty");
    assert!(e.is_empty());
    assert_eq!(Cuda::<f32>::reduce(DeltaView::None, &e).expect("reduce"), Reduction::default());
}

fn decided_alike<E: CudaElement>(g: &CudaBackend, host_decided: &CudaBackend) {
    let base =
        ProfitConfig::new(Sgd { lr: 1e-3, ..Default::default() }, Adam { lr: 1e-2, ..Default::default() });
    let mut configs = profit_configs();
    configs.push(ProfitConfig { non_finite: NonFinitePolicy::Skip, ..base });
    configs.push(ProfitConfig { non_finite: NonFinitePolicy::Skip, max_grad_norm: Some(0.1), ..base });
    configs.push(ProfitConfig { non_finite: NonFinitePolicy::Propagate, max_grad_norm: Some(2.0), ..base });
    configs.push(ProfitConfig {
        projection: Projection::PerTensor,
        max_grad_norm: Some(0.3),
        ..ProfitConfig::new(
            Sgd { lr: 1e-3, ..Default::default() },
            Adam { lr: 1e-2, maximize: true, ..Default::default() },
        )
    });
    let mut decided = 0;
    for (c, config) in configs.into_iter().enumerate() {
        let init: Vec<Vec<f64>> =
            SHAPES.iter().enumerate().map(|(i, s)| data(i as u64 + 70, s.iter().product())).collect();
        let mut hp: Vec<CudaTensor<E>> =
            SHAPES.iter().zip(&init).map(|(s, v)| dev(host_decided, s, v)).collect();
        let mut dp: Vec<CudaTensor<E>> = SHAPES.iter().zip(&init).map(|(s, v)| dev(g, s, v)).collect();
        let mut ho = Profit::<Cuda<E>>::new(config, &hp.iter().collect::<Vec<_>>()).expect("host-decided");
        let mut dopt =
            Profit::<Cuda<E>>::new(config, &dp.iter().collect::<Vec<_>>()).expect("device-decided");
        for call in 0..12u64 {
            let sign = if call % 3 == 1 { -1.0 } else { 1.0 };
            let grads: Vec<Vec<f64>> = SHAPES
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut v: Vec<f64> = data(i as u64 + 3 + call % 2, s.iter().product())
                        .iter()
                        .map(|x| sign * (x + 0.2))
                        .collect();
                    // Non-finite gradients at two calls (a reference and a main call in most configs).
                    if (call == 5 || call == 8) && i == 2 {
                        v[17] = if call == 5 { f64::NAN } else { f64::INFINITY };
                    }
                    v
                })
                .collect();
            let gh: Vec<CudaTensor<E>> =
                SHAPES.iter().zip(&grads).map(|(s, v)| dev(host_decided, s, v)).collect();
            let gd: Vec<CudaTensor<E>> = SHAPES.iter().zip(&grads).map(|(s, v)| dev(g, s, v)).collect();
            let hr = ho.step(&mut hp.iter_mut().collect::<Vec<_>>(), &gh.iter().collect::<Vec<_>>());
            let dr = dopt.step(&mut dp.iter_mut().collect::<Vec<_>>(), &gd.iter().collect::<Vec<_>>());
            let what = format!("{} config {c} call {call}", E::DTYPE);
            assert_eq!(format!("{hr:?}"), format!("{dr:?}"), "{what}: reports differ");
            assert_eq!(
                format!("{:?}", ho.tensor_reports()),
                format!("{:?}", dopt.tensor_reports()),
                "{what}"
            );
            for (i, (d, h)) in dp.iter().zip(&hp).enumerate() {
                let (dv, hv) = (d.to_vec().expect("download"), h.to_vec().expect("download"));
                assert_eq!(bits(&dv), bits(&hv), "{what} tensor {i}: weights differ");
            }
            decided += 1;
        }
    }
    println!("{}: {decided} calls decided on the device equal those decided on the host, bitwise", E::DTYPE);
}

fn overflow_refused_alike<E: CudaElement>(g: &CudaBackend, host_decided: &CudaBackend) {
    // |g| = 3e38 per element over ~15k elements: the projection coefficient, even scaled, is
    // past f32's range (and representable in f64).
    // A reference step large enough to survive in bf16.
    let config =
        ProfitConfig::new(Sgd { lr: 0.1, ..Default::default() }, Sgd { lr: 1e-3, ..Default::default() });
    let init: Vec<Vec<f64>> = SHAPES.iter().map(|s| vec![0.5; s.iter().product()]).collect();
    let mut hp: Vec<CudaTensor<E>> = SHAPES.iter().zip(&init).map(|(s, v)| dev(host_decided, s, v)).collect();
    let mut dp: Vec<CudaTensor<E>> = SHAPES.iter().zip(&init).map(|(s, v)| dev(g, s, v)).collect();
    let mut ho = Profit::<Cuda<E>>::new(config, &hp.iter().collect::<Vec<_>>()).expect("host-decided");
    let mut dopt = Profit::<Cuda<E>>::new(config, &dp.iter().collect::<Vec<_>>()).expect("device-decided");
    let mut results = vec![];
    for v in [0.1, 3e38] {
        let grad = |b: &CudaBackend| -> Vec<CudaTensor<E>> {
            SHAPES.iter().map(|s| dev(b, s, &vec![v; s.iter().product()])).collect()
        };
        let (gh, gd) = (grad(host_decided), grad(g));
        let hr = ho.step(&mut hp.iter_mut().collect::<Vec<_>>(), &gh.iter().collect::<Vec<_>>());
        let dr = dopt.step(&mut dp.iter_mut().collect::<Vec<_>>(), &gd.iter().collect::<Vec<_>>());
        assert_eq!(format!("{hr:?}"), format!("{dr:?}"), "{}: results differ", E::DTYPE);
        results.push(dr);
    }
    for (d, h) in dp.iter().zip(&hp) {
        assert_eq!(bits(&d.to_vec().expect("download")), bits(&h.to_vec().expect("download")));
    }
    let refused = matches!(results[1], Err(profit_core::ProfitError::ProjectionOverflow { .. }));
    // f32 math overflows; f64 does not.
    assert_eq!(refused, E::SCALAR_BYTES == 4, "{}: {:?}", E::DTYPE, results[1]);
    if refused {
        assert_eq!(dopt.calls(), 1, "a refused call is not counted");
        let after: Vec<f64> = dp[0].to_vec().expect("download").iter().map(|x| x.as_f64()).collect();
        assert!(
            after.iter().all(|&x| (x - 0.49).abs() < 2e-3),
            "{}: refused call changed the weights: {after:?}",
            E::DTYPE
        );
    }
}

#[test]
fn decided_on_the_device_equals_decided_on_the_host_bitwise() {
    let Some(g) = gpu() else { return };
    // A second handle on the same device whose calls are decided by the core on the host.
    let h = CudaBackend::new(0).expect("second handle");
    h.set_decide_on_device(false);
    assert!(g.decides_on_device() && !h.decides_on_device());
    decided_alike::<f32>(&g, &h);
    decided_alike::<f64>(&g, &h);
    decided_alike::<half::bf16>(&g, &h);
    decided_alike::<half::f16>(&g, &h);
    overflow_refused_alike::<f32>(&g, &h);
    overflow_refused_alike::<f64>(&g, &h);
    overflow_refused_alike::<half::bf16>(&g, &h);
}

/// Memory another framework allocated (here: straight from the driver, with a stream of its
/// own), borrowed for each call: stepped in place exactly as the backend's own tensors are,
/// ordered with the foreign stream, and never freed by the backend.
#[test]
fn borrowed_memory_is_stepped_in_place_and_never_freed() {
    use cudarc::driver::result;
    let Some(g) = gpu() else { return };
    g.context().bind_to_thread().expect("bind the context");
    let n = 1000;
    let init: Vec<f32> = data(3, n).iter().map(|&x| x as f32).collect();
    let grads: Vec<Vec<f32>> = (0..6).map(|k| data(10 + k, n).iter().map(|&x| x as f32).collect()).collect();
    let config =
        ProfitConfig::new(Sgd { lr: 1e-2, ..Default::default() }, Adam { lr: 1e-2, ..Default::default() });

    let mut owned = g.upload(&[n], &init).expect("upload");
    let mut opt = Profit::<Cuda<f32>>::new(config, &[&owned]).expect("build");
    for gr in &grads {
        let gt = g.upload(&[n], gr).expect("upload");
        opt.step(&mut [&mut owned], &[&gt]).expect("step");
    }

    // SAFETY: plain driver calls on the bound context; the buffer holds n f32 until freed below.
    let (foreign, stream) = unsafe {
        let ptr = result::malloc_sync(n * 4).expect("cuMemAlloc");
        result::memcpy_htod_sync(ptr, &init).expect("copy in");
        (ptr, result::stream::create(result::stream::StreamKind::NonBlocking).expect("stream"))
    };
    let view = |g: &CudaBackend| unsafe { g.borrow::<f32>(foreign, &[n]) }.expect("borrow");
    let mut opt2 = Profit::<Cuda<f32>>::new(config, &[&view(&g)]).expect("build");
    for gr in &grads {
        let gt = g.upload(&[n], gr).expect("upload");
        // SAFETY: `stream` is a live stream of this context.
        unsafe { g.wait_for(stream as u64) }.expect("wait for the foreign stream");
        let mut p = view(&g);
        opt2.step(&mut [&mut p], &[&gt]).expect("step");
        drop(p);
        unsafe { g.signal(stream as u64) }.expect("signal the foreign stream");
    }
    let mut got = vec![0f32; n];
    // SAFETY: the buffer is still allocated (the backend never freed it): read and free it.
    unsafe {
        result::stream::synchronize(stream).expect("sync");
        result::memcpy_dtoh_sync(&mut got, foreign).expect("copy out");
        result::free_sync(foreign).expect("the borrowed buffer is still ours to free");
    }
    let want = owned.to_vec().expect("download");
    assert!(
        got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
        "borrowed memory stepped differently"
    );
    assert_ne!(got, init, "nothing was stepped");
    // A null or misaligned address is refused.
    assert!(unsafe { g.borrow::<f32>(0, &[4]) }.is_err());
    assert!(unsafe { g.borrow::<f32>(foreign + 2, &[4]) }.is_err());
}
