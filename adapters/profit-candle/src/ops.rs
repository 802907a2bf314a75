//! The [`CandleOps`] backend: profit-core's [`TensorOps`] over plain candle [`Tensor`]s, every
//! pass written with candle tensor ops, so that it runs on whatever device the tensors live on
//! (CUDA, Metal, or the CPU when forced) and nothing leaves that device but the reductions'
//! scalars (3 per tensor per reducing call, read back in one transfer).
//!
//! It is slower than fused kernels (each operation is its own candle kernel and its own
//! temporary tensor), but it runs the host loops' arithmetic operation for operation:
//!
//! - element math in the element's math type: `f64` for f64 tensors, `f32` for f32, bf16 and
//!   f16 ones; a 16-bit tensor is cast to f32 once, computed there, and every stored value
//!   (parameter, anchor, delta, optimizer state) is cast back once (one rounding, to nearest
//!   even, as profit-core's host loops do);
//! - every scalar is the kernel's own (already rounded to the math type), and every operation is
//!   one IEEE-754 basic operation in the host loop's order (`g + wd * p`, `(1 - b2) * g * g` as
//!   `((1 - b2) * g) * g`, PyTorch's two-branch `lerp`, ...). A multiplication by a scalar is
//!   candle's `affine(s, 0)` (`x * s + 0`) and an addition of one `affine(1, s)`: the same
//!   values as the host loop's, except that a zero may come out as `+0` where the host loop
//!   writes `-0`. A term whose scalar is `0` (`wd * p` without weight decay) or a factor `1`
//!   is left out: the same value, up to that sign of zero (and except for an infinite
//!   parameter, where the host loop's `0 * inf` makes a NaN);
//! - reductions (`<delta, g>`, `|delta|^2`, `|g|^2`) in `f64` (`f32` on Metal, which has no
//!   `f64`), summed by candle's `sum_all` on the device: the same products as the host loops',
//!   summed in another order, so the sums (and through the projection coefficient the main
//!   steps) can differ from the host path in the last bits.
//!
//! On the CPU the elementwise passes match profit-core's host loops bitwise (up to the sign of
//! zeros), and whole runs match up to the reductions' order: measured by `tests/ops_paths.rs`
//! against the in-place path, bf16, f16 and f32 runs had bitwise equal parameters and f64 runs
//! stayed within 4e-12 relative (with the host's summation order substituted in an experiment,
//! f64 too was bitwise equal). On other devices this has not been run (no GPU build of candle
//! here). `affine` is only used as `x * s + 0` and `x * 1 + s`, whose values a fused
//! multiply-add would not change; whether candle's CUDA and Metal kernels divide and take
//! square roots correctly rounded (no fast-math flags) was not checked, and their sums run in
//! another order again.
//!
//! Parameters are written in place (their storage is overwritten, so a [`Var`](candle_core::Var)
//! that shares it sees the new values); optimizer state tensors are replaced by the newly
//! computed ones (never sharing storage with a parameter, a gradient or each other). Empty
//! tensors take no op. Each pass allocates its temporaries (candle ops return new tensors), unlike
//! the host loops. Every tensor of a pass is checked (dtype, device, layout) before the first
//! one changes; a device failure in the middle of a pass (out of memory) can leave the tensors
//! before it stepped.

use std::marker::PhantomData;

use candle_core::{DType, Device, Tensor};
use profit_core::backend::{Batch, DeltaView, Kernel, Parts, Reduction, TensorOps, TensorState, Variant};
use profit_core::element::{Element, Real};
use profit_core::error::BackendError;
use profit_core::optim::Rule;
use profit_core::optim::{AdamRule, RmsPropRule, SgdMomentumRule, SgdRule};

use crate::backend::{storage_key, CandleElement};

/// The tensor-ops backend: [`TensorOps`] for candle [`Tensor`]s of element `E` on any device
/// (see the [module docs](self)).
#[derive(Debug)]
pub struct CandleOps<E>(PhantomData<E>);

type R<E> = <E as Element>::Real;

/// `v` in `E`'s math type.
fn real<E: Element>(v: f64) -> R<E> {
    <R<E> as Real>::from_f64(v)
}

fn cerr(e: candle_core::Error) -> BackendError {
    // candle appends a backtrace to the message when RUST_BACKTRACE is set: keep the message.
    let msg = e.to_string();
    BackendError::Device(msg.split("\n   0: ").next().unwrap_or_default().trim_end().to_string())
}

/// The dtype reductions run in on `device`: `F64`, or `F32` on Metal (no `f64` there).
pub fn reduction_dtype(device: &Device) -> DType {
    if device.is_metal() {
        DType::F32
    } else {
        DType::F64
    }
}

/// Overwrite `dst`'s elements (contiguous, same shape, dtype and device) with `src`'s, in place.
fn copy_into(dst: &Tensor, src: &Tensor) -> candle_core::Result<()> {
    let d = dst.detach().flatten_all()?;
    let s = src.flatten_all()?;
    d.slice_set(&s, 0, 0)
}

/// The element math of one pass on one device: casts and scalar operations with the host
/// loops' rounding.
struct Math<E> {
    device: Device,
    _e: PhantomData<E>,
}

impl<E: CandleElement> Math<E> {
    fn new(device: &Device) -> Self {
        Math { device: device.clone(), _e: PhantomData }
    }

    /// The math dtype: `F64` for f64 elements, `F32` otherwise.
    fn real() -> DType {
        if <E as candle_core::WithDType>::DTYPE == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    /// Widen to the math type (exact; no copy when it is the element type).
    fn load(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        t.to_dtype(Self::real())
    }

    /// Round to the element type, once (no copy when it is the math type).
    fn store(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        t.to_dtype(<E as candle_core::WithDType>::DTYPE)
    }

    /// A 0-dim tensor holding `s` in the math type.
    fn scalar(&self, s: R<E>) -> candle_core::Result<Tensor> {
        match Self::real() {
            DType::F64 => Tensor::new(s.as_f64(), &self.device),
            _ => Tensor::new(s.as_f64() as f32, &self.device),
        }
    }

    /// `s * t` (`t` itself when `s == 1`).
    fn mul(&self, t: &Tensor, s: R<E>) -> candle_core::Result<Tensor> {
        if s == real::<E>(1.0) {
            Ok(t.clone())
        } else {
            t.affine(s.as_f64(), 0.0)
        }
    }

    /// `t + s * x` (`t` itself when `s == 0`).
    fn add_mul(&self, t: &Tensor, s: R<E>, x: &Tensor) -> candle_core::Result<Tensor> {
        if s == real::<E>(0.0) {
            Ok(t.clone())
        } else {
            t + self.mul(x, s)?
        }
    }

    /// `t / s`, correctly rounded (not `t * (1 / s)`).
    fn div(&self, t: &Tensor, s: R<E>) -> candle_core::Result<Tensor> {
        if s == real::<E>(1.0) {
            Ok(t.clone())
        } else {
            t.broadcast_div(&self.scalar(s)?)
        }
    }

    /// `t + s`.
    fn add(&self, t: &Tensor, s: R<E>) -> candle_core::Result<Tensor> {
        if s == real::<E>(0.0) {
            Ok(t.clone())
        } else {
            t.affine(1.0, s.as_f64())
        }
    }

    /// `torch.lerp(start, end, weight)` as [`profit_core::optim::lerp`] evaluates it.
    fn lerp(&self, start: &Tensor, end: &Tensor, w: R<E>) -> candle_core::Result<Tensor> {
        let diff = (end - start)?;
        if w.as_f64().abs() < 0.5 {
            start + self.mul(&diff, w)?
        } else {
            end - self.mul(&diff, real::<E>(1.0) - w)?
        }
    }

    /// One inner-optimizer step: the update `u` (new parameter `p + u`) and the new state
    /// slots, from the parameter `p`, the gradient `g` and the state slots (math type, in
    /// [`Rule::slots`] order). The formulas of [`profit_core::optim`], operation for operation.
    fn update(
        &self,
        rule: &Rule<R<E>>,
        p: &Tensor,
        g: &Tensor,
        s: &[Tensor],
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        match *rule {
            Rule::Sgd(SgdRule { lr, weight_decay }) => {
                let d = self.add_mul(g, weight_decay, p)?;
                Ok((self.mul(&d, lr)?.neg()?, vec![]))
            }
            Rule::SgdMomentum(SgdMomentumRule {
                lr,
                weight_decay,
                momentum,
                one_minus_dampening,
                nesterov,
                first,
            }) => {
                let d = self.add_mul(g, weight_decay, p)?;
                let b = if first {
                    d.clone()
                } else {
                    (self.mul(&s[0], momentum)? + self.mul(&d, one_minus_dampening)?)?
                };
                let step = if nesterov { (&d + self.mul(&b, momentum)?)? } else { b.clone() };
                Ok((self.mul(&step, lr)?.neg()?, vec![b]))
            }
            Rule::Adam(r) => self.adam(&r, p, g, s),
            Rule::RmsProp(r) => self.rmsprop(&r, p, g, s),
            Rule::Capture => Err(candle_core::Error::Msg(
                "an external main optimizer is not supported by CandleProfit".into(),
            )),
        }
    }

    fn adam(
        &self,
        r: &AdamRule<R<E>>,
        p: &Tensor,
        g: &Tensor,
        s: &[Tensor],
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let g = self.add_mul(g, r.l2, p)?;
        let m1 = self.lerp(&s[0], &g, r.one_minus_beta1)?;
        let v1 = (self.mul(&s[1], r.beta2)? + self.mul(&g, r.one_minus_beta2)?.mul(&g)?)?;
        let mut slots = vec![m1.clone(), v1.clone()];
        let vv = if r.amsgrad {
            // `if vmax > v1 { vmax } else { v1 }`: candle's maximum(v1, vmax) is
            // `if v1 < vmax { vmax } else { v1 }`, the same choice (NaN included).
            let mx = v1.maximum(&s[2])?;
            slots.push(mx.clone());
            mx
        } else {
            v1
        };
        let denom = self.add(&self.div(&vv.sqrt()?, r.bias_correction2_sqrt)?, r.eps)?;
        let t = self.mul(&m1, r.step_size)?.div(&denom)?;
        let u = if r.decay == real::<E>(0.0) { t.neg()? } else { (self.mul(p, r.decay)? - t)? };
        Ok((u, slots))
    }

    fn rmsprop(
        &self,
        r: &RmsPropRule<R<E>>,
        p: &Tensor,
        g: &Tensor,
        s: &[Tensor],
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let g = self.add_mul(g, r.weight_decay, p)?;
        let sq = (self.mul(&s[0], r.alpha)? + self.mul(&g, r.one_minus_alpha)?.mul(&g)?)?;
        let mut slots = vec![sq.clone()];
        let avg = if r.centered {
            let ga = self.lerp(&s[1], &g, r.one_minus_alpha)?;
            slots.push(ga.clone());
            self.add(&(sq - ga.sqr()?)?.sqrt()?, r.eps)?
        } else {
            self.add(&sq.sqrt()?, r.eps)?
        };
        let u = if r.use_momentum {
            let buf = &s[1 + r.centered as usize];
            let b = (self.mul(buf, r.momentum)? + g.div(&avg)?)?;
            slots.push(b.clone());
            self.mul(&b, r.lr)?.neg()?
        } else {
            self.mul(&g, r.lr)?.div(&avg)?.neg()?
        };
        Ok((u, slots))
    }

    /// `p0` and the (scaled, projected) gradient a variant starts from: `g = grad_scale * g`,
    /// and at main steps `g - proj * (delta * delta_scale)` from the restored parameter.
    fn start(
        &self,
        k: &Kernel<E>,
        v: Variant,
        p: &Tensor,
        g: &Tensor,
        state: &TensorState<Tensor>,
    ) -> Result<(Tensor, Tensor), BackendError> {
        let missing = || BackendError::Device(format!("{v:?} pass without its state buffer"));
        let gi = self.mul(&self.load(g).map_err(cerr)?, k.grad_scale).map_err(cerr)?;
        let project = |d: &Tensor| -> candle_core::Result<Tensor> {
            &gi - self.mul(&self.mul(d, k.delta_scale)?, k.proj)?
        };
        let r = match v {
            Variant::MainAnchor => {
                let a = state.anchor.as_ref().ok_or_else(missing)?;
                let d = state.delta.as_ref().ok_or_else(missing)?;
                let d = self.load(d).map_err(cerr)?;
                (self.load(a).map_err(cerr)?, project(&d).map_err(cerr)?)
            }
            Variant::MainSub => {
                let d = self.load(state.delta.as_ref().ok_or_else(missing)?).map_err(cerr)?;
                let p0 = (|| self.load(&self.store(&(self.load(p)? - &d)?)?))().map_err(cerr)?;
                (p0, project(&d).map_err(cerr)?)
            }
            Variant::MainRealized => {
                let a = self.load(state.anchor.as_ref().ok_or_else(missing)?).map_err(cerr)?;
                let d = (|| self.load(&self.store(&(self.load(p)? - &a)?)?))().map_err(cerr)?;
                (a, project(&d).map_err(cerr)?)
            }
            _ => (self.load(p).map_err(cerr)?, gi.clone()),
        };
        Ok(r)
    }
}

/// Check that a tensor is of element `E` and on `device`.
fn check<E: CandleElement>(what: &str, t: &Tensor, device: &Device) -> Result<(), BackendError> {
    if t.dtype() != <E as candle_core::WithDType>::DTYPE {
        return Err(BackendError::Device(format!(
            "{what} is {:?}, expected {:?}",
            t.dtype(),
            <E as candle_core::WithDType>::DTYPE
        )));
    }
    if !t.device().same_device(device) {
        return Err(BackendError::Device(format!(
            "{what} on {:?}, the parameter on {:?}",
            t.device().location(),
            device.location()
        )));
    }
    Ok(())
}

/// Everything one tensor's pass touches, checked before any tensor of the pass changes:
/// dtypes, one device, a contiguous parameter (written in place), equal element counts.
fn check_pass<E: CandleElement>(
    k: &Kernel<E>,
    param: &Tensor,
    grad: &Tensor,
    state: &TensorState<Tensor>,
) -> Result<(), BackendError> {
    let dev = param.device();
    let n = param.elem_count();
    check::<E>("parameter", param, dev)?;
    if !param.is_contiguous() {
        return Err(BackendError::NotContiguous);
    }
    let v = state.check(k)?;
    let slots = state.slots(k.pass);
    let mut all: Vec<(&str, &Tensor)> = vec![("gradient", grad)];
    if v.reads_anchor() || v.writes_anchor() {
        all.push(("anchor", state.anchor.as_ref().ok_or_else(|| BackendError::Device("no anchor".into()))?));
    }
    if v.reads_delta() || v.writes_delta() {
        all.push(("delta", state.delta.as_ref().ok_or_else(|| BackendError::Device("no delta".into()))?));
    }
    all.extend(slots[..k.rule.slots()].iter().map(|t| ("state slot", t)));
    for (what, t) in all {
        check::<E>(what, t, dev)?;
        if t.elem_count() != n {
            return Err(BackendError::Device(format!(
                "{what} has {} elements, the parameter {n}",
                t.elem_count()
            )));
        }
    }
    Ok(())
}

/// One tensor's pass (checked with [`check_pass`] first): compute every new value, then write
/// the parameter in place and replace the state tensors.
fn apply_one<E: CandleElement>(
    k: &Kernel<E>,
    param: &mut Tensor,
    grad: &Tensor,
    state: &mut TensorState<Tensor>,
) -> Result<(), BackendError> {
    let v = state.check(k)?;
    if param.elem_count() == 0 {
        // Nothing to step (and candle returns an empty tensor's own storage from some ops).
        return Ok(());
    }
    let used = k.rule.slots();
    let m = Math::<E>::new(param.device());
    // Detached: results record no autograd graph (which would keep every step's tensors alive).
    let p = param.detach();
    let g = grad.detach();
    let (p0, gi) = m.start(k, v, &p, &g, state)?;
    let slots: Vec<Tensor> =
        state.slots(k.pass)[..used].iter().map(|t| m.load(t)).collect::<Result<_, _>>().map_err(cerr)?;
    let (u, new_slots) = m.update(&k.rule, &p0, &gi, &slots).map_err(cerr)?;
    let new_p = m.store(&(&p0 + &u).map_err(cerr)?).map_err(cerr)?;
    let new_anchor = if v.writes_anchor() { Some(p.copy().map_err(cerr)?) } else { None };
    let new_delta = match v {
        Variant::RefFirstAnchor | Variant::RefFirst => Some(m.store(&u).map_err(cerr)?),
        Variant::RefAcc => {
            let d = state.delta.as_ref().ok_or_else(|| BackendError::Device("no delta".into()))?;
            Some((|| m.store(&(m.load(d)? + &u)?))().map_err(cerr)?)
        }
        _ => None,
    };
    let new_slots: Vec<Tensor> =
        new_slots.iter().map(|t| m.store(t)).collect::<Result<_, _>>().map_err(cerr)?;

    // A new state tensor must own its storage: one that shares it with the parameter (written
    // in place), the gradient (the caller's) or another state tensor is copied. Only SGD
    // momentum's first buffer (`b = g`) can, without weight decay or gradient scaling.
    let mut taken: Vec<usize> = [&p, &g].into_iter().map(storage_key).collect();
    taken.extend(
        state
            .anchor
            .iter()
            .chain(&state.delta)
            .chain(&state.ref_slots)
            .chain(&state.main_slots)
            .map(storage_key),
    );
    let mut own = |t: Tensor| -> Result<Tensor, BackendError> {
        let key = storage_key(&t);
        if taken.contains(&key) {
            let c = t.copy().map_err(cerr)?;
            taken.push(storage_key(&c));
            Ok(c)
        } else {
            taken.push(key);
            Ok(t)
        }
    };
    let new_slots: Vec<Tensor> = new_slots.into_iter().map(&mut own).collect::<Result<_, _>>()?;
    let new_delta = new_delta.map(&mut own).transpose()?;

    // Commit: the parameter (the only write that can fail), then the state.
    copy_into(&p, &new_p).map_err(cerr)?;
    if let Some(a) = new_anchor {
        state.anchor = Some(a);
    }
    if let Some(d) = new_delta {
        state.delta = Some(d);
    }
    for (t, s) in state.slots_for(k.pass).iter_mut().zip(new_slots) {
        *t = s;
    }
    Ok(())
}

/// The three sums of one tensor as a `[3]` tensor in the reduction dtype, on its device.
fn sums<E: CandleElement>(delta: DeltaView<'_, Tensor>, grad: &Tensor) -> candle_core::Result<Tensor> {
    let dev = grad.device();
    let rd = reduction_dtype(dev);
    let m = Math::<E>::new(dev);
    // Widen through the math type (bf16/f16 -> f32 -> f64: exact).
    let wide = |t: &Tensor| -> candle_core::Result<Tensor> { m.load(&t.detach())?.to_dtype(rd) };
    let y = wide(grad)?;
    let gsq = y.sqr()?.sum_all()?;
    let x = match delta {
        DeltaView::None => None,
        DeltaView::Stored(d) => Some(wide(d)?),
        DeltaView::Realized { param, anchor } => {
            let d = m.store(&(m.load(&param.detach())? - m.load(&anchor.detach())?)?)?;
            Some(wide(&d)?)
        }
    };
    match x {
        None => {
            let z = Tensor::zeros((), rd, dev)?;
            Tensor::stack(&[z.clone(), z, gsq], 0)
        }
        Some(x) => Tensor::stack(&[(&x * &y)?.sum_all()?, x.sqr()?.sum_all()?, gsq], 0),
    }
}

/// Read a `[3 k]` sums tensor to host `f64`s.
fn read_sums(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    match t.dtype() {
        DType::F64 => t.to_vec1::<f64>(),
        _ => Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?.into_iter().map(f64::from).collect()),
    }
}

fn reduction(s: &[f64]) -> Reduction {
    Reduction { omega: s[0], delta_sq: s[1], grad_sq: s[2] }
}

/// Check a reduction's inputs: element `E`, the gradient's device and element count.
fn check_reduce<E: CandleElement>(delta: DeltaView<'_, Tensor>, grad: &Tensor) -> Result<(), BackendError> {
    let dev = grad.device();
    check::<E>("gradient", grad, dev)?;
    let ts: Vec<&Tensor> = match delta {
        DeltaView::None => vec![],
        DeltaView::Stored(d) => vec![d],
        DeltaView::Realized { param, anchor } => vec![param, anchor],
    };
    for t in ts {
        check::<E>("delta", t, dev)?;
        if t.elem_count() != grad.elem_count() {
            return Err(BackendError::Device("tensor lengths differ".into()));
        }
    }
    Ok(())
}

impl<E: CandleElement> TensorOps for CandleOps<E> {
    type Elem = E;
    type Tensor = Tensor;
    const NAME: &'static str = "candle-ops";

    fn shape(t: &Tensor) -> Vec<usize> {
        t.dims().to_vec()
    }

    fn has_shape(t: &Tensor, shape: &[usize]) -> bool {
        t.dims() == shape
    }

    fn numel(t: &Tensor) -> usize {
        t.elem_count()
    }

    /// Element `E` (any device, any layout: parameters must also be contiguous, checked by
    /// the passes before anything changes).
    fn validate(t: &Tensor) -> Result<(), BackendError> {
        check::<E>("tensor", t, t.device())
    }

    /// Zeros of `t`'s shape and element type, on `t`'s device.
    fn zeros_like(t: &Tensor) -> Result<Tensor, BackendError> {
        Tensor::zeros(t.dims(), <E as candle_core::WithDType>::DTYPE, t.device()).map_err(cerr)
    }

    fn read(t: &Tensor, out: &mut [E]) -> Result<(), BackendError> {
        let v = t.flatten_all().and_then(|f| f.to_vec1::<E>()).map_err(cerr)?;
        if v.len() != out.len() {
            return Err(BackendError::Device("tensor lengths differ".into()));
        }
        out.copy_from_slice(&v);
        Ok(())
    }

    /// In place: `t`'s storage is overwritten (a var sharing it sees the values).
    fn write(t: &mut Tensor, src: &[E]) -> Result<(), BackendError> {
        Self::validate(t)?;
        if !t.is_contiguous() {
            return Err(BackendError::NotContiguous);
        }
        if src.len() != t.elem_count() {
            return Err(BackendError::Device("tensor lengths differ".into()));
        }
        let s = Tensor::from_slice(src, t.dims(), t.device()).map_err(cerr)?;
        copy_into(t, &s).map_err(cerr)
    }

    fn reduce(delta: DeltaView<'_, Tensor>, grad: &Tensor) -> Result<Reduction, BackendError> {
        check_reduce::<E>(delta, grad)?;
        if grad.elem_count() == 0 {
            return Ok(Reduction::default());
        }
        let s = sums::<E>(delta, grad).and_then(|t| read_sums(&t)).map_err(cerr)?;
        Ok(reduction(&s))
    }

    fn apply(
        kernel: &Kernel<E>,
        param: &mut Tensor,
        grad: &Tensor,
        state: &mut TensorState<Tensor>,
    ) -> Result<(), BackendError> {
        check_pass(kernel, param, grad, state)?;
        apply_one(kernel, param, grad, state)
    }

    /// Every active tensor's sums stay on the device until one transfer reads them all (one
    /// per device when the tensors are on several).
    fn reduce_all(batch: &mut Batch<'_, '_, Tensor, E>, with_delta: bool) -> Result<(), BackendError> {
        batch.clear_out();
        // The active tensors (with a gradient), each with its delta; empty tensors sum to zero:
        // no ops for them.
        let mut work: Vec<(usize, DeltaView<'_, Tensor>, &Tensor)> = vec![];
        for it in batch.items() {
            let delta = if with_delta { it.state.delta_view(&*it.param) } else { DeltaView::None };
            check_reduce::<E>(delta, it.grad)?;
            if it.grad.elem_count() > 0 {
                work.push((it.index, delta, it.grad));
            }
        }
        let Some(&(_, _, first)) = work.first() else { return Ok(()) };
        let dev = first.device();
        let one_device = work.iter().all(|(_, _, g)| g.device().same_device(dev));
        let per: Vec<Tensor> =
            work.iter().map(|&(_, d, g)| sums::<E>(d, g)).collect::<Result<_, _>>().map_err(cerr)?;
        let mut found = Vec::with_capacity(work.len());
        if one_device {
            let all = Tensor::cat(&per, 0).and_then(|t| read_sums(&t)).map_err(cerr)?;
            for (k, &(i, _, _)) in work.iter().enumerate() {
                found.push((i, reduction(&all[3 * k..3 * k + 3])));
            }
        } else {
            for (t, &(i, _, _)) in per.iter().zip(&work) {
                found.push((i, reduction(&read_sums(t).map_err(cerr)?)));
            }
        }
        drop(work);
        let Parts { out, .. } = batch.parts();
        for (i, r) in found {
            if let Some(o) = out.get_mut(i) {
                *o = r;
            }
        }
        Ok(())
    }

    fn apply_all(batch: &mut Batch<'_, '_, Tensor, E>) -> Result<(), BackendError> {
        for it in batch.items() {
            check_pass(it.kernel, it.param, it.grad, it.state)?;
        }
        for it in batch.items() {
            apply_one(it.kernel, it.param, it.grad, it.state)?;
        }
        Ok(())
    }
}
