//! The CPU loops over slices, below every backend: depend only on the plain data of a pass
//! ([`kernel`](crate::kernel)) and the inner optimizers' element rules.
//!
//! - [`fused`]: one monomorphized loop per pass variant, optimizer and optimizer flag
//!   (nesterov, amsgrad, centered, ...), so the loop bodies have no branches and vectorize;
//!   each pass reads and writes every array exactly once; nothing is allocated during a step.
//! - [`reduce`]: deterministic f64 reductions (a fixed chunk tree that depends only on the
//!   tensor's length: bitwise reproducible whatever the thread count or scheduling).
//! - on x86-64 the loops and the `f32` reduction leaves are also compiled for AVX2 and chosen
//!   at run time, bitwise identical to the baseline code (`PROFIT_HOST_SIMD=0` forces the
//!   baseline);
//! - tensors of at least [`PAR_MIN`] elements are split across rayon threads at [`CHUNK`]
//!   boundaries.

pub(crate) mod fused;
mod lanes;
pub mod reduce;
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd;

pub use reduce::{reduce_slices, DeltaSlices};

/// Elements per reduction leaf (and the alignment of parallel splits).
pub const CHUNK: usize = 1 << 14;
/// Tensors at least this long are split across threads.
pub const PAR_MIN: usize = 1 << 16;
