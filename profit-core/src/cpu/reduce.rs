//! Deterministic f64 reductions over host slices: `<delta, g>`, `|delta|^2`, `|g|^2`.
//!
//! A fixed tree of [`CHUNK`]-sized leaves (split points depend only on the length), each leaf
//! summed in [`LANES`] interleaved partial sums: results are bitwise reproducible whatever the
//! thread count, scheduling or vector width.

use super::lanes::{LaneSums, LANES};
use super::{CHUNK, PAR_MIN};
use crate::element::Element;
use crate::kernel::Reduction;

/// The `delta` a host reduction reads.
#[derive(Clone, Copy, Debug)]
pub enum DeltaSlices<'a, E> {
    /// No delta: `|g|^2` only.
    None,
    /// A stored delta.
    Stored(&'a [E]),
    /// `param - anchor`, each difference rounded to the element type.
    Realized {
        /// `theta'`.
        param: &'a [E],
        /// `theta_ref`.
        anchor: &'a [E],
    },
}

impl<'a, E> DeltaSlices<'a, E> {
    /// Whether the delta's slices are all `n` long (or there is no delta).
    pub fn fits(&self, n: usize) -> bool {
        match self {
            DeltaSlices::None => true,
            DeltaSlices::Stored(d) => d.len() == n,
            DeltaSlices::Realized { param, anchor } => param.len() == n && anchor.len() == n,
        }
    }

    fn split_at(self, mid: usize) -> (Self, Self) {
        match self {
            DeltaSlices::None => (DeltaSlices::None, DeltaSlices::None),
            DeltaSlices::Stored(d) => {
                let (a, b) = d.split_at(mid);
                (DeltaSlices::Stored(a), DeltaSlices::Stored(b))
            }
            DeltaSlices::Realized { param, anchor } => {
                let (p0, p1) = param.split_at(mid);
                let (a0, a1) = anchor.split_at(mid);
                (
                    DeltaSlices::Realized { param: p0, anchor: a0 },
                    DeltaSlices::Realized { param: p1, anchor: a1 },
                )
            }
        }
    }

    fn range(self, lo: usize, hi: usize) -> Self {
        match self {
            DeltaSlices::None => DeltaSlices::None,
            DeltaSlices::Stored(d) => DeltaSlices::Stored(&d[lo..hi]),
            DeltaSlices::Realized { param, anchor } => {
                DeltaSlices::Realized { param: &param[lo..hi], anchor: &anchor[lo..hi] }
            }
        }
    }
}

impl<E: Element> DeltaSlices<'_, E> {
    /// Element `i` of the delta, widened to f64.
    #[inline(always)]
    fn at(&self, i: usize) -> f64 {
        match self {
            DeltaSlices::None => 0.0,
            DeltaSlices::Stored(d) => d[i].as_f64(),
            DeltaSlices::Realized { param, anchor } => realized(param[i], anchor[i]).as_f64(),
        }
    }
}

/// The realized delta of one element: `theta' - theta_ref` rounded to the element type.
#[inline(always)]
pub fn realized<E: Element>(param: E, anchor: E) -> E {
    E::store(param.load() - anchor.load())
}

/// Deterministic f64 reductions of `delta` and `g` (slices of equal length).
pub fn reduce_slices<E: Element>(d: DeltaSlices<'_, E>, g: &[E]) -> Reduction {
    let n = g.len();
    if n > CHUNK {
        let mid = n.div_ceil(CHUNK) / 2 * CHUNK;
        let (g0, g1) = g.split_at(mid);
        let (d0, d1) = d.split_at(mid);
        #[cfg(feature = "rayon")]
        let (r0, r1) = if n >= PAR_MIN {
            rayon::join(|| reduce_slices(d0, g0), || reduce_slices(d1, g1))
        } else {
            (reduce_slices(d0, g0), reduce_slices(d1, g1))
        };
        #[cfg(not(feature = "rayon"))]
        let (r0, r1) = (reduce_slices(d0, g0), reduce_slices(d1, g1));
        return r0 + r1;
    }
    leaf(d, g)
}

/// The reductions of one leaf (at most [`CHUNK`] elements): f64 products accumulated in
/// [`LANES`] interleaved partial sums (element `i` goes to lane `i % LANES`, in order), then the
/// lanes added from lane 0. The order of every rounding is fixed by this definition, whatever
/// instructions compute it.
fn leaf<E: Element>(d: DeltaSlices<'_, E>, g: &[E]) -> Reduction {
    let n = g.len();
    let full = n / LANES * LANES;
    let mut acc = lane_sums(d.range(0, full), &g[..full]);
    let has_d = !matches!(d, DeltaSlices::None);
    for j in 0..n - full {
        let y = g[full + j].as_f64();
        if has_d {
            let x = d.at(full + j);
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
fn lane_sums<E: Element>(d: DeltaSlices<'_, E>, g: &[E]) -> LaneSums {
    #[cfg(target_arch = "x86_64")]
    if let Some(g32) = super::simd::as_f32(g) {
        use super::simd::{Diff, One};
        fn f<E: Element>(s: &[E]) -> &[f32] {
            super::simd::as_f32(s).expect("same element type")
        }
        let avx = super::simd::avx2();
        // SAFETY: AVX is present when `avx2()` says so; SSE2 is part of x86-64; the slices
        // are `g.len()` long (checked by the callers), a multiple of LANES.
        return unsafe {
            match d {
                DeltaSlices::None => super::simd::lane_sums_f32::<One>(avx, None, g32),
                DeltaSlices::Stored(d) => super::simd::lane_sums_f32(avx, Some(One(f(d).as_ptr())), g32),
                DeltaSlices::Realized { param, anchor } => {
                    super::simd::lane_sums_f32(avx, Some(Diff(f(param).as_ptr(), f(anchor).as_ptr())), g32)
                }
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { lane_sums_generic_avx2(d, g) };
    }
    lane_sums_generic(d, g)
}

/// [`lane_sums_generic`] compiled with AVX2 (f64, bf16 and f16): bitwise the same, the lane
/// structure fixes every rounding and no multiply-add is fused.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,avx2")]
unsafe fn lane_sums_generic_avx2<E: Element>(d: DeltaSlices<'_, E>, g: &[E]) -> LaneSums {
    lane_sums_generic(d, g)
}

/// Portable [`lane_sums`].
#[inline(always)]
pub(crate) fn lane_sums_generic<E: Element>(d: DeltaSlices<'_, E>, g: &[E]) -> LaneSums {
    match d {
        DeltaSlices::None => {
            let mut acc = [[0.0f64; LANES]; 3];
            for gc in g.chunks_exact(LANES) {
                for j in 0..LANES {
                    let y = gc[j].as_f64();
                    acc[2][j] += y * y;
                }
            }
            acc
        }
        DeltaSlices::Stored(s) => sums_with(g, s, s, |x, _| x.as_f64()),
        DeltaSlices::Realized { param, anchor } => {
            sums_with(g, param, anchor, |p, a| realized(p, a).as_f64())
        }
    }
}

/// Lane sums with element `i`'s delta `x(u[i], v[i])`, over whole blocks of [`LANES`] (the
/// slices walked as fixed-size blocks: no bounds checks, so the lanes vectorize).
#[inline(always)]
fn sums_with<E: Element>(g: &[E], u: &[E], v: &[E], x: impl Fn(E, E) -> f64) -> LaneSums {
    let mut acc = [[0.0f64; LANES]; 3];
    let blocks = g.chunks_exact(LANES).zip(u.chunks_exact(LANES)).zip(v.chunks_exact(LANES));
    for ((gc, uc), vc) in blocks {
        let (Ok(gc), Ok(uc), Ok(vc)) =
            (<&[E; LANES]>::try_from(gc), <&[E; LANES]>::try_from(uc), <&[E; LANES]>::try_from(vc))
        else {
            continue; // unreachable: chunks_exact yields LANES elements
        };
        for j in 0..LANES {
            let (x, y) = (x(uc[j], vc[j]), gc[j].as_f64());
            acc[0][j] += x * y;
            acc[1][j] += x * x;
            acc[2][j] += y * y;
        }
    }
    acc
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The reduction tree with only the portable leaf code.
    pub(crate) fn tree_generic(d: DeltaSlices<'_, f32>, g: &[f32]) -> Reduction {
        let n = g.len();
        if n > CHUNK {
            let mid = n.div_ceil(CHUNK) / 2 * CHUNK;
            let (d0, d1) = d.split_at(mid);
            return tree_generic(d0, &g[..mid]) + tree_generic(d1, &g[mid..]);
        }
        let full = n / LANES * LANES;
        let mut acc = lane_sums_generic(d.range(0, full), &g[..full]);
        for j in 0..n - full {
            let y = g[full + j] as f64;
            if !matches!(d, DeltaSlices::None) {
                let x = d.at(full + j);
                acc[0][j] += x * y;
                acc[1][j] += x * x;
            }
            acc[2][j] += y * y;
        }
        let sum = |a: &[f64; LANES]| a.iter().sum();
        Reduction { omega: sum(&acc[0]), delta_sq: sum(&acc[1]), grad_sq: sum(&acc[2]) }
    }

    /// The realized delta is the stored one when it is materialized first.
    #[test]
    fn realized_equals_materialized_difference() {
        let p: Vec<f32> = (0..1000).map(|i| 1.0 + (i as f32) * 1e-7).collect();
        let a: Vec<f32> = (0..1000).map(|i| 1.0 + (i as f32 % 7.0) * 1e-7).collect();
        let g: Vec<f32> = (0..1000).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let d: Vec<f32> = p.iter().zip(&a).map(|(p, a)| p - a).collect();
        let r = reduce_slices(DeltaSlices::Realized { param: &p, anchor: &a }, &g);
        assert_eq!(r, reduce_slices(DeltaSlices::Stored(&d), &g));
        assert!(r.delta_sq > 0.0);
    }
}
