//! Sharded PROFIT ([`ShardedProfit`]: one optimizer per rank over its shard, ranks as threads,
//! one all-reduce per call) against the single-process optimizer, on the host backend
//! ([`VecBackend`]) in `f32` and `f64`.
//!
//! - [`golden_sharded`]: every golden case (in the modes and tolerances of the golden replay for
//!   the element type) over 1, 2, 3 and 4 ranks with shard boundaries
//!   aligned to 1, 4 and 16 elements (so tensors split across ranks, uneven splits, ranks
//!   holding parts of two tensors, and ranks holding nothing): the single-process run within
//!   the golden tolerance of the file where the file is a valid reference for the element type
//!   (in 16 bits a wider file is not: both delta modes then run against the single-process run
//!   alone), every sharded run within the element type's tolerance of the single-process run,
//!   `projected` identical to it, one rank bitwise equal to it, and two runs with the same
//!   world size and plan bitwise equal.
//! - [`frozen_groups`], [`resume_mid_cycle`], [`refuse_other_shards`], [`failing_collective`],
//!   [`non_finite_on_one_rank`], [`bad_input`]: the rest of the sharding contract.
//! - [`ranks_on_backend`]: rank optimizers on any backend (a [`Harness`]) over 1-D shards
//!   equal the [`VecBackend`] engine bitwise.

use profit_core::checkpoint::{LoadOptions, SaveOptions};
use profit_core::collective::{Collective, ThreadCollective};
use profit_core::element::{Dtype, Element};
use profit_core::host::{VecBackend, VecTensor};
use profit_core::shard::{ShardPlan, ShardedProfit};
use profit_core::{
    Adam, Delta, GroupOptions, NonFinitePolicy, ParamGroup, Phase, Profit, ProfitConfig, ProfitError,
    Projection, Sgd,
};

use crate::golden::{golden_files, param_error, GoldenCase};
use crate::{delta_name, Harness};
use profit_core::backend::TensorOps;

/// What a run did at every call.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Parameters after each call, widened to `f64` (exact), per tensor.
    pub params: Vec<Vec<Vec<f64>>>,
    /// Phase of each call.
    pub phases: Vec<Phase>,
    /// At main calls: the global `projected` flag followed by the per-tensor ones.
    pub projected: Vec<Option<Vec<bool>>>,
}

impl Trace {
    /// Whether two traces agree bitwise (the parameters' bits, not just `==`).
    pub fn bitwise_eq(&self, other: &Trace) -> bool {
        let bits =
            |t: &Trace| -> Vec<u64> { t.params.iter().flatten().flatten().map(|x| x.to_bits()).collect() };
        self.phases == other.phases && self.projected == other.projected && bits(self) == bits(other)
    }
}

fn tensors<E: Element>(case: &GoldenCase, values: &[Vec<f64>]) -> Vec<VecTensor<E>> {
    case.problem
        .params
        .iter()
        .zip(values)
        .map(|(p, v)| VecTensor::from_f64(&p.shape, v).expect("shape"))
        .collect()
}

fn init(case: &GoldenCase) -> Vec<Vec<f64>> {
    case.problem.params.iter().map(|p| p.init.clone()).collect()
}

/// The optimizer a replay runs: single-process, or sharded over `world` ranks aligned to `align`.
enum Opt<E: Element> {
    Single(Box<Profit<VecBackend<E>>>),
    Sharded(Box<ShardedProfit<E>>),
}

/// Replay a golden case's batches (gradients taken at the current parameters) single-process
/// (`world = None`) or sharded (`Some((world, align))`).
pub fn run<E: Element>(
    case: &GoldenCase,
    config: ProfitConfig,
    world: Option<(usize, usize)>,
) -> Result<Trace, String> {
    let mut params = tensors::<E>(case, &init(case));
    let named: Vec<(&str, &VecTensor<E>)> =
        case.problem.params.iter().zip(&params).map(|(p, t)| (p.name.as_str(), t)).collect();
    let mut opt = match world {
        None => Opt::Single(Box::new(Profit::with_names(config, &named).map_err(|e| e.to_string())?)),
        Some((w, a)) => Opt::Sharded(Box::new(
            ShardedProfit::new(config, vec![ParamGroup::new(named.iter().copied())], w, a)
                .map_err(|e| e.to_string())?,
        )),
    };
    let mut trace = Trace { params: vec![], phases: vec![], projected: vec![] };
    for (call, rows) in case.problem.batches.iter().enumerate() {
        let current: Vec<Vec<f64>> = params.iter().map(|t| t.to_f64()).collect();
        let (g, _) = case.gradients(rows, &current);
        let g = tensors::<E>(case, &g);
        let gr: Vec<&VecTensor<E>> = g.iter().collect();
        let mut pm: Vec<&mut VecTensor<E>> = params.iter_mut().collect();
        let (report, per_tensor) = match &mut opt {
            Opt::Single(o) => (o.step(&mut pm, &gr), o.tensor_reports().to_vec()),
            Opt::Sharded(o) => (o.step(&mut pm, &gr), o.rank(0).expect("rank 0").tensor_reports().to_vec()),
        };
        let report = report.map_err(|e| format!("call {call}: {e}"))?;
        trace.params.push(params.iter().map(|t| t.to_f64()).collect());
        trace.phases.push(report.phase);
        trace.projected.push(
            report.main.map(|m| {
                std::iter::once(m.projected).chain(per_tensor.iter().map(|r| r.projected)).collect()
            }),
        );
    }
    Ok(trace)
}

/// Worst golden-metric parameter error between two traces (per call, per tensor).
fn worst_error(a: &Trace, b: &Trace) -> f64 {
    a.params
        .iter()
        .zip(&b.params)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| param_error(p, q)))
        .fold(0.0f64, |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) })
}

/// The golden file's own trajectory as a trace (parameters only).
fn golden_trace(case: &GoldenCase) -> Trace {
    Trace {
        params: case
            .trajectory
            .iter()
            .map(|r| {
                case.problem
                    .params
                    .iter()
                    .map(|p| r.params.get(&p.name).cloned().unwrap_or_default())
                    .collect()
            })
            .collect(),
        phases: vec![],
        projected: vec![],
    }
}

/// Every golden case sharded over 1..=4 ranks, aligned to 1, 4 and 16 elements (see the
/// [module docs](self)). Prints, per case and mode, whether each sharded run equals the
/// single-process one bitwise and the worst difference; panics listing every failure.
pub fn golden_sharded<E: Element>() {
    let files = golden_files().unwrap_or_else(|e| panic!("{e}"));
    assert!(!files.is_empty(), "no golden cases found");
    let mut failures = vec![];
    let (mut bitwise, mut runs) = (0, 0);
    let mut splits_seen = [false; 3]; // a split tensor, a rank with two tensors, an empty rank
    for f in &files {
        let case = GoldenCase::load(&f.path).unwrap_or_else(|e| panic!("{e}"));
        // The golden file is a reference for the single-process run where [`plan`] says so; a
        // 16-bit run of a wider file has none (`stepwise16` checks it call by call) and is
        // sharded in both modes against the single-process run alone.
        let wide16 = E::DTYPE.size() == 2 && case.dtype16().is_none();
        let plan: Vec<(Delta, Option<f64>)> = if wide16 {
            vec![(Delta::Realized, None), (Delta::Accumulated, None)]
        } else {
            crate::golden::plan(&case, E::DTYPE).into_iter().map(|(d, t)| (d, Some(t))).collect()
        };
        let golden = golden_trace(&case);
        // How far a sharded run may be from the single-process one.
        let tol = crate::tolerance::<crate::VecHarness<E>>();
        for (delta, golden_tol) in plan {
            let config = ProfitConfig { delta, ..case.profit_config().unwrap_or_else(|e| panic!("{e}")) };
            let single = run::<E>(&case, config, None).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            if let Some(gt) = golden_tol {
                let e = worst_error(&single, &golden);
                if e.is_nan() || e > gt {
                    failures.push(format!(
                        "{} [{}]: single-process {e:.3e} from the golden file (tol {gt:.0e})",
                        case.name,
                        delta_name(delta)
                    ));
                }
            }
            let mut line = vec![];
            for align in [1, 4, 16] {
                for world in 1..=4 {
                    let at = format!("{} [{}] world {world} align {align}", case.name, delta_name(delta));
                    let p = ShardPlan::new(
                        &case.problem.params.iter().map(|p| p.shape.clone()).collect::<Vec<_>>(),
                        world,
                        align,
                    )
                    .expect("plan");
                    for rank in 0..world {
                        let held: Vec<_> = (0..2).map(|t| p.range(rank, t).expect("range")).collect();
                        let full = |t: usize| held[t].len() == case.problem.params[t].init.len();
                        splits_seen[0] |= held.iter().enumerate().any(|(t, r)| !r.is_empty() && !full(t));
                        splits_seen[1] |= held.iter().all(|r| !r.is_empty());
                        splits_seen[2] |= p.is_empty(rank).expect("rank");
                    }
                    let sharded = match run::<E>(&case, config, Some((world, align))) {
                        Ok(t) => t,
                        Err(e) => {
                            failures.push(format!("{at}: {e}"));
                            continue;
                        }
                    };
                    let vs_single = worst_error(&sharded, &single);
                    if vs_single.is_nan() || vs_single > tol {
                        failures.push(format!(
                            "{at}: parameter error {vs_single:.3e} against single-process (tol {tol:.0e})"
                        ));
                    }
                    if sharded.phases != single.phases || sharded.projected != single.projected {
                        failures.push(format!("{at}: phases or projected flags differ from single-process"));
                    }
                    let same = sharded.bitwise_eq(&single);
                    runs += 1;
                    bitwise += same as usize;
                    if world == 1 && !same {
                        failures.push(format!("{at}: one rank is not bitwise the single-process run"));
                    }
                    if align == 1 {
                        let again = run::<E>(&case, config, Some((world, align)));
                        if !again.is_ok_and(|a| a.bitwise_eq(&sharded)) {
                            failures.push(format!("{at}: two runs differ"));
                        }
                    }
                    line.push(format!(
                        "{world}/{align}:{}",
                        if same { "=".into() } else { format!("{vs_single:.0e}") }
                    ));
                }
            }
            println!(
                "sharded {:<28} {:<11} {} vs single-process (world/align: '=' bitwise, else worst error): {}",
                case.name,
                delta_name(delta),
                E::DTYPE,
                line.join(" ")
            );
        }
    }
    println!("sharded {}: {bitwise} of {runs} sharded runs bitwise equal to single-process", E::DTYPE);
    assert!(
        splits_seen.iter().all(|&s| s),
        "the plans never split a tensor / joined two / left a rank empty"
    );
    assert!(failures.is_empty(), "{} sharded failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// Deterministic values in `[-1, 1)`.
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 11) as f64) / ((1u64 << 52) as f64) - 1.0
        })
        .collect()
}

/// A small problem of three tensors (`a`: `[3, 5]`, `b`: `[7]`, `c`: `[2, 2]`) and a gradient
/// for call `k` at parameters `p`: `p - target + noise` (a quadratic), in `E`.
struct Toy<E: Element> {
    params: Vec<VecTensor<E>>,
}

const SHAPES: [&[usize]; 3] = [&[3, 5], &[7], &[2, 2]];
const NAMES: [&str; 3] = ["a", "b", "c"];

impl<E: Element> Toy<E> {
    fn new() -> Self {
        Toy {
            params: SHAPES
                .iter()
                .enumerate()
                .map(|(i, s)| VecTensor::from_f64(s, &values(s.iter().product(), 10 + i as u64)).unwrap())
                .collect(),
        }
    }

    fn grads(&self, k: u64) -> Vec<VecTensor<E>> {
        self.params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let noise = values(p.data.len(), 1000 * k + i as u64);
                let g: Vec<f64> = p.to_f64().iter().zip(&noise).map(|(x, n)| x - 0.3 + 0.5 * n).collect();
                VecTensor::from_f64(&p.shape, &g).unwrap()
            })
            .collect()
    }

    fn values(&self) -> Vec<Vec<f64>> {
        self.params.iter().map(|t| t.to_f64()).collect()
    }

    /// Groups: `a` and `b` trainable (group 0), `c` in group 1 with `options`.
    fn groups(&self, options: GroupOptions) -> Vec<ParamGroup<'_, VecTensor<E>>> {
        vec![
            ParamGroup::new([(NAMES[0], &self.params[0]), (NAMES[1], &self.params[1])]),
            ParamGroup::new([(NAMES[2], &self.params[2])]).options(options),
        ]
    }

    fn step(&mut self, opt: &mut ShardedProfit<E>, k: u64) -> Result<profit_core::StepReport, ProfitError> {
        let g = self.grads(k);
        let mut pm: Vec<&mut VecTensor<E>> = self.params.iter_mut().collect();
        opt.step(&mut pm, &g.iter().collect::<Vec<_>>())
    }
}

fn toy_config() -> ProfitConfig {
    ProfitConfig {
        n_ref: 2,
        max_grad_norm: Some(1.5),
        ..ProfitConfig::new(
            Sgd { lr: 1e-2, momentum: 0.9, ..Sgd::default() },
            Adam { lr: 1e-2, ..Adam::default() },
        )
    }
}

/// Frozen groups (and a group with its own learning rate): sharded over 1..=4 ranks, the
/// frozen tensor never changes, holds no state on any rank, and the run matches the
/// single-process one (global and per-tensor projection, with clipping).
pub fn frozen_groups<E: Element>() {
    let tol = match E::DTYPE {
        Dtype::F64 => 1e-12,
        Dtype::F32 => 1e-5,
        Dtype::Bf16 | Dtype::F16 => 5e-2,
    };
    for projection in [Projection::Global, Projection::PerTensor] {
        let config = ProfitConfig { projection, ..toy_config() };
        for (label, options) in [
            ("frozen", GroupOptions { frozen: true, ..Default::default() }),
            ("own lr", GroupOptions { lr: Some(3e-2), weight_decay: Some(0.1), ..Default::default() }),
        ] {
            let mut single = Toy::<E>::new();
            let mut opt = Profit::<VecBackend<E>>::with_groups(config, single.groups(options)).unwrap();
            let mut single_trace = vec![];
            for k in 0..9 {
                let g = single.grads(k);
                let mut pm: Vec<&mut VecTensor<E>> = single.params.iter_mut().collect();
                let r = opt.step(&mut pm, &g.iter().collect::<Vec<_>>()).unwrap();
                single_trace.push((single.values(), r.main.map(|m| m.projected)));
            }
            for world in 1..=4 {
                let mut toy = Toy::<E>::new();
                let start_c = toy.params[2].clone();
                let mut sharded = ShardedProfit::new(config, toy.groups(options), world, 1).unwrap();
                for (k, (exp, projected)) in single_trace.iter().enumerate() {
                    let r = toy.step(&mut sharded, k as u64).unwrap();
                    let err =
                        toy.values().iter().zip(exp).map(|(a, b)| param_error(a, b)).fold(0.0, f64::max);
                    assert!(err <= tol, "{label} {projection:?} world {world} call {k}: error {err:e}");
                    assert_eq!(r.main.map(|m| m.projected), *projected, "{label} world {world} call {k}");
                }
                if options.frozen {
                    assert_eq!(toy.params[2], start_c, "a frozen tensor changed (world {world})");
                    for rank in 0..world {
                        assert!(sharded.rank(rank).unwrap().anchor(2).is_none(), "frozen tensor holds state");
                    }
                } else {
                    assert_ne!(toy.params[2], start_c);
                }
            }
        }
    }
}

fn save_all<E: Element>(opt: &ShardedProfit<E>) -> Vec<Vec<u8>> {
    opt.save_checkpoints(SaveOptions::default()).expect("save")
}

fn refs(files: &[Vec<u8>]) -> Vec<&[u8]> {
    files.iter().map(|f| &f[..]).collect()
}

/// Save every rank's checkpoint after every call of a run over 3 ranks (`n_ref = 2`, so
/// mid-cycle saves too), load into a fresh engine with the weights of that moment, continue,
/// and match the uninterrupted run bitwise. Files with the parameters restore them.
pub fn resume_mid_cycle<E: Element>() {
    let (world, calls) = (3, 9);
    let config = toy_config();
    let mut toy = Toy::<E>::new();
    let mut opt = ShardedProfit::new(config, toy.groups(GroupOptions::default()), world, 4).unwrap();
    let mut states = vec![(toy.values(), save_all(&opt))];
    for k in 0..calls {
        toy.step(&mut opt, k).unwrap();
        states.push((toy.values(), save_all(&opt)));
    }
    let end = toy.values();
    for (at, (weights, files)) in states.iter().enumerate() {
        let mut resumed = Toy::<E>::new();
        let mut fresh =
            ShardedProfit::new(config, resumed.groups(GroupOptions::default()), world, 4).unwrap();
        for (t, w) in resumed.params.iter_mut().zip(weights) {
            *t = VecTensor::from_f64(&t.shape.clone(), w).unwrap();
        }
        let mut pm: Vec<&mut VecTensor<E>> = resumed.params.iter_mut().collect();
        fresh.load_checkpoints(&refs(files), &mut pm, LoadOptions::default()).unwrap();
        assert_eq!(fresh.calls(), at as u64);
        assert!(&save_all(&fresh) == files, "save(load(x)) != x at call {at}");
        for k in at as u64..calls {
            resumed.step(&mut fresh, k).unwrap();
        }
        assert_eq!(resumed.values(), end, "resumed at call {at}: the run differs");
    }
    // With the parameters in the files: zeroed weights are restored.
    let mid = 4;
    let mut toy = Toy::<E>::new();
    let mut opt = ShardedProfit::new(config, toy.groups(GroupOptions::default()), world, 4).unwrap();
    for k in 0..mid {
        toy.step(&mut opt, k).unwrap();
    }
    let files = opt.save_checkpoints(SaveOptions::with_params()).unwrap();
    let saved = toy.values();
    let mut zeroed = Toy::<E>::new();
    for t in &mut zeroed.params {
        t.data.iter_mut().for_each(|x| *x = E::from_f64(0.0));
    }
    let mut fresh = ShardedProfit::new(config, zeroed.groups(GroupOptions::default()), world, 4).unwrap();
    let mut pm: Vec<&mut VecTensor<E>> = zeroed.params.iter_mut().collect();
    fresh.load_checkpoints(&refs(&files), &mut pm, LoadOptions::default()).unwrap();
    assert_eq!(zeroed.values(), saved);
    for k in mid..calls {
        toy.step(&mut opt, k).unwrap();
        zeroed.step(&mut fresh, k).unwrap();
    }
    assert_eq!(zeroed.values(), toy.values());
}

fn assert_shard_mismatch(r: Result<(), ProfitError>, saved: (usize, usize), mine: (usize, usize)) {
    match r {
        Err(ProfitError::ShardMismatch { saved_rank, saved_world, rank, world }) => {
            assert_eq!((saved_rank, saved_world, rank, world), (saved.0, saved.1, mine.0, mine.1))
        }
        other => panic!("expected a shard mismatch {saved:?} into {mine:?}, got {other:?}"),
    }
}

/// Checkpoints of another rank or world size are refused with a typed error and nothing
/// changes; single-process files (and files that predate sharding) are rank 0 of 1.
pub fn refuse_other_shards<E: Element>() {
    let config = toy_config();
    let mut toy = Toy::<E>::new();
    let mut opt = ShardedProfit::new(config, toy.groups(GroupOptions::default()), 2, 1).unwrap();
    for k in 0..3 {
        toy.step(&mut opt, k).unwrap();
    }
    let files = save_all(&opt);
    let before = (toy.values(), files.clone());

    // Swapped files: rank 0 is offered rank 1's file.
    let swapped = [&files[1][..], &files[0][..]];
    let mut pm: Vec<&mut VecTensor<E>> = toy.params.iter_mut().collect();
    let r = opt.load_checkpoints(&swapped, &mut pm, LoadOptions::default().skip_fingerprint());
    assert_shard_mismatch(r, (1, 2), (0, 2));
    assert!((toy.values(), save_all(&opt)) == before, "a refused load changed something");

    // Two ranks' files into a three-rank engine: the count is wrong.
    let other = Toy::<E>::new();
    let mut three = ShardedProfit::new(config, other.groups(GroupOptions::default()), 3, 1).unwrap();
    let three_before = save_all(&three);
    let mut pm: Vec<&mut VecTensor<E>> = toy.params.iter_mut().collect();
    assert!(matches!(
        three.load_checkpoints(&refs(&files), &mut pm, LoadOptions::default()),
        Err(ProfitError::CountMismatch { what: "checkpoint", expected: 3, got: 2 })
    ));
    assert!(save_all(&three) == three_before, "a refused load changed something");

    // One rank's optimizer directly: rank 0 of 3 refuses rank 0 of 2's file (same shard
    // shapes or not, the world size is checked first).
    let plan3 = three.plan().clone();
    let handles = ThreadCollective::new(3).unwrap();
    let h0 = handles.into_iter().next().unwrap();
    let (mut r0, mut shards) =
        plan3.rank_optimizer(config, &toy.groups(GroupOptions::default()), h0).unwrap();
    let r0_before = r0.save_checkpoint(&shards.iter().collect::<Vec<_>>(), SaveOptions::default()).unwrap();
    let mut sm: Vec<&mut VecTensor<E>> = shards.iter_mut().collect();
    assert_shard_mismatch(r0.load_checkpoint(&files[0], &mut sm, LoadOptions::default()), (0, 2), (0, 3));
    assert!(
        r0.save_checkpoint(&shards.iter().collect::<Vec<_>>(), SaveOptions::default()).unwrap() == r0_before
    );

    // A single-process file says nothing about ranks (the format single-process runs always
    // wrote) and loads as rank 0 of 1: refused by a rank of a sharded run...
    let named: Vec<(&str, &VecTensor<E>)> = NAMES.iter().copied().zip(&toy.params).collect();
    let single = Profit::<VecBackend<E>>::with_names(config, &named).unwrap();
    let bytes =
        single.save_checkpoint(&toy.params.iter().collect::<Vec<_>>(), SaveOptions::default()).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("world_size") && !text.contains("\\\"rank\\\""), "single-process header changed");
    assert!(
        String::from_utf8_lossy(&files[1]).contains("world_size"),
        "a shard's header lacks its world size"
    );
    let mut sm: Vec<&mut VecTensor<E>> = shards.iter_mut().collect();
    assert_shard_mismatch(r0.load_checkpoint(&bytes, &mut sm, LoadOptions::default()), (0, 1), (0, 3));
    // ... and accepted by a single-process optimizer, which refuses a shard's file.
    let mut single = Profit::<VecBackend<E>>::with_names(config, &named).unwrap();
    let mut pm: Vec<&mut VecTensor<E>> = toy.params.iter_mut().collect();
    single.load_checkpoint(&bytes, &mut pm, LoadOptions::default()).unwrap();
    let mut pm: Vec<&mut VecTensor<E>> = toy.params.iter_mut().collect();
    assert_shard_mismatch(
        single.load_checkpoint(&files[0], &mut pm, LoadOptions::default().skip_fingerprint()),
        (0, 2),
        (0, 1),
    );
}

/// A collective that always fails.
struct Failing {
    rank: usize,
}

impl Collective for Failing {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        2
    }
    fn all_reduce_sum(&mut self, _values: &mut [f64]) -> Result<(), ProfitError> {
        Err(ProfitError::Collective("link down (simulated)".into()))
    }
}

/// A collective that fails makes the call fail with nothing changed (the all-reduce comes
/// before any update): at a reference call (the non-finite check needs the global `|g|^2`)
/// and at a main call; and a rank whose partner leaves gets an error instead of hanging.
pub fn failing_collective<E: Element>() {
    let config = toy_config();
    let mut toy = Toy::<E>::new();
    let plan = ShardPlan::new(&SHAPES, 2, 1).unwrap();
    // Rank 1 of 2 over a working collective for two calls is impossible alone: run rank 1's
    // optimizer with a collective that fails, from the start and after a reference call.
    let (mut opt, mut shards) =
        plan.rank_optimizer(config, &toy.groups(GroupOptions::default()), Failing { rank: 1 }).unwrap();
    let grads = toy.grads(0);
    let full: Vec<&[E]> = grads.iter().map(|g| &g.data[..]).collect();
    let g = plan.scatter(1, &full).unwrap();
    let state = |opt: &Profit<VecBackend<E>>, shards: &[VecTensor<E>]| {
        (
            opt.save_checkpoint(&shards.iter().collect::<Vec<_>>(), SaveOptions::default()).unwrap(),
            shards.to_vec(),
        )
    };
    let before = state(&opt, &shards);
    let mut sm: Vec<&mut VecTensor<E>> = shards.iter_mut().collect();
    assert!(matches!(opt.step(&mut sm, &g.iter().collect::<Vec<_>>()), Err(ProfitError::Collective(_))));
    assert!(state(&opt, &shards) == before, "a failed reference call changed something");
    assert_eq!(opt.calls(), 0);

    // At a main call: a reference call first with a single-process optimizer's state? The
    // rank's state must come from a working run: take it from a two-rank engine's checkpoint.
    let mut engine = ShardedProfit::new(config, toy.groups(GroupOptions::default()), 2, 1).unwrap();
    toy.step(&mut engine, 0).unwrap();
    toy.step(&mut engine, 1).unwrap(); // two reference calls (n_ref = 2): the next is main
    let files = save_all(&engine);
    let mut shards = engine.rank_params(1).unwrap().to_vec();
    let mut sm: Vec<&mut VecTensor<E>> = shards.iter_mut().collect();
    opt.load_checkpoint(&files[1], &mut sm, LoadOptions::default()).unwrap();
    assert_eq!(opt.next_phase(), Phase::Main);
    let before = state(&opt, &shards);
    let grads = toy.grads(2);
    let full: Vec<&[E]> = grads.iter().map(|g| &g.data[..]).collect();
    let g = plan.scatter(1, &full).unwrap();
    let mut sm: Vec<&mut VecTensor<E>> = shards.iter_mut().collect();
    assert!(matches!(opt.step(&mut sm, &g.iter().collect::<Vec<_>>()), Err(ProfitError::Collective(_))));
    assert!(state(&opt, &shards) == before, "a failed main call changed something");

    // The same with Propagate and no clipping: reference calls communicate nothing, main
    // calls still fail cleanly.
    let quiet = ProfitConfig { non_finite: NonFinitePolicy::Propagate, max_grad_norm: None, ..config };
    let (mut opt, mut shards) =
        plan.rank_optimizer(quiet, &toy.groups(GroupOptions::default()), Failing { rank: 1 }).unwrap();
    for k in 0..2 {
        let grads = toy.grads(k);
        let full: Vec<&[E]> = grads.iter().map(|g| &g.data[..]).collect();
        let g = plan.scatter(1, &full).unwrap();
        let mut sm: Vec<&mut VecTensor<E>> = shards.iter_mut().collect();
        opt.step(&mut sm, &g.iter().collect::<Vec<_>>()).expect("a reference call needs no collective");
    }
    let before = state(&opt, &shards);
    let mut sm: Vec<&mut VecTensor<E>> = shards.iter_mut().collect();
    assert!(matches!(opt.step(&mut sm, &g.iter().collect::<Vec<_>>()), Err(ProfitError::Collective(_))));
    assert!(state(&opt, &shards) == before, "a failed call changed something");

    // A thread collective whose other rank left: an error, not a hang.
    let mut handles = ThreadCollective::new(2).unwrap();
    drop(handles.pop());
    let h0 = handles.pop().unwrap();
    let (mut opt, mut shards) =
        plan.rank_optimizer(config, &toy.groups(GroupOptions::default()), h0).unwrap();
    let g = plan.scatter(0, &full).unwrap();
    let before = state(&opt, &shards);
    let mut sm: Vec<&mut VecTensor<E>> = shards.iter_mut().collect();
    assert!(matches!(opt.step(&mut sm, &g.iter().collect::<Vec<_>>()), Err(ProfitError::Collective(_))));
    assert!(state(&opt, &shards) == before, "a failed call changed something");
}

/// A non-finite gradient element held by one rank only: every rank refuses the call (the
/// check reads the all-reduced `|g|^2`), nothing changes, and the run continues in step;
/// with [`NonFinitePolicy::Skip`] every rank skips it.
pub fn non_finite_on_one_rank<E: Element>() {
    for policy in [NonFinitePolicy::Error, NonFinitePolicy::Skip] {
        let config = ProfitConfig { non_finite: policy, ..toy_config() };
        for world in [2, 4] {
            let mut toy = Toy::<E>::new();
            let mut opt = ShardedProfit::new(config, toy.groups(GroupOptions::default()), world, 1).unwrap();
            // Element 20 of the line (b[5]) is on the last rank only.
            let last = world - 1;
            assert!(opt.plan().range(last, 1).unwrap().contains(&5), "world {world}");
            for k in 0..5 {
                let mut g = toy.grads(k);
                if k == 2 {
                    g[1].data[5] = E::from_f64(f64::NAN);
                }
                let before = (toy.values(), save_all(&opt));
                let mut pm: Vec<&mut VecTensor<E>> = toy.params.iter_mut().collect();
                let r = opt.step(&mut pm, &g.iter().collect::<Vec<_>>());
                if k == 2 {
                    match (policy, r) {
                        (NonFinitePolicy::Error, Err(ProfitError::NonFiniteGradient { name })) => {
                            assert_eq!(name, "b")
                        }
                        (NonFinitePolicy::Skip, Ok(r)) => assert_eq!(r.phase, Phase::Skipped),
                        (_, other) => panic!("{policy:?} world {world}: {other:?}"),
                    }
                    assert!(toy.values() == before.0, "{policy:?}: a refused call changed the parameters");
                    if policy == NonFinitePolicy::Error {
                        assert!(save_all(&opt) == before.1, "a refused call changed the state");
                    }
                    for rank in 0..world {
                        let r = opt.rank(rank).unwrap();
                        assert_eq!(r.calls(), 2, "ranks out of step");
                        assert_eq!(r.skipped(), (policy == NonFinitePolicy::Skip) as u64);
                    }
                } else {
                    r.unwrap();
                }
            }
        }
    }
}

/// Bad input to the engine and the plan: typed errors, nothing changed.
pub fn bad_input<E: Element>() {
    assert!(matches!(ShardPlan::new(&SHAPES, 0, 16), Err(ProfitError::ShardPlan(_))));
    assert!(matches!(ShardPlan::new(&SHAPES, 2, 0), Err(ProfitError::ShardPlan(_))));
    assert!(matches!(ShardPlan::new(&[[usize::MAX, 2]], 2, 1), Err(ProfitError::ShardPlan(_))));
    let plan = ShardPlan::new(&SHAPES, 3, 4).unwrap();
    assert!(plan.range(3, 0).is_err() && plan.range(0, 3).is_err());
    let mut toy = Toy::<E>::new();
    let mut opt = ShardedProfit::new(toy_config(), toy.groups(GroupOptions::default()), 3, 4).unwrap();
    let before = (toy.values(), save_all(&opt));
    let g = toy.grads(0);
    // Too few gradients, a gradient of another shape, a parameter whose data misses an element.
    let mut pm: Vec<&mut VecTensor<E>> = toy.params.iter_mut().collect();
    assert!(matches!(opt.step(&mut pm, &[&g[0], &g[1]]), Err(ProfitError::CountMismatch { .. })));
    let bad = VecTensor::new(&[5, 3], g[0].data.clone()).unwrap();
    assert!(matches!(opt.step(&mut pm, &[&bad, &g[1], &g[2]]), Err(ProfitError::ShapeMismatch { .. })));
    let mut short = toy.params[2].clone();
    short.data.pop();
    let (a, rest) = toy.params.split_at_mut(1);
    let mut pm: Vec<&mut VecTensor<E>> = vec![&mut a[0], &mut rest[0], &mut short];
    assert!(matches!(
        opt.step(&mut pm, &g.iter().collect::<Vec<_>>()),
        Err(ProfitError::ShapeMismatch { .. })
    ));
    // A collective whose world differs from the plan's.
    let h = ThreadCollective::new(2).unwrap().into_iter().next().unwrap();
    assert!(plan.rank_optimizer(toy_config(), &toy.groups(GroupOptions::default()), h).is_err());
    // Gather with shards of the wrong size.
    let mut full: Vec<Vec<E>> = toy.params.iter().map(|t| t.data.clone()).collect();
    let mut fm: Vec<&mut [E]> = full.iter_mut().map(|v| &mut v[..]).collect();
    let wrong = [E::from_f64(1.0); 3];
    assert!(plan.gather(0, &[&wrong[..], &wrong[..], &wrong[..]], &mut fm).is_err());
    assert_eq!(full, toy.params.iter().map(|t| t.data.clone()).collect::<Vec<_>>());
    assert!((toy.values(), save_all(&opt)) == before, "bad input changed something");
    assert_eq!(opt.calls(), 0);
}

/// One `Profit<H::B>` per rank over 1-D shards of the backend's own tensors, the ranks as
/// threads over [`ThreadCollective`], against the in-process engine on [`VecBackend`]: bitwise
/// equal for 1 to 4 ranks (split tensors, an uneven split, empty ranks at 4), with the
/// projection firing at every main call (the sums must be global for the results to agree).
pub fn ranks_on_backend<H>(h: &H)
where
    H: Harness + Sync,
    <H::B as TensorOps>::Elem: Element,
{
    type E<H> = <<H as Harness>::B as TensorOps>::Elem;
    let shapes: [&[usize]; 3] = [&[5, 7], &[3], &[2, 9]];
    let init: Vec<Vec<f64>> = shapes
        .iter()
        .enumerate()
        .map(|(t, s)| {
            (0..s.iter().product())
                .map(|i| E::<H>::from_f64(((t * 50 + i) as f64 * 0.31).sin()).as_f64())
                .collect()
        })
        .collect();
    // Gradients that change little from call to call: each reference step points against the
    // next gradient, and the projection fires.
    let grad = |call: usize, t: usize, i: usize| {
        let g = ((t * 131 + i) as f64 * 0.17).cos() + 0.1 * ((call * 977 + i) as f64 * 0.3).sin();
        E::<H>::from_f64(g).as_f64()
    };
    let config =
        ProfitConfig::new(Sgd { lr: 1e-3, ..Default::default() }, Adam { lr: 1e-2, ..Default::default() });
    let names = ["a", "b", "c"];
    let vt = |shape: &[usize], v: &[f64]| -> VecTensor<E<H>> {
        VecTensor::new(shape, v.iter().map(|&x| E::<H>::from_f64(x)).collect()).expect("shape")
    };
    for world in 1..=4 {
        let mut full: Vec<VecTensor<E<H>>> = shapes.iter().zip(&init).map(|(s, v)| vt(s, v)).collect();
        let groups = vec![ParamGroup::new(names.iter().copied().zip(full.iter()))];
        let mut engine = ShardedProfit::new(config, groups, world, 4).expect("engine");
        for call in 0..6 {
            let g: Vec<VecTensor<E<H>>> = shapes
                .iter()
                .enumerate()
                .map(|(t, s)| vt(s, &(0..s.iter().product()).map(|i| grad(call, t, i)).collect::<Vec<_>>()))
                .collect();
            let mut p: Vec<&mut VecTensor<E<H>>> = full.iter_mut().collect();
            engine.step(&mut p, &g.iter().collect::<Vec<_>>()).expect("engine step");
        }
        let plan = ShardPlan::new(&shapes, world, 4).expect("plan");
        let shards: Vec<Vec<Vec<f64>>> = std::thread::scope(|s| {
            let threads: Vec<_> = ThreadCollective::new(world)
                .expect("collective")
                .into_iter()
                .enumerate()
                .map(|(rank, c)| {
                    let (plan, init, grad) = (&plan, &init, &grad);
                    s.spawn(move || {
                        let part = |t: usize, f: &dyn Fn(usize) -> f64| {
                            let r = plan.range(rank, t).expect("range");
                            h.tensor(&[r.len()], &r.map(f).collect::<Vec<_>>())
                        };
                        let mut mine: Vec<_> = (0..3).map(|t| part(t, &|i| init[t][i])).collect();
                        let named: Vec<(&str, &_)> = names.into_iter().zip(mine.iter()).collect();
                        let mut opt = Profit::<H::B>::with_names(config, &named).expect("rank optimizer");
                        opt.set_collective(c).expect("collective");
                        for call in 0..6 {
                            let g: Vec<_> = (0..3).map(|t| part(t, &|i| grad(call, t, i))).collect();
                            let mut p: Vec<&mut _> = mine.iter_mut().collect();
                            opt.step(&mut p, &g.iter().collect::<Vec<_>>()).expect("rank step");
                        }
                        assert_eq!(
                            opt.projected_calls(),
                            3,
                            "{} rank {rank}: the projection must fire",
                            h.label()
                        );
                        mine.iter().map(|t| h.values(t)).collect::<Vec<_>>()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().expect("rank thread")).collect()
        });
        for (t, e) in full.iter().enumerate() {
            let mut got = vec![f64::NAN; e.data.len()];
            for (rank, s) in shards.iter().enumerate() {
                got[plan.range(rank, t).expect("range")].copy_from_slice(&s[t]);
            }
            let want: Vec<u64> = e.data.iter().map(|x| x.as_f64().to_bits()).collect();
            let got: Vec<u64> = got.iter().map(|x| x.to_bits()).collect();
            assert_eq!(got, want, "{} world {world} tensor {t}", h.label());
        }
    }
}
