//! Checkpoints: the whole PROFIT state at any call boundary (mid-cycle included), as a
//! safetensors file whose tensors are keyed by parameter name and whose metadata header
//! carries a format version, the configuration, the counters, the learning rates and a
//! fingerprint of the parameters the state belongs to.
//!
//! Tensors: `{name}/anchor` (restore mode `anchor`), `{name}/delta` (accumulated delta),
//! `{name}/ref/{slot}` and `{name}/main/{slot}` with PyTorch's state names (`momentum_buffer`,
//! `exp_avg`, ...), and with [`SaveOptions::include_params`] the parameters themselves as
//! `{name}/param`. Frozen parameters hold no state.
//!
//! In a sharded run (see [`shard`](crate::shard)) each rank saves and loads its own shard: its
//! file holds the rank's state over its 1-D shards, and the header records the rank and the
//! world size (`rank`, `world_size`; written only when not 0 and 1, so single-process files
//! are as before, and files without them are rank 0 of 1). A file of another rank or world
//! size is refused with [`ProfitError::ShardMismatch`].
//!
//! Guarantees:
//! - **Nothing is lost.** [`Profit::save_checkpoint_file`] writes a temporary file in the
//!   target's folder, syncs it, renames it over the target and syncs the folder: a crash or a
//!   full disk at any moment leaves the previous file intact.
//! - **Nothing goes unnoticed.** A CRC-32 covers every byte of the file (with the checksum's
//!   own eight hex digits read as zeros); the header refuses unknown keys.
//! - **Nothing is loaded half.** Loading checks everything (format, version, dtype, names,
//!   shapes, storage order, checksum, configuration, parameter fingerprint) before it changes
//!   anything.
//! - **Memory stays small.** Tensors stream to and from the file one at a time: beyond the
//!   optimizer itself, saving and loading hold about one tensor (measured in `BENCHMARKS.md`).
//!
//! ```
//! use profit_core::checkpoint::{LoadOptions, SaveOptions};
//! use profit_core::host::{VecBackend, VecTensor};
//! use profit_core::{Profit, ProfitConfig};
//!
//! let mut w = VecTensor::new(&[2], vec![1.0f32, -1.0]).unwrap();
//! let mut opt = Profit::<VecBackend<f32>>::with_names(ProfitConfig::default(), &[("w", &w)])?;
//! let g = VecTensor::new(&[2], vec![0.5f32, 0.5]).unwrap();
//! opt.step(&mut [&mut w], &[&g])?; // mid-cycle: the weights are displaced from the anchor
//!
//! let dir = std::env::temp_dir().join(format!("profit-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("opt.safetensors");
//! opt.save_checkpoint_file(&path, &[&w], SaveOptions::default())?;
//!
//! // Later, in a new process: build the same optimizer, load with the same weights.
//! let mut resumed = Profit::<VecBackend<f32>>::with_names(ProfitConfig::default(), &[("w", &w)])?;
//! resumed.load_checkpoint_file(&path, &mut [&mut w], LoadOptions::default())?;
//! assert_eq!(resumed.calls(), 1);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), profit_core::ProfitError>(())
//! ```

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use serde::{Deserialize, Serialize};

use crate::backend::TensorOps;
use crate::config::{Delta, ProfitConfig};
use crate::element::{Dtype as ElemDtype, Element};
use crate::error::{ProfitError, Result};
use crate::kernel::StorageOrder;
use crate::profit::Profit;
use crate::state::{BufferKind, Counters, GroupState, ParamInfo, StateMeta, TensorSteps};

/// Value of the `format` header field.
pub const FORMAT: &str = "profit-checkpoint";
/// Current format version. Version 2: the delta mode, the projection counters, a checksum
/// over the whole file, the parameter fingerprint and optional parameters. Version-1 files
/// (which predate the delta mode) still load, as [`Delta::Accumulated`], without a
/// fingerprint check (they have none).
pub const VERSION: u32 = 2;
pub use crate::config::MAX_CALLS;
/// Metadata key holding the JSON header.
const META_KEY: &str = "profit";
/// Largest header accepted (bytes).
const MAX_HEADER: usize = 100 << 20;

/// Options of [`Profit::save_checkpoint`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaveOptions {
    /// Also store the parameters (`{name}/param`), so that one file restores the weights too.
    pub include_params: bool,
}

impl SaveOptions {
    /// Store the parameters as well.
    pub fn with_params() -> Self {
        SaveOptions { include_params: true }
    }
}

/// Options of [`Profit::load_checkpoint`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Take the checkpoint's hyperparameters when they differ from the ones the optimizer was
    /// built with. By default a difference is refused with an error that lists it.
    pub adopt_config: bool,
    /// Do not check that the parameters passed are the ones the state was saved with. The
    /// anchor and the moments only make sense with those weights: mid-cycle, weights from
    /// another call resume a different, silently wrong run.
    pub skip_fingerprint: bool,
    /// Accept a checkpoint saved in another element type (f32, f64, bf16, f16): every value is
    /// converted once, rounding to nearest when narrowing (exact when widening). The
    /// fingerprint is then checked on the parameters rounded to the file's type.
    pub convert_dtype: bool,
}

impl LoadOptions {
    /// Take the checkpoint's hyperparameters.
    pub fn adopt_config(mut self) -> Self {
        self.adopt_config = true;
        self
    }

    /// Skip the parameter fingerprint check.
    pub fn skip_fingerprint(mut self) -> Self {
        self.skip_fingerprint = true;
        self
    }

    /// Accept a checkpoint of another element type, converting it.
    pub fn convert_dtype(mut self) -> Self {
        self.convert_dtype = true;
        self
    }
}

/// The checksum field: a number in version 1, eight hex digits since version 2.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
enum Crc {
    Number(u32),
    Hex(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    projected_calls: Option<u64>,
    /// Main calls whose projection removed more than 95% of |g|^2 (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stalled_calls: Option<u64>,
    groups: Vec<GroupHeader>,
    params: Vec<ParamHeader>,
    /// CRC-32 (hex) of the parameters' bytes at save time, in registration order (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
    /// Whether the file holds the parameters (`{name}/param`) (version 2).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    includes_params: bool,
    /// The rank that saved this shard of a sharded run (absent: rank 0 of 1, as in files
    /// that predate sharding and in single-process files, which stay as they were).
    #[serde(default, skip_serializing_if = "is_zero")]
    rank: usize,
    /// The sharded run's world size (absent: 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    world_size: usize,
    /// Version 2: CRC-32 of the whole file with these eight hex digits read as `0`. Version 1:
    /// CRC-32 of the state tensors' bytes and of this header written with `crc32 = 0`.
    crc32: Crc,
}

#[derive(Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ParamHeader {
    name: String,
    shape: Vec<usize>,
    group: usize,
    /// The tensor's inner-optimizer steps, written only where they differ from the
    /// optimizer's counts (a tensor that sat calls out without a gradient); absent: those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    steps: Option<TensorSteps>,
}

/// Group rates; the ratio is stored as raw bits because it may be infinite.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

fn one() -> usize {
    1
}

/// Rank 0 is not written (so single-process files stay as they were).
fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// World size 1 is not written.
fn is_one(v: &usize) -> bool {
    *v == 1
}

fn err(msg: impl Into<String>) -> ProfitError {
    ProfitError::Checkpoint(msg.into())
}

fn io_err(what: &str, e: std::io::Error) -> ProfitError {
    err(format!("{what}: {e}"))
}

fn dtype_of<E: Element>() -> Dtype {
    tensor_dtype(E::DTYPE)
}

fn tensor_dtype(d: ElemDtype) -> Dtype {
    match d {
        ElemDtype::F64 => Dtype::F64,
        ElemDtype::F32 => Dtype::F32,
        ElemDtype::Bf16 => Dtype::BF16,
        ElemDtype::F16 => Dtype::F16,
    }
}

/// The version-2 checksum's placeholder.
const HEX_ZERO: &str = "00000000";

/// Where the eight (lowercase) hex digits of the version-2 checksum sit in the header bytes (the `crc32`
/// field of the JSON string stored under `__metadata__.profit`, hence escaped quotes).
fn crc_hex_position(header: &[u8]) -> Option<usize> {
    let pat = br#"\"crc32\":\""#;
    let at = header.windows(pat.len()).rposition(|w| w == pat)? + pat.len();
    let digits = header.get(at..at + 8)?;
    (digits.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        && header.get(at + 8..at + 10) == Some(br#"\""#))
    .then_some(at)
}

/// The version-1 header as it was checksummed: its numeric `crc32` (the last field) as `0`.
fn zero_crc_v1(json: &str) -> Result<String> {
    let key = "\"crc32\":";
    let at = json.rfind(key).ok_or_else(|| err("bad header: no crc32"))? + key.len();
    let digits = json[at..].find(|c: char| !c.is_ascii_digit()).unwrap_or(json.len() - at);
    Ok(format!("{}0{}", &json[..at], &json[at + digits..]))
}

/// Recompute the checksum of a checkpoint whose header or tensors were edited, so that tests
/// and fuzzers can reach the loader's other checks with files that are well-formed but wrong.
/// Not for production use: a resealed file is only as trustworthy as its edits.
#[doc(hidden)]
pub fn reseal(bytes: &[u8]) -> Result<Vec<u8>> {
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    let n = n.filter(|&n| n <= bytes.len().saturating_sub(8)).ok_or_else(|| err("corrupt file"))?;
    let at = 8 + crc_hex_position(&bytes[8..8 + n]).ok_or_else(|| err("no version-2 checksum"))?;
    let mut out = bytes.to_vec();
    out[at..at + 8].copy_from_slice(HEX_ZERO.as_bytes());
    let crc = crc32fast::hash(&out);
    out[at..at + 8].copy_from_slice(format!("{crc:08x}").as_bytes());
    Ok(out)
}

/// Write a file atomically: `write` fills a temporary file in `path`'s folder, which is then
/// synced, renamed over `path`, and the folder synced. If anything fails (including `write`),
/// `path` is left as it was and the temporary file is removed.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> Result<()>,
) -> Result<()> {
    let shown = path.display().to_string();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".profit-checkpoint-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| io_err(&format!("{shown}: temporary file in {}", dir.display()), e))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file());
        write(&mut w)?;
        w.flush().map_err(|e| io_err(&shown, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| io_err(&shown, e))?;
    tmp.persist(path).map_err(|e| io_err(&shown, e.error))?;
    // The rename itself must reach the disk.
    #[cfg(unix)]
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(&dir.display().to_string(), e))?;
    Ok(())
}

/// The tensors a file holds: a state buffer, or the parameter itself.
#[derive(Clone, Copy)]
enum Buf {
    State(BufferKind),
    Param,
}

/// The tensors of a file for `meta`, sorted by key: the state's buffers and, when the file
/// holds them, the parameters as `{name}/param`.
fn file_keys(meta: &StateMeta, include_params: bool) -> Vec<(String, usize, Buf)> {
    let mut keys: Vec<_> = meta.buffer_keys().into_iter().map(|(k, i, b)| (k, i, Buf::State(b))).collect();
    if include_params {
        keys.extend(
            meta.params.iter().enumerate().map(|(i, p)| (format!("{}/param", p.name), i, Buf::Param)),
        );
        keys.sort_by(|a, b| a.0.cmp(&b.0));
    }
    keys
}

impl Header {
    /// The steps of a tensor that never sat a call out.
    fn steps(&self) -> TensorSteps {
        let reference = self.config.reference_calls(self.calls);
        TensorSteps { reference, main: self.calls - reference }
    }

    /// The state this header describes.
    fn meta(&self) -> StateMeta {
        StateMeta {
            config: self.config,
            counters: Counters {
                calls: self.calls,
                skipped: self.skipped,
                projected_calls: self.projected_calls.unwrap_or(0),
                stalled_calls: self.stalled_calls.unwrap_or(0),
            },
            groups: self.groups.iter().map(GroupHeader::state).collect(),
            params: self
                .params
                .iter()
                .map(|p| ParamInfo {
                    name: p.name.clone(),
                    shape: p.shape.clone(),
                    group: p.group,
                    steps: p.steps.unwrap_or(self.steps()),
                })
                .collect(),
            rank: self.rank,
            world_size: self.world_size,
        }
    }
}

impl From<&GroupState> for GroupHeader {
    fn from(g: &GroupState) -> Self {
        GroupHeader {
            lr: g.lr,
            ref_lr: g.ref_lr,
            weight_decay: g.weight_decay,
            ref_weight_decay: g.ref_weight_decay,
            ratio_bits: g.ratio.to_bits(),
            base_lr: g.base_lr,
            base_ref_lr: g.base_ref_lr,
            frozen: g.frozen,
        }
    }
}

impl GroupHeader {
    fn state(&self) -> GroupState {
        GroupState {
            lr: self.lr,
            ref_lr: self.ref_lr,
            weight_decay: self.weight_decay,
            ref_weight_decay: self.ref_weight_decay,
            ratio: f64::from_bits(self.ratio_bits),
            base_lr: self.base_lr,
            base_ref_lr: self.base_ref_lr,
            frozen: self.frozen,
        }
    }
}

/// A state error as a checkpoint error (the file is what does not fit).
fn as_checkpoint_err(e: ProfitError) -> ProfitError {
    match e {
        ProfitError::State(m) => err(m),
        e => e,
    }
}

/// CRC-32 (hex) of the parameters' bytes as `dtype`, in registration order (the optimizer's
/// element type when saving; the file's when loading into another type).
fn fingerprint<B: TensorOps>(
    params: &[&B::Tensor],
    staging: &mut Staging<B::Elem>,
    dtype: ElemDtype,
) -> Result<String> {
    let mut crc = crc32fast::Hasher::new();
    for t in params {
        staging.each_chunk_as::<B>(t, dtype, |b| {
            crc.update(b);
            Ok(())
        })?;
    }
    Ok(format!("{:08x}", crc.finalize()))
}

/// A file's header, read and checked on its own (format, version, the fields of its version).
struct Parsed {
    /// The header length, as the file stores it.
    n8: [u8; 8],
    /// The safetensors header bytes.
    head: Vec<u8>,
    metadata: Metadata,
    /// The PROFIT header as stored (version 1 checksums it).
    json: String,
    header: Header,
}

fn parse_header<R: Read>(r: &mut R, file_len: u64) -> Result<Parsed> {
    let io = |e: std::io::Error| err(format!("corrupt file: {e}"));
    let mut n8 = [0u8; 8];
    r.read_exact(&mut n8).map_err(io)?;
    let n = u64::from_le_bytes(n8);
    if n as usize > MAX_HEADER || n.checked_add(8).is_none_or(|e| e > file_len) {
        return Err(err("corrupt file: header length out of range"));
    }
    let mut head = vec![0u8; n as usize];
    r.read_exact(&mut head).map_err(io)?;
    let metadata: Metadata = serde_json::from_slice(&head)
        .map_err(|e| err(format!("corrupt file: bad safetensors header: {e}")))?;
    let json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| err("no PROFIT header: not a PROFIT checkpoint"))?
        .clone();
    let mut h: Header = serde_json::from_str(&json).map_err(|e| err(format!("bad header: {e}")))?;
    if h.format != FORMAT {
        return Err(err(format!("format `{}`, expected `{FORMAT}`", h.format)));
    }
    if !(1..=VERSION).contains(&h.version) {
        return Err(err(format!("format version {}, this build reads versions 1 to {VERSION}", h.version)));
    }
    let v1 = h.version == 1;
    match (&h.crc32, v1) {
        (Crc::Number(_), true) | (Crc::Hex(_), false) => {}
        _ => return Err(err("bad header: checksum field of another version")),
    }
    if !v1 && (h.fingerprint.is_none() || h.projected_calls.is_none() || h.stalled_calls.is_none()) {
        return Err(err("bad header: version-2 fields missing"));
    }
    if v1
        && (h.fingerprint.is_some() || h.includes_params || h.projected_calls.is_some() || h.world_size != 1)
    {
        return Err(err("bad header: version-2 fields in a version-1 file"));
    }
    if h.rank >= h.world_size {
        return Err(err(format!("bad header: rank {} of {} ranks", h.rank, h.world_size)));
    }
    if v1 {
        // Version 1 predates the delta mode: its delta was always accumulated.
        h.config.delta = Delta::Accumulated;
    }
    // Step counters (version 1 wrote them) must agree with the cycle structure.
    let refs = h.config.reference_calls(h.calls.min(MAX_CALLS));
    let consistent = match (h.ref_steps, h.main_steps) {
        (None, None) => true,
        (Some(r), Some(m)) => r == refs && r.checked_add(m) == Some(h.calls),
        _ => false,
    };
    if !consistent {
        return Err(err("header counters are inconsistent with the cycle structure"));
    }
    Ok(Parsed { n8, head, metadata, json, header: h })
}

/// The file's tensor table: exactly the expected keys, of the expected dtype and shapes,
/// contiguous, and filling the file.
fn entry_table(p: &Parsed, meta: &StateMeta, file_len: u64) -> Result<Vec<Entry>> {
    let h = &p.header;
    let keys = file_keys(meta, h.includes_params);
    let by_name: HashMap<&str, (usize, Buf)> = keys.iter().map(|(k, i, b)| (k.as_str(), (*i, *b))).collect();
    let present = p.metadata.offset_keys();
    let wanted: BTreeSet<&str> = by_name.keys().copied().collect();
    let got: BTreeSet<&str> = present.iter().map(String::as_str).collect();
    if let Some(k) = wanted.difference(&got).next() {
        return Err(err(format!("missing tensor `{k}`")));
    }
    if let Some(k) = got.difference(&wanted).next() {
        return Err(err(format!("unexpected tensor `{k}`")));
    }
    let data_start = 8 + p.head.len() as u64;
    let width = h.dtype.size();
    let mut entries = Vec::with_capacity(present.len());
    let mut offset = 0usize;
    for key in &present {
        let info = p.metadata.info(key).ok_or_else(|| err(format!("{key}: no tensor info")))?;
        let (i, buf) = by_name[key.as_str()];
        let shape = &meta.params[i].shape;
        if info.dtype != tensor_dtype(h.dtype) {
            return Err(err(format!("{key}: dtype {:?}, expected {}", info.dtype, h.dtype)));
        }
        if info.shape != *shape {
            return Err(err(format!("{key}: shape {:?}, expected {:?}", info.shape, shape)));
        }
        let len = shape.iter().product::<usize>() * width;
        if info.data_offsets != (offset, offset + len) {
            return Err(err(format!("{key}: data offsets {:?} out of place", info.data_offsets)));
        }
        entries.push(Entry { tensor: i, buf, start: data_start + offset as u64, len });
        offset += len;
    }
    if data_start + offset as u64 != file_len {
        return Err(err(format!(
            "corrupt file: {} bytes, the header describes {}",
            file_len,
            data_start + offset as u64
        )));
    }
    Ok(entries)
}

/// The checksum over the whole file, before anything changes.
fn verify_checksum<R: Read + Seek, E: Element>(
    r: &mut R,
    p: &Parsed,
    entries: &[Entry],
    staging: &mut Staging<E>,
) -> Result<()> {
    let io = |e: std::io::Error| err(format!("corrupt file: {e}"));
    let mut crc = crc32fast::Hasher::new();
    let (expected, state_first) = match &p.header.crc32 {
        Crc::Hex(x) => {
            let at = crc_hex_position(&p.head).ok_or_else(|| err("bad header: checksum field"))?;
            let mut canonical = p.head.clone();
            canonical[at..at + 8].copy_from_slice(HEX_ZERO.as_bytes());
            crc.update(&p.n8);
            crc.update(&canonical);
            (u32::from_str_radix(x, 16).map_err(|_| err("bad header: checksum"))?, false)
        }
        Crc::Number(x) => (*x, true),
    };
    for e in entries {
        r.seek(SeekFrom::Start(e.start)).map_err(io)?;
        staging.stream(r, e.len, |b| crc.update(b))?;
    }
    if state_first {
        crc.update(zero_crc_v1(&p.json)?.as_bytes());
    }
    if crc.finalize() != expected {
        return Err(err("corrupt file: contents do not match the checksum"));
    }
    Ok(())
}

/// Bytes converted per chunk when a tensor is written or read.
const CHUNK_BYTES: usize = 1 << 20;

/// Host staging for one tensor at a time: its values, and one chunk of their bytes.
struct Staging<E> {
    values: Vec<E>,
    bytes: Vec<u8>,
}

impl<E: Element> Staging<E> {
    fn new() -> Self {
        Staging { values: vec![], bytes: Vec::with_capacity(CHUNK_BYTES) }
    }

    /// Read tensor `t` and pass its little-endian bytes, chunk by chunk, to `sink`.
    fn each_chunk<B: TensorOps<Elem = E>>(
        &mut self,
        t: &B::Tensor,
        sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        self.each_chunk_as::<B>(t, E::DTYPE, sink)
    }

    /// [`each_chunk`](Self::each_chunk) with the values rounded to `dtype` (once, to nearest).
    fn each_chunk_as<B: TensorOps<Elem = E>>(
        &mut self,
        t: &B::Tensor,
        dtype: ElemDtype,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        self.values.clear();
        self.values.resize(B::numel(t), E::default());
        B::read(t, &mut self.values)?;
        for chunk in self.values.chunks(CHUNK_BYTES / dtype.size()) {
            self.bytes.clear();
            for &x in chunk {
                if dtype == E::DTYPE {
                    x.write_le(&mut self.bytes);
                } else {
                    dtype.encode_f64(x.as_f64(), &mut self.bytes);
                }
            }
            sink(&self.bytes)?;
        }
        Ok(())
    }

    /// Read `len` bytes from `r`, chunk by chunk, passing each to `sink`.
    fn stream<R: Read>(&mut self, r: &mut R, len: usize, mut sink: impl FnMut(&[u8])) -> Result<()> {
        let mut left = len;
        while left > 0 {
            let k = left.min(CHUNK_BYTES);
            self.bytes.resize(k, 0);
            r.read_exact(&mut self.bytes).map_err(|e| err(format!("corrupt file: {e}")))?;
            sink(&self.bytes);
            left -= k;
        }
        Ok(())
    }

    /// Read `len` bytes of `dtype` elements from `r` and decode them into `values` (rounded
    /// once to `E` when `dtype` is another type).
    fn decode<R: Read>(&mut self, r: &mut R, len: usize, dtype: ElemDtype) -> Result<&[E]> {
        let w = dtype.size();
        let mut values = std::mem::take(&mut self.values);
        values.clear();
        values.reserve(len / w);
        self.stream(r, len, |b| {
            if dtype == E::DTYPE {
                values.extend(b.chunks_exact(w).map(E::read_le))
            } else {
                values.extend(b.chunks_exact(w).map(|x| E::from_f64(dtype.decode_f64(x))))
            }
        })?;
        self.values = values;
        Ok(&self.values)
    }
}

/// One tensor of a file being loaded: where it goes and where its bytes are.
struct Entry {
    tensor: usize,
    buf: Buf,
    start: u64,
    len: usize,
}

impl<B: TensorOps> Profit<B> {
    /// The whole optimizer state as safetensors bytes (see [`save_checkpoint_file`](Self::save_checkpoint_file)
    /// to write a file). `params` are the parameters the optimizer steps (in the order it was
    /// built with): the file records their fingerprint, or holds them with
    /// [`SaveOptions::include_params`].
    pub fn save_checkpoint(&self, params: &[&B::Tensor], opts: SaveOptions) -> Result<Vec<u8>> {
        let mut out = std::io::Cursor::new(Vec::new());
        self.write_checkpoint(&mut out, params, opts)?;
        Ok(out.into_inner())
    }

    /// Save to a file, atomically: a crash or a full disk leaves the previous file intact.
    /// Tensors stream to the file one at a time.
    pub fn save_checkpoint_file(
        &self,
        path: impl AsRef<Path>,
        params: &[&B::Tensor],
        opts: SaveOptions,
    ) -> Result<()> {
        write_atomically(path.as_ref(), |w| self.write_checkpoint(w, params, opts))
    }

    fn write_checkpoint<W: Write + Seek>(
        &self,
        w: &mut W,
        params: &[&B::Tensor],
        opts: SaveOptions,
    ) -> Result<()> {
        self.check_params(params)?;
        let meta = self.meta();
        let mut staging = Staging::<B::Elem>::new();
        let c = meta.counters;
        let mut header = Header {
            format: FORMAT.into(),
            version: VERSION,
            dtype: B::Elem::DTYPE,
            backend: B::NAME.into(),
            storage_order: B::STORAGE_ORDER,
            config: meta.config,
            calls: c.calls,
            skipped: c.skipped,
            ref_steps: None,
            main_steps: None,
            projected_calls: Some(c.projected_calls),
            stalled_calls: Some(c.stalled_calls),
            groups: meta.groups.iter().map(GroupHeader::from).collect(),
            params: vec![],
            fingerprint: Some(fingerprint::<B>(params, &mut staging, B::Elem::DTYPE)?),
            includes_params: opts.include_params,
            rank: meta.rank,
            world_size: meta.world_size,
            crc32: Crc::Hex(HEX_ZERO.into()),
        };
        let derived = header.steps();
        header.params = meta
            .params
            .iter()
            .map(|p| ParamHeader {
                name: p.name.clone(),
                shape: p.shape.clone(),
                group: p.group,
                steps: (p.steps != derived).then_some(p.steps),
            })
            .collect();
        let state = self.state()?;
        let keys = file_keys(&meta, opts.include_params);
        let width = B::Elem::DTYPE.size();
        let mut infos = Vec::with_capacity(keys.len());
        let mut tensors = Vec::with_capacity(keys.len());
        let mut offset = 0;
        for (key, i, buf) in &keys {
            let t = match buf {
                Buf::Param => params[*i],
                Buf::State(_) => state
                    .buffers
                    .iter()
                    .find(|b| &b.key == key)
                    .map(|b| b.tensor)
                    .ok_or_else(|| err(format!("state buffer {key} missing")))?,
            };
            let shape = meta.params[*i].shape.clone();
            let len = self.numel(*i) * width;
            infos.push((
                key.clone(),
                TensorInfo { dtype: dtype_of::<B::Elem>(), shape, data_offsets: (offset, offset + len) },
            ));
            tensors.push(t);
            offset += len;
        }
        let json = serde_json::to_string(&header).map_err(|e| err(e.to_string()))?;
        let metadata = Metadata::new(Some(HashMap::from([(META_KEY.to_string(), json)])), infos)
            .map_err(|e| err(e.to_string()))?;
        let mut head = serde_json::to_vec(&metadata).map_err(|e| err(e.to_string()))?;
        head.resize(head.len().next_multiple_of(8), b' ');
        let hex = 8 + crc_hex_position(&head).ok_or_else(|| err("checksum field not found"))?;
        let mut prefix = (head.len() as u64).to_le_bytes().to_vec();
        prefix.extend_from_slice(&head);

        let io = |e| io_err("writing the checkpoint", e);
        let start = w.stream_position().map_err(io)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&prefix);
        w.write_all(&prefix).map_err(io)?;
        for t in tensors {
            staging.each_chunk::<B>(t, |bytes| {
                crc.update(bytes);
                w.write_all(bytes).map_err(io)
            })?;
        }
        let end = w.stream_position().map_err(io)?;
        w.seek(SeekFrom::Start(start + hex as u64)).map_err(io)?;
        w.write_all(format!("{:08x}", crc.finalize()).as_bytes()).map_err(io)?;
        w.seek(SeekFrom::Start(end)).map_err(io)?;
        Ok(())
    }

    /// Load a file written by [`save_checkpoint_file`](Self::save_checkpoint_file), streaming
    /// its tensors (see [`load_checkpoint`](Self::load_checkpoint)). The file must not be
    /// changed in place while it loads (this crate's own saves replace files, never change
    /// them).
    pub fn load_checkpoint_file(
        &mut self,
        path: impl AsRef<Path>,
        params: &mut [&mut B::Tensor],
        opts: LoadOptions,
    ) -> Result<()> {
        let shown = path.as_ref().display().to_string();
        let f = std::fs::File::open(path.as_ref()).map_err(|e| io_err(&shown, e))?;
        let len = f.metadata().map_err(|e| io_err(&shown, e))?.len();
        self.read_checkpoint(&mut std::io::BufReader::new(f), len, params, opts)
    }

    /// Restore the whole state from [`save_checkpoint`](Self::save_checkpoint) bytes.
    ///
    /// The optimizer must have been built over the same parameters (names, shapes, groups,
    /// frozen flags), dtype, storage order and state layout (inner optimizer kinds and their
    /// state buffers, restore and delta modes). `params` are the parameters the run continues
    /// with: if the file holds parameters they are restored into them; otherwise they must be
    /// the ones the state was saved with (checked against the file's fingerprint unless
    /// [`LoadOptions::skip_fingerprint`]). Hyperparameters that differ from the optimizer's
    /// are refused with a list of the differences unless [`LoadOptions::adopt_config`];
    /// counters and current learning rates always come from the checkpoint. Anything that
    /// does not fit is refused with [`ProfitError::Checkpoint`] and nothing is changed.
    pub fn load_checkpoint(
        &mut self,
        bytes: &[u8],
        params: &mut [&mut B::Tensor],
        opts: LoadOptions,
    ) -> Result<()> {
        self.read_checkpoint(&mut std::io::Cursor::new(bytes), bytes.len() as u64, params, opts)
    }

    /// Check the whole file (header, the state it describes, tensor table, checksum,
    /// fingerprint), then stream its tensors in.
    fn read_checkpoint<R: Read + Seek>(
        &mut self,
        r: &mut R,
        file_len: u64,
        params: &mut [&mut B::Tensor],
        opts: LoadOptions,
    ) -> Result<()> {
        self.check_params(&params.iter().map(|p| &**p).collect::<Vec<_>>())?;
        let parsed = parse_header(r, file_len)?;
        let h = &parsed.header;
        if h.storage_order != B::STORAGE_ORDER {
            return Err(err(format!(
                "checkpoint holds {:?} tensors (backend `{}`), this optimizer's backend `{}` is {:?}",
                h.storage_order,
                h.backend,
                B::NAME,
                B::STORAGE_ORDER
            )));
        }
        if h.dtype != B::Elem::DTYPE && !opts.convert_dtype {
            return Err(err(format!(
                "checkpoint holds {} state, the optimizer is {} (LoadOptions::convert_dtype converts it)",
                h.dtype,
                B::Elem::DTYPE
            )));
        }
        let loaded = h.meta();
        let mine = self.meta();
        mine.check_fits(&loaded, opts.adopt_config).map_err(as_checkpoint_err)?;
        let entries = entry_table(&parsed, &mine, file_len)?;
        let mut staging = Staging::<B::Elem>::new();
        verify_checksum(r, &parsed, &entries, &mut staging)?;
        if let (false, false, Some(saved)) = (h.includes_params, opts.skip_fingerprint, &h.fingerprint) {
            let now =
                fingerprint::<B>(&params.iter().map(|p| &**p).collect::<Vec<_>>(), &mut staging, h.dtype)?;
            if &now != saved {
                return Err(err(
                    "the parameters passed are not the ones this state was saved with (fingerprint differs): \
                     mid-cycle the anchor and the weights belong together; pass the weights saved with it, save \
                     with SaveOptions::include_params, or use LoadOptions::skip_fingerprint",
                ));
            }
        }
        // Everything fits: apply, one tensor at a time.
        let io = |e: std::io::Error| err(format!("corrupt file: {e}"));
        for e in &entries {
            r.seek(SeekFrom::Start(e.start)).map_err(io)?;
            let values = staging.decode(r, e.len, h.dtype)?;
            let t = match e.buf {
                Buf::State(kind) => self.buffer_mut(e.tensor, kind),
                Buf::Param => params.get_mut(e.tensor).map(|p| &mut **p),
            }
            .ok_or_else(|| err("state buffer missing"))?;
            B::write(t, values)?;
        }
        self.restore_meta(&loaded);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_write_leaves_the_target_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        write_atomically(&path, |w| w.write_all(b"good").map_err(|e| io_err("t", e))).unwrap();
        let failed = write_atomically(&path, |w| {
            w.write_all(&[7u8; 100_000]).map_err(|e| io_err("t", e))?;
            Err(err("disk full (simulated) half-way"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"good");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "temporary file left behind: {left:?}");
    }
}
#[cfg(test)]
mod serde_tests {
    #[test]
    fn tagged_inner_configs_parse_and_unknown_keys_are_refused() {
        let c: crate::ProfitConfig = serde_json::from_str(r#"{"n_ref": 2, "reference": {"kind": "sgd", "lr": 0.001}, "main": {"kind": "adam", "lr": 0.01, "betas": [0.8, 0.9]}}"#).unwrap();
        assert_eq!(c.n_ref, 2);
        assert!(serde_json::from_str::<crate::ProfitConfig>(r#"{"n_reff": 2}"#).is_err());
        assert!(serde_json::from_str::<crate::ProfitConfig>(r#"{"main": {"kind": "adam", "lrr": 0.01}}"#)
            .is_err());
    }
}
