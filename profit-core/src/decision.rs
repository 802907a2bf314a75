//! How a call turns its reductions into the kernels' scalars: the non-finite check, the
//! clipping factor and each tensor's projection ([`Decision`]), in the fixed order a device
//! follows bitwise ([`total`], [`projection_scalars`]).

use crate::element::{Element, Real};
use crate::kernel::{Kernel, Reduction};

/// The projection of one main call, turned into a kernel's scalars: `proj` and `delta_scale`
/// such that `proj * (delta * delta_scale) = coef * delta` with `coef = omega / |delta|^2`,
/// where `proj` stays representable (`|proj| <= |g|` when the projection fires). Returns
/// `None` when even then `proj` is not finite in the element's math type.
///
/// Every operation is exact or correctly rounded, so a device evaluates it bitwise alike
/// (`decide_body` in `cuda-kernels/profit.cu`).
pub fn projection_scalars<R: Real>(coef: f64, delta_sq: f64) -> Option<(R, R)> {
    if coef == 0.0 {
        return Some((R::zero(), R::one()));
    }
    // Scale |delta| into [1, 2) with a power of two 2^m, m >= 0 (scaling up is exact); cap m
    // where the power itself would not be representable in `R`.
    let norm = delta_sq.sqrt();
    let max_exp = floor_log2(R::max_value().as_f64());
    let m = if norm < 1.0 {
        if norm > 0.0 {
            (-floor_log2(norm)).clamp(0, max_exp)
        } else {
            max_exp
        }
    } else {
        0
    };
    let scale = pow2(m);
    let proj = R::from_f64(coef / scale);
    proj.is_finite().then(|| (proj, R::from_f64(scale)))
}

/// `floor(log2(x))` for finite `x > 0`, exactly (C's `ilogb`): the exponent of `x`.
fn floor_log2(x: f64) -> i32 {
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i32;
    if e == 0 {
        // Subnormal: 2^-1074 times the mantissa.
        let m = bits & ((1u64 << 52) - 1);
        -1075 + (64 - m.leading_zeros() as i32)
    } else {
        e - 1023
    }
}

/// `2^m` for `0 <= m <= 1023`, exactly.
fn pow2(m: i32) -> f64 {
    f64::from_bits(((1023 + m) as u64) << 52)
}

/// Lanes of [`total`]'s fixed summation order (`REDUCE_THREADS` in `cuda-kernels/profit.cu`).
pub const TOTAL_LANES: usize = 256;

/// Sum of per-tensor reductions in one fixed order, so that a device sums them bitwise alike:
/// lane `j % 256` adds entry `j` in index order, then the lanes are added as a tree
/// (`lane[t] += lane[t + h]` for `h = 128, 64, ..., 1`).
pub fn total(reductions: &[Reduction]) -> Reduction {
    let mut lanes = [Reduction::default(); TOTAL_LANES];
    for (j, r) in reductions.iter().enumerate() {
        let l = &mut lanes[j % TOTAL_LANES];
        *l += *r;
    }
    let mut h = TOTAL_LANES / 2;
    while h > 0 {
        for t in 0..h {
            lanes[t] += lanes[t + h];
        }
        h /= 2;
    }
    lanes[0]
}

/// How one call turns its reductions into the kernels' scalars (`grad_scale`, `proj`,
/// `delta_scale`), as plain data, so that a backend can decide where its data lives
/// ([`TensorOps::reduce_decide_apply`](crate::backend::TensorOps::reduce_decide_apply)) instead of waiting for the host between the reductions
/// and the update. [`Decision::evaluate`] is the definition; a device must match it bitwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Refuse the call when an active tensor's `|g|^2` is not finite.
    pub check_finite: bool,
    /// Clip gradients to this global L2 norm (`torch.nn.utils.clip_grad_norm_`).
    pub max_grad_norm: Option<f64>,
    /// The inner optimizer's gradient sign (`-1` for `maximize`).
    pub sign: f64,
    /// At main calls, the projection: `Some(true)` global, `Some(false)` per tensor; `None`
    /// at reference and warm-up calls (no projection).
    pub projection: Option<bool>,
}

/// What [`Decision::evaluate`] concludes; anything but `Apply` means nothing may change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Run the update with the decided scalars.
    Apply,
    /// Tensor `tensor`'s gradient is not finite (the first such tensor).
    NonFinite {
        /// Tensor index.
        tensor: usize,
    },
    /// Tensor `tensor`'s projection coefficient is not representable in the element's math
    /// type even scaled (the first such tensor).
    Overflow {
        /// Tensor index.
        tensor: usize,
        /// The coefficient `omega / |delta|^2`.
        coefficient: f64,
    },
}

impl Decision {
    /// The clipping factor from the call's total `|g|^2` (`1` without clipping).
    pub fn clip_scale(&self, total: Reduction) -> f64 {
        match self.max_grad_norm {
            Some(max) => (max / (total.grad_sq.sqrt() + 1e-6)).min(1.0),
            None => 1.0,
        }
    }

    /// Decide from `reductions` (one per tensor, zero where inactive) and write every
    /// kernel's `grad_scale`, `proj` and `delta_scale`. The projection fires where
    /// `omega < 0` (globally or per tensor) with coefficient `omega / |delta|^2`, `omega`
    /// taken after clipping.
    pub fn evaluate<E: Element>(
        &self,
        active: &[bool],
        reductions: &[Reduction],
        kernels: &mut [Kernel<E>],
    ) -> Verdict {
        if self.check_finite {
            let bad = (0..reductions.len()).find(|&i| active[i] && !reductions[i].grad_sq.is_finite());
            if let Some(tensor) = bad {
                return Verdict::NonFinite { tensor };
            }
        }
        let t = total(reductions);
        let scale = self.clip_scale(t);
        let gs = E::Real::from_f64(self.sign * scale);
        let mut verdict = Verdict::Apply;
        for (i, (r, k)) in reductions.iter().zip(kernels.iter_mut()).enumerate() {
            k.grad_scale = gs;
            let (coef, d_sq) = match self.projection {
                None => (0.0, 1.0),
                Some(true) => (projection_coef(t.omega * scale, t.delta_sq), t.delta_sq),
                Some(false) => (projection_coef(r.omega * scale, r.delta_sq), r.delta_sq),
            };
            match projection_scalars::<E::Real>(self.sign * coef, d_sq) {
                Some((proj, ds)) => {
                    k.proj = proj;
                    k.delta_scale = ds;
                }
                None if verdict == Verdict::Apply => {
                    verdict = Verdict::Overflow { tensor: i, coefficient: coef }
                }
                None => {}
            }
        }
        verdict
    }
}

/// Whether the projection fires: `omega < 0` (hence `|delta|^2 > 0`; the second test guards
/// an underflowed `|delta|^2`, so that nothing is ever divided by zero).
pub(crate) fn fires(omega: f64, delta_sq: f64) -> bool {
    omega < 0.0 && delta_sq > 0.0
}

/// The projection coefficient `omega / |delta|^2` when the projection fires, else `0`: the
/// gradient goes to the main optimizer unchanged.
pub(crate) fn projection_coef(omega: f64, delta_sq: f64) -> f64 {
    if fires(omega, delta_sq) {
        omega / delta_sq
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_log2_is_the_exponent() {
        let mut xs = vec![f64::MIN_POSITIVE, f64::MAX, 5e-324, 1e-310, 0.1, 0.5, 1.0, 3.0, 1e300];
        // Both sides of every power of two across the normal and subnormal range.
        // 2^e for every exponent f64 has, subnormal ones included.
        let exp2 = |e: i32| {
            if e >= -1022 {
                f64::from_bits(((e + 1023) as u64) << 52)
            } else {
                f64::from_bits(1u64 << (e + 1074))
            }
        };
        for e in -1074..1024 {
            let p = exp2(e);
            xs.extend([p, f64::from_bits(p.to_bits() + 1), f64::from_bits(p.to_bits() - 1)]);
        }
        for x in xs.into_iter().filter(|x| *x > 0.0 && x.is_finite()) {
            let e = floor_log2(x);
            // 2^e <= x < 2^(e+1), with 2^(e+1) possibly past f64's range.
            assert!(exp2(e) <= x && (e == 1023 || x < exp2(e + 1)), "{x:e}: {e}");
        }
        assert_eq!(floor_log2(f32::MAX as f64), 127);
        assert_eq!(pow2(0), 1.0);
        assert_eq!(pow2(1023), 2f64.powi(1023));
    }

    #[test]
    fn projection_scalars_reproduce_the_coefficient() {
        for (coef, delta_sq) in [(-3.0, 4.0), (-1e10, 1e-20), (-2.5e-3, 1e-60), (-7.0, 1e-90), (-1.0, 5e-324)]
        {
            let (p, s): (f64, f64) = projection_scalars(coef, delta_sq).expect("representable in f64");
            let norm = delta_sq.sqrt();
            // delta * s lies in [1, 2) (or s is capped), and p * s == coef.
            assert!(norm * s < 2.0 || s == 1.0, "{coef:e} {delta_sq:e}");
            assert_eq!(p * s, coef, "{coef:e} {delta_sq:e}");
            assert_eq!(s.log2().fract(), 0.0);
        }
        assert_eq!(projection_scalars::<f32>(0.0, 0.0), Some((0.0, 1.0)));
        // Past f32's range even with |delta| scaled to [1, 2): refused; fine in f64.
        assert_eq!(projection_scalars::<f32>(-1e40, 1.0), None);
        assert!(projection_scalars::<f64>(-1e40, 1.0).is_some());
    }

    #[test]
    fn total_adds_in_its_fixed_order() {
        let mut rs: Vec<Reduction> = (0..700)
            .map(|i| {
                let x = ((i * 7919) % 1000) as f64 * 1e-3;
                Reduction { omega: x, delta_sq: x * x, grad_sq: 1.0 / (i as f64 + 1.0) }
            })
            .collect();
        // Cancellation that makes the order visible: sequentially 1e16 + 1 loses the 1.
        rs[0].omega = 1e16;
        rs[1].omega = 1.0;
        rs[256].omega = -1e16;
        // The order written out: lanes j % 256 in index order, then the halving tree.
        let mut lanes = vec![0.0f64; TOTAL_LANES];
        for (j, r) in rs.iter().enumerate() {
            lanes[j % TOTAL_LANES] += r.omega;
        }
        let mut h = TOTAL_LANES / 2;
        while h > 0 {
            for t in 0..h {
                lanes[t] += lanes[t + h];
            }
            h /= 2;
        }
        let t = total(&rs);
        assert_eq!(t.omega.to_bits(), lanes[0].to_bits());
        // Not the sequential sum here (the cancellation makes the order visible).
        let sequential = rs.iter().fold(0.0, |a, r| a + r.omega);
        assert_ne!(t.omega.to_bits(), sequential.to_bits());
        assert_eq!(total(&rs[..1]), rs[0]);
        assert_eq!(total(&[]), Reduction::default());
    }
}
