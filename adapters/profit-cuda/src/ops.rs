//! `TensorOps` for [`Cuda<E>`]: multi-tensor launches of the fused PTX kernels.
//!
//! A step is O(1) launches whatever the number of tensors: one apply launch per distinct
//! (pass, rule) variant among the call's tensors (one in every call the core makes), and two
//! launches for the reductions, whose results come back as three `f64` per tensor.

use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use profit_core::backend::{
    Batch, Decision, DeltaView, Grads, Kernel, Parts, Pass, Reduction, TensorOps, TensorState, Variant,
    Verdict,
};
use profit_core::element::Element;
use profit_core::error::BackendError;
use profit_core::optim::Rule;

use crate::device::{driver_err, ensure, Device, Scratch, Staging};
use crate::kernels::{self, APPLY_CHUNK, APPLY_THREADS, DESC_WORDS, REDUCE_CHUNK, REDUCE_THREADS, SC_STRIDE};
use crate::tensor::{CudaElement, CudaTensor};

/// The CUDA backend marker: `Profit<Cuda<f32>>` runs on [`CudaTensor<f32>`]s.
#[derive(Debug)]
pub struct Cuda<E>(PhantomData<E>);

const F_NESTEROV: u32 = 1;
const F_FIRST: u32 = 2;
const F_CENTERED: u32 = 4;
const F_MOMENTUM: u32 = 8;

/// Decision flags (`D_*` in `profit.cu`).
const D_CHECK_FINITE: u32 = 1;
const D_PROJECT: u32 = 2;
const D_GLOBAL: u32 = 4;
const D_CLIP: u32 = 8;

fn err(msg: impl Into<String>) -> BackendError {
    BackendError::Device(msg.into())
}

fn same_dev<E>(dev: &Arc<Device>, t: &CudaTensor<E>, what: &str) -> Result<(), BackendError> {
    if Arc::ptr_eq(dev, &t.dev) {
        Ok(())
    } else {
        Err(err(format!("{what} lives on another CudaBackend than the parameters")))
    }
}

fn ptr<E>(dev: &Device, t: &CudaTensor<E>) -> u64 {
    let (p, _sync) = t.data.device_ptr(&dev.stream);
    p
}

/// Rule index in [`kernels::RULES`] order, the scalar set (layout in `profit.cu`) and flags;
/// [`BackendError::Unsupported`] for a rule the kernels do not have (the external main
/// optimizer's gradient capture).
fn scalar_set<E: CudaElement>(k: &Kernel<E>) -> Result<(usize, [E::Real; SC_STRIDE], u32), BackendError> {
    let mut v = [E::Real::default(); SC_STRIDE];
    v[0] = k.grad_scale;
    v[1] = k.proj;
    v[10] = k.delta_scale;
    match k.rule {
        Rule::Sgd(r) => {
            v[2] = r.lr;
            v[3] = r.weight_decay;
            Ok((0, v, 0))
        }
        Rule::SgdMomentum(r) => {
            v[2] = r.lr;
            v[3] = r.weight_decay;
            v[4] = r.momentum;
            v[5] = r.one_minus_dampening;
            let flags = if r.nesterov { F_NESTEROV } else { 0 } | if r.first { F_FIRST } else { 0 };
            Ok((1, v, flags))
        }
        Rule::Adam(r) => {
            v[2] = r.l2;
            v[3] = r.decay;
            v[4] = r.one_minus_beta1;
            v[5] = r.beta2;
            v[6] = r.one_minus_beta2;
            v[7] = r.bias_correction2_sqrt;
            v[8] = r.step_size;
            v[9] = r.eps;
            Ok((if r.amsgrad { 3 } else { 2 }, v, 0))
        }
        Rule::RmsProp(r) => {
            v[2] = r.lr;
            v[3] = r.weight_decay;
            v[4] = r.alpha;
            v[5] = r.one_minus_alpha;
            v[6] = r.one_minus_alpha; // the lerp weight of the centered average
            v[7] = r.eps;
            v[8] = r.momentum;
            let flags = if r.centered { F_CENTERED } else { 0 } | if r.use_momentum { F_MOMENTUM } else { 0 };
            Ok((4, v, flags))
        }
        Rule::Capture => Err(BackendError::Unsupported(
            "an external main optimizer (gradient capture) on CUDA: use a host backend".into(),
        )),
    }
}

/// Upload `words` into `table` unless it already holds exactly them.
fn upload_table(dev: &Device, s: &mut Scratch, which: usize) -> Result<(), BackendError> {
    let Scratch { tables, words, up_words, .. } = s;
    let t = &mut tables[which];
    if t.dev.is_some() && t.uploaded == *words {
        return Ok(());
    }
    ensure(&dev.stream, &mut t.dev, words.len())?;
    Staging::ensure(&mut up_words[which], &dev.ctx, words.len(), true)?;
    let dst = ptr_of(dev, t.dev.as_ref().expect("ensured"));
    up_words[which].as_mut().expect("ensured").upload(words, dst, &dev.stream)?;
    t.uploaded.clear();
    t.uploaded.extend_from_slice(words);
    Ok(())
}

/// The device address of a scratch buffer.
fn ptr_of<T>(dev: &Device, buf: &cudarc::driver::CudaSlice<T>) -> u64 {
    let (p, _sync) = buf.device_ptr(&dev.stream);
    p
}

/// The verdict's place at the start of `out_dev` / `out_host`; the reductions follow it.
const VERDICT: usize = 3;

fn lock(dev: &Device) -> Result<std::sync::MutexGuard<'_, Scratch>, BackendError> {
    dev.scratch.lock().map_err(|_| err("scratch lock poisoned"))
}

/// The descriptor table an apply uses: main calls keep their own, so that a cycle's
/// alternating reference and main calls find their tables unchanged on the device.
fn apply_table<E: Element>(kernels: &[Kernel<E>], active: &[bool]) -> usize {
    let main = kernels.iter().zip(active).any(|(k, &a)| a && k.pass == Pass::Main);
    if main {
        3
    } else {
        0
    }
}

/// Check every active tensor of an apply and describe it: descriptor table in `s.words`
/// (grouped by variant, block_start relative to the group), scalar sets in `s.bytes`
/// (consecutive identical sets shared) and the launch groups in `s.groups`. Launches nothing.
fn build_apply<E: CudaElement>(
    dev: &Arc<Device>,
    s: &mut Scratch,
    active: &[bool],
    kernels: &[Kernel<E>],
    params: &[&mut CudaTensor<E>],
    grads: Grads<'_, CudaTensor<E>>,
    states: &[TensorState<CudaTensor<E>>],
) -> Result<(), BackendError> {
    let n = active.len();
    if kernels.len() != n || params.len() != n || grads.len() != n || states.len() != n {
        return Err(err("apply_all: argument counts differ"));
    }
    s.entries.clear();
    s.groups.clear();
    s.words.clear();
    s.bytes.clear();
    for i in (0..n).filter(|&i| active[i]) {
        let (k, p, g, st) = (
            &kernels[i],
            &*params[i],
            grads.get(i).ok_or_else(|| err("an active tensor has no gradient"))?,
            &states[i],
        );
        same_dev(dev, p, "a parameter")?;
        same_dev(dev, g, "a gradient")?;
        let len = p.len;
        if g.len != len {
            return Err(err("apply_all: gradient and parameter lengths differ"));
        }
        let variant = st.check(k)?;
        let pass = variant as usize;
        let check = |t: &CudaTensor<E>, what: &str| -> Result<(), BackendError> {
            same_dev(dev, t, what)?;
            if t.len != len {
                return Err(err(format!("apply_all: {what} length differs from its parameter")));
            }
            Ok(())
        };
        if variant.reads_delta() || variant.writes_delta() {
            check(st.delta.as_ref().ok_or_else(|| err("pass needs delta"))?, "delta")?;
        }
        if variant.reads_anchor() || variant.writes_anchor() {
            check(st.anchor.as_ref().ok_or_else(|| err("pass needs the anchor"))?, "anchor")?;
        }
        for t in st.slots(k.pass).iter().take(k.rule.slots()) {
            check(t, "optimizer state")?;
        }
        if len == 0 {
            continue;
        }
        let rule = scalar_set(k)?.0;
        s.entries.push(((pass * kernels::RULES.len() + rule) as u16, i as u32));
    }
    s.entries.sort_unstable();

    let set_bytes = SC_STRIDE * E::SCALAR_BYTES;
    let mut n_sets = 0u64;
    let mut blocks = 0u64;
    for e in 0..s.entries.len() {
        let (variant, i) = s.entries[e];
        let i = i as usize;
        if e == 0 || variant != s.entries[e - 1].0 {
            if let Some(last) = s.groups.last_mut() {
                last.3 = blocks;
            }
            s.groups.push((variant, e, e, 0));
            blocks = 0;
        }
        s.groups.last_mut().expect("pushed").2 = e + 1;
        let (_, set, flags) = scalar_set(&kernels[i])?;
        let at = s.bytes.len();
        for x in set {
            E::put_scalar(x, &mut s.bytes);
        }
        if n_sets > 0 && s.bytes[at - set_bytes..at] == s.bytes[at..] {
            s.bytes.truncate(at);
        } else {
            n_sets += 1;
        }
        let st = &states[i];
        let v = Variant::ALL[variant as usize / kernels::RULES.len()];
        let slots = st.slots(kernels[i].pass);
        let used = kernels[i].rule.slots();
        let slot = |j: usize| if j < used { ptr(dev, &slots[j]) } else { 0 };
        let len = params[i].len as u64;
        s.words.extend_from_slice(&[
            ptr(dev, params[i]),
            ptr(dev, grads.get(i).ok_or_else(|| err("an active tensor has no gradient"))?),
            if v.reads_delta() || v.writes_delta() {
                st.delta.as_ref().map_or(0, |t| ptr(dev, t))
            } else {
                0
            },
            if v.reads_anchor() || v.writes_anchor() {
                st.anchor.as_ref().map_or(0, |t| ptr(dev, t))
            } else {
                0
            },
            slot(0),
            slot(1),
            slot(2),
            len,
            blocks,
            (n_sets - 1) | (flags as u64) << 32,
            i as u64 + 1,
        ]);
        blocks += len.div_ceil(APPLY_CHUNK);
    }
    if let Some(last) = s.groups.last_mut() {
        last.3 = blocks;
    }
    Ok(())
}

/// Upload the apply described in `s` (table `which`, scalar sets), for [`launch_apply`].
fn upload_apply(dev: &Device, s: &mut Scratch, which: usize) -> Result<(), BackendError> {
    if s.groups.is_empty() {
        return Ok(());
    }
    upload_table(dev, s, which)?;
    ensure(&dev.stream, &mut s.scalars, s.bytes.len())?;
    Staging::ensure(&mut s.up_bytes, &dev.ctx, s.bytes.len(), true)?;
    let dst = ptr_of(dev, s.scalars.as_ref().expect("ensured"));
    s.up_bytes.as_mut().expect("ensured").upload(&s.bytes, dst, &dev.stream)
}

/// One apply launch per variant group of the apply uploaded into table `which`. With
/// `decided`, the device pointers of a decision's verdict and scalars (see `profit_decide_*`).
fn launch_apply<E: CudaElement>(
    dev: &Device,
    s: &Scratch,
    which: usize,
    decided: Option<(u64, u64)>,
) -> Result<(), BackendError> {
    let (verdict, values) = decided.unwrap_or((0, 0));
    for &(variant, start, end, total) in &s.groups {
        let table = s.tables[which].dev.as_ref().expect("uploaded");
        let sc = s.scalars.as_ref().expect("ensured");
        let nt = (end - start) as u32;
        let view = table.slice(start * DESC_WORDS..end * DESC_WORDS);
        let f = dev.apply_fn(E::DTYPE_INDEX, variant as usize);
        let cfg = LaunchConfig {
            grid_dim: (dev.grid(total), 1, 1),
            block_dim: (APPLY_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = dev.stream.launch_builder(f);
        b.arg(&view).arg(&nt).arg(&total).arg(sc).arg(&verdict).arg(&values);
        // SAFETY: the kernel's signature is (const Desc*, u32, u64, const T*, const double*,
        // const T*); the table holds `nt` descriptors whose pointers were checked to be live
        // buffers of this backend with `n` elements each, the scalar sets they index were
        // uploaded, and `verdict`/`values` are null or a decision's buffers covering every
        // tensor index of the table.
        unsafe { b.launch(cfg) }.map_err(driver_err)?;
    }
    Ok(())
}

/// One fused pass over every active tensor, launched per (pass, rule) variant.
fn apply_all<E: CudaElement>(batch: &mut Batch<'_, '_, CudaTensor<E>, E>) -> Result<(), BackendError> {
    let Parts { active, kernels, params, grads, states, .. } = batch.parts();
    let Some(first) = (0..active.len()).find(|&i| active[i]) else { return Ok(()) };
    let Some(p) = params.get(first) else { return Err(err("apply_all: argument counts differ")) };
    let dev = p.dev.clone();
    let mut guard = lock(&dev)?;
    let s = &mut *guard;
    // Check everything before launching anything.
    build_apply(&dev, s, active, kernels, params, grads, states)?;
    let which = apply_table(kernels, active);
    upload_apply(&dev, s, which)?;
    launch_apply::<E>(&dev, s, which, None)
}

/// Check and describe the reductions of every active tensor into `s.words` (one entry per
/// non-empty tensor in `s.entries`); returns the blocks they cover.
fn build_reduce<E: CudaElement>(
    dev: &Arc<Device>,
    s: &mut Scratch,
    active: &[bool],
    params: &[&mut CudaTensor<E>],
    states: Option<&[TensorState<CudaTensor<E>>]>,
    grads: Grads<'_, CudaTensor<E>>,
) -> Result<u64, BackendError> {
    s.entries.clear();
    s.words.clear();
    let mut blocks = 0u64;
    for i in (0..active.len()).filter(|&i| active[i]) {
        let g = grads.get(i).ok_or_else(|| err("an active tensor has no gradient"))?;
        let delta = states.map_or(DeltaView::None, |st| st[i].delta_view(&*params[i]));
        let w = delta_words(dev, delta, g)?;
        if g.len == 0 {
            continue;
        }
        s.entries.push((0, i as u32));
        let len = g.len as u64;
        s.words.extend_from_slice(&[w[0], w[1], w[2], w[3], 0, 0, 0, len, blocks, 0, i as u64 + 1]);
        blocks += len.div_ceil(REDUCE_CHUNK);
    }
    Ok(blocks)
}

/// Reductions of every active tensor: two launches, three `f64` per tensor back to the host.
fn reduce_all<E: CudaElement>(
    batch: &mut Batch<'_, '_, CudaTensor<E>, E>,
    with_delta: bool,
) -> Result<(), BackendError> {
    batch.clear_out();
    let Parts { active, params, grads, states, out, .. } = batch.parts();
    let n = active.len();
    let Some(first) = (0..n).find(|&i| active[i]) else { return Ok(()) };
    let Some(g) = grads.get(first) else { return Err(err("an active tensor has no gradient")) };
    let dev = g.dev.clone();
    let mut guard = lock(&dev)?;
    let s = &mut *guard;
    let states = with_delta.then_some(&states[..]);
    let blocks = build_reduce(&dev, s, active, params, states, grads)?;
    if s.entries.is_empty() {
        return Ok(());
    }
    let which = if with_delta { 2 } else { 1 };
    enqueue_reductions::<E>(&dev, s, which, n, blocks, 0)?;
    fetch(&dev, s, n)?;
    for (i, o) in out.iter_mut().enumerate() {
        *o = reduction_at(&s.out_host, i);
    }
    Ok(())
}

fn reduction_at(out: &[f64], i: usize) -> Reduction {
    let r = &out[VERDICT + 3 * i..VERDICT + 3 * i + 3];
    Reduction { omega: r[0], delta_sq: r[1], grad_sq: r[2] }
}

/// Reductions, decision and apply of one call, enqueued back to back (see
/// [`TensorOps::reduce_decide_apply`]): the host waits once, at the end, for the reductions
/// and the verdict.
fn reduce_decide_apply<E: CudaElement>(
    decision: &Decision,
    batch: &mut Batch<'_, '_, CudaTensor<E>, E>,
) -> Result<Option<Verdict>, BackendError> {
    let Parts { active, kernels, params, grads, states, out } = batch.parts();
    let n = active.len();
    let Some(first) = (0..n).find(|&i| active[i]) else { return Ok(None) };
    let Some(g) = grads.get(first) else { return Err(err("an active tensor has no gradient")) };
    let dev = g.dev.clone();
    if !dev.decide_on_device.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(None);
    }
    let mut guard = lock(&dev)?;
    let s = &mut *guard;
    // Check and upload everything the call launches before launching anything.
    build_apply(&dev, s, active, kernels, params, grads, states)?;
    let which = apply_table(kernels, active);
    upload_apply(&dev, s, which)?;
    let main = decision.projection.is_some();
    let blocks = build_reduce(&dev, s, active, params, main.then_some(&states[..]), grads)?;
    let decided_at = VERDICT + 3 * n;
    let decided_len = (3 * n * E::SCALAR_BYTES).div_ceil(8);
    enqueue_reductions::<E>(&dev, s, if main { 2 } else { 1 }, n, blocks, decided_len)?;

    let out_dev = s.out_dev.as_mut().expect("ensured");
    let base = {
        let (p, _sync) = out_dev.device_ptr(&dev.stream);
        p
    };
    let flags = [
        (decision.check_finite, D_CHECK_FINITE),
        (main, D_PROJECT),
        (decision.projection == Some(true), D_GLOBAL),
        (decision.max_grad_norm.is_some(), D_CLIP),
    ]
    .iter()
    .filter(|f| f.0)
    .fold(0, |a, f| a | f.1);
    let (n32, max_norm, sign) = (n as u32, decision.max_grad_norm.unwrap_or(0.0), decision.sign);
    let (verdict, values) = (base, base + 8 * decided_at as u64);
    let red = base + 8 * VERDICT as u64;
    let cfg =
        LaunchConfig { grid_dim: (1, 1, 1), block_dim: (kernels::DECIDE_THREADS, 1, 1), shared_mem_bytes: 0 };
    let mut b = dev.stream.launch_builder(&dev.decide_fns[E::DECIDE_INDEX]);
    b.arg(&red).arg(&n32).arg(&flags).arg(&max_norm).arg(&sign).arg(&verdict).arg(&values);
    // SAFETY: (const double*, u32, u32, double, double, double*, T*): `out_dev` holds the
    // verdict (3 doubles), 3 * n reductions and 3 * n math scalars from `values`.
    unsafe { b.launch(cfg) }.map_err(driver_err)?;
    launch_apply::<E>(&dev, s, which, Some((verdict, values)))?;

    fetch(&dev, s, n)?;
    for (i, o) in out.iter_mut().enumerate() {
        *o = reduction_at(&s.out_host, i);
    }
    let v = &s.out_host[..VERDICT];
    let tensor = v[1] as usize;
    Ok(Some(match v[0] {
        0.0 => Verdict::Apply,
        1.0 if tensor < n => Verdict::NonFinite { tensor },
        2.0 if tensor < n => Verdict::Overflow { tensor, coefficient: v[2] },
        _ => return Err(err(format!("decision kernel returned verdict {v:?}"))),
    }))
}

impl<E: CudaElement> TensorOps for Cuda<E> {
    type Elem = E;
    type Tensor = CudaTensor<E>;
    const NAME: &'static str = "cuda";

    fn shape(t: &CudaTensor<E>) -> Vec<usize> {
        t.shape.clone()
    }

    fn has_shape(t: &CudaTensor<E>, shape: &[usize]) -> bool {
        t.shape == shape
    }

    fn numel(t: &CudaTensor<E>) -> usize {
        t.len
    }

    fn zeros_like(t: &CudaTensor<E>) -> Result<CudaTensor<E>, BackendError> {
        t.backend().zeros(&t.shape)
    }

    fn prepare(params: &[&CudaTensor<E>]) -> Result<(), BackendError> {
        prepare(params)
    }

    fn read(t: &CudaTensor<E>, out: &mut [E]) -> Result<(), BackendError> {
        t.copy_to_host(out)
    }

    fn write(t: &mut CudaTensor<E>, src: &[E]) -> Result<(), BackendError> {
        t.copy_from_host(src)
    }

    fn reduce(delta: DeltaView<'_, CudaTensor<E>>, grad: &CudaTensor<E>) -> Result<Reduction, BackendError> {
        reduce_one(delta, grad)
    }

    fn apply(
        kernel: &Kernel<E>,
        param: &mut CudaTensor<E>,
        grad: &CudaTensor<E>,
        state: &mut TensorState<CudaTensor<E>>,
    ) -> Result<(), BackendError> {
        let (mut k, mut out) = (*kernel, Reduction::default());
        let params = &mut [param];
        let grads = [grad];
        let states = std::slice::from_mut(state);
        let kernels = std::slice::from_mut(&mut k);
        let out = std::slice::from_mut(&mut out);
        apply_all(&mut Batch::new(&[true], kernels, params, Grads::Every(&grads), states, out)?)
    }

    fn reduce_all(batch: &mut Batch<'_, '_, CudaTensor<E>, E>, with_delta: bool) -> Result<(), BackendError> {
        reduce_all(batch, with_delta)
    }

    fn apply_all(batch: &mut Batch<'_, '_, CudaTensor<E>, E>) -> Result<(), BackendError> {
        apply_all(batch)
    }

    fn reduce_decide_apply(
        decision: &Decision,
        batch: &mut Batch<'_, '_, CudaTensor<E>, E>,
    ) -> Result<Option<Verdict>, BackendError> {
        reduce_decide_apply(decision, batch)
    }
}

/// Reserve every scratch buffer a step over `params` uses (descriptor tables, scalar sets,
/// reduction partials and results, host staging), so that steps allocate nothing.
fn prepare<E: CudaElement>(params: &[&CudaTensor<E>]) -> Result<(), BackendError> {
    let Some(first) = params.first() else { return Ok(()) };
    let dev = first.dev.clone();
    for p in params {
        same_dev(&dev, p, "a parameter")?;
    }
    let n = params.len();
    let blocks: u64 = params.iter().map(|p| (p.len as u64).div_ceil(REDUCE_CHUNK)).sum();
    let mut guard = lock(&dev)?;
    let s = &mut *guard;
    for t in &mut s.tables {
        ensure(&dev.stream, &mut t.dev, n * DESC_WORDS)?;
        t.uploaded.reserve(n * DESC_WORDS);
    }
    ensure(&dev.stream, &mut s.scalars, n * SC_STRIDE * E::SCALAR_BYTES)?;
    ensure(&dev.stream, &mut s.partials, 3 * blocks as usize)?;
    ensure(&dev.stream, &mut s.out_dev, VERDICT + 3 * n + (3 * n * E::SCALAR_BYTES).div_ceil(8))?;
    s.out_host.reserve(VERDICT + 3 * n);
    Staging::ensure(&mut s.down, &dev.ctx, VERDICT + 3 * n, false)?;
    Staging::ensure(&mut s.up_bytes, &dev.ctx, n * SC_STRIDE * E::SCALAR_BYTES, true)?;
    for w in &mut s.up_words {
        Staging::ensure(w, &dev.ctx, n * DESC_WORDS, true)?;
    }
    s.words.reserve(n * DESC_WORDS);
    s.bytes.reserve(n * SC_STRIDE * E::SCALAR_BYTES);
    s.entries.reserve(n);
    s.groups.reserve(kernels::PASSES.len() * kernels::RULES.len());
    Ok(())
}

/// The first four descriptor words of a reduction over `grad` with `delta`: `p` (realized),
/// `g`, `d` (stored) and `a` (realized); checked to live on `grad`'s device with its length.
fn delta_words<E: CudaElement>(
    dev: &Arc<Device>,
    delta: DeltaView<'_, CudaTensor<E>>,
    grad: &CudaTensor<E>,
) -> Result<[u64; 4], BackendError> {
    same_dev(dev, grad, "a gradient")?;
    let check = |t: &CudaTensor<E>, what: &str| -> Result<u64, BackendError> {
        same_dev(dev, t, what)?;
        if t.len != grad.len {
            return Err(err(format!("reduce: {what} and gradient lengths differ")));
        }
        Ok(ptr(dev, t))
    };
    Ok(match delta {
        DeltaView::None => [0, ptr(dev, grad), 0, 0],
        DeltaView::Stored(d) => [0, ptr(dev, grad), check(d, "delta")?, 0],
        DeltaView::Realized { param, anchor } => {
            [check(param, "parameter")?, ptr(dev, grad), 0, check(anchor, "anchor")?]
        }
    })
}

/// `reduce(delta, grad)` for one tensor.
fn reduce_one<E: CudaElement>(
    delta: DeltaView<'_, CudaTensor<E>>,
    grad: &CudaTensor<E>,
) -> Result<Reduction, BackendError> {
    let dev = grad.dev.clone();
    let w = delta_words(&dev, delta, grad)?;
    if grad.len == 0 {
        return Ok(Reduction::default());
    }
    let mut guard = lock(&dev)?;
    let s = &mut *guard;
    let len = grad.len as u64;
    s.entries.clear();
    s.entries.push((0, 0));
    s.words.clear();
    s.words.extend_from_slice(&[w[0], w[1], w[2], w[3], 0, 0, 0, len, 0, 0, 1]);
    let which = if matches!(delta, DeltaView::None) { 1 } else { 2 };
    enqueue_reductions::<E>(&dev, s, which, 1, len.div_ceil(REDUCE_CHUNK), 0)?;
    fetch(&dev, s, 1)?;
    Ok(reduction_at(&s.out_host, 0))
}

/// Enqueue the reductions described in `s` (`s.entries.len()` descriptors in `s.words`,
/// covering `blocks` blocks) through table `which`: zero the verdict and the `n` tensors'
/// results in `out_dev` (grown to hold `extra` more doubles after them), then both reduction
/// kernels, which write each tensor's three sums at its index.
fn enqueue_reductions<E: CudaElement>(
    dev: &Device,
    s: &mut Scratch,
    which: usize,
    n: usize,
    blocks: u64,
    extra: usize,
) -> Result<(), BackendError> {
    let nt = s.entries.len();
    let used = VERDICT + 3 * n;
    ensure(&dev.stream, &mut s.out_dev, used + extra)?;
    let out_dev = s.out_dev.as_mut().expect("ensured");
    dev.stream.memset_zeros(&mut out_dev.slice_mut(0..used)).map_err(driver_err)?;
    if nt == 0 {
        return Ok(());
    }
    upload_table(dev, s, which)?;
    ensure(&dev.stream, &mut s.partials, 3 * blocks as usize)?;
    let table = s.tables[which].dev.as_ref().expect("uploaded");
    let partials = s.partials.as_mut().expect("ensured");
    let out_dev = s.out_dev.as_mut().expect("ensured");
    let nt32 = nt as u32;
    let block = (REDUCE_THREADS, 1, 1);

    let cfg = LaunchConfig { grid_dim: (dev.grid(blocks), 1, 1), block_dim: block, shared_mem_bytes: 0 };
    let mut b = dev.stream.launch_builder(&dev.partial_fns[E::DTYPE_INDEX]);
    b.arg(table).arg(&nt32).arg(&blocks).arg(&mut *partials);
    // SAFETY: the kernel is (const Desc*, u32, u64, double*); the table holds `nt` descriptors,
    // checked by the caller, covering `blocks` blocks; `partials` holds 3 * blocks doubles.
    unsafe { b.launch(cfg) }.map_err(driver_err)?;

    let cfg = LaunchConfig { grid_dim: (dev.grid(nt as u64), 1, 1), block_dim: block, shared_mem_bytes: 0 };
    let mut b = dev.stream.launch_builder(&dev.final_fn);
    let mut results = out_dev.slice_mut(VERDICT..used);
    b.arg(table).arg(&nt32).arg(&blocks).arg(&*partials).arg(&mut results);
    // SAFETY: (const Desc*, u32, u64, const double*, double*); every descriptor's tensor index
    // is below `n`, and `results` holds 3 * n doubles.
    unsafe { b.launch(cfg) }.map_err(driver_err)?;
    Ok(())
}

/// Copy the verdict and the `n` tensors' reductions into `s.out_host`, waiting for the stream.
fn fetch(dev: &Device, s: &mut Scratch, n: usize) -> Result<(), BackendError> {
    let used = VERDICT + 3 * n;
    let src = ptr_of(dev, s.out_dev.as_ref().expect("ensured"));
    Staging::ensure(&mut s.down, &dev.ctx, used, false)?;
    let down = s.down.as_mut().expect("ensured");
    down.download(src, used, &dev.stream)?;
    dev.stream.synchronize().map_err(driver_err)?;
    s.out_host.clear();
    s.out_host.extend_from_slice(&down.host()?[..used]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels have no gradient-capture rule: its scalar set is refused with a typed error
    /// (checked before any launch, so nothing changes), the other rules get theirs.
    #[test]
    fn capture_rule_is_unsupported() {
        let capture = Kernel::<f32> { rule: Rule::Capture, ..Kernel::idle() };
        assert!(matches!(scalar_set(&capture), Err(BackendError::Unsupported(_))));
        let capture = Kernel::<f64> { rule: Rule::Capture, ..Kernel::idle() };
        assert!(matches!(scalar_set(&capture), Err(BackendError::Unsupported(_))));
        assert!(scalar_set(&Kernel::<f32>::idle()).is_ok());
    }
}
