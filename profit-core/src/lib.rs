//! # profit-core
//!
//! PROFIT ("PROFIT: A Specialized Optimizer for Deep Fine Tuning", Chakravarthy et al., arXiv
//! 2412.01930, NeurIPS 2025) written once over the [`TensorOps`](backend::TensorOps) backend trait.
//!
//! What a trainer uses is at the crate root ([`Profit`], [`ProfitConfig`] and its policies,
//! the inner optimizers, [`StepReport`], [`ProfitState`], parameter groups, checkpoint
//! options). The modules, each depending only on those listed before it:
//!
//! - [`algorithm`]: the rules, in prose (`ALGORITHM.md`).
//! - [`element`], [`error`]: scalar types and errors.
//! - [`optim`]: the inner optimizers, with PyTorch's formulas, names and defaults.
//! - [`config`], [`report`], [`state`]: PROFIT's settings, what a call reports, and the whole
//!   state as a value (`torch.optim`'s `state_dict`).
//! - [`kernel`], [`decision`], [`backend`]: the contract a tensor library implements (one
//!   fused pass per tensor, and the decision between the reductions and the update); [`host`]
//!   implements it for any library whose tensors are host memory.
//! - [`profit`]: the algorithm ([`Profit`]), in one file; [`plain`]: an inner optimizer alone.
//! - [`schedule`], [`checkpoint`]: learning-rate schedules and save/resume (safetensors).
//! - [`shard`], [`collective`]: the optimizer state sharded over ranks, which agree on the
//!   global sums through one all-reduce per call; an in-process engine over threads.
//!
//! A user depends on this crate plus one adapter (`profit-ndarray`, `profit-nalgebra`,
//! `profit-candle`, `profit-burn`, `profit-dfdx`, `profit-cuda`), or on this crate alone with
//! [`host::VecBackend`]:
//!
//! ```
//! use profit_core::host::{VecBackend, VecTensor};
//! use profit_core::{Delta, Profit, ProfitConfig, SaveOptions};
//!
//! let mut w = VecTensor::new(&[2, 2], vec![0.5f32, -0.5, 1.0, 2.0]).unwrap();
//! // SGD reference at lr 1e-6, Adam main at lr 1e-3, realized delta (`theta' - theta_ref`).
//! let config = ProfitConfig::default();
//! assert_eq!(config.delta, Delta::Realized);
//! let mut opt = Profit::<VecBackend<f32>>::with_names(config, &[("w", &w)])?;
//! for step in 0..4 {
//!     let g = VecTensor::new(&[2, 2], vec![0.1f32 * step as f32, 0.2, -0.3, 0.4]).unwrap();
//!     let report = opt.step(&mut [&mut w], &[&g])?;
//!     if let Some(main) = report.main {
//!         println!("projected: {}, share of |g|^2 removed: {:.3}", main.projected, main.removed);
//!     }
//! }
//! // The whole state, resumable bitwise in another process.
//! let bytes = opt.save_checkpoint(&[&w], SaveOptions::default())?;
//! assert!(!bytes.is_empty());
//! # Ok::<(), profit_core::ProfitError>(())
//! ```
//!
//! [`ProfitConfig::delta`] chooses what `delta` is: [`Delta::Realized`] (the default, the
//! difference of the stored weights, as the paper's Algorithm 1 writes it) or
//! [`Delta::Accumulated`] (the reference updates summed, one more buffer). They differ when the
//! reference update is small against the weights' float spacing; the repository's
//! `EXPERIMENTS.md` measures when each helps.

#![warn(missing_docs, missing_debug_implementations)]

pub mod algorithm {
    //! The algorithm as this library implements it, rule by rule: the repository's
    //! `ALGORITHM.md`, shipped with the crate.
    #![doc = include_str!("../ALGORITHM.md")]
}
pub mod backend;
mod batch;
pub mod checkpoint;
pub mod collective;
pub mod config;
mod cpu;
pub mod decision;
pub mod element;
pub mod error;
pub mod host;
pub mod kernel;
pub mod optim;
mod params;
pub mod plain;
pub mod profit;
pub mod report;
pub mod schedule;
pub mod shard;
pub mod state;

pub use checkpoint::{LoadOptions, SaveOptions};
pub use config::{Delta, NonFinitePolicy, ProfitConfig, Projection, Restore};
pub use error::ProfitError;
pub use optim::{Adam, AdamW, InnerConfig, RmsProp, Sgd};
pub use params::{GroupOptions, ParamGroup};
pub use profit::Profit;
pub use report::{MainReport, Phase, StepReport};
pub use state::ProfitState;
