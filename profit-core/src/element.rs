//! Scalar element types a backend may store.

use std::fmt::Debug;

/// A floating-point element type (`f32` or `f64`).
///
/// All reductions are accumulated in `f64` whatever the element type (SPEC section 2).
pub trait Element: num_traits::Float + Copy + Send + Sync + Debug + Default + PartialOrd + 'static {
    /// dtype name as written in checkpoints (`"f32"`, `"f64"`).
    const DTYPE: &'static str;
    /// Convert from `f64` (rounding to nearest).
    fn from_f64(v: f64) -> Self;
    /// Convert to `f64` (exact for `f32` and `f64`).
    fn as_f64(self) -> f64;
    /// Little-endian bytes of one element, appended to `out`.
    fn write_le(self, out: &mut Vec<u8>);
    /// Read one element from exactly `size_of::<Self>()` little-endian bytes.
    fn read_le(bytes: &[u8]) -> Self;
}

impl Element for f32 {
    const DTYPE: &'static str = "f32";
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn read_le(bytes: &[u8]) -> Self {
        let mut b = [0u8; 4];
        b.copy_from_slice(bytes);
        f32::from_le_bytes(b)
    }
}

impl Element for f64 {
    const DTYPE: &'static str = "f64";
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn read_le(bytes: &[u8]) -> Self {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        f64::from_le_bytes(b)
    }
}
