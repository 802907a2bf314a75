//! The provided (slow, exact) [`TensorOps::reduce`] and [`TensorOps::apply`]: copy the tensors
//! into host memory with [`TensorOps::read`], run the host loops, and copy back with
//! [`TensorOps::write`] what the pass changed. A new backend passes the conformance suite with
//! these and overrides them for speed.

use super::TensorOps;
use crate::cpu::fused::{run, Lanes};
use crate::cpu::{reduce_slices, DeltaSlices};
use crate::error::BackendError;
use crate::kernel::{DeltaView, Kernel, Reduction, TensorState};

fn host<B: TensorOps>(t: &B::Tensor) -> Result<Vec<B::Elem>, BackendError> {
    let mut v = vec![B::Elem::default(); B::numel(t)];
    B::read(t, &mut v)?;
    Ok(v)
}

/// [`TensorOps::reduce`] through host copies.
pub(super) fn reduce<B: TensorOps>(
    delta: DeltaView<'_, B::Tensor>,
    grad: &B::Tensor,
) -> Result<Reduction, BackendError> {
    let g = host::<B>(grad)?;
    let (x, y) = match delta {
        DeltaView::None => (vec![], vec![]),
        DeltaView::Stored(d) => (host::<B>(d)?, vec![]),
        DeltaView::Realized { param, anchor } => (host::<B>(param)?, host::<B>(anchor)?),
    };
    let d = match delta {
        DeltaView::None => DeltaSlices::None,
        DeltaView::Stored(_) => DeltaSlices::Stored(&x),
        DeltaView::Realized { .. } => DeltaSlices::Realized { param: &x, anchor: &y },
    };
    if !d.fits(g.len()) {
        return Err(BackendError::Device("tensor lengths differ".into()));
    }
    Ok(reduce_slices(d, &g))
}

/// [`TensorOps::apply`] through host copies.
pub(super) fn apply<B: TensorOps>(
    k: &Kernel<B::Elem>,
    param: &mut B::Tensor,
    grad: &B::Tensor,
    state: &mut TensorState<B::Tensor>,
) -> Result<(), BackendError> {
    let v = state.check(k)?;
    let used = k.rule.slots();
    let slots = state.slots(k.pass);
    let mut p = host::<B>(param)?;
    let g = host::<B>(grad)?;
    let opt = |t: Option<&B::Tensor>, on: bool| match (t, on) {
        (Some(t), true) => host::<B>(t),
        _ => Ok(vec![]),
    };
    let uses_d = v.reads_delta() || v.writes_delta();
    let uses_a = v.reads_anchor() || v.writes_anchor();
    let mut d = opt(state.delta.as_ref(), uses_d)?;
    let mut a = opt(state.anchor.as_ref(), uses_a)?;
    let mut s: Vec<Vec<B::Elem>> = slots[..used].iter().map(host::<B>).collect::<Result<_, _>>()?;
    s.resize_with(3, Vec::new);
    {
        let [s0, s1, s2] = &mut s[..] else { unreachable!("three slots") };
        let lanes = Lanes { p: &mut p, g: &g, d: &mut d, a: &mut a, s: [s0, s1, s2] };
        lanes.check(v, used)?;
        run(k, v, lanes);
    }
    B::write(param, &p)?;
    if v.writes_delta() {
        if let Some(t) = state.delta.as_mut() {
            B::write(t, &d)?;
        }
    }
    if v.writes_anchor() {
        if let Some(t) = state.anchor.as_mut() {
            B::write(t, &a)?;
        }
    }
    for (t, vals) in state.slots_for(k.pass).iter_mut().zip(&s).take(used) {
        B::write(t, vals)?;
    }
    Ok(())
}
