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
}

impl Dtype {
    /// The name written in checkpoints and reports (`"f32"`, `"f64"`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
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
