//! PROFIT with its state sharded over 4 ranks, as threads of one process.
//!
//! Each rank is a long-lived thread that owns one optimizer over its shard of the parameters
//! (and so a quarter of the anchor and of Adam's moments). At every call it computes the
//! gradient of its own elements (this loss is a sum over elements, so a shard's gradient needs
//! only the shard; in data-parallel training it would be the rank's part of the all-reduced
//! gradient), steps, and the ranks meet once in the all-reduce inside `step`. At the end the
//! shards are gathered into full parameters and compared with the single-process run.
//!
//! `cargo run --release -p profit-core --example sharded`

use profit_core::collective::ThreadCollective;
use profit_core::host::{VecBackend, VecTensor};
use profit_core::shard::{ShardPlan, DEFAULT_ALIGN};
use profit_core::{Adam, ParamGroup, Profit, ProfitConfig, ProfitError, Sgd};

const CALLS: usize = 40;

/// Per-element target and curvature of the loss `sum_i c_i (w_i - t_i)^2 / 2`.
fn target(tensor: usize, i: usize) -> (f32, f32) {
    let x = (tensor * 1000 + i) as f32;
    ((x * 0.37).sin(), 1.0 + (x * 0.11).cos().abs())
}

/// The gradient of the loss at `w`, for the elements `range` of tensor `tensor`.
fn gradient(tensor: usize, range: std::ops::Range<usize>, w: &[f32]) -> Vec<f32> {
    range
        .zip(w)
        .map(|(i, &x)| {
            let (t, c) = target(tensor, i);
            c * (x - t)
        })
        .collect()
}

fn main() -> Result<(), ProfitError> {
    let config =
        ProfitConfig::new(Sgd { lr: 1e-4, ..Default::default() }, Adam { lr: 1e-2, ..Default::default() });
    let w = VecTensor::new(&[64, 33], vec![0.0f32; 64 * 33]).expect("shape");
    let b = VecTensor::new(&[33], vec![0.5f32; 33]).expect("shape");
    let names = ["w", "b"];
    let world = 4;
    let plan = ShardPlan::new(&[w.shape.clone(), b.shape.clone()], world, DEFAULT_ALIGN)?;
    for rank in 0..world {
        println!("rank {rank}: w {:?}, b {:?}", plan.range(rank, 0)?, plan.range(rank, 1)?);
    }

    // Each rank: build its optimizer over its shards (before the threads start, so that an
    // error is reported here), then step in its own thread.
    let groups = vec![ParamGroup::new(names.into_iter().zip([&w, &b]))];
    let ranks = ThreadCollective::new(world)?
        .into_iter()
        .map(|c| plan.rank_optimizer(config, &groups, c))
        .collect::<Result<Vec<_>, _>>()?;
    let shards: Vec<Vec<VecTensor<f32>>> = std::thread::scope(|s| {
        let threads: Vec<_> = ranks
            .into_iter()
            .enumerate()
            .map(|(rank, (mut opt, mut shards))| {
                let plan = &plan;
                s.spawn(move || -> Result<Vec<VecTensor<f32>>, ProfitError> {
                    for _ in 0..CALLS {
                        let grads = shards
                            .iter()
                            .enumerate()
                            .map(|(t, p)| {
                                let g = gradient(t, plan.range(rank, t)?, &p.data);
                                Ok(VecTensor::new(&p.shape, g).expect("shape"))
                            })
                            .collect::<Result<Vec<_>, ProfitError>>()?;
                        opt.step(
                            &mut shards.iter_mut().collect::<Vec<_>>(),
                            &grads.iter().collect::<Vec<_>>(),
                        )?;
                    }
                    Ok(shards)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("rank thread")).collect::<Result<Vec<_>, _>>()
    })?;

    // Gather the shards into full parameters.
    let (mut w_full, mut b_full) = (w.clone(), b.clone());
    for (rank, s) in shards.iter().enumerate() {
        let parts: Vec<&[f32]> = s.iter().map(|t| &t.data[..]).collect();
        plan.gather(rank, &parts, &mut [&mut w_full.data[..], &mut b_full.data[..]])?;
    }

    // The same run single-process.
    let (mut w1, mut b1) = (w.clone(), b.clone());
    let mut opt = Profit::<VecBackend<f32>>::with_names(config, &[("w", &w1), ("b", &b1)])?;
    for _ in 0..CALLS {
        let gw = VecTensor::new(&w1.shape, gradient(0, 0..w1.data.len(), &w1.data)).expect("shape");
        let gb = VecTensor::new(&b1.shape, gradient(1, 0..b1.data.len(), &b1.data)).expect("shape");
        opt.step(&mut [&mut w1, &mut b1], &[&gw, &gb])?;
    }
    let worst = w_full
        .data
        .iter()
        .chain(&b_full.data)
        .zip(w1.data.iter().chain(&b1.data))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("{CALLS} calls over {world} ranks: worst difference from the single-process run {worst:e}");
    assert!(worst <= 1e-5, "sharded and single-process runs differ by {worst}");
    Ok(())
}
