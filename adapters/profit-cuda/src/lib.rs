//! # profit-cuda
//!
//! PROFIT on NVIDIA GPUs: [`Cuda<E>`] implements [`profit_core::backend::TensorOps`] over
//! [`CudaTensor<E>`] (`E = f32`, `f64`, `half::bf16` or `half::f16`) with fused PTX kernels (`cuda-kernels/profit.cu`)
//! driven by [cudarc](https://docs.rs/cudarc).
//!
//! - Every pass is one pass over memory (the cost table of ALGORITHM.md, section 7): a reference call reads `theta, g` and
//!   writes `theta, delta` (+ the anchor); a main call reduces `<delta, g>, |delta|^2, |g|^2`
//!   in f64, then projects, restores and steps the main optimizer in one more pass.
//! - One launch covers all tensors (a device table of pointers and per-tensor scalars), so a
//!   step costs O(1) launches whatever the number of tensors; reductions come back as three
//!   `f64` per tensor.
//! - A call that needs reductions (every main call; reference and warm-up calls when
//!   non-finite gradients are refused or gradients clipped) is decided on the device
//!   ([`TensorOps::reduce_decide_apply`](profit_core::backend::TensorOps::reduce_decide_apply)): a
//!   one-block kernel evaluates profit-core's `Decision` (non-finite check, clipping, the
//!   projection coefficients) from the reductions, and the update is enqueued right behind
//!   it, so the host waits once per call, at its end, instead of between the reductions and
//!   the update. Bitwise the same as deciding on the host
//!   ([`CudaBackend::set_decide_on_device`] switches it off, for measurements). Device tables and scratch are kept and reused: a step allocates no device memory (cudarc builds a small host argument list per launch).
//! - The element math mirrors profit-core's host loops operation for operation (no FMA
//!   contraction, IEEE division and square root), so the apply passes round as the CPU
//!   backends do; reductions are deterministic (fixed order) but summed in another order than
//!   on the host.
//! - Without a driver or a GPU the crate still builds and [`CudaBackend::new`] returns
//!   [`BackendError::Unavailable`](profit_core::error::BackendError::Unavailable); nothing panics.
//!
//! ```
//! use profit_core::{Adam, Profit, ProfitConfig, Sgd};
//! use profit_cuda::{Cuda, CudaBackend};
//!
//! let gpu = match CudaBackend::new(0) {
//!     Ok(gpu) => gpu,
//!     Err(e) => { println!("skipped: {e}"); return; }
//! };
//! let mut w = gpu.upload(&[3, 2], &[1.0f32; 6]).unwrap();
//! let config = ProfitConfig::new(Sgd { lr: 1e-4, ..Default::default() }, Adam { lr: 1e-3, ..Default::default() });
//! let mut opt = Profit::<Cuda<f32>>::with_names(config, &[("w", &w)]).unwrap();
//! let g = gpu.upload(&[3, 2], &[0.5f32; 6]).unwrap();
//! opt.step(&mut [&mut w], &[&g]).unwrap();
//! ```
//!
//! Parameters kept elsewhere move in and out with [`CudaBackend::upload`],
//! [`CudaTensor::copy_from_host`], [`CudaTensor::copy_to_host`] and [`CudaTensor::to_vec`].
//!
//! bf16 and f16 tensors are stored in 16 bits and computed in f32 with one rounding per stored
//! value (the kernels convert with integer code, rounding to nearest even), as the host
//! backends do; the reductions stay in f64. Their speed on a GPU has not been measured yet.
//!
//! Feature `nccl`: `nccl::NcclCollective`, a [`Collective`](profit_core::collective::Collective) over
//! NCCL (loaded at run time) for PROFIT sharded over GPUs, one rank per GPU.

#![warn(missing_docs, missing_debug_implementations)]

mod device;
pub mod kernels;
#[cfg(feature = "nccl")]
pub mod nccl;
mod ops;
mod tensor;

pub use device::{CudaBackend, PtxSource};
pub use ops::Cuda;
pub use tensor::{CudaElement, CudaTensor};
