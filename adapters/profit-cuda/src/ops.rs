//! `TensorOps` for [`Cuda<E>`]: multi-tensor launches of the fused PTX kernels.
//!
//! A step is O(1) launches whatever the number of tensors: one apply launch per distinct
//! (pass, rule) variant among the call's tensors (one in every call the core makes), and two
//! launches for the reductions, whose results come back as three `f64` per tensor.

use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use profit_core::{BackendError, DeltaView, Kernel, Pass, Reduction, Rule, TensorOps, TensorState, Variant};

use crate::device::{driver_err, ensure, Device, Scratch};
use crate::kernels::{self, APPLY_CHUNK, APPLY_THREADS, DESC_WORDS, REDUCE_CHUNK, REDUCE_THREADS, SC_STRIDE};
use crate::tensor::{CudaElement, CudaTensor};

/// The CUDA backend marker: `Profit<Cuda<f32>>` runs on [`CudaTensor<f32>`]s.
pub struct Cuda<E>(PhantomData<E>);

const F_NESTEROV: u32 = 1;
const F_FIRST: u32 = 2;
const F_CENTERED: u32 = 4;
const F_MOMENTUM: u32 = 8;

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
            v[6] = r.lerp_weight;
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
    let Scratch { tables, words, .. } = s;
    let t = &mut tables[which];
    if t.dev.is_some() && t.uploaded == *words {
        return Ok(());
    }
    ensure(&dev.stream, &mut t.dev, words.len())?;
    let buf = t.dev.as_mut().expect("ensured");
    // A pageable host-to-device copy returns once the source is staged: `words` may be reused.
    dev.stream.memcpy_htod(&words[..], &mut buf.slice_mut(0..words.len())).map_err(driver_err)?;
    t.uploaded.clear();
    t.uploaded.extend_from_slice(words);
    Ok(())
}

/// One fused pass over every active tensor, launched per (pass, rule) variant.
fn apply_all<E: CudaElement>(
    active: &[bool],
    kernels: &[Kernel<E>],
    params: &mut [&mut CudaTensor<E>],
    grads: &[&CudaTensor<E>],
    states: &mut [TensorState<CudaTensor<E>>],
) -> Result<(), BackendError> {
    let n = active.len();
    if kernels.len() != n || params.len() != n || grads.len() != n || states.len() != n {
        return Err(err("apply_all: argument counts differ"));
    }
    let Some(first) = (0..n).find(|&i| active[i]) else { return Ok(()) };
    let dev = params[first].dev.clone();
    let mut guard = dev.scratch.lock().map_err(|_| err("scratch lock poisoned"))?;
    let s = &mut *guard;
    s.entries.clear();

    // Check everything before launching anything.
    for i in (0..n).filter(|&i| active[i]) {
        let (k, p, g, st) = (&kernels[i], &*params[i], grads[i], &states[i]);
        same_dev(&dev, p, "a parameter")?;
        same_dev(&dev, g, "a gradient")?;
        let len = p.len;
        if g.len != len {
            return Err(err("apply_all: gradient and parameter lengths differ"));
        }
        let variant = st.variant(k.pass).ok_or_else(|| err("pass needs an anchor or a delta"))?;
        let pass = variant as usize;
        let check = |t: &CudaTensor<E>, what: &str| -> Result<(), BackendError> {
            same_dev(&dev, t, what)?;
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
        let slots = if matches!(k.pass, Pass::Reference { .. }) { &st.ref_slots } else { &st.main_slots };
        if slots.len() < k.rule.slots() {
            return Err(err("missing optimizer state slots"));
        }
        for t in &slots[..k.rule.slots()] {
            check(t, "optimizer state")?;
        }
        if len == 0 {
            continue;
        }
        let rule = scalar_set(k)?.0;
        s.entries.push(((pass * kernels::RULES.len() + rule) as u16, i as u32));
    }
    if s.entries.is_empty() {
        return Ok(());
    }
    s.entries.sort_unstable();

    // Descriptor table (grouped by variant, block_start relative to the group) and scalar sets
    // (consecutive identical sets shared).
    s.words.clear();
    s.bytes.clear();
    let set_bytes = SC_STRIDE * E::SCALAR_BYTES;
    let mut n_sets = 0u64;
    let mut blocks = 0u64;
    let mut group_variant = u16::MAX;
    for e in 0..s.entries.len() {
        let (variant, i) = s.entries[e];
        let i = i as usize;
        if variant != group_variant {
            group_variant = variant;
            blocks = 0;
        }
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
        let slots =
            if matches!(kernels[i].pass, Pass::Reference { .. }) { &st.ref_slots } else { &st.main_slots };
        let used = kernels[i].rule.slots();
        let slot = |j: usize| if j < used { ptr(&dev, &slots[j]) } else { 0 };
        let len = params[i].len as u64;
        s.words.extend_from_slice(&[
            ptr(&dev, params[i]),
            ptr(&dev, grads[i]),
            if v.reads_delta() || v.writes_delta() {
                st.delta.as_ref().map_or(0, |t| ptr(&dev, t))
            } else {
                0
            },
            if v.reads_anchor() || v.writes_anchor() {
                st.anchor.as_ref().map_or(0, |t| ptr(&dev, t))
            } else {
                0
            },
            slot(0),
            slot(1),
            slot(2),
            len,
            blocks,
            (n_sets - 1) | (flags as u64) << 32,
        ]);
        blocks += len.div_ceil(APPLY_CHUNK);
    }
    upload_table(&dev, s, 0)?;
    ensure(&dev.stream, &mut s.scalars, s.bytes.len())?;
    let sc = s.scalars.as_mut().expect("ensured");
    dev.stream.memcpy_htod(&s.bytes[..], &mut sc.slice_mut(0..s.bytes.len())).map_err(driver_err)?;

    // One launch per variant group.
    let table = s.tables[0].dev.as_ref().expect("uploaded");
    let sc = s.scalars.as_ref().expect("ensured");
    let mut start = 0;
    while start < s.entries.len() {
        let variant = s.entries[start].0;
        let end = start + s.entries[start..].iter().take_while(|e| e.0 == variant).count();
        let last = &s.words[(end - 1) * DESC_WORDS..end * DESC_WORDS];
        let total = last[8] + last[7].div_ceil(APPLY_CHUNK);
        let nt = (end - start) as u32;
        let view = table.slice(start * DESC_WORDS..end * DESC_WORDS);
        let f = dev.apply_fn(E::DTYPE_INDEX, variant as usize);
        let cfg = LaunchConfig {
            grid_dim: (dev.grid(total), 1, 1),
            block_dim: (APPLY_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = dev.stream.launch_builder(f);
        b.arg(&view).arg(&nt).arg(&total).arg(sc);
        // SAFETY: the kernel's signature is (const Desc*, u32, u64, const T*); the table holds
        // `nt` descriptors whose pointers were checked above to be live buffers of this
        // backend with `n` elements each, and the scalar sets they index were uploaded.
        unsafe { b.launch(cfg) }.map_err(driver_err)?;
        start = end;
    }
    Ok(())
}

/// Reductions of every active tensor: two launches, three `f64` per tensor back to the host.
fn reduce_all<E: CudaElement>(
    active: &[bool],
    params: &[&mut CudaTensor<E>],
    states: Option<&[TensorState<CudaTensor<E>>]>,
    grads: &[&CudaTensor<E>],
    out: &mut [Reduction],
) -> Result<(), BackendError> {
    let n = active.len();
    if grads.len() != n || params.len() != n || out.len() != n || states.is_some_and(|s| s.len() != n) {
        return Err(err("reduce_all: argument counts differ"));
    }
    out.fill(Reduction::default());
    let Some(first) = (0..n).find(|&i| active[i]) else { return Ok(()) };
    let dev = grads[first].dev.clone();
    let mut guard = dev.scratch.lock().map_err(|_| err("scratch lock poisoned"))?;
    let s = &mut *guard;
    s.entries.clear();
    s.words.clear();
    let mut blocks = 0u64;
    for i in (0..n).filter(|&i| active[i]) {
        let g = grads[i];
        same_dev(&dev, g, "a gradient")?;
        let delta = states.map_or(DeltaView::None, |st| st[i].delta_view(&*params[i]));
        let words = delta_words(&dev, delta, g)?;
        if g.len == 0 {
            continue;
        }
        s.entries.push((0, i as u32));
        let len = g.len as u64;
        s.words.extend_from_slice(&[words[0], words[1], words[2], words[3], 0, 0, 0, len, blocks, 0]);
        blocks += len.div_ceil(REDUCE_CHUNK);
    }
    if s.entries.is_empty() {
        return Ok(());
    }
    let which = if states.is_some() { 2 } else { 1 };
    let nt = s.entries.len();
    launch_reductions::<E>(&dev, s, which, nt, blocks)?;
    for (e, &(_, i)) in s.entries.iter().enumerate() {
        let r = &s.out_host[3 * e..3 * e + 3];
        out[i as usize] = Reduction { omega: r[0], delta_sq: r[1], grad_sq: r[2] };
    }
    Ok(())
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
        apply_all(&[true], std::slice::from_ref(kernel), &mut [param], &[grad], std::slice::from_mut(state))
    }

    fn reduce_all(
        active: &[bool],
        params: &[&mut CudaTensor<E>],
        states: Option<&[TensorState<CudaTensor<E>>]>,
        grads: &[&CudaTensor<E>],
        out: &mut [Reduction],
    ) -> Result<(), BackendError> {
        reduce_all(active, params, states, grads, out)
    }

    fn apply_all(
        active: &[bool],
        kernels: &[Kernel<E>],
        params: &mut [&mut CudaTensor<E>],
        grads: &[&CudaTensor<E>],
        states: &mut [TensorState<CudaTensor<E>>],
    ) -> Result<(), BackendError> {
        apply_all(active, kernels, params, grads, states)
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
    let mut guard = dev.scratch.lock().map_err(|_| err("scratch lock poisoned"))?;
    let s = &mut *guard;
    for t in &mut s.tables {
        ensure(&dev.stream, &mut t.dev, n * DESC_WORDS)?;
        t.uploaded.reserve(n * DESC_WORDS);
    }
    ensure(&dev.stream, &mut s.scalars, n * SC_STRIDE * E::SCALAR_BYTES)?;
    ensure(&dev.stream, &mut s.partials, 3 * blocks as usize)?;
    ensure(&dev.stream, &mut s.out_dev, 3 * n)?;
    s.out_host.reserve(3 * n);
    s.words.reserve(n * DESC_WORDS);
    s.bytes.reserve(n * SC_STRIDE * E::SCALAR_BYTES);
    s.entries.reserve(n);
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
    let mut guard = dev.scratch.lock().map_err(|_| err("scratch lock poisoned"))?;
    let s = &mut *guard;
    let len = grad.len as u64;
    s.words.clear();
    s.words.extend_from_slice(&[w[0], w[1], w[2], w[3], 0, 0, 0, len, 0, 0]);
    let which = if matches!(delta, DeltaView::None) { 1 } else { 2 };
    launch_reductions::<E>(&dev, s, which, 1, len.div_ceil(REDUCE_CHUNK))?;
    let r = &s.out_host[..3];
    Ok(Reduction { omega: r[0], delta_sq: r[1], grad_sq: r[2] })
}

/// Upload the reduction table in `s.words` (`nt` descriptors over `blocks` blocks) into table
/// `which`, run both reduction kernels and copy the `3 * nt` results into `s.out_host`.
fn launch_reductions<E: CudaElement>(
    dev: &Device,
    s: &mut Scratch,
    which: usize,
    nt: usize,
    blocks: u64,
) -> Result<(), BackendError> {
    upload_table(dev, s, which)?;
    ensure(&dev.stream, &mut s.partials, 3 * blocks as usize)?;
    ensure(&dev.stream, &mut s.out_dev, 3 * nt)?;
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
    b.arg(table).arg(&nt32).arg(&blocks).arg(&*partials).arg(&mut *out_dev);
    // SAFETY: (const Desc*, u32, u64, const double*, double*); `out_dev` holds 3 * nt doubles.
    unsafe { b.launch(cfg) }.map_err(driver_err)?;

    s.out_host.resize(3 * nt, 0.0);
    dev.stream.memcpy_dtoh(&out_dev.slice(0..3 * nt), &mut s.out_host[..]).map_err(driver_err)?;
    dev.stream.synchronize().map_err(driver_err)
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
