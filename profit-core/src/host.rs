//! Backends whose tensors live in host memory: implement [`HostBackend`] (shape, allocation,
//! slice access) and get [`TensorOps`] with fused single-pass loops, multi-threaded with rayon
//! (feature `rayon`, on by default).
//!
//! Each pass reads and writes every array exactly once (SPEC section 4); nothing is allocated
//! during a step. Reductions use a fixed chunk tree that depends only on the tensor's length, so
//! results are bitwise reproducible whatever the thread count or scheduling.

use crate::backend::{Kernel, Pass, Reduction, TensorOps, TensorState};
use crate::element::Element;
use crate::error::BackendError;
use crate::optim::Rule;

/// Elements per reduction leaf (and the alignment of parallel splits).
pub const CHUNK: usize = 1 << 14;
/// Tensors at least this long are split across threads.
pub const PAR_MIN: usize = 1 << 16;

/// A tensor library whose tensors are contiguous host memory.
///
/// Implementing this trait gives a [`TensorOps`] implementation through a blanket impl.
///
/// ```
/// use profit_core::{host::HostBackend, error::BackendError};
///
/// /// Plain `Vec<f32>` tensors (one dimension).
/// struct VecBackend;
/// impl HostBackend for VecBackend {
///     type Elem = f32;
///     type Tensor = Vec<f32>;
///     const NAME: &'static str = "vec";
///     fn shape(t: &Vec<f32>) -> Vec<usize> { vec![t.len()] }
///     fn zeros_like(t: &Vec<f32>) -> Vec<f32> { vec![0.0; t.len()] }
///     fn as_slice(t: &Vec<f32>) -> Result<&[f32], BackendError> { Ok(t) }
///     fn as_mut_slice(t: &mut Vec<f32>) -> Result<&mut [f32], BackendError> { Ok(t) }
/// }
///
/// let mut w = vec![1.0f32, 2.0];
/// let g = vec![0.5f32, -0.5];
/// let mut opt = profit_core::Plain::<VecBackend>::new(
///     profit_core::Sgd { lr: 0.1, ..Default::default() }.into(),
///     &[&w],
/// ).unwrap();
/// opt.step(&mut [&mut w], &[&g]).unwrap();
/// assert_eq!(w, vec![0.95, 2.05]);
/// ```
pub trait HostBackend: Sized + 'static {
    /// Element type.
    type Elem: Element;
    /// The library's tensor type.
    type Tensor: Send + Sync;
    /// Short name for reports.
    const NAME: &'static str;
    /// Shape (row-major dimensions).
    fn shape(t: &Self::Tensor) -> Vec<usize>;
    /// Whether `t` has this shape (override to avoid allocating).
    fn has_shape(t: &Self::Tensor, shape: &[usize]) -> bool {
        Self::shape(t) == shape
    }
    /// Zero-filled tensor of the same shape.
    fn zeros_like(t: &Self::Tensor) -> Self::Tensor;
    /// Elements in row-major order, or [`BackendError::NotContiguous`].
    fn as_slice(t: &Self::Tensor) -> Result<&[Self::Elem], BackendError>;
    /// Mutable elements in row-major order, or [`BackendError::NotContiguous`].
    fn as_mut_slice(t: &mut Self::Tensor) -> Result<&mut [Self::Elem], BackendError>;
}

fn len_err() -> BackendError {
    BackendError::Device("tensor lengths differ".into())
}

impl<H: HostBackend> TensorOps for H {
    type Elem = H::Elem;
    type Tensor = H::Tensor;
    const NAME: &'static str = H::NAME;

    fn shape(t: &Self::Tensor) -> Vec<usize> {
        H::shape(t)
    }
    fn has_shape(t: &Self::Tensor, shape: &[usize]) -> bool {
        H::has_shape(t, shape)
    }
    fn numel(t: &Self::Tensor) -> usize {
        H::as_slice(t).map(|s| s.len()).unwrap_or_else(|_| H::shape(t).iter().product())
    }
    fn validate(t: &Self::Tensor) -> Result<(), BackendError> {
        H::as_slice(t).map(|_| ())
    }
    fn zeros_like(t: &Self::Tensor) -> Result<Self::Tensor, BackendError> {
        Ok(H::zeros_like(t))
    }
    fn copy(dst: &mut Self::Tensor, src: &Self::Tensor) -> Result<(), BackendError> {
        let s = H::as_slice(src)?;
        let d = H::as_mut_slice(dst)?;
        if d.len() != s.len() {
            return Err(len_err());
        }
        d.copy_from_slice(s);
        Ok(())
    }
    fn read(t: &Self::Tensor, out: &mut [Self::Elem]) -> Result<(), BackendError> {
        let s = H::as_slice(t)?;
        if s.len() != out.len() {
            return Err(len_err());
        }
        out.copy_from_slice(s);
        Ok(())
    }
    fn write(t: &mut Self::Tensor, src: &[Self::Elem]) -> Result<(), BackendError> {
        let d = H::as_mut_slice(t)?;
        if d.len() != src.len() {
            return Err(len_err());
        }
        d.copy_from_slice(src);
        Ok(())
    }
    fn reduce(delta: Option<&Self::Tensor>, grad: &Self::Tensor) -> Result<Reduction, BackendError> {
        let g = H::as_slice(grad)?;
        let d = delta.map(H::as_slice).transpose()?;
        if d.is_some_and(|d| d.len() != g.len()) {
            return Err(len_err());
        }
        Ok(reduce_slices(d, g))
    }
    fn apply(
        kernel: &Kernel<Self::Elem>,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        state: &mut TensorState<Self::Tensor>,
    ) -> Result<(), BackendError> {
        apply_host::<H>(kernel, param, grad, state)
    }

    #[cfg(feature = "rayon")]
    fn reduce_all(
        active: &[bool],
        states: Option<&[TensorState<Self::Tensor>]>,
        grads: &[&Self::Tensor],
        out: &mut [Reduction],
    ) -> Result<(), BackendError> {
        use rayon::prelude::*;
        out.par_iter_mut().zip(grads.par_iter()).enumerate().try_for_each(|(i, (o, g))| {
            *o = if active[i] {
                Self::reduce(states.and_then(|s| s[i].delta.as_ref()), g)?
            } else {
                Reduction::default()
            };
            Ok(())
        })
    }

    #[cfg(feature = "rayon")]
    fn apply_all(
        active: &[bool],
        kernels: &[Kernel<Self::Elem>],
        params: &mut [&mut Self::Tensor],
        grads: &[&Self::Tensor],
        states: &mut [TensorState<Self::Tensor>],
    ) -> Result<(), BackendError> {
        use rayon::prelude::*;
        (active, kernels)
            .into_par_iter()
            .zip(params.par_iter_mut())
            .zip(grads.par_iter())
            .zip(states.par_iter_mut())
            .try_for_each(|((((on, k), p), g), s)| match on {
                true => apply_host::<H>(k, p, g, s),
                false => Ok(()),
            })
    }
}

/// The slices one fused pass touches. Unused arrays are empty.
struct Lanes<'a, E> {
    p: &'a mut [E],
    g: &'a [E],
    d: &'a mut [E],
    a: &'a mut [E],
    s: [&'a mut [E]; 3],
}

fn split_opt<E>(s: &mut [E], mid: usize) -> (&mut [E], &mut [E]) {
    if s.is_empty() {
        (&mut [], &mut [])
    } else {
        s.split_at_mut(mid)
    }
}

impl<'a, E> Lanes<'a, E> {
    fn split(self, mid: usize) -> (Lanes<'a, E>, Lanes<'a, E>) {
        let (p0, p1) = self.p.split_at_mut(mid);
        let (g0, g1) = self.g.split_at(mid);
        let (d0, d1) = split_opt(self.d, mid);
        let (a0, a1) = split_opt(self.a, mid);
        let [s0, s1, s2] = self.s;
        let (s00, s01) = split_opt(s0, mid);
        let (s10, s11) = split_opt(s1, mid);
        let (s20, s21) = split_opt(s2, mid);
        (
            Lanes { p: p0, g: g0, d: d0, a: a0, s: [s00, s10, s20] },
            Lanes { p: p1, g: g1, d: d1, a: a1, s: [s01, s11, s21] },
        )
    }
}

fn apply_host<H: HostBackend>(
    k: &Kernel<H::Elem>,
    param: &mut H::Tensor,
    grad: &H::Tensor,
    state: &mut TensorState<H::Tensor>,
) -> Result<(), BackendError> {
    let p = H::as_mut_slice(param)?;
    let g = H::as_slice(grad)?;
    let n = p.len();
    let needs_delta = !matches!(k.pass, Pass::Plain);
    let TensorState { anchor, delta, ref_slots, main_slots } = state;
    let d: &mut [H::Elem] = match (delta, needs_delta) {
        (Some(d), true) => H::as_mut_slice(d)?,
        (None, true) => return Err(BackendError::Device("pass needs delta".into())),
        _ => &mut [],
    };
    let needs_anchor = matches!(k.pass, Pass::Reference { first: true } | Pass::Main);
    let a: &mut [H::Elem] = match (anchor, needs_anchor) {
        (Some(a), true) => H::as_mut_slice(a)?,
        _ => &mut [],
    };
    let slots = match k.pass {
        Pass::Reference { .. } => ref_slots,
        _ => main_slots,
    };
    if slots.len() < k.rule.slots() {
        return Err(BackendError::Device("missing optimizer state slots".into()));
    }
    let mut it = slots.iter_mut();
    let mut next = || -> Result<&mut [H::Elem], BackendError> {
        match it.next() {
            Some(t) => H::as_mut_slice(t),
            None => Ok(&mut []),
        }
    };
    let s = [next()?, next()?, next()?];
    let used = k.rule.slots();
    let ok = g.len() == n
        && (d.is_empty() || d.len() == n)
        && (a.is_empty() || a.len() == n)
        && s.iter().take(used).all(|x| x.len() == n);
    if !ok {
        return Err(len_err());
    }
    run(k, Lanes { p, g, d, a, s });
    Ok(())
}

// Pass codes for the monomorphized loops.
const PLAIN: u8 = 0;
const REF_FIRST_ANCHOR: u8 = 1;
const REF_FIRST: u8 = 2;
const REF_ACC: u8 = 3;
const MAIN_ANCHOR: u8 = 4;
const MAIN_SUB: u8 = 5;

fn run<E: Element>(k: &Kernel<E>, l: Lanes<'_, E>) {
    let code = match k.pass {
        Pass::Plain => PLAIN,
        Pass::Reference { first: true } if !l.a.is_empty() => REF_FIRST_ANCHOR,
        Pass::Reference { first: true } => REF_FIRST,
        Pass::Reference { first: false } => REF_ACC,
        Pass::Main if !l.a.is_empty() => MAIN_ANCHOR,
        Pass::Main => MAIN_SUB,
    };
    match code {
        PLAIN => by_rule::<E, PLAIN>(k, l),
        REF_FIRST_ANCHOR => by_rule::<E, REF_FIRST_ANCHOR>(k, l),
        REF_FIRST => by_rule::<E, REF_FIRST>(k, l),
        REF_ACC => by_rule::<E, REF_ACC>(k, l),
        MAIN_ANCHOR => by_rule::<E, MAIN_ANCHOR>(k, l),
        _ => by_rule::<E, MAIN_SUB>(k, l),
    }
}

fn by_rule<E: Element, const PASS: u8>(k: &Kernel<E>, l: Lanes<'_, E>) {
    let (gs, pj) = (k.grad_scale, k.proj);
    match k.rule {
        Rule::Sgd(r) => split_run::<E, PASS, 0, _>(l, gs, pj, &|p, g, _, _, _| r.update(p, g)),
        Rule::SgdMomentum(r) => split_run::<E, PASS, 1, _>(l, gs, pj, &|p, g, b, _, _| r.update(p, g, b)),
        Rule::Adam(r) if r.amsgrad => {
            split_run::<E, PASS, 3, _>(l, gs, pj, &|p, g, m, v, x| r.update(p, g, m, v, x))
        }
        Rule::Adam(r) => split_run::<E, PASS, 2, _>(l, gs, pj, &|p, g, m, v, x| r.update(p, g, m, v, x)),
        Rule::RmsProp(r) => match (r.centered, r.use_momentum) {
            (false, false) => split_run::<E, PASS, 1, _>(l, gs, pj, &|p, g, s, a, b| r.update(p, g, s, a, b)),
            (true, false) => split_run::<E, PASS, 2, _>(l, gs, pj, &|p, g, s, a, b| r.update(p, g, s, a, b)),
            (false, true) => split_run::<E, PASS, 2, _>(l, gs, pj, &|p, g, s, b, a| r.update(p, g, s, a, b)),
            (true, true) => split_run::<E, PASS, 3, _>(l, gs, pj, &|p, g, s, a, b| r.update(p, g, s, a, b)),
        },
    }
}

/// Split large tensors across threads at chunk-aligned points, then run the loop.
fn split_run<E: Element, const PASS: u8, const N: usize, F>(l: Lanes<'_, E>, gs: E, pj: E, f: &F)
where
    F: Fn(E, E, &mut E, &mut E, &mut E) -> E + Sync,
{
    #[cfg(feature = "rayon")]
    {
        let n = l.p.len();
        if n >= PAR_MIN {
            let mid = n.div_ceil(CHUNK) / 2 * CHUNK;
            let (l0, l1) = l.split(mid);
            rayon::join(
                || split_run::<E, PASS, N, F>(l0, gs, pj, f),
                || split_run::<E, PASS, N, F>(l1, gs, pj, f),
            );
            return;
        }
    }
    fused_loop::<E, PASS, N, F>(l, gs, pj, f)
}

/// The single pass: every array read once, every written array written once.
#[inline(always)]
fn fused_loop<E: Element, const PASS: u8, const N: usize, F>(l: Lanes<'_, E>, gs: E, pj: E, f: &F)
where
    F: Fn(E, E, &mut E, &mut E, &mut E) -> E,
{
    let n = l.p.len();
    let p = l.p;
    let g = &l.g[..n];
    let uses_d = PASS != PLAIN;
    let uses_a = PASS == REF_FIRST_ANCHOR || PASS == MAIN_ANCHOR;
    let d = if uses_d { &mut l.d[..n] } else { &mut l.d[..0] };
    let a = if uses_a { &mut l.a[..n] } else { &mut l.a[..0] };
    let [s0, s1, s2] = l.s;
    let s0 = if N > 0 { &mut s0[..n] } else { &mut s0[..0] };
    let s1 = if N > 1 { &mut s1[..n] } else { &mut s1[..0] };
    let s2 = if N > 2 { &mut s2[..n] } else { &mut s2[..0] };
    let zero = E::zero();
    for i in 0..n {
        let gi = gs * g[i];
        let (p0, gi) = match PASS {
            MAIN_ANCHOR => (a[i], gi - pj * d[i]),
            MAIN_SUB => (p[i] - d[i], gi - pj * d[i]),
            _ => (p[i], gi),
        };
        let mut x = if N > 0 { s0[i] } else { zero };
        let mut y = if N > 1 { s1[i] } else { zero };
        let mut z = if N > 2 { s2[i] } else { zero };
        let u = f(p0, gi, &mut x, &mut y, &mut z);
        if N > 0 {
            s0[i] = x;
        }
        if N > 1 {
            s1[i] = y;
        }
        if N > 2 {
            s2[i] = z;
        }
        p[i] = p0 + u;
        match PASS {
            REF_FIRST_ANCHOR => {
                a[i] = p0;
                d[i] = u;
            }
            REF_FIRST => d[i] = u,
            REF_ACC => d[i] = d[i] + u,
            _ => {}
        }
    }
}

/// Deterministic f64 reductions over host slices: a fixed tree of [`CHUNK`]-sized leaves.
pub fn reduce_slices<E: Element>(d: Option<&[E]>, g: &[E]) -> Reduction {
    let n = g.len();
    if n > CHUNK {
        let mid = n.div_ceil(CHUNK) / 2 * CHUNK;
        let (g0, g1) = g.split_at(mid);
        let (d0, d1) = match d {
            Some(d) => {
                let (a, b) = d.split_at(mid);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        #[cfg(feature = "rayon")]
        let (r0, r1) = if n >= PAR_MIN {
            rayon::join(|| reduce_slices(d0, g0), || reduce_slices(d1, g1))
        } else {
            (reduce_slices(d0, g0), reduce_slices(d1, g1))
        };
        #[cfg(not(feature = "rayon"))]
        let (r0, r1) = (reduce_slices(d0, g0), reduce_slices(d1, g1));
        return r0.add(r1);
    }
    match d {
        Some(d) => leaf3(d, g),
        None => Reduction { grad_sq: leaf_sq(g), ..Reduction::default() },
    }
}

const LANES: usize = 8;

fn leaf_sq<E: Element>(g: &[E]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = g.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            let x = c[j].as_f64();
            acc[j] += x * x;
        }
    }
    for (j, x) in rest.iter().enumerate() {
        let x = x.as_f64();
        acc[j] += x * x;
    }
    acc.iter().sum()
}

fn leaf3<E: Element>(d: &[E], g: &[E]) -> Reduction {
    let mut om = [0.0f64; LANES];
    let mut dd = [0.0f64; LANES];
    let mut gg = [0.0f64; LANES];
    let n = g.len();
    let d = &d[..n];
    let full = n / LANES * LANES;
    for (dc, gc) in d[..full].chunks_exact(LANES).zip(g[..full].chunks_exact(LANES)) {
        for j in 0..LANES {
            let x = dc[j].as_f64();
            let y = gc[j].as_f64();
            om[j] += x * y;
            dd[j] += x * x;
            gg[j] += y * y;
        }
    }
    for j in 0..n - full {
        let x = d[full + j].as_f64();
        let y = g[full + j].as_f64();
        om[j] += x * y;
        dd[j] += x * x;
        gg[j] += y * y;
    }
    Reduction { omega: om.iter().sum(), delta_sq: dd.iter().sum(), grad_sq: gg.iter().sum() }
}
