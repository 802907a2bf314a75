//! Sharded PROFIT state: each rank holds and steps a contiguous part of the parameters (with
//! the anchor, delta and optimizer moments of that part only), and the ranks agree on PROFIT's
//! global sums through one all-reduce per call (see [`collective`](crate::collective)).
//!
//! - [`ShardPlan`]: which contiguous element range of which tensor each rank owns: balanced,
//!   and aligned (every shard starts at a multiple of the alignment within its tensor). The
//!   shard of a tensor is a flat 1-D slice of its row-major elements, possibly empty. The plan
//!   also copies shards out of full parameters ([`ShardPlan::scatter`]) and back into them
//!   ([`ShardPlan::gather`]), and builds a rank's optimizer over its shards
//!   ([`ShardPlan::rank_optimizer`]).
//! - [`ShardedProfit`]: an in-process engine, one optimizer per rank, each call running the
//!   ranks as threads over [`ThreadCollective`] handles; it steps full parameters like
//!   [`Profit::step`].
//!
//! A sharded run equals the single-process run up to the order in which the global sums
//! `<delta, g>`, `|delta|^2` and `|g|^2` are added (per rank, then over ranks in rank order,
//! instead of over each whole tensor): parameters agree to rounding in those sums (within the
//! conformance suite's golden tolerances), bitwise with one rank, and two runs with the same
//! world size and plan agree bitwise.
//!
//! ```
//! use profit_core::host::VecTensor;
//! use profit_core::shard::{ShardedProfit, DEFAULT_ALIGN};
//! use profit_core::{ParamGroup, ProfitConfig, SaveOptions};
//!
//! let mut w = VecTensor::new(&[256, 64], vec![0.5f32; 256 * 64]).unwrap();
//! let g = VecTensor::new(&[256, 64], vec![0.1f32; 256 * 64]).unwrap();
//! let groups = vec![ParamGroup::new([("w", &w)])];
//! let mut opt = ShardedProfit::new(ProfitConfig::default(), groups, 4, DEFAULT_ALIGN)?;
//! opt.step(&mut [&mut w], &[&g])?; // 4 rank threads, one all-reduce
//! assert_eq!(opt.rank(3).unwrap().trainable_elements(), 256 * 64 / 4);
//! let files = opt.save_checkpoints(SaveOptions::default())?; // one file per rank
//! assert_eq!(files.len(), 4);
//! # Ok::<(), profit_core::ProfitError>(())
//! ```

use std::ops::Range;

use crate::collective::{Collective, ThreadCollective};
use crate::config::ProfitConfig;
use crate::element::Element;
use crate::error::{ProfitError, Result};
use crate::host::{VecBackend, VecTensor};
use crate::params::{GroupOptions, ParamGroup};
use crate::profit::Profit;
use crate::report::StepReport;
use crate::{LoadOptions, SaveOptions};

/// The default alignment of shard boundaries, in elements (64 bytes of `f32`).
pub const DEFAULT_ALIGN: usize = 16;

/// A rank's optimizer and the shards of the parameters it steps (1-D, one per tensor, in
/// registration order), as [`ShardPlan::rank_optimizer`] builds them.
pub type RankOptimizer<E> = (Profit<VecBackend<E>>, Vec<VecTensor<E>>);

fn plan_err(msg: impl Into<String>) -> ProfitError {
    ProfitError::ShardPlan(msg.into())
}

/// Which contiguous element range of which tensor each rank owns.
///
/// The tensors' row-major elements are laid end to end, each tensor padded to a multiple of
/// the alignment, and that line is cut into `world` parts of whole alignment units, as equal as
/// units allow (they differ by at most one unit). So every rank owns at most `align` elements
/// more than another (plus padding), a tensor may be split across ranks, a rank may own parts
/// of several tensors, and with more ranks than units some ranks own nothing.
///
/// ```
/// use profit_core::shard::ShardPlan;
///
/// // Tensors of 40 and 8 elements over 3 ranks, aligned to 16 elements.
/// let plan = ShardPlan::new(&[vec![5, 8], vec![8]], 3, 16)?;
/// assert_eq!(plan.range(0, 0)?, 0..16);
/// assert_eq!(plan.range(1, 0)?, 16..32);
/// assert_eq!(plan.range(2, 0)?, 32..40);
/// assert_eq!(plan.range(2, 1)?, 0..8);
/// assert_eq!(plan.range(0, 1)?, 0..0); // rank 0 holds nothing of tensor 1
/// # Ok::<(), profit_core::ProfitError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    shapes: Vec<Vec<usize>>,
    numels: Vec<usize>,
    /// Where each tensor starts on the padded line.
    starts: Vec<usize>,
    /// `world + 1` cuts of the padded line.
    cuts: Vec<usize>,
    align: usize,
}

impl ShardPlan {
    /// A plan for tensors of these shapes over `world` ranks, with shard boundaries at
    /// multiples of `align` elements within each tensor. `Err` for `world == 0` or
    /// `align == 0`, or sizes that overflow.
    pub fn new<S: AsRef<[usize]>>(shapes: &[S], world: usize, align: usize) -> Result<ShardPlan> {
        if world == 0 {
            return Err(plan_err("world size must be at least 1"));
        }
        if align == 0 {
            return Err(plan_err("alignment must be at least 1 element"));
        }
        let overflow = || plan_err("parameter sizes overflow");
        let shapes: Vec<Vec<usize>> = shapes.iter().map(|s| s.as_ref().to_vec()).collect();
        let mut numels = Vec::with_capacity(shapes.len());
        let mut starts = Vec::with_capacity(shapes.len());
        let mut line = 0usize;
        for s in &shapes {
            let n = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(overflow)?;
            numels.push(n);
            starts.push(line);
            line =
                n.checked_next_multiple_of(align).and_then(|p| line.checked_add(p)).ok_or_else(overflow)?;
        }
        let units = (line / align) as u128;
        let cuts = (0..=world).map(|r| (units * r as u128 / world as u128) as usize * align).collect();
        Ok(ShardPlan { shapes, numels, starts, cuts, align })
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.cuts.len() - 1
    }

    /// The alignment, in elements.
    pub fn align(&self) -> usize {
        self.align
    }

    /// The full tensors' shapes, in order.
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    fn check_rank(&self, rank: usize) -> Result<()> {
        if rank >= self.world_size() {
            return Err(plan_err(format!("rank {rank} of a {}-rank plan", self.world_size())));
        }
        Ok(())
    }

    /// The row-major element range of tensor `tensor` that rank `rank` owns (empty if none).
    pub fn range(&self, rank: usize, tensor: usize) -> Result<Range<usize>> {
        self.check_rank(rank)?;
        let (&start, &n) = self
            .starts
            .get(tensor)
            .zip(self.numels.get(tensor))
            .ok_or_else(|| plan_err(format!("tensor {tensor} of {}", self.numels.len())))?;
        let lo = self.cuts[rank].clamp(start, start + n) - start;
        let hi = self.cuts[rank + 1].clamp(start, start + n) - start;
        Ok(lo..hi)
    }

    /// Elements rank `rank` owns, over all tensors.
    pub fn len(&self, rank: usize) -> Result<usize> {
        (0..self.numels.len()).map(|t| self.range(rank, t).map(|r| r.len())).sum()
    }

    /// Whether rank `rank` owns no element.
    pub fn is_empty(&self, rank: usize) -> Result<bool> {
        self.len(rank).map(|n| n == 0)
    }

    /// Check that `lens` are the full tensors' element counts.
    fn check_full(&self, lens: impl ExactSizeIterator<Item = usize>) -> Result<()> {
        if lens.len() != self.numels.len() {
            return Err(ProfitError::CountMismatch {
                what: "parameter",
                expected: self.numels.len(),
                got: lens.len(),
            });
        }
        for (i, (n, &want)) in lens.zip(&self.numels).enumerate() {
            if n != want {
                return Err(plan_err(format!("tensor {i} has {n} elements, the plan {want}")));
            }
        }
        Ok(())
    }

    /// Rank `rank`'s shards of full tensors (row-major elements, one slice per tensor), as
    /// 1-D tensors (one per tensor, empty where the rank owns nothing of it).
    pub fn scatter<E: Element>(&self, rank: usize, full: &[&[E]]) -> Result<Vec<VecTensor<E>>> {
        self.check_full(full.iter().map(|f| f.len()))?;
        (0..full.len())
            .map(|t| {
                let r = self.range(rank, t)?;
                Ok(VecTensor { shape: vec![r.len()], data: full[t][r].to_vec() })
            })
            .collect()
    }

    /// Copy rank `rank`'s part of full tensors into its shards (which must have the plan's
    /// sizes). Checks everything before copying anything.
    pub fn scatter_into<E: Element>(
        &self,
        rank: usize,
        full: &[&[E]],
        shards: &mut [&mut [E]],
    ) -> Result<()> {
        self.check_full(full.iter().map(|f| f.len()))?;
        self.check_shards(rank, shards.iter().map(|s| s.len()))?;
        for (t, s) in shards.iter_mut().enumerate() {
            s.copy_from_slice(&full[t][self.range(rank, t)?]);
        }
        Ok(())
    }

    /// Check that `lens` are rank `rank`'s shard sizes.
    fn check_shards(&self, rank: usize, lens: impl ExactSizeIterator<Item = usize>) -> Result<()> {
        if lens.len() != self.numels.len() {
            return Err(ProfitError::CountMismatch {
                what: "shard",
                expected: self.numels.len(),
                got: lens.len(),
            });
        }
        for (t, n) in lens.enumerate() {
            let want = self.range(rank, t)?.len();
            if n != want {
                return Err(plan_err(format!(
                    "rank {rank}'s shard of tensor {t} has {n} elements, the plan {want}"
                )));
            }
        }
        Ok(())
    }

    /// Write rank `rank`'s shards back into the full tensors (its part of them). Checks
    /// everything before writing anything.
    pub fn gather<E: Element>(&self, rank: usize, shards: &[&[E]], full: &mut [&mut [E]]) -> Result<()> {
        self.check_full(full.iter().map(|f| f.len()))?;
        self.check_shards(rank, shards.iter().map(|s| s.len()))?;
        for (t, s) in shards.iter().enumerate() {
            full[t][self.range(rank, t)?].copy_from_slice(s);
        }
        Ok(())
    }

    /// Build the optimizer of the rank `collective` stands for, over its shards of the full
    /// parameters in `groups` (the same groups, names and options on every rank), and return
    /// it with its shards (1-D, in `groups` order) which it steps. `Err` if the collective's
    /// world size is not the plan's, or the groups' tensors are not the plan's.
    pub fn rank_optimizer<E: Element>(
        &self,
        config: ProfitConfig,
        groups: &[ParamGroup<'_, VecTensor<E>>],
        collective: impl Collective + 'static,
    ) -> Result<RankOptimizer<E>> {
        if collective.world_size() != self.world_size() {
            return Err(plan_err(format!(
                "the collective has {} ranks, the plan {}",
                collective.world_size(),
                self.world_size()
            )));
        }
        let rank = collective.rank();
        let tensors: Vec<&VecTensor<E>> =
            groups.iter().flat_map(|g| g.params.iter().map(|(_, t)| *t)).collect();
        self.check_full(tensors.iter().map(|t| t.data.len()))?;
        for (t, s) in tensors.iter().zip(&self.shapes) {
            if &t.shape != s {
                return Err(plan_err(format!("a tensor has shape {:?}, the plan {s:?}", t.shape)));
            }
        }
        let full: Vec<&[E]> = tensors.iter().map(|t| &t.data[..]).collect();
        let shards = self.scatter(rank, &full)?;
        let mut next = shards.iter();
        let local: Vec<ParamGroup<'_, VecTensor<E>>> = groups
            .iter()
            .map(|g| {
                ParamGroup::new(
                    g.params.iter().map(|(n, _)| (n.clone(), next.next().expect("one shard per tensor"))),
                )
                .options(g.options)
            })
            .collect();
        let mut opt = Profit::<VecBackend<E>>::with_groups(config, local)?;
        opt.set_collective(collective)?;
        Ok((opt, shards))
    }
}

/// One rank of a [`ShardedProfit`]: its optimizer and the buffers it steps.
struct Rank<E: Element> {
    opt: Profit<VecBackend<E>>,
    params: Vec<VecTensor<E>>,
    grads: Vec<VecTensor<E>>,
}

/// PROFIT over full host parameters, sharded over `world` in-process ranks: one optimizer per
/// rank over its shard (state included), the ranks run as threads at every call and agree on
/// the global sums through a [`ThreadCollective`].
///
/// [`step`](Self::step) takes the full parameters and gradients like [`Profit::step`]: each
/// rank copies in its shard of both, steps, and writes its updated shard back into the full
/// parameters. Every rank takes the same decisions from the same all-reduced sums, so a call
/// fails on every rank (and changes nothing) or succeeds on every rank. Checkpoints are one
/// file per rank.
///
/// ```
/// use profit_core::host::VecTensor;
/// use profit_core::shard::ShardedProfit;
/// use profit_core::{Adam, ParamGroup, Phase, ProfitConfig, Sgd};
///
/// let config = ProfitConfig::new(Sgd { lr: 1e-3, ..Default::default() }, Adam { lr: 1e-2, ..Default::default() });
/// let mut w = VecTensor::new(&[2, 3], vec![1.0f64, -1.0, 0.5, 2.0, 0.0, -0.5]).unwrap();
/// let mut b = VecTensor::new(&[3], vec![0.1f64, 0.2, 0.3]).unwrap();
/// // Three ranks, shard boundaries at multiples of 2 elements.
/// let mut opt = ShardedProfit::new(config, vec![ParamGroup::new([("w", &w), ("b", &b)])], 3, 2)?;
/// let gw = VecTensor::new(&[2, 3], vec![1.0; 6]).unwrap();
/// let gb = VecTensor::new(&[3], vec![0.5; 3]).unwrap();
/// let r = opt.step(&mut [&mut w, &mut b], &[&gw, &gb])?;
/// assert_eq!(r.phase, Phase::Reference);
/// let r = opt.step(&mut [&mut w, &mut b], &[&gw, &gb])?;
/// assert_eq!(r.phase, Phase::Main);
/// // The same gradient again: <delta, g> = -lr_ref |g|^2 < 0, so the projection fires.
/// assert!(r.main.unwrap().projected);
/// assert_eq!(opt.rank(2).unwrap().names(), ["w", "b"]); // every rank registers every tensor
/// # Ok::<(), profit_core::ProfitError>(())
/// ```
pub struct ShardedProfit<E: Element> {
    plan: ShardPlan,
    config: ProfitConfig,
    /// Names and options of the groups (to rebuild the ranks when loading checkpoints).
    groups: Vec<(Vec<String>, GroupOptions)>,
    ranks: Vec<Rank<E>>,
}

impl<E: Element> std::fmt::Debug for ShardedProfit<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedProfit")
            .field("plan", &self.plan)
            .field("config", &self.config)
            .field("ranks", &self.ranks.len())
            .finish_non_exhaustive()
    }
}

impl<E: Element> ShardedProfit<E> {
    /// Build over parameter groups, sharded over `world` ranks with shard boundaries at
    /// multiples of `align` elements ([`DEFAULT_ALIGN`] is a good default).
    pub fn new(
        config: ProfitConfig,
        groups: Vec<ParamGroup<'_, VecTensor<E>>>,
        world: usize,
        align: usize,
    ) -> Result<Self> {
        let shapes: Vec<Vec<usize>> =
            groups.iter().flat_map(|g| g.params.iter().map(|(_, t)| t.shape.clone())).collect();
        for g in &groups {
            for (name, t) in &g.params {
                if t.data.len() != t.shape.iter().product::<usize>() {
                    return Err(ProfitError::ShapeMismatch {
                        what: "parameter",
                        name: name.clone(),
                        expected: t.shape.clone(),
                        got: vec![t.data.len()],
                    });
                }
            }
        }
        let plan = ShardPlan::new(&shapes, world, align)?;
        let ranks = Self::build_ranks(&plan, config, &groups)?;
        let groups =
            groups.iter().map(|g| (g.params.iter().map(|(n, _)| n.clone()).collect(), g.options)).collect();
        Ok(ShardedProfit { plan, config, groups, ranks })
    }

    fn build_ranks(
        plan: &ShardPlan,
        config: ProfitConfig,
        groups: &[ParamGroup<'_, VecTensor<E>>],
    ) -> Result<Vec<Rank<E>>> {
        ThreadCollective::new(plan.world_size())?
            .into_iter()
            .map(|c| {
                let (opt, params) = plan.rank_optimizer(config, groups, c)?;
                let grads = params.clone();
                Ok(Rank { opt, params, grads })
            })
            .collect()
    }

    /// The plan.
    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.ranks.len()
    }

    /// Rank `rank`'s optimizer (its tensors are the rank's shards).
    pub fn rank(&self, rank: usize) -> Option<&Profit<VecBackend<E>>> {
        self.ranks.get(rank).map(|r| &r.opt)
    }

    /// Every rank's optimizer, to change learning rates between calls (apply the same change
    /// to every rank).
    pub fn ranks_mut(&mut self) -> impl Iterator<Item = &mut Profit<VecBackend<E>>> {
        self.ranks.iter_mut().map(|r| &mut r.opt)
    }

    /// Rank `rank`'s shards of the parameters, as it last stepped them.
    pub fn rank_params(&self, rank: usize) -> Option<&[VecTensor<E>]> {
        self.ranks.get(rank).map(|r| &r.params[..])
    }

    /// Counted calls so far.
    pub fn calls(&self) -> u64 {
        self.ranks[0].opt.calls()
    }

    /// Bytes of optimizer state held, over all ranks (about what one optimizer over the full
    /// parameters holds: each rank holds its shard's).
    pub fn state_bytes(&self) -> usize {
        self.ranks.iter().map(|r| r.opt.state_bytes()).sum()
    }

    /// Check full tensors against the plan (count and shapes).
    fn check(&self, what: &'static str, tensors: &[&VecTensor<E>]) -> Result<()> {
        let shapes = self.plan.shapes();
        if tensors.len() != shapes.len() {
            return Err(ProfitError::CountMismatch { what, expected: shapes.len(), got: tensors.len() });
        }
        let names = self.groups.iter().flat_map(|g| g.0.iter());
        for (i, (t, name)) in tensors.iter().zip(names).enumerate() {
            if t.shape != shapes[i] || t.data.len() != self.plan.numels[i] {
                return Err(ProfitError::ShapeMismatch {
                    what,
                    name: name.clone(),
                    expected: shapes[i].clone(),
                    got: if t.shape == shapes[i] { vec![t.data.len()] } else { t.shape.clone() },
                });
            }
        }
        Ok(())
    }

    /// One call over the full parameters and gradients (see [`Profit::step`]); every rank
    /// steps its shard in its own thread (rank 0 in the caller's). Arguments are checked
    /// before anything changes; a call refused by the optimizer (non-finite gradient,
    /// overflowing projection) or by the collective is refused on every rank before any rank
    /// changes anything, so the full parameters are unchanged.
    pub fn step(&mut self, params: &mut [&mut VecTensor<E>], grads: &[&VecTensor<E>]) -> Result<StepReport> {
        {
            let shared: Vec<&VecTensor<E>> = params.iter().map(|p| &**p).collect();
            self.check("parameter", &shared)?;
        }
        self.check("gradient", grads)?;
        // Each rank's part of every full parameter, as disjoint slices: the ranks copy their
        // shards in and out in parallel.
        let world = self.ranks.len();
        let mut parts: Vec<Vec<&mut [E]>> = (0..world).map(|_| Vec::with_capacity(params.len())).collect();
        for (t, p) in params.iter_mut().enumerate() {
            let mut rest: &mut [E] = &mut p.data[..];
            let mut at = 0;
            for (rank, part) in parts.iter_mut().enumerate() {
                // The ranks' ranges of a tensor are contiguous, in rank order, and cover it.
                let end = self.plan.range(rank, t)?.end;
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(end - at);
                part.push(head);
                rest = tail;
                at = end;
            }
        }
        let full_g: Vec<&[E]> = grads.iter().map(|g| &g.data[..]).collect();
        let plan = &self.plan;
        let run = |rank: usize, r: &mut Rank<E>, mut part: Vec<&mut [E]>| -> Result<StepReport> {
            for (shard, full) in r.params.iter_mut().zip(&part) {
                shard.data.copy_from_slice(full);
            }
            let mut g: Vec<&mut [E]> = r.grads.iter_mut().map(|t| &mut t.data[..]).collect();
            plan.scatter_into(rank, &full_g, &mut g)?;
            let mut p: Vec<&mut VecTensor<E>> = r.params.iter_mut().collect();
            let g: Vec<&VecTensor<E>> = r.grads.iter().collect();
            let report = r.opt.step(&mut p, &g)?;
            for (full, shard) in part.iter_mut().zip(&r.params) {
                full.copy_from_slice(&shard.data);
            }
            Ok(report)
        };
        let results: Vec<Result<StepReport>> = std::thread::scope(|s| {
            let (first, rest) = self.ranks.split_first_mut().expect("at least one rank");
            let mut parts = parts.into_iter();
            let first_part = parts.next().expect("one part per rank");
            let threads: Vec<_> = rest
                .iter_mut()
                .zip(parts)
                .enumerate()
                .map(|(i, (r, part))| s.spawn(move || run(i + 1, r, part)))
                .collect();
            let mut out = vec![run(0, first, first_part)];
            out.extend(threads.into_iter().map(|t| {
                t.join().unwrap_or_else(|_| Err(ProfitError::Collective("a rank's thread panicked".into())))
            }));
            out
        });
        let mut reports = Vec::with_capacity(results.len());
        for r in results {
            reports.push(r?);
        }
        Ok(reports.swap_remove(0))
    }

    /// Every rank's checkpoint (see [`Profit::save_checkpoint`]), in rank order: each holds
    /// the rank's state for its shard and records the rank and world size.
    pub fn save_checkpoints(&self, opts: SaveOptions) -> Result<Vec<Vec<u8>>> {
        self.ranks.iter().map(|r| r.opt.save_checkpoint(&r.params.iter().collect::<Vec<_>>(), opts)).collect()
    }

    /// Load one checkpoint per rank (in rank order) saved by [`save_checkpoints`](Self::save_checkpoints)
    /// of an engine over the same parameters, groups and plan; `params` are the full
    /// parameters the run continues with (restored from the files if they hold them, else
    /// checked against the files' fingerprints; see [`Profit::load_checkpoint`]). A file of
    /// another rank or world size is refused with [`ProfitError::ShardMismatch`]. Every file
    /// is loaded into fresh ranks first: on any error nothing is changed.
    pub fn load_checkpoints(
        &mut self,
        files: &[&[u8]],
        params: &mut [&mut VecTensor<E>],
        opts: LoadOptions,
    ) -> Result<()> {
        {
            let shared: Vec<&VecTensor<E>> = params.iter().map(|p| &**p).collect();
            self.check("parameter", &shared)?;
        }
        if files.len() != self.ranks.len() {
            return Err(ProfitError::CountMismatch {
                what: "checkpoint",
                expected: self.ranks.len(),
                got: files.len(),
            });
        }
        let mut fresh = {
            let shared: Vec<&VecTensor<E>> = params.iter().map(|p| &**p).collect();
            let mut it = shared.iter();
            let groups: Vec<ParamGroup<'_, VecTensor<E>>> = self
                .groups
                .iter()
                .map(|(names, o)| {
                    ParamGroup::new(names.iter().map(|n| (n.clone(), *it.next().expect("checked"))))
                        .options(*o)
                })
                .collect();
            Self::build_ranks(&self.plan, self.config, &groups)?
        };
        for (r, bytes) in fresh.iter_mut().zip(files) {
            let mut p: Vec<&mut VecTensor<E>> = r.params.iter_mut().collect();
            r.opt.load_checkpoint(bytes, &mut p, opts)?;
        }
        let mut full: Vec<&mut [E]> = params.iter_mut().map(|p| &mut p.data[..]).collect();
        for (rank, r) in fresh.iter().enumerate() {
            let shards: Vec<&[E]> = r.params.iter().map(|t| &t.data[..]).collect();
            self.plan.gather(rank, &shards, &mut full)?;
        }
        self.config = *fresh[0].opt.config();
        self.ranks = fresh;
        Ok(())
    }
}
