//! Scalar types: the element types a backend stores ([`Element`]) and the types the element
//! math runs in ([`Real`]).
//!
//! Every pass loads stored elements into their [`Element::Real`] type, computes there, and
//! rounds each stored result once. For `f32` and `f64` the two types are the same and loading
//! and storing are free. All reductions accumulate in `f64` whatever the element type.

use std::fmt::Debug;

/// A type the element math runs in: `f32` or `f64`.
pub trait Real: num_traits::Float + Copy + Send + Sync + Debug + Default + PartialOrd + 'static {
    /// Convert from `f64` (rounding to nearest).
    fn from_f64(v: f64) -> Self;
    /// Convert to `f64` (exact).
    fn as_f64(self) -> f64;
}

impl Real for f32 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
}

/// The element types parameters, gradients and optimizer state can be stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// IEEE-754 binary32.
    F32,
    /// IEEE-754 binary64.
    F64,
    /// bfloat16 ([`half::bf16`]): math in `f32`, one rounding per stored value.
    Bf16,
    /// IEEE-754 binary16 ([`half::f16`]): math in `f32`, one rounding per stored value.
    F16,
}

impl Dtype {
    /// The name written in checkpoints and reports (`"f32"`, `"f64"`, `"bf16"`, `"f16"`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }

    /// Decode one little-endian element of this type (exactly `size()` bytes) to `f64`
    /// (exact: every value of every type here is an `f64`).
    pub fn decode_f64(self, b: &[u8]) -> f64 {
        match self {
            Dtype::F32 => f32::read_le(b) as f64,
            Dtype::F64 => f64::read_le(b),
            Dtype::Bf16 => half::bf16::read_le(b).as_f64(),
            Dtype::F16 => half::f16::read_le(b).as_f64(),
        }
    }

    /// Append `v` rounded once (to nearest) to this type, little-endian.
    pub fn encode_f64(self, v: f64, out: &mut Vec<u8>) {
        match self {
            Dtype::F32 => (v as f32).write_le(out),
            Dtype::F64 => v.write_le(out),
            Dtype::Bf16 => half::bf16::from_f64(v).write_le(out),
            Dtype::F16 => half::f16::from_f64(v).write_le(out),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A stored element type.
pub trait Element: Copy + Send + Sync + Debug + Default + PartialEq + 'static {
    /// The type the element math runs in.
    type Real: Real;
    /// Which element type this is.
    const DTYPE: Dtype;
    /// Widen a stored value to the math type (exact).
    fn load(self) -> Self::Real;
    /// Round a math value to the stored type (once, to nearest).
    fn store(r: Self::Real) -> Self;
    /// Convert from `f64` (rounding once, to nearest).
    fn from_f64(v: f64) -> Self;
    /// Convert to `f64` (exact).
    fn as_f64(self) -> f64 {
        self.load().as_f64()
    }
    /// Little-endian bytes of one element, appended to `out`.
    fn write_le(self, out: &mut Vec<u8>);
    /// Read one element from exactly `DTYPE.size()` little-endian bytes.
    fn read_le(bytes: &[u8]) -> Self;
}

macro_rules! native_element {
    ($t:ty, $dtype:expr, $n:expr) => {
        impl Element for $t {
            type Real = $t;
            const DTYPE: Dtype = $dtype;
            #[inline(always)]
            fn load(self) -> $t {
                self
            }
            #[inline(always)]
            fn store(r: $t) -> $t {
                r
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Self {
                let mut b = [0u8; $n];
                b.copy_from_slice(bytes);
                <$t>::from_le_bytes(b)
            }
        }
    };
}

native_element!(f32, Dtype::F32, 4);
native_element!(f64, Dtype::F64, 8);

/// `v` rounded to `f32` toward zero, with the last bit set when that is inexact ("round to
/// odd"). Rounding the result to nearest into a type with at least two bits less precision
/// (bf16, f16) gives `v` correctly rounded, with no double-rounding error.
fn round_to_odd(v: f64) -> f32 {
    let t = v as f32;
    if t.is_nan() || t as f64 == v {
        return t;
    }
    let mut t = if t.is_infinite() { f32::MAX.copysign(t) } else { t };
    if (t as f64).abs() > v.abs() {
        t = f32::from_bits(t.to_bits() - 1);
    }
    f32::from_bits(t.to_bits() | 1)
}

/// `x` rounded to bf16, to nearest, ties to even; NaN stays NaN (quiet). Bitwise what
/// `half::bf16::from_f32` gives, written without branches so that the fused loops vectorize
/// (`half`'s own conversion branches per element).
#[inline(always)]
fn bf16_from_f32(x: f32) -> half::bf16 {
    let b = x.to_bits();
    // Adding 0x7fff plus the lowest kept bit rounds to nearest even; the carry may reach the
    // exponent (up to infinity), as it should. NaNs (the only inputs that could wrap) are
    // quieted instead.
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let quiet = (b >> 16) | 0x0040;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    half::bf16::from_bits(if nan { quiet } else { rounded } as u16)
}

/// `x` widened to f32 (exact): the bits shifted into place, without branches (`half`'s own
/// conversion also quiets a signalling NaN; here a NaN's payload is kept, as the CUDA kernels
/// keep it).
#[inline(always)]
fn bf16_to_f32(x: half::bf16) -> f32 {
    f32::from_bits((x.to_bits() as u32) << 16)
}

/// `half::f16::to_f32`.
#[inline(always)]
fn f16_to_f32(x: half::f16) -> f32 {
    x.to_f32()
}

/// `half::f16::from_f32` (its rounding to nearest even).
#[inline(always)]
fn f16_from_f32(x: f32) -> half::f16 {
    half::f16::from_f32(x)
}

macro_rules! half_element {
    ($t:ty, $dtype:expr, $from_f32:ident, $to_f32:ident) => {
        /// Stored in 16 bits; every pass widens to `f32`, computes there and rounds once to
        /// nearest on store, as `torch.optim` does for low-precision parameters.
        impl Element for $t {
            type Real = f32;
            const DTYPE: Dtype = $dtype;
            #[inline(always)]
            fn load(self) -> f32 {
                $to_f32(self)
            }
            #[inline(always)]
            fn store(r: f32) -> Self {
                $from_f32(r)
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                // Not `half`'s own `from_f64`: in half 2.7 it can land one step off the nearest
                // value (checked: 530 of 10M random f32 inputs for bf16).
                $from_f32(round_to_odd(v))
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes([bytes[0], bytes[1]])
            }
        }
    };
}

half_element!(half::bf16, Dtype::Bf16, bf16_from_f32, bf16_to_f32);
half_element!(half::f16, Dtype::F16, f16_from_f32, f16_to_f32);

#[cfg(test)]
mod tests {
    use super::*;

    /// `from_f64` rounds to nearest, ties to even, for bf16 and f16: no neighbour of the
    /// result is closer to the input.
    fn nearest<H: Element<Real = f32>>(bits: impl Fn(H) -> u16, from_bits: impl Fn(u16) -> H) {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Values spread over the f32 range, and exact midpoints between neighbours.
            let v = if i % 4 == 0 {
                let h = from_bits((x >> 48) as u16 & 0x7bff);
                let up = from_bits(bits(h) + 1);
                (h.as_f64() + up.as_f64()) / 2.0
            } else {
                f64::from_bits(0x3800_0000_0000_0000 + (x % 0x0fff_ffff_ffff_ffff))
                    * if x & 1 == 0 { 1.0 } else { -1.0 }
            };
            let r = H::from_f64(v);
            if !r.as_f64().is_finite() {
                continue;
            }
            let d = (r.as_f64() - v).abs();
            for n in [bits(r).wrapping_sub(1), bits(r).wrapping_add(1)] {
                let m = from_bits(n).as_f64();
                if m.is_finite() && m.signum() == r.as_f64().signum() {
                    let dm = (m - v).abs();
                    assert!(
                        d < dm || (d == dm && bits(r) % 2 == 0),
                        "{v:e}: got {:e}, {m:e} is nearer",
                        r.as_f64()
                    );
                }
            }
        }
    }

    /// The branch-free bf16 conversion is bitwise `half`'s, on every sign, exponent and
    /// rounding case (each f32 exponent with many mantissas, ties, NaNs and infinities).
    #[test]
    fn bf16_conversion_equals_half() {
        let mut x: u32 = 0x2545_f491;
        let check = |b: u32| {
            let f = f32::from_bits(b);
            assert_eq!(bf16_from_f32(f).to_bits(), half::bf16::from_f32(f).to_bits(), "{b:#010x}");
        };
        for top in 0..=0xffffu32 {
            // Every bf16 value's neighbourhood: exact, just below and above the tie, the tie.
            for low in [0, 1, 0x7fff, 0x8000, 0x8001, 0xffff] {
                check(top << 16 | low);
            }
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            check(top << 16 | (x & 0xffff));
        }
    }

    #[test]
    fn half_types_round_to_nearest_even() {
        nearest::<half::bf16>(|h| h.to_bits(), half::bf16::from_bits);
        nearest::<half::f16>(|h| h.to_bits(), half::f16::from_bits);
    }
}
