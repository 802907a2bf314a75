//! The optimizer's whole state as a value, between [`Profit`](crate::profit::Profit) and any
//! file format: what [`Profit::state`](crate::profit::Profit::state) gives and
//! [`Profit::load_state`](crate::profit::Profit::load_state) takes, as `torch.optim`'s
//! `state_dict()` / `load_state_dict()` and burn's `Record`.
//!
//! A [`ProfitState`] is the [`StateMeta`] (configuration, counters, group rates, the
//! parameters' names, shapes and groups, and the rank of a sharded run) plus named buffers:
//! per trainable parameter the anchor, the accumulated delta and each inner optimizer's state
//! slots, with PyTorch's slot names (`exp_avg`, `momentum_buffer`, ...). The checkpoint module
//! only converts this value to and from safetensors.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Delta, ProfitConfig, Restore, MAX_CALLS};
use crate::error::{ProfitError, Result};
use crate::optim::check_lr;

/// Learning rates and weight decay a group runs with now.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// Main learning rate.
    pub lr: f64,
    /// Reference learning rate.
    pub ref_lr: f64,
    /// Main weight decay.
    pub weight_decay: f64,
    /// Reference weight decay.
    pub ref_weight_decay: f64,
    /// `lr / ref_lr`, kept fixed by [`LrCoupling::FixedRatio`](crate::config::LrCoupling).
    pub ratio: f64,
    /// Main learning rate the group was built with (schedules scale it, as torch's `initial_lr`).
    pub base_lr: f64,
    /// Reference learning rate the group was built with.
    pub base_ref_lr: f64,
    /// Frozen.
    pub frozen: bool,
}

impl GroupState {
    /// A group as built: these rates are also its base rates, `ratio = lr / ref_lr` (`0 / 0`
    /// read as `1`, a positive rate over `0` as infinite).
    pub fn new(lr: f64, ref_lr: f64, weight_decay: f64, ref_weight_decay: f64, frozen: bool) -> Self {
        GroupState {
            lr,
            ref_lr,
            weight_decay,
            ref_weight_decay,
            ratio: ratio_of(lr, ref_lr),
            base_lr: lr,
            base_ref_lr: ref_lr,
            frozen,
        }
    }

    /// Every rate finite and `>= 0`, the ratio not NaN nor negative.
    fn check(&self) -> Result<()> {
        for (name, v) in [
            ("lr", self.lr),
            ("ref_lr", self.ref_lr),
            ("weight_decay", self.weight_decay),
            ("ref_weight_decay", self.ref_weight_decay),
            ("base_lr", self.base_lr),
            ("base_ref_lr", self.base_ref_lr),
        ] {
            check_lr(name, v)?;
        }
        if self.ratio.is_nan() || self.ratio < 0.0 {
            return Err(state_err("group: lr / ref_lr ratio is NaN or negative"));
        }
        Ok(())
    }
}

/// `lr_main / lr_ref`, with `0 / 0` read as `1` (a degenerate ratio leaves `lr_ref` alone).
pub(crate) fn ratio_of(main: f64, reference: f64) -> f64 {
    if reference == 0.0 {
        if main == 0.0 {
            1.0
        } else {
            f64::INFINITY
        }
    } else {
        main / reference
    }
}

/// The optimizer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Counted calls (warm-up, reference and main; skipped calls are not counted).
    pub calls: u64,
    /// Calls skipped for a non-finite gradient.
    pub skipped: u64,
    /// Main calls whose projection fired.
    pub projected_calls: u64,
    /// Main calls whose projection removed more than [`STALL_SHARE`](crate::report::STALL_SHARE)
    /// of `|g|^2`.
    pub stalled_calls: u64,
}

/// The steps one tensor's inner optimizers have taken (`torch.optim`'s per-parameter
/// `state["step"]`): the optimizer's own counts, unless the tensor sat calls out without a
/// gradient ([`Profit::step_partial`](crate::profit::Profit::step_partial)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSteps {
    /// Reference optimizer steps.
    pub reference: u64,
    /// Main optimizer steps (warm-up and main calls).
    pub main: u64,
}

/// One registered parameter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamInfo {
    /// Its unique name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The index of its group.
    pub group: usize,
    /// Its inner optimizers' steps.
    pub steps: TensorSteps,
}

/// Which buffer of a parameter's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BufferKind {
    /// The cycle's anchor `theta_ref` ([`Restore::Anchor`]).
    Anchor,
    /// The accumulated delta ([`Delta::Accumulated`]).
    Delta,
    /// Reference optimizer slot `k` (in [`InnerConfig::slot_names`](crate::optim::InnerConfig::slot_names) order).
    Reference(usize),
    /// Main optimizer slot `k`.
    Main(usize),
}

/// A named state buffer of one parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct StateBuffer<T> {
    /// Index of the parameter (registration order).
    pub param: usize,
    /// Which buffer.
    pub kind: BufferKind,
    /// `{name}/anchor`, `{name}/delta`, `{name}/ref/{slot}` or `{name}/main/{slot}`, with
    /// PyTorch's slot names (`{name}/main/exp_avg`, ...).
    pub key: String,
    /// The buffer (a reference to the optimizer's own from [`Profit::state`](crate::profit::Profit::state)).
    pub tensor: T,
}

/// Everything but the buffers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateMeta {
    /// The configuration (with the learning rates it was built with).
    pub config: ProfitConfig,
    /// The counters.
    pub counters: Counters,
    /// Each group's current rates.
    pub groups: Vec<GroupState>,
    /// The parameters, in registration order.
    pub params: Vec<ParamInfo>,
    /// Which rank of a sharded run this is (`0` single-process).
    pub rank: usize,
    /// Ranks in the run (`1` single-process).
    pub world_size: usize,
}

/// The whole state: [`StateMeta`] and the named buffers, in key order.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfitState<T> {
    /// Configuration, counters, groups, parameters, rank.
    pub meta: StateMeta,
    /// The buffers, sorted by key.
    pub buffers: Vec<StateBuffer<T>>,
}

pub(crate) fn state_err(msg: impl Into<String>) -> ProfitError {
    ProfitError::State(msg.into())
}

impl StateMeta {
    /// The buffers a state with this meta holds, sorted by key (name order, not registration
    /// order: a file must not depend on how an optimizer ordered its parameters).
    pub fn buffer_keys(&self) -> Vec<(String, usize, BufferKind)> {
        let c = &self.config;
        let (refs, mains) = (c.reference.slot_names(), c.main.slot_names());
        let mut keys = vec![];
        for (i, p) in self.params.iter().enumerate() {
            if self.groups.get(p.group).is_none_or(|g| g.frozen) {
                continue;
            }
            let name = &p.name;
            if c.restore == Restore::Anchor {
                keys.push((format!("{name}/anchor"), i, BufferKind::Anchor));
            }
            if c.delta == Delta::Accumulated {
                keys.push((format!("{name}/delta"), i, BufferKind::Delta));
            }
            for (s, slot) in refs.iter().enumerate() {
                keys.push((format!("{name}/ref/{slot}"), i, BufferKind::Reference(s)));
            }
            for (s, slot) in mains.iter().enumerate() {
                keys.push((format!("{name}/main/{slot}"), i, BufferKind::Main(s)));
            }
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys
    }

    /// Check that `theirs` is internally consistent and fits an optimizer whose own state is
    /// `self`: the same parameters (names, shapes, groups, frozen flags), state layout (inner
    /// optimizer kinds and slots, delta and restore modes) and rank; the configuration equal
    /// unless `adopt_config`. Counters and current rates may differ (they are what is loaded).
    pub fn check_fits(&self, theirs: &StateMeta, adopt_config: bool) -> Result<()> {
        if (theirs.rank, theirs.world_size) != (self.rank, self.world_size) {
            return Err(ProfitError::ShardMismatch {
                saved_rank: theirs.rank,
                saved_world: theirs.world_size,
                rank: self.rank,
                world: self.world_size,
            });
        }
        theirs.config.validate().map_err(|e| state_err(format!("config: {e}")))?;
        check_layout(&self.config, &theirs.config)?;
        self.check_params(theirs)?;
        for (mine, g) in self.groups.iter().zip(&theirs.groups) {
            if mine.frozen != g.frozen {
                return Err(state_err("a group's frozen flag differs"));
            }
            g.check().map_err(|e| state_err(format!("group: {e}")))?;
        }
        theirs.check_counters()?;
        let differences = config_differences(&self.config, &theirs.config);
        if !differences.is_empty() && !adopt_config {
            return Err(state_err(format!(
                "the configuration differs from the optimizer's (adopt_config / LoadOptions::adopt_config takes the loaded one):\n  {}",
                differences.join("\n  ")
            )));
        }
        Ok(())
    }

    fn check_params(&self, theirs: &StateMeta) -> Result<()> {
        let names: BTreeSet<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        let loaded: BTreeSet<&str> = theirs.params.iter().map(|p| p.name.as_str()).collect();
        if let Some(n) = names.difference(&loaded).next() {
            return Err(state_err(format!("parameter `{n}` is missing from the state")));
        }
        if let Some(n) = loaded.difference(&names).next() {
            return Err(state_err(format!("the state has unknown parameter `{n}`")));
        }
        if theirs.params.len() != self.params.len() {
            return Err(state_err("the state lists a parameter twice"));
        }
        if theirs.groups.len() != self.groups.len() {
            return Err(state_err(format!(
                "{} parameter groups, optimizer has {}",
                theirs.groups.len(),
                self.groups.len()
            )));
        }
        for p in &theirs.params {
            let Some(mine) = self.params.iter().find(|m| m.name == p.name) else { continue };
            if p.shape != mine.shape {
                return Err(state_err(format!(
                    "`{}`: shape {:?}, expected {:?}",
                    p.name, p.shape, mine.shape
                )));
            }
            if p.group != mine.group {
                return Err(state_err(format!("`{}`: group {}, expected {}", p.name, p.group, mine.group)));
            }
        }
        Ok(())
    }

    /// Counters within the optimizer's limit and consistent with the cycle structure.
    fn check_counters(&self) -> Result<()> {
        let c = &self.counters;
        if c.calls > MAX_CALLS || c.skipped > MAX_CALLS {
            return Err(state_err(format!("counters above {MAX_CALLS}")));
        }
        let refs = self.config.reference_calls(c.calls);
        let mains = c.calls - refs;
        if c.projected_calls > mains || c.stalled_calls > c.projected_calls {
            return Err(state_err("projection counters exceed the main calls"));
        }
        if let Some(p) = self.params.iter().find(|p| p.steps.reference > refs || p.steps.main > mains) {
            return Err(state_err(format!("`{}`: more steps than calls", p.name)));
        }
        Ok(())
    }
}

/// The state layout (which buffers exist) must be the same.
fn check_layout(mine: &ProfitConfig, theirs: &ProfitConfig) -> Result<()> {
    let same = mine.reference.slot_names() == theirs.reference.slot_names()
        && mine.main.slot_names() == theirs.main.slot_names()
        && mine.reference.kind() == theirs.reference.kind()
        && mine.main.kind() == theirs.main.kind()
        && mine.restore == theirs.restore
        && mine.delta == theirs.delta;
    if same {
        return Ok(());
    }
    let layout = |c: &ProfitConfig| {
        format!(
            "reference {} {:?}, main {} {:?}, restore {:?}, delta {:?}",
            c.reference.kind(),
            c.reference.slot_names(),
            c.main.kind(),
            c.main.slot_names(),
            c.restore,
            c.delta
        )
    };
    Err(state_err(format!(
        "state layout differs: the loaded state has {}; the optimizer has {}",
        layout(theirs),
        layout(mine)
    )))
}

/// Differences between two configurations, as `path: ours vs theirs` lines.
pub(crate) fn config_differences(ours: &ProfitConfig, theirs: &ProfitConfig) -> Vec<String> {
    fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    walk(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
                }
            }
            _ if a != b => out.push(format!("{path}: {a} (optimizer) vs {b} (loaded)")),
            _ => {}
        }
    }
    let mut out = vec![];
    match (serde_json::to_value(ours), serde_json::to_value(theirs)) {
        (Ok(a), Ok(b)) => walk("", &a, &b, &mut out),
        _ => out.push("configuration not comparable".into()),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_differences_name_every_field() {
        let a = ProfitConfig::default();
        let mut b = a;
        b.n_ref = 3;
        b.main = b.main.with_lr(0.5);
        let d = config_differences(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().any(|l| l.starts_with("n_ref: 1 (optimizer) vs 3 (loaded)")), "{d:?}");
        assert!(d.iter().any(|l| l.starts_with("main.lr:")), "{d:?}");
        assert!(config_differences(&a, &a).is_empty());
    }
}
