//! The fused single-pass loops: one per [`Variant`], inner-optimizer rule and rule flag, so
//! that the loop bodies have no data-independent branches and vectorize.
//!
//! Each loop reads every array it needs once and writes every array it changes once (the
//! bytes per parameter of the algorithm's cost table); nothing is allocated.

use super::reduce::realized;
use super::{CHUNK, PAR_MIN};
use crate::element::Element;
use crate::error::BackendError;
use crate::kernel::{Kernel, Variant};
use crate::optim::{capture, AdamRule, RmsPropRule, Rule, SgdMomentumRule};

/// The slices one fused pass touches. Arrays a variant does not use are empty.
pub struct Lanes<'a, E> {
    /// Parameters.
    pub p: &'a mut [E],
    /// Gradients.
    pub g: &'a [E],
    /// Accumulated delta.
    pub d: &'a mut [E],
    /// Anchor.
    pub a: &'a mut [E],
    /// The rule's state slots, in slot order.
    pub s: [&'a mut [E]; 3],
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

    /// Check that every array the variant and rule use is `p.len()` long.
    pub fn check(&self, v: Variant, slots: usize) -> Result<(), BackendError> {
        let n = self.p.len();
        let uses_d = v.reads_delta() || v.writes_delta();
        let uses_a = v.reads_anchor() || v.writes_anchor();
        let ok = self.g.len() == n
            && (!uses_d || self.d.len() == n)
            && (!uses_a || self.a.len() == n)
            && self.s.iter().take(slots).all(|x| x.len() == n);
        if ok {
            Ok(())
        } else {
            Err(BackendError::Device("tensor lengths differ".into()))
        }
    }
}

// Variant codes as const generic parameters (`Variant as u8`).
const PLAIN: u8 = Variant::Plain as u8;
const REF_FIRST_ANCHOR: u8 = Variant::RefFirstAnchor as u8;
const REF_FIRST: u8 = Variant::RefFirst as u8;
const REF_ACC: u8 = Variant::RefAcc as u8;
const MAIN_ANCHOR: u8 = Variant::MainAnchor as u8;
const MAIN_SUB: u8 = Variant::MainSub as u8;
const REF_ANCHOR: u8 = Variant::RefAnchor as u8;
const MAIN_REALIZED: u8 = Variant::MainRealized as u8;

/// Run variant `v` of kernel `k` over `l` (checked with [`Lanes::check`] first).
pub fn run<E: Element>(k: &Kernel<E>, v: Variant, l: Lanes<'_, E>) {
    match v {
        Variant::Plain => by_rule::<E, PLAIN>(k, l),
        Variant::RefFirstAnchor => by_rule::<E, REF_FIRST_ANCHOR>(k, l),
        Variant::RefFirst => by_rule::<E, REF_FIRST>(k, l),
        Variant::RefAcc => by_rule::<E, REF_ACC>(k, l),
        Variant::MainAnchor => by_rule::<E, MAIN_ANCHOR>(k, l),
        Variant::MainSub => by_rule::<E, MAIN_SUB>(k, l),
        Variant::RefAnchor => by_rule::<E, REF_ANCHOR>(k, l),
        Variant::MainRealized => by_rule::<E, MAIN_REALIZED>(k, l),
    }
}

/// The kernel's scalars, in the element's math type.
struct Scalars<R> {
    gs: R,
    pj: R,
    ds: R,
}

fn by_rule<E: Element, const V: u8>(k: &Kernel<E>, l: Lanes<'_, E>) {
    // Every flag a rule branches on becomes a constant inside the loop body (the rule is rebuilt
    // there with literal flags), so the loops have no data-independent branches and vectorize.
    let c = Scalars { gs: k.grad_scale, pj: k.proj, ds: k.delta_scale };
    match k.rule {
        Rule::Sgd(r) => split_run::<E, V, 0, _>(l, &c, &|p, g, _, _, _| r.update(p, g)),
        Rule::SgdMomentum(r) => match (r.first, r.nesterov) {
            (false, false) => sgd_momentum::<E, V, false, false>(r, l, &c),
            (false, true) => sgd_momentum::<E, V, false, true>(r, l, &c),
            (true, false) => sgd_momentum::<E, V, true, false>(r, l, &c),
            (true, true) => sgd_momentum::<E, V, true, true>(r, l, &c),
        },
        Rule::Adam(r) if r.amsgrad => split_run::<E, V, 3, _>(l, &c, &|p, g, m, v, x| {
            AdamRule { amsgrad: true, ..r }.update(p, g, m, v, x)
        }),
        Rule::Adam(r) => split_run::<E, V, 2, _>(l, &c, &|p, g, m, v, x| {
            AdamRule { amsgrad: false, ..r }.update(p, g, m, v, x)
        }),
        Rule::RmsProp(r) => match (r.centered, r.use_momentum) {
            (false, false) => split_run::<E, V, 1, _>(l, &c, &|p, g, s, a, b| {
                RmsPropRule { centered: false, use_momentum: false, ..r }.update(p, g, s, a, b)
            }),
            (true, false) => split_run::<E, V, 2, _>(l, &c, &|p, g, s, a, b| {
                RmsPropRule { centered: true, use_momentum: false, ..r }.update(p, g, s, a, b)
            }),
            (false, true) => split_run::<E, V, 2, _>(l, &c, &|p, g, s, b, a| {
                RmsPropRule { centered: false, use_momentum: true, ..r }.update(p, g, s, a, b)
            }),
            (true, true) => split_run::<E, V, 3, _>(l, &c, &|p, g, s, a, b| {
                RmsPropRule { centered: true, use_momentum: true, ..r }.update(p, g, s, a, b)
            }),
        },
        Rule::Capture => split_run::<E, V, 1, _>(l, &c, &|_, g, s, _, _| capture(g, s)),
    }
}

fn sgd_momentum<E: Element, const V: u8, const FIRST: bool, const NESTEROV: bool>(
    r: SgdMomentumRule<E::Real>,
    l: Lanes<'_, E>,
    c: &Scalars<E::Real>,
) {
    split_run::<E, V, 1, _>(l, c, &|p, g, b, _, _| {
        SgdMomentumRule { first: FIRST, nesterov: NESTEROV, ..r }.update(p, g, b)
    })
}

/// Split large tensors across threads at chunk-aligned points, then run the loop.
fn split_run<E: Element, const V: u8, const N: usize, F>(l: Lanes<'_, E>, c: &Scalars<E::Real>, f: &F)
where
    F: Fn(E::Real, E::Real, &mut E::Real, &mut E::Real, &mut E::Real) -> E::Real + Sync,
{
    #[cfg(feature = "rayon")]
    {
        let n = l.p.len();
        if n >= PAR_MIN {
            let mid = n.div_ceil(CHUNK) / 2 * CHUNK;
            let (l0, l1) = l.split(mid);
            rayon::join(|| split_run::<E, V, N, F>(l0, c, f), || split_run::<E, V, N, F>(l1, c, f));
            return;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { fused_loop_avx2::<E, V, N, F>(l, c.gs, c.pj, c.ds, f) };
        return;
    }
    fused_loop::<E, V, N, F>(l, c.gs, c.pj, c.ds, f)
}

/// [`fused_loop`] compiled with AVX2 (results are bitwise the same: the element math is
/// IEEE-754 basic operations and Rust never contracts `a * b + c` into a fused multiply-add).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,avx2")]
unsafe fn fused_loop_avx2<E: Element, const V: u8, const N: usize, F>(
    l: Lanes<'_, E>,
    gs: E::Real,
    pj: E::Real,
    ds: E::Real,
    f: &F,
) where
    F: Fn(E::Real, E::Real, &mut E::Real, &mut E::Real, &mut E::Real) -> E::Real,
{
    fused_loop::<E, V, N, F>(l, gs, pj, ds, f)
}

/// The single pass: every array read once, every written array written once; loads widen to
/// the math type, every stored value is rounded once.
#[inline(always)]
fn fused_loop<E: Element, const V: u8, const N: usize, F>(
    l: Lanes<'_, E>,
    gs: E::Real,
    pj: E::Real,
    ds: E::Real,
    f: &F,
) where
    F: Fn(E::Real, E::Real, &mut E::Real, &mut E::Real, &mut E::Real) -> E::Real,
{
    let n = l.p.len();
    let p = l.p;
    let g = &l.g[..n];
    let uses_d = matches!(V, REF_FIRST_ANCHOR | REF_FIRST | REF_ACC | MAIN_ANCHOR | MAIN_SUB);
    let uses_a = matches!(V, REF_FIRST_ANCHOR | MAIN_ANCHOR | REF_ANCHOR | MAIN_REALIZED);
    let d = if uses_d { &mut l.d[..n] } else { &mut l.d[..0] };
    let a = if uses_a { &mut l.a[..n] } else { &mut l.a[..0] };
    let [s0, s1, s2] = l.s;
    let s0 = if N > 0 { &mut s0[..n] } else { &mut s0[..0] };
    let s1 = if N > 1 { &mut s1[..n] } else { &mut s1[..0] };
    let s2 = if N > 2 { &mut s2[..n] } else { &mut s2[..0] };
    let zero = E::Real::default();
    for i in 0..n {
        let gi = gs * g[i].load();
        let (p0, gi) = match V {
            MAIN_ANCHOR => (a[i].load(), gi - pj * (d[i].load() * ds)),
            MAIN_SUB => {
                let di = d[i].load();
                (E::store(p[i].load() - di).load(), gi - pj * (di * ds))
            }
            MAIN_REALIZED => {
                let di = realized(p[i], a[i]).load();
                (a[i].load(), gi - pj * (di * ds))
            }
            _ => (p[i].load(), gi),
        };
        let mut x = if N > 0 { s0[i].load() } else { zero };
        let mut y = if N > 1 { s1[i].load() } else { zero };
        let mut z = if N > 2 { s2[i].load() } else { zero };
        let u = f(p0, gi, &mut x, &mut y, &mut z);
        if N > 0 {
            s0[i] = E::store(x);
        }
        if N > 1 {
            s1[i] = E::store(y);
        }
        if N > 2 {
            s2[i] = E::store(z);
        }
        p[i] = E::store(p0 + u);
        match V {
            REF_FIRST_ANCHOR => {
                a[i] = E::store(p0);
                d[i] = E::store(u);
            }
            REF_FIRST => d[i] = E::store(u),
            REF_ACC => d[i] = E::store(d[i].load() + u),
            REF_ANCHOR => a[i] = E::store(p0),
            _ => {}
        }
    }
}
