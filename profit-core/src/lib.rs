//! # profit-core
//!
//! PROFIT ("PROFIT: A Specialized Optimizer for Deep Fine Tuning", Chakravarthy et al., arXiv
//! 2412.01930, NeurIPS 2025) written once over the [`TensorOps`] backend trait.
//!
//! - [`profit`]: the algorithm ([`Profit`]), in one file.
//! - [`optim`]: the inner optimizers, with PyTorch's formulas, names and defaults; usable alone
//!   through [`Plain`].
//! - [`backend`]: the contract a tensor library implements; [`host`] implements it for any
//!   library whose tensors are host memory.
//! - [`schedule`], [`checkpoint`]: learning-rate schedules and save/resume.
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

#![warn(missing_docs)]

pub mod backend;
pub mod checkpoint;
pub mod collective;
pub mod element;
pub mod error;
pub mod host;
pub mod optim;
mod params;
mod plain;
pub mod profit;
pub mod schedule;
pub mod shard;

pub use backend::{
    Decision, DeltaView, Kernel, Pass, Reduction, StorageOrder, TensorOps, TensorState, Variant, Verdict,
};
pub use checkpoint::{LoadOptions, SaveOptions};
pub use collective::{Collective, SingleProcess, ThreadCollective};
pub use element::{Dtype, Element, Real};
pub use error::{BackendError, ProfitError, Result};
pub use optim::{Adam, AdamW, External, InnerConfig, RmsProp, Rule, Sgd};
pub use params::{GroupOptions, GroupState, ParamGroup};
pub use plain::Plain;
pub use profit::{
    Delta, LrCoupling, MainReport, NonFinitePolicy, Phase, Profit, ProfitConfig, Projection, Restore,
    StepReport, TensorReport, STALL_SHARE,
};
pub use shard::{ShardPlan, ShardedProfit};
