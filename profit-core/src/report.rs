//! What a call did: the per-call report and the projection statistics of a main call.

use serde::{Deserialize, Serialize};

use crate::decision::{fires, total};
use crate::kernel::Reduction;

/// What a call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A warm-up call: plain main-optimizer step.
    Warmup,
    /// A reference call.
    Reference,
    /// The main call of a cycle.
    Main,
    /// A call skipped for a non-finite gradient (policy [`NonFinitePolicy::Skip`](crate::config::NonFinitePolicy::Skip)); nothing changed.
    Skipped,
}

impl Phase {
    /// The phase's name as in reports and golden files (`warmup`, `reference`, `main`, `skipped`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Warmup => "warmup",
            Phase::Reference => "reference",
            Phase::Main => "main",
            Phase::Skipped => "skipped",
        }
    }
}

/// Projection statistics of a main call (over all trainable tensors for global projection;
/// sums over tensors for per-tensor projection, whose per-tensor values are in
/// [`Profit::tensor_reports`](crate::profit::Profit::tensor_reports)).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MainReport {
    /// `omega = <delta, g>`.
    pub omega: f64,
    /// `|delta|^2`.
    pub delta_norm_sq: f64,
    /// `|g|^2` before projection (after clipping, if any).
    pub grad_norm_sq: f64,
    /// Whether the projection fired (any tensor, for per-tensor projection).
    pub projected: bool,
    /// `cos(delta, g)`, `0` when either is zero.
    pub cosine: f64,
    /// The share of `|g|^2` the projection removed: `omega^2 / (|delta|^2 |g|^2)` (that is
    /// `cos^2`) when it fires, `0` when it does not; for per-tensor projection the removed
    /// `omega_i^2 / |delta_i|^2` of the projected tensors over the total `|g|^2`. Near `1`, the
    /// main optimizer sees almost nothing of the gradient: see [`Profit::stalled_calls`](crate::profit::Profit::stalled_calls).
    pub removed: f64,
}

/// A main call whose projection removed more than this share of `|g|^2` counts as stalled
/// ([`Profit::stalled_calls`](crate::profit::Profit::stalled_calls)).
pub const STALL_SHARE: f64 = 0.95;

/// Per-tensor statistics of the last main call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TensorReport {
    /// `<delta_i, g_i>`.
    pub omega: f64,
    /// `|delta_i|^2`.
    pub delta_norm_sq: f64,
    /// `|g_i|^2`.
    pub grad_norm_sq: f64,
    /// Whether this tensor's gradient was projected (per-tensor projection), or the global one
    /// fired (global projection).
    pub projected: bool,
}

/// The per-call report.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Index of this call among counted calls (skipped calls are not counted).
    pub call: u64,
    /// What the call did.
    pub phase: Phase,
    /// Factor the gradient was scaled by (gradient clipping), `1` otherwise.
    pub grad_scale: f64,
    /// Projection statistics, at main calls.
    pub main: Option<MainReport>,
}

/// The main call's report from its reductions (scaled by the clipping factor `scale`), and
/// each tensor's into `tensors`.
pub(crate) fn main_report(
    global: bool,
    scale: f64,
    active: &[bool],
    reductions: &[Reduction],
    tensors: &mut [TensorReport],
) -> MainReport {
    let total = total(reductions);
    let (om, dd, gg) = (total.omega * scale, total.delta_sq, total.grad_sq * scale * scale);
    let global_fires = fires(om, dd);
    let mut any = false;
    let mut removed_sq = 0.0;
    for (i, (r, t)) in reductions.iter().zip(tensors.iter_mut()).enumerate() {
        let (o_i, d_i) = (r.omega * scale, r.delta_sq);
        let projected = active[i] && if global { global_fires } else { fires(o_i, d_i) };
        if projected && !global {
            any = true;
            removed_sq += o_i / d_i * o_i;
        }
        *t = TensorReport {
            omega: o_i,
            delta_norm_sq: d_i,
            grad_norm_sq: r.grad_sq * scale * scale,
            projected,
        };
    }
    let cos = cosine(om, dd, gg);
    let (projected, removed) = if global {
        (global_fires, if global_fires { cos * cos } else { 0.0 })
    } else {
        (any, if gg > 0.0 { (removed_sq / gg).min(1.0) } else { 0.0 })
    };
    MainReport { omega: om, delta_norm_sq: dd, grad_norm_sq: gg, projected, cosine: cos, removed }
}

fn cosine(omega: f64, dd: f64, gg: f64) -> f64 {
    if dd > 0.0 && gg > 0.0 {
        omega / (dd.sqrt() * gg.sqrt())
    } else {
        0.0
    }
}
