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
//! `profit-dfdx`, `profit-cuda`).

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

pub use backend::{DeltaView, Kernel, Pass, Reduction, StorageOrder, TensorOps, TensorState, Variant};
pub use checkpoint::{LoadOptions, SaveOptions};
pub use collective::{Collective, SingleProcess, ThreadCollective};
pub use element::{Dtype, Element, Real};
pub use error::{BackendError, ProfitError, Result};
pub use optim::{Adam, AdamW, InnerConfig, RmsProp, Rule, Sgd};
pub use params::{GroupOptions, GroupState, ParamGroup};
pub use plain::Plain;
pub use profit::{
    Delta, LrCoupling, MainReport, NonFinitePolicy, Phase, Profit, ProfitConfig, Projection, Restore,
    StepReport, TensorReport, STALL_SHARE,
};
pub use shard::{ShardPlan, ShardedProfit};
