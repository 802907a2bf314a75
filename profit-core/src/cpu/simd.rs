//! Run-time selection of wider vector code on x86-64.
//!
//! The fused loops are compiled twice: for the x86-64 baseline (SSE2) and with AVX2 enabled,
//! chosen at run time. The `f32` reduction leaves are written with intrinsics (the baseline
//! code made the f64 reductions compute-bound). Results are bitwise identical either way: the
//! element math is IEEE-754 basic operations (no fused multiply-add is formed, since Rust never
//! contracts `a * b + c`), and the reductions spell out their lane structure, so the vector
//! width changes no rounding. `PROFIT_HOST_SIMD=0` in the environment forces the baseline code
//! (for measurements).

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicU8, Ordering};

use super::lanes::{LaneSums, LANES};
use crate::element::Element;

/// 0: not yet detected; 1: baseline; 2: AVX2.
static MODE: AtomicU8 = AtomicU8::new(0);

/// Whether to use the AVX2 code (detected once).
#[inline]
pub(crate) fn avx2() -> bool {
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
pub(crate) fn force(avx2: bool) -> bool {
    let on = avx2 && std::arch::is_x86_feature_detected!("avx2");
    MODE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
    on
}

/// `s` as `&[f32]` when `E` is `f32`.
#[inline]
pub(crate) fn as_f32<E: Element>(s: &[E]) -> Option<&[f32]> {
    if std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>() {
        // SAFETY: `E` is `f32`: same layout, same length.
        Some(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) })
    } else {
        None
    }
}

/// Where the `delta` of a reduction comes from, four `f32` at a time.
pub(crate) trait Source: Copy {
    /// Elements `i .. i + 4`.
    ///
    /// # Safety
    /// The source's slices hold at least `i + 4` elements.
    unsafe fn load4(self, i: usize) -> __m128;
}

/// A stored delta.
#[derive(Clone, Copy)]
pub(crate) struct One(pub *const f32);

/// The realized delta `param - anchor` (an `f32` subtraction, as the scalar code rounds it).
#[derive(Clone, Copy)]
pub(crate) struct Diff(pub *const f32, pub *const f32);

impl Source for One {
    #[inline(always)]
    unsafe fn load4(self, i: usize) -> __m128 {
        _mm_loadu_ps(self.0.add(i))
    }
}

impl Source for Diff {
    #[inline(always)]
    unsafe fn load4(self, i: usize) -> __m128 {
        _mm_sub_ps(_mm_loadu_ps(self.0.add(i)), _mm_loadu_ps(self.1.add(i)))
    }
}

/// [`lane_sums`](super::reduce) for `f32`, with AVX (`avx`) or SSE2.
///
/// # Safety
/// With `avx`, the CPU supports AVX; `g.len()` is a multiple of [`LANES`] and the source's
/// slices are as long.
pub(crate) unsafe fn lane_sums_f32<S: Source>(avx: bool, d: Option<S>, g: &[f32]) -> LaneSums {
    if avx {
        lane_sums_f32_avx(d, g)
    } else {
        lane_sums_f32_sse2(d, g)
    }
}

/// Lanes 0-7 in four registers of two f64 each; each product and each sum is the same single
/// rounding as the portable code.
unsafe fn lane_sums_f32_sse2<S: Source>(d: Option<S>, g: &[f32]) -> LaneSums {
    let n = g.len();
    let z = _mm_setzero_pd();
    let (mut om, mut dd, mut gg) = ([z; 4], [z; 4], [z; 4]);
    // f32 x 4 -> two f64 x 2 (lanes 0-1, 2-3).
    let widen = |v: __m128| [_mm_cvtps_pd(v), _mm_cvtps_pd(_mm_movehl_ps(v, v))];
    let gp = g.as_ptr();
    let mut i = 0;
    match d {
        Some(d) => {
            while i < n {
                let [x0, x1] = widen(d.load4(i));
                let [x2, x3] = widen(d.load4(i + 4));
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

/// Lanes 0-3 and 4-7 in two AVX registers.
#[target_feature(enable = "avx,avx2")]
unsafe fn lane_sums_f32_avx<S: Source>(d: Option<S>, g: &[f32]) -> LaneSums {
    let n = g.len();
    let z = _mm256_setzero_pd();
    let (mut om, mut dd, mut gg) = ([z; 2], [z; 2], [z; 2]);
    let gp = g.as_ptr();
    let mut i = 0;
    match d {
        Some(d) => {
            while i < n {
                for k in 0..2 {
                    let x = _mm256_cvtps_pd(d.load4(i + 4 * k));
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
