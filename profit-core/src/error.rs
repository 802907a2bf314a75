//! Typed errors. Every error is returned before anything is mutated.

use thiserror::Error;

/// Errors raised by a backend (device failures, unsupported layouts).
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum BackendError {
    /// A tensor is not stored contiguously in standard (row-major) order.
    #[error("tensor is not contiguous in standard layout")]
    NotContiguous,
    /// The backend is not available on this machine (no GPU, no driver, ...).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend does not implement what the step asks for (e.g. the external main
    /// optimizer's gradient capture on CUDA).
    #[error("not supported by this backend: {0}")]
    Unsupported(String),
    /// Any other backend failure (a failed kernel launch, a copy, an allocation).
    #[error("backend failure: {0}")]
    Device(String),
}

/// Everything that can go wrong when building, stepping, saving or loading an optimizer.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum ProfitError {
    /// A hyperparameter is out of its valid range (PyTorch's checks, plus PROFIT's own).
    #[error("invalid hyperparameter `{name}` = {value}: {reason}")]
    InvalidHyperparameter {
        /// Name of the hyperparameter, as in PyTorch (`lr`, `betas.0`, `n_ref`, ...).
        name: &'static str,
        /// The offending value.
        value: f64,
        /// What the valid range is.
        reason: &'static str,
    },
    /// Options that cannot be honoured together (e.g. the realized delta without an anchor).
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The optimizer was built with no trainable parameters.
    #[error("no trainable parameters")]
    NoParameters,
    /// Wrong number of parameter or gradient tensors for this optimizer.
    #[error("expected {expected} {what} tensors, got {got}")]
    CountMismatch {
        /// `"parameter"` or `"gradient"`.
        what: &'static str,
        /// How many the optimizer was built with.
        expected: usize,
        /// How many were passed.
        got: usize,
    },
    /// A tensor does not have the shape the optimizer was built with.
    #[error("{what} `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// `"parameter"` or `"gradient"`.
        what: &'static str,
        /// The parameter's name.
        name: String,
        /// Shape the optimizer was built with.
        expected: Vec<usize>,
        /// Shape that was passed.
        got: Vec<usize>,
    },
    /// Two parameters share a name.
    #[error("duplicate parameter name `{0}`")]
    DuplicateName(String),
    /// A parameter group index is out of range.
    #[error("parameter group {index} does not exist ({count} groups)")]
    NoSuchGroup {
        /// The index asked for.
        index: usize,
        /// How many groups there are.
        count: usize,
    },
    /// A gradient holds NaN or infinity (policy [`NonFinitePolicy::Error`](crate::NonFinitePolicy)).
    #[error("non-finite gradient (NaN or infinity) in `{name}`; nothing was changed")]
    NonFiniteGradient {
        /// Name of the first parameter whose gradient is not finite.
        name: String,
    },
    /// The projection coefficient `omega / |delta|^2` is not representable in the parameters'
    /// math type even with `delta` rescaled (`|g|` itself near the type's largest value);
    /// nothing was changed.
    #[error("projection coefficient {coefficient:e} overflows the parameters' type; nothing was changed")]
    ProjectionOverflow {
        /// The coefficient, in f64.
        coefficient: f64,
    },
    /// The optimizer has taken the most calls it counts.
    #[error("the optimizer has taken {limit} calls, the most it counts")]
    CallLimit {
        /// The limit.
        limit: u64,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A checkpoint could not be written or does not fit this optimizer.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A state value ([`ProfitState`](crate::state::ProfitState)) does not fit this optimizer
    /// or is inconsistent. Nothing was changed.
    #[error("state: {0}")]
    State(String),
    /// A checkpoint belongs to another shard: it was saved by rank `saved_rank` of
    /// `saved_world` ranks, and this optimizer is rank `rank` of `world`. Nothing was changed.
    #[error(
        "checkpoint of rank {saved_rank} of {saved_world}, this optimizer is rank {rank} of {world}; nothing was changed"
    )]
    ShardMismatch {
        /// Rank that saved the checkpoint.
        saved_rank: usize,
        /// World size of the run that saved it.
        saved_world: usize,
        /// This optimizer's rank.
        rank: usize,
        /// This optimizer's world size.
        world: usize,
    },
    /// The collective (the all-reduce between ranks) failed or was given inconsistent input
    /// (another rank left, contributions of different lengths). Returned before anything
    /// was changed.
    #[error("collective: {0}")]
    Collective(String),
    /// A shard plan cannot be made (world size or alignment 0) or its arguments do not fit it.
    #[error("shard plan: {0}")]
    ShardPlan(String),
}

/// Shorthand for `Result<T, ProfitError>`.
pub type Result<T, E = ProfitError> = std::result::Result<T, E>;
