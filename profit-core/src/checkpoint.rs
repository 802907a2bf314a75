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
use serde_json::Value;

use crate::backend::{StorageOrder, TensorOps};
use crate::element::{Dtype as ElemDtype, Element};
use crate::error::{ProfitError, Result};
use crate::optim::check_lr;
use crate::params::GroupState;
use crate::profit::{reference_calls, Delta, Profit, ProfitConfig, Restore};

/// Value of the `format` header field.
pub const FORMAT: &str = "profit-checkpoint";
/// Current format version. Version 2: the delta mode, the projection counters, a checksum
/// over the whole file, the parameter fingerprint and optional parameters. Version-1 files
/// (which predate the delta mode) still load, as [`Delta::Accumulated`], without a
/// fingerprint check (they have none).
pub const VERSION: u32 = 2;
/// Largest call count a checkpoint may carry (far beyond any run; keeps every counter exact
/// in the `f64` and `i32` arithmetic of bias corrections). [`Profit::step`] refuses further
/// calls with [`ProfitError::CallLimit`].
pub const MAX_CALLS: u64 = 1 << 40;
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

/// The tensors a state holds.
#[derive(Clone, Copy)]
enum Buf {
    Anchor,
    Delta,
    Ref(usize),
    Main(usize),
    Param,
}

/// Differences between two configurations, as `path: ours vs theirs` lines.
fn config_differences(ours: &ProfitConfig, theirs: &ProfitConfig) -> Vec<String> {
    fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    walk(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
                }
            }
            _ if a != b => out.push(format!("{path}: {a} (optimizer) vs {b} (checkpoint)")),
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
    fn checkpoint_keys(&self, include_params: bool) -> Vec<(String, usize, Buf)> {
        let mut keys = vec![];
        let refs = self.config.reference.slot_names();
        let mains = self.config.main.slot_names();
        for (i, name) in self.reg.names.iter().enumerate() {
            if include_params {
                keys.push((format!("{name}/param"), i, Buf::Param));
            }
            if !self.reg.active[i] {
                continue;
            }
            if self.config.restore == Restore::Anchor {
                keys.push((format!("{name}/anchor"), i, Buf::Anchor));
            }
            if self.config.delta == Delta::Accumulated {
                keys.push((format!("{name}/delta"), i, Buf::Delta));
            }
            for (s, slot) in refs.iter().enumerate() {
                keys.push((format!("{name}/ref/{slot}"), i, Buf::Ref(s)));
            }
            for (s, slot) in mains.iter().enumerate() {
                keys.push((format!("{name}/main/{slot}"), i, Buf::Main(s)));
            }
        }
        // Name order, not registration order: the file must not depend on how the loading
        // optimizer ordered its parameters.
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys
    }

    fn buffer<'a>(&'a self, i: usize, b: Buf, params: &[&'a B::Tensor]) -> Option<&'a B::Tensor> {
        let s = &self.reg.states[i];
        match b {
            Buf::Anchor => s.anchor.as_ref(),
            Buf::Delta => s.delta.as_ref(),
            Buf::Ref(k) => s.ref_slots.get(k),
            Buf::Main(k) => s.main_slots.get(k),
            Buf::Param => params.get(i).copied(),
        }
    }

    /// Check that `params` are this optimizer's parameters (count and shapes).
    fn check_params(&self, params: &[&B::Tensor]) -> Result<()> {
        let n = self.reg.names.len();
        if params.len() != n {
            return Err(ProfitError::CountMismatch { what: "parameter", expected: n, got: params.len() });
        }
        for (i, t) in params.iter().enumerate() {
            if !B::has_shape(t, &self.reg.shapes[i]) || B::numel(t) != self.reg.numels[i] {
                return Err(ProfitError::ShapeMismatch {
                    what: "parameter",
                    name: self.reg.names[i].clone(),
                    expected: self.reg.shapes[i].clone(),
                    got: B::shape(t),
                });
            }
            B::validate(t)?;
        }
        Ok(())
    }

    /// CRC-32 (hex) of the parameters' bytes, in registration order.
    /// CRC of the parameters' bytes as `dtype` (the optimizer's element type when saving; the
    /// file's when loading into another type).
    fn fingerprint(
        &self,
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
        let mut staging = Staging::<B::Elem>::new();
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
            projected_calls: Some(self.projected_calls),
            stalled_calls: Some(self.stalled_calls),
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
            params: self
                .reg
                .names
                .iter()
                .zip(&self.reg.shapes)
                .zip(&self.reg.group_of)
                .map(|((n, s), &g)| ParamHeader { name: n.clone(), shape: s.clone(), group: g })
                .collect(),
            fingerprint: Some(self.fingerprint(params, &mut staging, B::Elem::DTYPE)?),
            includes_params: opts.include_params,
            rank: self.collective.rank(),
            world_size: self.collective.world_size(),
            crc32: Crc::Hex(HEX_ZERO.into()),
        };
        let keys = self.checkpoint_keys(opts.include_params);
        let width = B::Elem::DTYPE.size();
        let mut infos = Vec::with_capacity(keys.len());
        let mut offset = 0;
        for (key, i, _) in &keys {
            let len = self.reg.numels[*i] * width;
            infos.push((
                key.clone(),
                TensorInfo {
                    dtype: dtype_of::<B::Elem>(),
                    shape: self.reg.shapes[*i].clone(),
                    data_offsets: (offset, offset + len),
                },
            ));
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
        for (key, i, b) in &keys {
            let t = self.buffer(*i, *b, params).ok_or_else(|| err(format!("state buffer {key} missing")))?;
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

    fn read_checkpoint<R: Read + Seek>(
        &mut self,
        r: &mut R,
        file_len: u64,
        params: &mut [&mut B::Tensor],
        opts: LoadOptions,
    ) -> Result<()> {
        {
            let shared: Vec<&B::Tensor> = params.iter().map(|p| &**p).collect();
            self.check_params(&shared)?;
        }
        let io = |e: std::io::Error| err(format!("corrupt file: {e}"));
        // Header.
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
            return Err(err(format!(
                "format version {}, this build reads versions 1 to {VERSION}",
                h.version
            )));
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
            && (h.fingerprint.is_some()
                || h.includes_params
                || h.projected_calls.is_some()
                || h.world_size != 1)
        {
            return Err(err("bad header: version-2 fields in a version-1 file"));
        }
        if h.rank >= h.world_size {
            return Err(err(format!("bad header: rank {} of {} ranks", h.rank, h.world_size)));
        }
        let (rank, world) = (self.collective.rank(), self.collective.world_size());
        if (h.rank, h.world_size) != (rank, world) {
            return Err(ProfitError::ShardMismatch {
                saved_rank: h.rank,
                saved_world: h.world_size,
                rank,
                world,
            });
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
        if h.dtype != B::Elem::DTYPE && !opts.convert_dtype {
            return Err(err(format!(
                "checkpoint holds {} state, the optimizer is {} (LoadOptions::convert_dtype converts it)",
                h.dtype,
                B::Elem::DTYPE
            )));
        }
        if v1 {
            // Version 1 predates the delta mode: its delta was always accumulated.
            h.config.delta = Delta::Accumulated;
        }
        self.check_header(&h)?;
        let differences = config_differences(&self.config, &h.config);
        if !differences.is_empty() && !opts.adopt_config {
            return Err(err(format!(
                "the checkpoint's configuration differs from the optimizer's (LoadOptions::adopt_config takes the checkpoint's):\n  {}",
                differences.join("\n  ")
            )));
        }

        // The tensor table: exactly the expected keys, contiguous, sized by their shapes, and
        // filling the file.
        let keys = self.checkpoint_keys(h.includes_params);
        let width = h.dtype.size();
        let by_name: HashMap<&str, (usize, Buf)> =
            keys.iter().map(|(k, i, b)| (k.as_str(), (*i, *b))).collect();
        let present = metadata.offset_keys();
        let wanted: BTreeSet<&str> = by_name.keys().copied().collect();
        let got: BTreeSet<&str> = present.iter().map(String::as_str).collect();
        if let Some(k) = wanted.difference(&got).next() {
            return Err(err(format!("missing tensor `{k}`")));
        }
        if let Some(k) = got.difference(&wanted).next() {
            return Err(err(format!("unexpected tensor `{k}`")));
        }
        let data_start = 8 + n;
        let mut entries = Vec::with_capacity(present.len());
        let mut offset = 0usize;
        for key in &present {
            let info = metadata.info(key).ok_or_else(|| err(format!("{key}: no tensor info")))?;
            let (i, b) = by_name[key.as_str()];
            if info.dtype != tensor_dtype(h.dtype) {
                return Err(err(format!("{key}: dtype {:?}, expected {}", info.dtype, h.dtype)));
            }
            if info.shape != self.reg.shapes[i] {
                return Err(err(format!("{key}: shape {:?}, expected {:?}", info.shape, self.reg.shapes[i])));
            }
            let len = self.reg.numels[i] * width;
            if info.data_offsets != (offset, offset + len) {
                return Err(err(format!("{key}: data offsets {:?} out of place", info.data_offsets)));
            }
            entries.push(Entry { tensor: i, buf: b, start: data_start + offset as u64, len });
            offset += len;
        }
        if data_start + offset as u64 != file_len {
            return Err(err(format!(
                "corrupt file: {} bytes, the header describes {}",
                file_len,
                data_start + offset as u64
            )));
        }

        // Pass 1: the checksum over everything, before anything changes.
        let mut staging = Staging::<B::Elem>::new();
        let mut crc = crc32fast::Hasher::new();
        let (expected, state_first) = match &h.crc32 {
            Crc::Hex(x) => {
                let at = crc_hex_position(&head).ok_or_else(|| err("bad header: checksum field"))?;
                let mut canonical = head.clone();
                canonical[at..at + 8].copy_from_slice(HEX_ZERO.as_bytes());
                crc.update(&n8);
                crc.update(&canonical);
                (u32::from_str_radix(x, 16).map_err(|_| err("bad header: checksum"))?, false)
            }
            Crc::Number(x) => (*x, true),
        };
        for e in &entries {
            r.seek(SeekFrom::Start(e.start)).map_err(io)?;
            staging.stream(r, e.len, |b| crc.update(b))?;
        }
        if state_first {
            crc.update(zero_crc_v1(&json)?.as_bytes());
        }
        if crc.finalize() != expected {
            return Err(err("corrupt file: contents do not match the checksum"));
        }
        if !h.includes_params && !opts.skip_fingerprint {
            if let Some(saved) = &h.fingerprint {
                let shared: Vec<&B::Tensor> = params.iter().map(|p| &**p).collect();
                let now = self.fingerprint(&shared, &mut staging, h.dtype)?;
                if &now != saved {
                    return Err(err(
                        "the parameters passed are not the ones this state was saved with (fingerprint differs): \
                         mid-cycle the anchor and the weights belong together; pass the weights saved with it, save \
                         with SaveOptions::include_params, or use LoadOptions::skip_fingerprint",
                    ));
                }
            }
        }

        // Pass 2: everything fits: apply, one tensor at a time.
        for e in &entries {
            r.seek(SeekFrom::Start(e.start)).map_err(io)?;
            let values = staging.decode(r, e.len, h.dtype)?;
            let s = &mut self.reg.states[e.tensor];
            let t = match e.buf {
                Buf::Anchor => s.anchor.as_mut(),
                Buf::Delta => s.delta.as_mut(),
                Buf::Ref(k) => s.ref_slots.get_mut(k),
                Buf::Main(k) => s.main_slots.get_mut(k),
                Buf::Param => params.get_mut(e.tensor).map(|p| &mut **p),
            }
            .ok_or_else(|| err("state buffer missing"))?;
            B::write(t, values)?;
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
        self.projected_calls = h.projected_calls.unwrap_or(0);
        self.stalled_calls = h.stalled_calls.unwrap_or(0);
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
            return Err(err(format!(
                "state layout differs: the checkpoint has {}; the optimizer has {}",
                layout(theirs),
                layout(mine)
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
        let (projected, stalled) = (h.projected_calls.unwrap_or(0), h.stalled_calls.unwrap_or(0));
        if projected > mains || stalled > projected {
            return Err(err("header projection counters exceed the main calls"));
        }
        Ok(())
    }
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
        assert!(d.iter().any(|l| l.starts_with("n_ref: 1 (optimizer) vs 3")), "{d:?}");
        assert!(d.iter().any(|l| l.starts_with("main.lr:")), "{d:?}");
        assert!(config_differences(&a, &a).is_empty());
    }

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
