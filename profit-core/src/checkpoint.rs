//! Checkpoints: the whole PROFIT state at any call boundary (mid-cycle included), as a
//! safetensors file whose tensors are keyed by parameter name and whose metadata header
//! carries a format version, the configuration, the counters and the learning rates.
//!
//! Tensors: `{name}/delta` (accumulated delta), `{name}/anchor` (restore mode `anchor`), `{name}/ref/{slot}` and
//! `{name}/main/{slot}` with PyTorch's state names (`momentum_buffer`, `exp_avg`, ...).
//! Frozen parameters hold no state and have no tensors. A resumed run continues bitwise
//! identically. Loading checks everything (format, version, dtype, names, shapes, layout,
//! sizes, values of the header) before it changes anything.

use std::collections::{BTreeSet, HashMap};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::backend::{StorageOrder, TensorOps};
use crate::element::{Dtype as ElemDtype, Element};
use crate::error::{ProfitError, Result};
use crate::optim::check_lr;
use crate::params::GroupState;
use crate::profit::{reference_calls, Delta, Profit, ProfitConfig, Restore};

/// Value of the `format` header field.
pub const FORMAT: &str = "profit-checkpoint";
/// Current format version (2: the delta mode and the projection counters; version-1 files,
/// which predate the delta mode, load as [`Delta::Accumulated`]).
pub const VERSION: u32 = 2;
/// Largest call count a checkpoint may carry (far beyond any run; keeps every counter exact
/// in the `f64` and `i32` arithmetic of bias corrections).
pub const MAX_CALLS: u64 = 1 << 40;
/// Metadata key holding the JSON header.
const META_KEY: &str = "profit";

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    dtype: ElemDtype,
    /// Informational: the backend that wrote the file.
    backend: String,
    /// Element order of every tensor.
    storage_order: StorageOrder,
    config: ProfitConfig,
    calls: u64,
    skipped: u64,
    /// Version 1 only (derived from `calls` since version 2); checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ref_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    main_steps: Option<u64>,
    /// Main calls whose projection fired (version 2).
    #[serde(default)]
    projected_calls: u64,
    /// Main calls whose projection removed more than 95% of |g|^2 (version 2).
    #[serde(default)]
    stalled_calls: u64,
    groups: Vec<GroupHeader>,
    params: Vec<ParamHeader>,
    /// CRC-32 of every state tensor's bytes (in key order) and of this header's own JSON
    /// (written with `crc32 = 0`): any change to a value is refused as corruption.
    crc32: u32,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct ParamHeader {
    name: String,
    shape: Vec<usize>,
    group: usize,
}

/// Group rates; the ratio is stored as raw bits because it may be infinite.
#[derive(Serialize, Deserialize)]
struct GroupHeader {
    lr: f64,
    ref_lr: f64,
    weight_decay: f64,
    ref_weight_decay: f64,
    ratio_bits: u64,
    base_lr: f64,
    base_ref_lr: f64,
    frozen: bool,
}

/// The header JSON as it was checksummed: with its `crc32` value (the last field, at the top
/// level; a key inside a string value would have escaped quotes) written as `0`. The checksum
/// covers the header's exact bytes, so no edit of it goes unnoticed.
fn zero_crc(json: &str) -> Result<String> {
    let key = "\"crc32\":";
    let at = json.rfind(key).ok_or_else(|| err("bad header: no crc32"))? + key.len();
    let digits = json[at..].find(|c: char| !c.is_ascii_digit()).unwrap_or(json.len() - at);
    Ok(format!("{}0{}", &json[..at], &json[at + digits..]))
}

fn err(msg: impl Into<String>) -> ProfitError {
    ProfitError::Checkpoint(msg.into())
}

fn dtype_of<E: Element>() -> Dtype {
    match E::DTYPE {
        ElemDtype::F64 => Dtype::F64,
        ElemDtype::F32 => Dtype::F32,
    }
}

/// Recompute the checksum of a checkpoint whose header or tensors were edited, so that tests
/// and fuzzers can reach the loader's other checks with files that are well-formed but wrong.
/// Not for production use: a resealed file is only as trustworthy as its edits.
#[doc(hidden)]
pub fn reseal(bytes: &[u8]) -> Result<Vec<u8>> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| err(format!("corrupt file: {e}")))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| err(format!("corrupt file: {e}")))?;
    let json = metadata.metadata().as_ref().and_then(|m| m.get(META_KEY)).ok_or_else(|| err("no header"))?;
    let h: Header = serde_json::from_str(json).map_err(|e| err(format!("bad header: {e}")))?;
    let mut names: Vec<&str> = st.names();
    names.sort();
    let mut crc = crc32fast::Hasher::new();
    let mut views = vec![];
    for name in names {
        let v = st.tensor(name).map_err(|e| err(e.to_string()))?;
        crc.update(v.data());
        views.push((name.to_string(), v));
    }
    let canonical = Header { crc32: 0, ..h };
    crc.update(serde_json::to_string(&canonical).map_err(|e| err(e.to_string()))?.as_bytes());
    let sealed = Header { crc32: crc.finalize(), ..canonical };
    let meta = HashMap::from([(
        META_KEY.to_string(),
        serde_json::to_string(&sealed).map_err(|e| err(e.to_string()))?,
    )]);
    safetensors::serialize(views, Some(meta)).map_err(|e| err(e.to_string()))
}

/// The tensors a state holds, as (key, tensor index, which buffer).
#[derive(Clone, Copy)]
enum Buf {
    Anchor,
    Delta,
    Ref(usize),
    Main(usize),
}

impl<B: TensorOps> Profit<B> {
    fn checkpoint_keys(&self) -> Vec<(String, usize, Buf)> {
        let mut keys = vec![];
        let refs = self.config.reference.slot_names();
        let mains = self.config.main.slot_names();
        for (i, name) in self.reg.names.iter().enumerate() {
            if !self.reg.active[i] {
                continue;
            }
            if self.config.delta == Delta::Accumulated {
                keys.push((format!("{name}/delta"), i, Buf::Delta));
            }
            if self.config.restore == Restore::Anchor {
                keys.push((format!("{name}/anchor"), i, Buf::Anchor));
            }
            for (s, slot) in refs.iter().enumerate() {
                keys.push((format!("{name}/ref/{slot}"), i, Buf::Ref(s)));
            }
            for (s, slot) in mains.iter().enumerate() {
                keys.push((format!("{name}/main/{slot}"), i, Buf::Main(s)));
            }
        }
        // Name order, not registration order: the checksum must not depend on how the
        // loading optimizer ordered its parameters.
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys
    }

    fn buffer(&self, i: usize, b: Buf) -> Option<&B::Tensor> {
        let s = &self.reg.states[i];
        match b {
            Buf::Anchor => s.anchor.as_ref(),
            Buf::Delta => s.delta.as_ref(),
            Buf::Ref(k) => s.ref_slots.get(k),
            Buf::Main(k) => s.main_slots.get(k),
        }
    }

    fn buffer_mut(&mut self, i: usize, b: Buf) -> Option<&mut B::Tensor> {
        let s = &mut self.reg.states[i];
        match b {
            Buf::Anchor => s.anchor.as_mut(),
            Buf::Delta => s.delta.as_mut(),
            Buf::Ref(k) => s.ref_slots.get_mut(k),
            Buf::Main(k) => s.main_slots.get_mut(k),
        }
    }

    /// Serialize the whole optimizer state (safetensors bytes).
    pub fn save_checkpoint(&self) -> Result<Vec<u8>> {
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            dtype: B::Elem::DTYPE,
            backend: B::NAME.into(),
            storage_order: B::STORAGE_ORDER,
            config: self.config,
            calls: self.calls,
            skipped: self.skipped,
            ref_steps: None,
            main_steps: None,
            projected_calls: self.projected_calls,
            stalled_calls: self.stalled_calls,
            groups: self
                .reg
                .groups
                .iter()
                .map(|g| GroupHeader {
                    lr: g.lr,
                    ref_lr: g.ref_lr,
                    weight_decay: g.weight_decay,
                    ref_weight_decay: g.ref_weight_decay,
                    ratio_bits: g.ratio.to_bits(),
                    base_lr: g.base_lr,
                    base_ref_lr: g.base_ref_lr,
                    frozen: g.frozen,
                })
                .collect(),
            crc32: 0,
            params: self
                .reg
                .names
                .iter()
                .zip(&self.reg.shapes)
                .zip(&self.reg.group_of)
                .map(|((n, s), &g)| ParamHeader { name: n.clone(), shape: s.clone(), group: g })
                .collect(),
        };
        let mut blobs = vec![];
        for (key, i, b) in self.checkpoint_keys() {
            let t = self.buffer(i, b).ok_or_else(|| err(format!("state buffer {key} missing")))?;
            let mut host = vec![B::Elem::from_f64(0.0); B::numel(t)];
            B::read(t, &mut host)?;
            let mut bytes = Vec::with_capacity(host.len() * B::Elem::DTYPE.size());
            for x in host {
                x.write_le(&mut bytes);
            }
            blobs.push((key, self.reg.shapes[i].clone(), bytes));
        }
        let mut crc = crc32fast::Hasher::new();
        for (_, _, bytes) in &blobs {
            crc.update(bytes);
        }
        crc.update(serde_json::to_string(&header).map_err(|e| err(e.to_string()))?.as_bytes());
        let header = Header { crc32: crc.finalize(), ..header };
        let json = serde_json::to_string(&header).map_err(|e| err(e.to_string()))?;
        let views = blobs
            .iter()
            .map(|(k, shape, bytes)| {
                TensorView::new(dtype_of::<B::Elem>(), shape.clone(), bytes).map(|v| (k.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        let meta = HashMap::from([(META_KEY.to_string(), json)]);
        safetensors::serialize(views, Some(meta)).map_err(|e| err(e.to_string()))
    }

    /// Save to a file.
    pub fn save_checkpoint_file(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let bytes = self.save_checkpoint()?;
        std::fs::write(path.as_ref(), bytes).map_err(|e| err(format!("{}: {e}", path.as_ref().display())))
    }

    /// Load a file written by [`save_checkpoint_file`](Self::save_checkpoint_file).
    pub fn load_checkpoint_file(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let bytes =
            std::fs::read(path.as_ref()).map_err(|e| err(format!("{}: {e}", path.as_ref().display())))?;
        self.load_checkpoint(&bytes)
    }

    /// Restore the whole state from [`save_checkpoint`](Self::save_checkpoint) bytes.
    ///
    /// The optimizer must have been built over the same parameters (names, shapes, groups,
    /// frozen flags), dtype and state layout (inner optimizer kinds and their state buffers,
    /// restore mode); hyperparameters, counters and learning rates come from the checkpoint.
    /// Anything that does not fit is refused with [`ProfitError::Checkpoint`] and nothing is
    /// changed.
    pub fn load_checkpoint(&mut self, bytes: &[u8]) -> Result<()> {
        let (_, metadata) =
            SafeTensors::read_metadata(bytes).map_err(|e| err(format!("corrupt file: {e}")))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| err(format!("corrupt file: {e}")))?;
        let json = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| err("no PROFIT header: not a PROFIT checkpoint"))?;
        let mut h: Header = serde_json::from_str(json).map_err(|e| err(format!("bad header: {e}")))?;
        if h.format != FORMAT {
            return Err(err(format!("format `{}`, expected `{FORMAT}`", h.format)));
        }
        if !(1..=VERSION).contains(&h.version) {
            return Err(err(format!(
                "format version {}, this build reads versions 1 to {VERSION}",
                h.version
            )));
        }
        if h.storage_order != B::STORAGE_ORDER {
            return Err(err(format!(
                "checkpoint holds {:?} tensors (backend `{}`), this optimizer's backend `{}` is {:?}",
                h.storage_order,
                h.backend,
                B::NAME,
                B::STORAGE_ORDER
            )));
        }
        if h.dtype != B::Elem::DTYPE {
            return Err(err(format!(
                "checkpoint holds {} state, the optimizer is {}",
                h.dtype,
                B::Elem::DTYPE
            )));
        }
        if h.version == 1 {
            // Version 1 predates the delta mode: its delta was always accumulated.
            h.config.delta = Delta::Accumulated;
        }
        self.check_header(&h)?;

        // Decode every tensor before touching anything.
        let keys = self.checkpoint_keys();
        let wanted: BTreeSet<&str> = keys.iter().map(|(k, _, _)| k.as_str()).collect();
        let present: BTreeSet<&str> = st.names().into_iter().collect();
        if let Some(k) = wanted.difference(&present).next() {
            return Err(err(format!("missing tensor `{k}`")));
        }
        if let Some(k) = present.difference(&wanted).next() {
            return Err(err(format!("unexpected tensor `{k}`")));
        }
        let expected_crc = h.crc32;
        let width = B::Elem::DTYPE.size();
        let mut decoded = Vec::with_capacity(keys.len());
        let mut crc = crc32fast::Hasher::new();
        for (key, i, b) in &keys {
            let view = st.tensor(key).map_err(|e| err(format!("{key}: {e}")))?;
            if view.dtype() != dtype_of::<B::Elem>() {
                return Err(err(format!("{key}: dtype {:?}, expected {}", view.dtype(), B::Elem::DTYPE)));
            }
            if view.shape() != self.reg.shapes[*i].as_slice() {
                return Err(err(format!(
                    "{key}: shape {:?}, expected {:?}",
                    view.shape(),
                    self.reg.shapes[*i]
                )));
            }
            let data = view.data();
            if data.len() != self.reg.shapes[*i].iter().product::<usize>() * width {
                return Err(err(format!("{key}: {} bytes, wrong size", data.len())));
            }
            crc.update(data);
            let values: Vec<B::Elem> = data.chunks_exact(width).map(B::Elem::read_le).collect();
            decoded.push((*i, *b, values));
        }
        crc.update(zero_crc(json)?.as_bytes());
        if crc.finalize() != expected_crc {
            return Err(err("corrupt file: state tensors do not match their checksum"));
        }

        // Everything fits: apply.
        for (i, b, values) in decoded {
            let t = self.buffer_mut(i, b).ok_or_else(|| err("state buffer missing"))?;
            B::write(t, &values)?;
        }
        for (g, gh) in self.reg.groups.iter_mut().zip(&h.groups) {
            *g = GroupState {
                lr: gh.lr,
                ref_lr: gh.ref_lr,
                weight_decay: gh.weight_decay,
                ref_weight_decay: gh.ref_weight_decay,
                ratio: f64::from_bits(gh.ratio_bits),
                base_lr: gh.base_lr,
                base_ref_lr: gh.base_ref_lr,
                frozen: gh.frozen,
            };
        }
        self.config = h.config;
        self.calls = h.calls;
        self.skipped = h.skipped;
        self.projected_calls = h.projected_calls;
        self.stalled_calls = h.stalled_calls;
        Ok(())
    }

    /// Check that a header fits this optimizer and is internally consistent.
    fn check_header(&self, h: &Header) -> Result<()> {
        h.config.validate().map_err(|e| err(format!("header config: {e}")))?;
        let (mine, theirs) = (&self.config, &h.config);
        if mine.reference.slot_names() != theirs.reference.slot_names()
            || mine.main.slot_names() != theirs.main.slot_names()
            || mine.reference.kind() != theirs.reference.kind()
            || mine.main.kind() != theirs.main.kind()
            || mine.restore != theirs.restore
            || mine.delta != theirs.delta
        {
            return Err(err(format!(
                "state layout differs: checkpoint has {}/{} (restore {:?}, delta {:?}), optimizer has {}/{} (restore {:?}, delta {:?})",
                theirs.reference.kind(),
                theirs.main.kind(),
                theirs.restore,
                theirs.delta,
                mine.reference.kind(),
                mine.main.kind(),
                mine.restore,
                mine.delta
            )));
        }
        let names: BTreeSet<&str> = self.reg.names.iter().map(String::as_str).collect();
        let file_names: BTreeSet<&str> = h.params.iter().map(|p| p.name.as_str()).collect();
        if let Some(n) = names.difference(&file_names).next() {
            return Err(err(format!("parameter `{n}` is missing from the checkpoint")));
        }
        if let Some(n) = file_names.difference(&names).next() {
            return Err(err(format!("checkpoint has unknown parameter `{n}`")));
        }
        if h.params.len() != self.reg.names.len() {
            return Err(err("checkpoint lists a parameter twice"));
        }
        if h.groups.len() != self.reg.groups.len() {
            return Err(err(format!(
                "{} parameter groups, optimizer has {}",
                h.groups.len(),
                self.reg.groups.len()
            )));
        }
        for p in &h.params {
            let i = self.reg.names.iter().position(|n| *n == p.name).unwrap_or(0);
            if p.shape != self.reg.shapes[i] {
                return Err(err(format!(
                    "`{}`: shape {:?}, expected {:?}",
                    p.name, p.shape, self.reg.shapes[i]
                )));
            }
            if p.group != self.reg.group_of[i] {
                return Err(err(format!(
                    "`{}`: group {}, expected {}",
                    p.name, p.group, self.reg.group_of[i]
                )));
            }
        }
        for (mine, gh) in self.reg.groups.iter().zip(&h.groups) {
            if mine.frozen != gh.frozen {
                return Err(err("a group's frozen flag differs"));
            }
            for (name, v) in [
                ("lr", gh.lr),
                ("ref_lr", gh.ref_lr),
                ("weight_decay", gh.weight_decay),
                ("ref_weight_decay", gh.ref_weight_decay),
                ("base_lr", gh.base_lr),
                ("base_ref_lr", gh.base_ref_lr),
            ] {
                check_lr(name, v).map_err(|e| err(format!("header group: {e}")))?;
            }
            let ratio = f64::from_bits(gh.ratio_bits);
            if ratio.is_nan() || ratio < 0.0 {
                return Err(err("header group: lr / ref_lr ratio is NaN or negative"));
            }
        }
        if h.calls > MAX_CALLS || h.skipped > MAX_CALLS {
            return Err(err(format!("header counters above {MAX_CALLS}")));
        }
        let refs = reference_calls(&h.config, h.calls);
        let consistent = match (h.ref_steps, h.main_steps) {
            (None, None) => true,
            (Some(r), Some(m)) => r == refs && r.checked_add(m) == Some(h.calls),
            _ => false,
        };
        if !consistent {
            return Err(err("header counters are inconsistent with the cycle structure"));
        }
        let mains = h.calls - refs;
        if h.projected_calls > mains || h.stalled_calls > h.projected_calls {
            return Err(err("header projection counters exceed the main calls"));
        }
        Ok(())
    }
}
