//! A rank of a sharded run makes the same passes over its shard as the single-process optimizer
//! over the whole parameters: every element of host memory the backend hands out is counted
//! (`as_slice` / `as_mut_slice` lengths), and a rank over half of the elements is handed out
//! exactly half as many, at every kind of call and in every configuration below. The only
//! extra work is the all-reduce of `3 x tensors` `f64`s.

use std::sync::atomic::{AtomicU64, Ordering};

use profit_core::collective::Collective;
use profit_core::error::BackendError;
use profit_core::host::HostBackend;
use profit_core::{
    Adam, NonFinitePolicy, Phase, Profit, ProfitConfig, ProfitError, Projection, RmsProp, Sgd,
};

/// Elements handed out, all tensors, all threads.
static ELEMENTS: AtomicU64 = AtomicU64::new(0);
/// All-reduces made, and values summed.
static REDUCES: AtomicU64 = AtomicU64::new(0);

/// `Vec<f64>` tensors that count the elements they hand out.
struct Counting;

impl HostBackend for Counting {
    type Elem = f64;
    type Tensor = Vec<f64>;
    const NAME: &'static str = "counting";
    fn shape(t: &Vec<f64>) -> Vec<usize> {
        vec![t.len()]
    }
    fn has_shape(t: &Vec<f64>, shape: &[usize]) -> bool {
        shape == [t.len()]
    }
    fn zeros_like(t: &Vec<f64>) -> Vec<f64> {
        vec![0.0; t.len()]
    }
    fn as_slice(t: &Vec<f64>) -> Result<&[f64], BackendError> {
        ELEMENTS.fetch_add(t.len() as u64, Ordering::Relaxed);
        Ok(t)
    }
    fn as_mut_slice(t: &mut Vec<f64>) -> Result<&mut [f64], BackendError> {
        ELEMENTS.fetch_add(t.len() as u64, Ordering::Relaxed);
        Ok(t)
    }
}

/// Rank 0 of 2 whose partner contributes zeros.
struct Alone;

impl Collective for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        2
    }
    fn all_reduce_sum(&mut self, values: &mut [f64]) -> Result<(), ProfitError> {
        REDUCES.fetch_add(values.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn values(n: usize, seed: f64) -> Vec<f64> {
    (0..n).map(|i| ((i as f64 + seed) * 0.37).sin()).collect()
}

/// Elements handed out and all-reduced values at each call of a run over `len`-element halves
/// of three tensors.
fn traffic(config: ProfitConfig, len: usize, sharded: bool) -> Vec<(Phase, u64, u64)> {
    let sizes = [2 * len, 4 * len, 2 * len];
    let mut params: Vec<Vec<f64>> =
        sizes.iter().map(|&n| values(if sharded { n / 2 } else { n }, 1.0)).collect();
    let named: Vec<(&str, &Vec<f64>)> = ["a", "b", "c"].into_iter().zip(params.iter()).collect();
    let mut opt = Profit::<Counting>::with_names(config, &named).unwrap();
    if sharded {
        opt.set_collective(Alone).unwrap();
    }
    let mut out = vec![];
    for k in 0..7 {
        let grads: Vec<Vec<f64>> = params.iter().map(|p| values(p.len(), k as f64 + 0.5)).collect();
        let (e0, r0) = (ELEMENTS.load(Ordering::Relaxed), REDUCES.load(Ordering::Relaxed));
        let mut pm: Vec<&mut Vec<f64>> = params.iter_mut().collect();
        let r = opt.step(&mut pm, &grads.iter().collect::<Vec<_>>()).unwrap();
        out.push((r.phase, ELEMENTS.load(Ordering::Relaxed) - e0, REDUCES.load(Ordering::Relaxed) - r0));
    }
    out
}

#[test]
fn a_rank_moves_the_single_process_bytes_per_local_element() {
    let base = ProfitConfig::new(Sgd { lr: 1e-3, momentum: 0.9, ..Sgd::default() }, Adam::default());
    let configs = [
        base,
        ProfitConfig { n_ref: 2, warmup_steps: 1, ..base },
        ProfitConfig { projection: Projection::PerTensor, max_grad_norm: Some(1.0), ..base },
        ProfitConfig { non_finite: NonFinitePolicy::Propagate, main: RmsProp::default().into(), ..base },
        ProfitConfig { delta: profit_core::Delta::Accumulated, ..base },
        ProfitConfig { projection: Projection::PerTensor, non_finite: NonFinitePolicy::Propagate, ..base },
    ];
    for config in configs {
        let single = traffic(config, 1000, false);
        let rank = traffic(config, 1000, true);
        for (k, (s, r)) in single.iter().zip(&rank).enumerate() {
            assert_eq!(s.0, r.0);
            assert!(s.1 > 0, "nothing counted");
            assert_eq!(2 * r.1, s.1, "{config:?} call {k} ({:?}): rank {} elements vs {}", s.0, r.1, s.1);
            assert_eq!(s.2, 0);
            // The all-reduce: 3 values per tensor wherever the reductions pass runs (main calls,
            // and the gradient pre-pass unless NonFinitePolicy::Propagate without clipping).
            let pre = config.non_finite != NonFinitePolicy::Propagate || config.max_grad_norm.is_some();
            let expected = if s.0 == Phase::Main || pre { 9 } else { 0 };
            assert_eq!(r.2, expected, "{config:?} call {k} ({:?})", s.0);
        }
    }
}
