//! The collective contract a sharded [`Profit`](crate::Profit) needs: its rank, the world size,
//! and one all-reduce (sum) of a short `f64` slice.
//!
//! PROFIT's decisions are global: the projection coefficient `omega / |delta|^2` (one for all
//! trainable tensors, or one per tensor), the clipping norm, and whether a gradient is finite.
//! When each rank holds a shard of the parameters (see [`shard`](crate::shard)), each rank
//! computes its per-tensor partial sums over its own elements, and one all-reduce between the
//! reductions pass and the update pass gives every rank the same global sums; every rank then
//! takes the same decision and updates its own elements. Nothing else in the algorithm changes.
//!
//! - [`SingleProcess`] (the default): rank 0 of 1, the all-reduce does nothing.
//! - [`ThreadCollective`]: ranks as threads of one process (tests, CPU training).
//!
//! Implementations must give every rank **bitwise the same** result, and the same result on
//! every run with the same inputs: sum the contributions in rank order (rank 0 first), not in
//! arrival order. The all-reduce happens before anything is changed, so a collective that
//! fails leaves every rank's parameters and state as they were.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{ProfitError, Result};
use crate::kernel::Reduction;

/// Rank, world size and a deterministic all-reduce (sum) of a short `f64` slice.
pub trait Collective: Send + Sync {
    /// This process's (or thread's) rank, in `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Replace `values` on every rank by their element-wise sum over all ranks, added in rank
    /// order (so that every rank gets bitwise the same sums). Every rank calls it with a slice
    /// of the same length, the same number of times. `Err` (for example
    /// [`ProfitError::Collective`]) if that cannot be done; `values` may then hold anything.
    fn all_reduce_sum(&mut self, values: &mut [f64]) -> Result<()>;
}

/// The single-process collective: rank 0 of 1; the all-reduce leaves the values as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// One round of the all-reduce, shared by the ranks. Buffers are reused from round to round:
/// after the first, an all-reduce allocates nothing.
#[derive(Debug)]
struct Round {
    /// Completed rounds so far.
    generation: u64,
    /// Contributions of the ranks in the current round (one per rank).
    slots: Vec<Vec<f64>>,
    /// Ranks arrived in the current round.
    arrived: usize,
    /// The last completed round's sums.
    result: Vec<f64>,
    /// Why the last completed round failed, if it did.
    failure: Option<String>,
    /// Set when a rank's handle is dropped: a round that waits for it can never complete.
    left: Option<usize>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    round: Mutex<Round>,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Round> {
        // A rank that panicked while holding the lock left the round consistent (no code
        // below panics between its writes); take the state anyway.
        self.round.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// In-process ranks as threads: [`ThreadCollective::new`]`(n)` gives `n` handles, one per rank;
/// move each into its thread (with the rank's optimizer).
///
/// The all-reduce blocks until every rank has contributed, then every rank receives the sums
/// added in rank order (bitwise the same on every rank and on every run). If a handle is
/// dropped (its thread returned or panicked) while others wait, or the ranks pass slices of
/// different lengths, every waiting rank gets [`ProfitError::Collective`] instead of hanging
/// or mixing rounds. Give every rank its own OS thread (not a task of a thread pool such as
/// rayon's): the all-reduce blocks until all ranks arrive.
///
/// ```
/// use profit_core::collective::{Collective, ThreadCollective};
///
/// let handles = ThreadCollective::new(3).unwrap();
/// let sums: Vec<Vec<f64>> = std::thread::scope(|s| {
///     let threads: Vec<_> = handles
///         .into_iter()
///         .map(|mut c| {
///             s.spawn(move || {
///                 let mut v = vec![c.rank() as f64, 1.0];
///                 c.all_reduce_sum(&mut v).unwrap();
///                 v
///             })
///         })
///         .collect();
///     threads.into_iter().map(|t| t.join().unwrap()).collect()
/// });
/// assert!(sums.iter().all(|v| v == &[3.0, 3.0]));
/// ```
#[derive(Debug)]
pub struct ThreadCollective {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadCollective {
    /// Handles for `world` ranks, in rank order; `Err` for `world == 0`.
    pub fn new(world: usize) -> Result<Vec<ThreadCollective>> {
        if world == 0 {
            return Err(ProfitError::Collective("world size must be at least 1".into()));
        }
        let shared = Arc::new(Shared {
            world,
            round: Mutex::new(Round {
                generation: 0,
                slots: vec![vec![]; world],
                arrived: 0,
                result: vec![],
                failure: None,
                left: None,
            }),
            done: Condvar::new(),
        });
        Ok((0..world).map(|rank| ThreadCollective { rank, shared: shared.clone() }).collect())
    }
}

impl Round {
    /// Complete the round: the sums of the contributions, added in rank order.
    fn complete(&mut self) {
        let Round { slots, result, failure, .. } = self;
        result.clear();
        result.extend_from_slice(&slots[0]);
        *failure = None;
        for (rank, c) in slots.iter().enumerate().skip(1) {
            if c.len() != result.len() {
                *failure = Some(format!(
                    "ranks passed slices of different lengths ({} on rank 0, {} on rank {rank})",
                    result.len(),
                    c.len()
                ));
                return;
            }
            for (s, x) in result.iter_mut().zip(c) {
                *s += x;
            }
        }
    }
}

impl Collective for ThreadCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&mut self, values: &mut [f64]) -> Result<()> {
        let shared = &*self.shared;
        if shared.world == 1 {
            return Ok(());
        }
        let mut round = shared.lock();
        if let Some(r) = round.left {
            return Err(ProfitError::Collective(format!("rank {r} has left")));
        }
        let generation = round.generation;
        let slot = &mut round.slots[self.rank];
        slot.clear();
        slot.extend_from_slice(values);
        round.arrived += 1;
        if round.arrived == shared.world {
            round.complete();
            round.arrived = 0;
            round.generation += 1;
            shared.done.notify_all();
        } else {
            while round.generation == generation {
                if let Some(r) = round.left {
                    return Err(ProfitError::Collective(format!(
                        "rank {r} left while rank {} waited in the all-reduce",
                        self.rank
                    )));
                }
                round = shared.done.wait(round).unwrap_or_else(|e| e.into_inner());
            }
        }
        // The next round cannot complete (and replace the result) before this rank joins it.
        if let Some(e) = &round.failure {
            return Err(ProfitError::Collective(e.clone()));
        }
        values.copy_from_slice(&round.result);
        Ok(())
    }
}

impl Drop for ThreadCollective {
    fn drop(&mut self) {
        let mut round = self.shared.lock();
        if round.left.is_none() {
            round.left = Some(self.rank);
        }
        self.shared.done.notify_all();
    }
}

/// Sum the per-tensor reductions over the ranks through `sums` (`3 * tensors` values; nothing
/// when empty: single-process).
pub(crate) fn all_reduce(
    sums: &mut [f64],
    collective: &mut dyn Collective,
    reductions: &mut [Reduction],
) -> Result<()> {
    if sums.is_empty() {
        return Ok(());
    }
    for (s, r) in sums.chunks_exact_mut(3).zip(reductions.iter()) {
        s.copy_from_slice(&[r.omega, r.delta_sq, r.grad_sq]);
    }
    collective.all_reduce_sum(sums)?;
    for (s, r) in sums.chunks_exact(3).zip(reductions.iter_mut()) {
        *r = Reduction { omega: s[0], delta_sq: s[1], grad_sq: s[2] };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        world: usize,
        f: impl Fn(&mut ThreadCollective) -> Result<Vec<f64>> + Sync,
    ) -> Vec<Result<Vec<f64>>> {
        let handles = ThreadCollective::new(world).unwrap();
        std::thread::scope(|s| {
            let ts: Vec<_> = handles
                .into_iter()
                .map(|mut c| {
                    let f = &f;
                    s.spawn(move || f(&mut c))
                })
                .collect();
            ts.into_iter().map(|t| t.join().unwrap()).collect()
        })
    }

    #[test]
    fn sums_in_rank_order_bitwise_on_every_rank_over_many_rounds() {
        // 1e16 + 1 - 1e16 depends on the order: rank order gives (1e16 + 1) + (-1e16) = 0.
        let out = run(3, |c| {
            let mut last = vec![];
            for round in 0..200 {
                let x = [1e16, 1.0, -1e16][c.rank()] + round as f64 * 0.0;
                let mut v = vec![x, c.rank() as f64 + round as f64];
                c.all_reduce_sum(&mut v)?;
                assert_eq!(v[1], 3.0 + 3.0 * round as f64);
                last = v;
            }
            Ok(last)
        });
        for r in &out {
            assert_eq!(r.as_ref().unwrap()[0].to_bits(), ((1e16 + 1.0) + -1e16f64).to_bits());
        }
    }

    #[test]
    fn a_rank_that_leaves_fails_the_others_instead_of_hanging() {
        let out = run(3, |c| {
            if c.rank() == 2 {
                return Ok(vec![]); // returns; its handle is dropped by `run`
            }
            let mut v = vec![1.0];
            c.all_reduce_sum(&mut v).map(|_| v)
        });
        // Rank 2's handle is dropped only when its closure's caller drops it: after `f`
        // returns, when the thread ends.
        assert!(matches!(out[0], Err(ProfitError::Collective(_))), "{:?}", out[0]);
        assert!(matches!(out[1], Err(ProfitError::Collective(_))), "{:?}", out[1]);
    }

    #[test]
    fn different_lengths_are_an_error_on_every_rank() {
        let out = run(2, |c| {
            let mut v = vec![1.0; 1 + c.rank()];
            c.all_reduce_sum(&mut v).map(|_| v)
        });
        assert!(out.iter().all(|r| matches!(r, Err(ProfitError::Collective(_)))), "{out:?}");
    }

    #[test]
    fn world_zero_is_refused_and_world_one_is_a_no_op() {
        assert!(ThreadCollective::new(0).is_err());
        let mut h = ThreadCollective::new(1).unwrap();
        let mut v = vec![2.5];
        h[0].all_reduce_sum(&mut v).unwrap();
        assert_eq!(v, [2.5]);
        assert_eq!((SingleProcess.rank(), SingleProcess.world_size()), (0, 1));
    }
}
