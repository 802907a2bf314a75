//! A [`Collective`] over NCCL (feature `nccl`): sharded PROFIT with one GPU per rank.
//!
//! NCCL is loaded at run time: the crate builds without it, and [`NcclId::new`] and
//! [`NcclCollective::new`] return [`BackendError::Unavailable`] (inside
//! [`ProfitError::Backend`]) when `libnccl` (or the CUDA driver) cannot be loaded; nothing
//! panics for its absence.
//!
//! Determinism: the all-reduce gathers every rank's values (`ncclAllGather`, which only moves
//! bytes) and each rank adds them on the host in rank order, so every rank gets bitwise the same
//! sums, and the same sums on every run, whatever algorithm NCCL would pick for a reduction.
//! The slices are short (three `f64` per tensor), so the gather costs no more than a reduction.
//!
//! ```
//! use profit_cuda::nccl::{NcclCollective, NcclId};
//! use profit_cuda::CudaBackend;
//!
//! // One process, one GPU, world size 1; with N GPUs each rank (a thread or a process) opens
//! // its device and joins with the same id (`NcclId::to_bytes` / `from_bytes` move it between
//! // processes), then passes its collective to `Profit::set_collective`.
//! let id = match NcclId::new() {
//!     Ok(id) => id,
//!     Err(e) => { println!("skipped: {e}"); return; }
//! };
//! let gpu = match CudaBackend::new(0) {
//!     Ok(gpu) => gpu,
//!     Err(e) => { println!("skipped: {e}"); return; }
//! };
//! let collective = NcclCollective::new(&gpu, 0, 1, id).unwrap();
//! ```

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id};
use profit_core::collective::Collective;
use profit_core::error::BackendError;
use profit_core::ProfitError;

use crate::CudaBackend;

/// Whether NCCL (`libnccl`) and the CUDA driver can be loaded on this machine.
pub fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    CudaBackend::driver_present() && unsafe { cudarc::nccl::sys::is_culib_present() }
}

fn unavailable() -> ProfitError {
    ProfitError::Backend(BackendError::Unavailable("NCCL (libnccl) not found on this machine".into()))
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> ProfitError {
    ProfitError::Collective(format!("NCCL {what}: {e:?}"))
}

/// The id every rank of one NCCL communicator joins with (made once, by one rank, and shared).
#[derive(Clone, Copy, Debug)]
pub struct NcclId(Id);

impl NcclId {
    /// A new id; [`BackendError::Unavailable`] without NCCL.
    pub fn new() -> Result<NcclId, ProfitError> {
        if !nccl_present() {
            return Err(unavailable());
        }
        Id::new().map(NcclId).map_err(|e| nccl_err("id", e))
    }

    /// The id's 128 bytes, to send to the other processes.
    pub fn to_bytes(&self) -> [u8; 128] {
        self.0.internal().map(|c| c as u8)
    }

    /// The id from its bytes (as [`to_bytes`](Self::to_bytes) wrote them).
    pub fn from_bytes(bytes: [u8; 128]) -> NcclId {
        NcclId(Id::uninit(bytes.map(|b| b as std::ffi::c_char)))
    }
}

/// One rank of an NCCL communicator, as a [`Collective`] for
/// [`Profit::set_collective`](profit_core::Profit::set_collective).
pub struct NcclCollective {
    comm: Comm,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    /// Device buffers for this rank's values and everyone's, kept between calls.
    send: Option<CudaSlice<f64>>,
    recv: Option<CudaSlice<f64>>,
    gathered: Vec<f64>,
}

// SAFETY: the communicator is only used through `&mut self` (one call at a time, from whichever
// thread owns the rank), which NCCL allows; `&self` methods read plain integers.
unsafe impl Send for NcclCollective {}
// SAFETY: as above: nothing reachable through `&self` touches the communicator.
unsafe impl Sync for NcclCollective {}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective").field("rank", &self.rank).field("world", &self.world).finish()
    }
}

impl NcclCollective {
    /// Join communicator `id` as rank `rank` of `world`, on `gpu`'s stream (the one its
    /// tensors use). Blocks until every rank has joined (NCCL's `ncclCommInitRank`).
    /// [`BackendError::Unavailable`] without NCCL; [`ProfitError::Collective`] for a rank
    /// not below the world size or a failure of NCCL.
    pub fn new(gpu: &CudaBackend, rank: usize, world: usize, id: NcclId) -> Result<Self, ProfitError> {
        if !nccl_present() {
            return Err(unavailable());
        }
        if rank >= world || world > i32::MAX as usize {
            return Err(ProfitError::Collective(format!("rank {rank} of world size {world}")));
        }
        let stream = gpu.stream().clone();
        let comm = Comm::from_rank(stream.clone(), rank, world, id.0).map_err(|e| nccl_err("init", e))?;
        Ok(NcclCollective { comm, stream, rank, world, send: None, recv: None, gathered: vec![] })
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, values: &mut [f64]) -> Result<(), ProfitError> {
        let (n, world) = (values.len(), self.world);
        if n == 0 {
            return Ok(());
        }
        let alloc = |len: usize| self.stream.alloc_zeros::<f64>(len).map_err(|e| nccl_err("alloc", e));
        // ncclAllGather sends `send.len()` values: the buffers are sized exactly (once, for a
        // given optimizer).
        if self.send.as_ref().is_none_or(|s| s.len() != n) {
            self.send = Some(alloc(n)?);
            self.recv = Some(alloc(n * world)?);
        }
        let (Some(send), Some(recv)) = (self.send.as_mut(), self.recv.as_mut()) else {
            return Err(ProfitError::Collective("NCCL buffers missing".into()));
        };
        self.stream.memcpy_htod(&values[..], send).map_err(|e| nccl_err("copy", e))?;
        self.comm.all_gather(send, recv).map_err(|e| nccl_err("all-gather", e))?;
        self.gathered.resize(n * world, 0.0);
        self.stream.memcpy_dtoh(recv, &mut self.gathered[..]).map_err(|e| nccl_err("copy", e))?;
        self.stream.synchronize().map_err(|e| nccl_err("synchronize", e))?;
        // Rank order, whatever the transport did.
        values.copy_from_slice(&self.gathered[..n]);
        for part in self.gathered.chunks_exact(n).skip(1) {
            for (v, x) in values.iter_mut().zip(part) {
                *v += x;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_nccl_a_typed_error_and_with_it_a_world_of_one() {
        if !nccl_present() {
            assert!(matches!(NcclId::new(), Err(ProfitError::Backend(BackendError::Unavailable(_)))));
            println!("SKIPPED the GPU part: NCCL not found");
            return;
        }
        let id = NcclId::new().expect("id");
        assert_eq!(NcclId::from_bytes(id.to_bytes()).to_bytes(), id.to_bytes());
        let gpu = match CudaBackend::new(0) {
            Ok(g) => g,
            Err(e) => return println!("SKIPPED: {e}"),
        };
        assert!(NcclCollective::new(&gpu, 1, 1, id).is_err());
        let mut c = NcclCollective::new(&gpu, 0, 1, id).expect("communicator of one");
        let mut v = vec![1.5, -2.0, 3.25];
        c.all_reduce_sum(&mut v).unwrap();
        assert_eq!(v, [1.5, -2.0, 3.25]);
    }
}
