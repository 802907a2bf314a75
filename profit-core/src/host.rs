//! Backends whose tensors live in host memory: implement [`HostBackend`] (shape, allocation,
//! slice access) and get [`TensorOps`] with fused single-pass loops, multi-threaded with rayon
//! (feature `rayon`, on by default).
//!
//! Each pass reads and writes every array exactly once (SPEC section 4); nothing is allocated
//! during a step. Reductions use a fixed chunk tree that depends only on the tensor's length, so
//! results are bitwise reproducible whatever the thread count or scheduling.
//!
//! Speed (measurements in `BENCHMARKS.md`, made with `profit bench`):
//! - one monomorphized loop per pass, optimizer and optimizer flag (nesterov, amsgrad, centered,
//!   ...), so the loop bodies have no branches and vectorize;
//! - on x86-64 the loops and the `f32` reduction leaves are also compiled for AVX2 and chosen at
//!   run time (the baseline SSE2 code made the Adam pass and the f64 reductions compute-bound,
//!   slower than memory); results are bitwise identical either way (see the unit tests), and
//!   `PROFIT_HOST_SIMD=0` forces the baseline code;
//! - tensors of at least [`PAR_MIN`] elements are split across rayon threads at [`CHUNK`]
//!   boundaries, and many tensors run in parallel with each other.

use crate::backend::{Kernel, Pass, Reduction, TensorOps, TensorState};
use crate::element::Element;
use crate::error::BackendError;
use crate::optim::{AdamRule, RmsPropRule, Rule, SgdMomentumRule};

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
    /// Element order of the slices (see [`TensorOps::STORAGE_ORDER`]).
    const STORAGE_ORDER: &'static str = "row-major";
    /// Fuse per-tensor projection's reductions with the update, tensor by tensor (default
    /// `true`; see [`TensorOps::FUSE_PER_TENSOR`]).
    const FUSE_PER_TENSOR: bool = true;
    /// Shape (row-major dimensions).
    fn shape(t: &Self::Tensor) -> Vec<usize>;
    /// Whether `t` has this shape. Called for every tensor at every step: override it so it
    /// does not allocate (the default compares against [`shape`](Self::shape)).
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

/// A plain host tensor: row-major elements with their shape. The tensor type of [`VecBackend`],
/// for frameworks whose own tensors cannot be borrowed as slices (copy in and out of these) and
/// for tests.
#[derive(Clone, Debug, PartialEq)]
pub struct VecTensor<E> {
    /// Row-major elements (`shape.iter().product()` of them).
    pub data: Vec<E>,
    /// Row-major dimensions (empty for a scalar).
    pub shape: Vec<usize>,
}

impl<E> VecTensor<E> {
    /// A tensor from its shape and row-major data, or `None` if their sizes differ.
    pub fn new(shape: &[usize], data: Vec<E>) -> Option<Self> {
        (shape.iter().product::<usize>() == data.len()).then(|| VecTensor { data, shape: shape.to_vec() })
    }
}

/// The built-in host backend over [`VecTensor`]s.
pub struct VecBackend<E>(std::marker::PhantomData<E>);

impl<E: Element> HostBackend for VecBackend<E> {
    type Elem = E;
    type Tensor = VecTensor<E>;
    const NAME: &'static str = "vec";

    fn shape(t: &VecTensor<E>) -> Vec<usize> {
        t.shape.clone()
    }
    fn has_shape(t: &VecTensor<E>, shape: &[usize]) -> bool {
        t.shape == shape
    }
    fn zeros_like(t: &VecTensor<E>) -> VecTensor<E> {
        VecTensor { data: vec![E::from_f64(0.0); t.data.len()], shape: t.shape.clone() }
    }
    fn as_slice(t: &VecTensor<E>) -> Result<&[E], BackendError> {
        Ok(&t.data)
    }
    fn as_mut_slice(t: &mut VecTensor<E>) -> Result<&mut [E], BackendError> {
        Ok(&mut t.data)
    }
}

fn len_err() -> BackendError {
    BackendError::Device("tensor lengths differ".into())
}

impl<H: HostBackend> TensorOps for H {
    type Elem = H::Elem;
    type Tensor = H::Tensor;
    const NAME: &'static str = H::NAME;
    const FUSE_PER_TENSOR: bool = H::FUSE_PER_TENSOR;
    const STORAGE_ORDER: &'static str = H::STORAGE_ORDER;

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

    #[cfg(feature = "rayon")]
    fn reduce_apply_all(
        active: &[bool],
        kernels: &mut [Kernel<Self::Elem>],
        params: &mut [&mut Self::Tensor],
        grads: &[&Self::Tensor],
        states: &mut [TensorState<Self::Tensor>],
        out: &mut [Reduction],
        coef: &(dyn Fn(Reduction) -> Self::Elem + Sync),
    ) -> Result<(), BackendError> {
        use rayon::prelude::*;
        (active, kernels)
            .into_par_iter()
            .zip(params.par_iter_mut())
            .zip(grads.par_iter())
            .zip(states.par_iter_mut())
            .zip(out.par_iter_mut())
            .try_for_each(|(((((on, k), p), g), s), o)| {
                if *on {
                    // Reduce, then apply while the tensor's delta and gradient are in cache.
                    *o = Self::reduce(s.delta.as_ref(), g)?;
                    k.proj = coef(*o);
                    apply_host::<H>(k, p, g, s)?;
                }
                Ok(())
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
    // Every flag a rule branches on becomes a constant inside the loop body (the rule is rebuilt
    // there with literal flags), so the loops have no data-independent branches and vectorize.
    let (gs, pj) = (k.grad_scale, k.proj);
    match k.rule {
        Rule::Sgd(r) => split_run::<E, PASS, 0, _>(l, gs, pj, &|p, g, _, _, _| r.update(p, g)),
        Rule::SgdMomentum(r) => match (r.first, r.nesterov) {
            (false, false) => sgd_momentum::<E, PASS, false, false>(r, l, gs, pj),
            (false, true) => sgd_momentum::<E, PASS, false, true>(r, l, gs, pj),
            (true, false) => sgd_momentum::<E, PASS, true, false>(r, l, gs, pj),
            (true, true) => sgd_momentum::<E, PASS, true, true>(r, l, gs, pj),
        },
        Rule::Adam(r) if r.amsgrad => split_run::<E, PASS, 3, _>(l, gs, pj, &|p, g, m, v, x| {
            AdamRule { amsgrad: true, ..r }.update(p, g, m, v, x)
        }),
        Rule::Adam(r) => split_run::<E, PASS, 2, _>(l, gs, pj, &|p, g, m, v, x| {
            AdamRule { amsgrad: false, ..r }.update(p, g, m, v, x)
        }),
        Rule::RmsProp(r) => match (r.centered, r.use_momentum) {
            (false, false) => split_run::<E, PASS, 1, _>(l, gs, pj, &|p, g, s, a, b| {
                RmsPropRule { centered: false, use_momentum: false, ..r }.update(p, g, s, a, b)
            }),
            (true, false) => split_run::<E, PASS, 2, _>(l, gs, pj, &|p, g, s, a, b| {
                RmsPropRule { centered: true, use_momentum: false, ..r }.update(p, g, s, a, b)
            }),
            (false, true) => split_run::<E, PASS, 2, _>(l, gs, pj, &|p, g, s, b, a| {
                RmsPropRule { centered: false, use_momentum: true, ..r }.update(p, g, s, a, b)
            }),
            (true, true) => split_run::<E, PASS, 3, _>(l, gs, pj, &|p, g, s, a, b| {
                RmsPropRule { centered: true, use_momentum: true, ..r }.update(p, g, s, a, b)
            }),
        },
    }
}

fn sgd_momentum<E: Element, const PASS: u8, const FIRST: bool, const NESTEROV: bool>(
    r: SgdMomentumRule<E>,
    l: Lanes<'_, E>,
    gs: E,
    pj: E,
) {
    split_run::<E, PASS, 1, _>(l, gs, pj, &|p, g, b, _, _| {
        SgdMomentumRule { first: FIRST, nesterov: NESTEROV, ..r }.update(p, g, b)
    })
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
    #[cfg(target_arch = "x86_64")]
    if simd::avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { simd::fused_loop_avx2::<E, PASS, N, F>(l, gs, pj, f) };
        return;
    }
    fused_loop::<E, PASS, N, F>(l, gs, pj, f)
}

/// Run-time selection of wider vector code on x86-64.
///
/// The loops are compiled twice: for the x86-64 baseline (SSE2) and with AVX2 enabled, chosen
/// at run time. Results are bitwise identical either way: the element math is IEEE-754 basic
/// operations (no fused multiply-add is formed, since Rust never contracts `a * b + c`), and the
/// reductions spell out their lane structure, so the vector width changes no rounding.
/// `PROFIT_HOST_SIMD=0` in the environment forces the baseline code (for measurements).
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    /// 0: not yet detected; 1: baseline; 2: AVX2.
    static MODE: AtomicU8 = AtomicU8::new(0);

    /// Whether to use the AVX2 loops (detected once).
    #[inline]
    pub(super) fn avx2() -> bool {
        match MODE.load(Ordering::Relaxed) {
            0 => {
                let on = std::arch::is_x86_feature_detected!("avx2")
                    && std::env::var("PROFIT_HOST_SIMD").map_or(true, |v| v != "0");
                MODE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
                on
            }
            m => m == 2,
        }
    }

    /// Force the baseline (`false`) or the AVX2 code (`true`, if the CPU has it); tests only.
    #[cfg(test)]
    pub(super) fn force(avx2: bool) -> bool {
        let on = avx2 && std::arch::is_x86_feature_detected!("avx2");
        MODE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
        on
    }

    /// [`fused_loop`](super::fused_loop) compiled with AVX2.
    #[target_feature(enable = "avx,avx2")]
    pub(super) unsafe fn fused_loop_avx2<E: Element, const PASS: u8, const N: usize, F>(
        l: Lanes<'_, E>,
        gs: E,
        pj: E,
        f: &F,
    ) where
        F: Fn(E, E, &mut E, &mut E, &mut E) -> E,
    {
        super::fused_loop::<E, PASS, N, F>(l, gs, pj, f)
    }

    /// `s` as `&[f32]` when `E` is `f32`.
    #[inline]
    pub(super) fn as_f32<E: Element>(s: &[E]) -> Option<&[f32]> {
        if std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>() {
            // SAFETY: `E` is `f32`: same layout, same length.
            Some(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) })
        } else {
            None
        }
    }

    /// [`lane_sums`](super::lane_sums) for `f32` with SSE2: lanes 0-7 live in four registers of
    /// two f64 each; each product and each sum is the same single rounding as the portable code.
    ///
    /// # Safety
    /// `g.len()` is a multiple of [`LANES`] and `d`, if given, is as long.
    pub(super) unsafe fn lane_sums_f32_sse2(d: Option<&[f32]>, g: &[f32]) -> LaneSums {
        use std::arch::x86_64::*;
        let n = g.len();
        let z = _mm_setzero_pd();
        let (mut om, mut dd, mut gg) = ([z; 4], [z; 4], [z; 4]);
        // f32 x 4 -> two f64 x 2 (lanes 0-1, 2-3).
        let widen = |v: __m128| [_mm_cvtps_pd(v), _mm_cvtps_pd(_mm_movehl_ps(v, v))];
        let gp = g.as_ptr();
        let mut i = 0;
        match d {
            Some(d) => {
                debug_assert_eq!(d.len(), n);
                let dp = d.as_ptr();
                while i < n {
                    let [x0, x1] = widen(_mm_loadu_ps(dp.add(i)));
                    let [x2, x3] = widen(_mm_loadu_ps(dp.add(i + 4)));
                    let [y0, y1] = widen(_mm_loadu_ps(gp.add(i)));
                    let [y2, y3] = widen(_mm_loadu_ps(gp.add(i + 4)));
                    for (k, (x, y)) in [(x0, y0), (x1, y1), (x2, y2), (x3, y3)].into_iter().enumerate() {
                        om[k] = _mm_add_pd(om[k], _mm_mul_pd(x, y));
                        dd[k] = _mm_add_pd(dd[k], _mm_mul_pd(x, x));
                        gg[k] = _mm_add_pd(gg[k], _mm_mul_pd(y, y));
                    }
                    i += LANES;
                }
            }
            None => {
                while i < n {
                    let [y0, y1] = widen(_mm_loadu_ps(gp.add(i)));
                    let [y2, y3] = widen(_mm_loadu_ps(gp.add(i + 4)));
                    for (k, y) in [y0, y1, y2, y3].into_iter().enumerate() {
                        gg[k] = _mm_add_pd(gg[k], _mm_mul_pd(y, y));
                    }
                    i += LANES;
                }
            }
        }
        let mut out = [[0.0f64; LANES]; 3];
        for (o, v) in out.iter_mut().zip([om, dd, gg]) {
            for (k, vk) in v.into_iter().enumerate() {
                _mm_storeu_pd(o.as_mut_ptr().add(2 * k), vk);
            }
        }
        out
    }

    /// [`lane_sums`](super::lane_sums) for `f32` with AVX: lanes 0-3 and 4-7 in two registers.
    ///
    /// # Safety
    /// The CPU supports AVX; `g.len()` is a multiple of [`LANES`] and `d`, if given, is as long.
    #[target_feature(enable = "avx,avx2")]
    pub(super) unsafe fn lane_sums_f32_avx(d: Option<&[f32]>, g: &[f32]) -> LaneSums {
        use std::arch::x86_64::*;
        let n = g.len();
        let z = _mm256_setzero_pd();
        let (mut om, mut dd, mut gg) = ([z; 2], [z; 2], [z; 2]);
        let gp = g.as_ptr();
        let mut i = 0;
        match d {
            Some(d) => {
                debug_assert_eq!(d.len(), n);
                let dp = d.as_ptr();
                while i < n {
                    for k in 0..2 {
                        let x = _mm256_cvtps_pd(_mm_loadu_ps(dp.add(i + 4 * k)));
                        let y = _mm256_cvtps_pd(_mm_loadu_ps(gp.add(i + 4 * k)));
                        om[k] = _mm256_add_pd(om[k], _mm256_mul_pd(x, y));
                        dd[k] = _mm256_add_pd(dd[k], _mm256_mul_pd(x, x));
                        gg[k] = _mm256_add_pd(gg[k], _mm256_mul_pd(y, y));
                    }
                    i += LANES;
                }
            }
            None => {
                while i < n {
                    for (k, acc) in gg.iter_mut().enumerate() {
                        let y = _mm256_cvtps_pd(_mm_loadu_ps(gp.add(i + 4 * k)));
                        *acc = _mm256_add_pd(*acc, _mm256_mul_pd(y, y));
                    }
                    i += LANES;
                }
            }
        }
        let mut out = [[0.0f64; LANES]; 3];
        for (o, v) in out.iter_mut().zip([om, dd, gg]) {
            for (k, vk) in v.into_iter().enumerate() {
                _mm256_storeu_pd(o.as_mut_ptr().add(4 * k), vk);
            }
        }
        out
    }
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
    leaf(d, g)
}

const LANES: usize = 8;

/// Partial sums of one leaf, per lane: `[<d, g>, |d|^2, |g|^2]`, element `i` in lane `i % LANES`.
type LaneSums = [[f64; LANES]; 3];

/// The reductions of one leaf (at most [`CHUNK`] elements): f64 products accumulated in
/// [`LANES`] interleaved partial sums (element `i` goes to lane `i % LANES`, in order), then the
/// lanes added from lane 0. The order of every rounding is fixed by this definition, whatever
/// instructions compute it.
fn leaf<E: Element>(d: Option<&[E]>, g: &[E]) -> Reduction {
    let n = g.len();
    let d = d.map(|d| &d[..n]);
    let full = n / LANES * LANES;
    let mut acc = lane_sums(d.map(|d| &d[..full]), &g[..full]);
    for j in 0..n - full {
        let y = g[full + j].as_f64();
        if let Some(d) = d {
            let x = d[full + j].as_f64();
            acc[0][j] += x * y;
            acc[1][j] += x * x;
        }
        acc[2][j] += y * y;
    }
    let sum = |a: &[f64; LANES]| a.iter().sum();
    Reduction { omega: sum(&acc[0]), delta_sq: sum(&acc[1]), grad_sq: sum(&acc[2]) }
}

/// Lane sums over whole blocks of [`LANES`] elements (`g.len()` a multiple of `LANES`).
#[inline]
fn lane_sums<E: Element>(d: Option<&[E]>, g: &[E]) -> LaneSums {
    #[cfg(target_arch = "x86_64")]
    if let Some(g32) = simd::as_f32(g) {
        let d32 = d.map(|d| simd::as_f32(d).expect("same element type"));
        // SAFETY: AVX is present when `avx2()` says so; SSE2 is part of x86-64.
        return unsafe {
            if simd::avx2() {
                simd::lane_sums_f32_avx(d32, g32)
            } else {
                simd::lane_sums_f32_sse2(d32, g32)
            }
        };
    }
    lane_sums_generic(d, g)
}

/// Portable [`lane_sums`].
fn lane_sums_generic<E: Element>(d: Option<&[E]>, g: &[E]) -> LaneSums {
    let mut acc = [[0.0f64; LANES]; 3];
    match d {
        Some(d) => {
            for (dc, gc) in d.chunks_exact(LANES).zip(g.chunks_exact(LANES)) {
                for j in 0..LANES {
                    let x = dc[j].as_f64();
                    let y = gc[j].as_f64();
                    acc[0][j] += x * y;
                    acc[1][j] += x * x;
                    acc[2][j] += y * y;
                }
            }
        }
        None => {
            for gc in g.chunks_exact(LANES) {
                for j in 0..LANES {
                    let y = gc[j].as_f64();
                    acc[2][j] += y * y;
                }
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{Adam, AdamW, InnerConfig, RmsProp, Sgd};
    use crate::Pass;

    /// Values in [-1, 1) from a 64-bit LCG.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32) / ((1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    fn configs() -> Vec<InnerConfig> {
        let sgd = |momentum, dampening, nesterov| {
            InnerConfig::Sgd(Sgd {
                lr: 0.1,
                momentum,
                dampening,
                nesterov,
                weight_decay: 0.01,
                maximize: false,
            })
        };
        let rms = |momentum, centered| {
            InnerConfig::RmsProp(RmsProp { momentum, centered, weight_decay: 0.01, ..Default::default() })
        };
        vec![
            sgd(0.0, 0.0, false),
            sgd(0.9, 0.1, false),
            sgd(0.9, 0.0, true),
            InnerConfig::Adam(Adam { weight_decay: 0.01, ..Default::default() }),
            InnerConfig::Adam(Adam { amsgrad: true, betas: (0.2, 0.9), ..Default::default() }),
            InnerConfig::AdamW(AdamW::default()),
            rms(0.0, false),
            rms(0.0, true),
            rms(0.9, false),
            rms(0.9, true),
        ]
    }

    /// Run one pass over fresh copies of the inputs; return every array afterwards.
    fn pass_result(k: &Kernel<f32>, n: usize, anchor: bool) -> Vec<Vec<f32>> {
        let mut p = values(n, 1);
        let g = values(n, 2);
        let mut d: Vec<f32> = values(n, 3).iter().map(|x| x * 1e-2).collect();
        let mut a = if anchor { values(n, 4) } else { vec![] };
        // State slots: non-negative where they are second moments.
        let mut s: Vec<Vec<f32>> =
            (0..3).map(|i| values(n, 5 + i).iter().map(|x| x.abs()).collect()).collect();
        let used = k.rule.slots();
        {
            let [s0, s1, s2] = &mut s[..] else { unreachable!() };
            fn cut(v: &mut [f32], on: bool) -> &mut [f32] {
                if on {
                    v
                } else {
                    &mut v[..0]
                }
            }
            let s = [cut(s0, used > 0), cut(s1, used > 1), cut(s2, used > 2)];
            let lanes = Lanes { p: &mut p, g: &g, d: &mut d, a: &mut a, s };
            run(k, lanes);
        }
        let mut out = vec![p, d, a];
        out.extend(s);
        out
    }

    fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
        v.iter().map(|x| x.iter().map(|y| y.to_bits()).collect()).collect()
    }

    /// The AVX2 loops and the baseline loops give bitwise identical results for every rule and
    /// pass, on lengths that exercise the vector remainders and the parallel split.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_and_baseline_agree_bitwise() {
        if !simd::force(true) {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            simd::force(false);
            return;
        }
        let passes = [
            (Pass::Plain, false),
            (Pass::Reference { first: true }, true),
            (Pass::Reference { first: true }, false),
            (Pass::Reference { first: false }, false),
            (Pass::Main, true),
            (Pass::Main, false),
        ];
        for n in [1usize, 7, 13, 1000, PAR_MIN + 5] {
            // The first step (SGD momentum's buffer initialisation) on small sizes only: debug
            // builds are slow.
            let steps: &[u64] = if n > 1000 { &[5] } else { &[1, 5] };
            for c in configs() {
                for &step in steps {
                    for (pass, anchor) in passes {
                        let k = Kernel {
                            pass,
                            rule: c.rule::<f32>(step, c.lr(), 0.01),
                            grad_scale: 0.5,
                            proj: -0.25,
                        };
                        simd::force(false);
                        let base = pass_result(&k, n, anchor);
                        simd::force(true);
                        let wide = pass_result(&k, n, anchor);
                        assert!(
                            bits(&base) == bits(&wide),
                            "{c:?} {pass:?} anchor={anchor} n={n} step={step}"
                        );
                    }
                }
            }
            let (d, g) = (values(n, 9), values(n, 10));
            for dd in [Some(&d[..]), None] {
                simd::force(false);
                let base = reduce_slices(dd, &g);
                simd::force(true);
                let wide = reduce_slices(dd, &g);
                let generic = leaf_tree_generic(dd, &g);
                assert_eq!(base, wide, "n={n}");
                assert_eq!(base, generic, "n={n}");
            }
        }
    }

    /// The reduction tree with only the portable leaf code.
    fn leaf_tree_generic(d: Option<&[f32]>, g: &[f32]) -> Reduction {
        let n = g.len();
        if n > CHUNK {
            let mid = n.div_ceil(CHUNK) / 2 * CHUNK;
            let (d0, d1) = match d {
                Some(d) => (Some(&d[..mid]), Some(&d[mid..])),
                None => (None, None),
            };
            return leaf_tree_generic(d0, &g[..mid]).add(leaf_tree_generic(d1, &g[mid..]));
        }
        let full = n / LANES * LANES;
        let mut acc = lane_sums_generic(d.map(|d| &d[..full]), &g[..full]);
        for j in 0..n - full {
            let y = g[full + j] as f64;
            if let Some(d) = d {
                let x = d[full + j] as f64;
                acc[0][j] += x * y;
                acc[1][j] += x * x;
            }
            acc[2][j] += y * y;
        }
        let sum = |a: &[f64; LANES]| a.iter().sum();
        Reduction { omega: sum(&acc[0]), delta_sq: sum(&acc[1]), grad_sq: sum(&acc[2]) }
    }
}
