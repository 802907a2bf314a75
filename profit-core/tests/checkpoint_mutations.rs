//! The checkpoint loader against mutated files (a cheap, always-on companion of the cargo-fuzz
//! target in `fuzz/`): byte flips, truncations, insertions and random bytes never panic, and a
//! refused load changes nothing.

use profit_core::checkpoint::{LoadOptions, SaveOptions};
use profit_core::host::{VecBackend, VecTensor};
use profit_core::{Adam, Delta, Profit, ProfitConfig, ProfitError, RmsProp, Sgd};
use proptest::prelude::*;

fn setup(main_rms: bool) -> (Profit<VecBackend<f32>>, Vec<VecTensor<f32>>) {
    let w = VecTensor::new(&[3, 2], (0..6).map(|i| (i / 2) as f32 * 0.3 - (i % 2) as f32 * 0.2).collect())
        .unwrap();
    let b = VecTensor::new(&[2], vec![0.25f32; 2]).unwrap();
    let config = if main_rms {
        ProfitConfig::new(
            Sgd { lr: 1e-3, ..Sgd::default() },
            RmsProp { centered: true, momentum: 0.5, ..RmsProp::default() },
        )
    } else {
        ProfitConfig::new(
            Sgd { lr: 1e-3, momentum: 0.9, ..Sgd::default() },
            Adam { amsgrad: true, ..Adam::default() },
        )
    };
    let mut opt = Profit::<VecBackend<f32>>::with_names(config, &[("w", &w), ("b", &b)]).unwrap();
    let mut p = vec![w, b];
    for i in 0..3 {
        let g: Vec<VecTensor<f32>> = p
            .iter()
            .map(|t| VecTensor {
                data: t.data.iter().map(|x| x * 0.5 - i as f32 * 0.1).collect(),
                shape: t.shape.clone(),
            })
            .collect();
        let (x, y) = p.split_at_mut(1);
        opt.step(&mut [&mut x[0], &mut y[0]], &[&g[0], &g[1]]).unwrap();
    }
    (opt, p)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Overwrite(usize, u64),
}

fn save(opt: &Profit<VecBackend<f32>>, p: &[VecTensor<f32>]) -> Vec<u8> {
    opt.save_checkpoint(&p.iter().collect::<Vec<_>>(), SaveOptions::default()).unwrap()
}

fn load(
    opt: &mut Profit<VecBackend<f32>>,
    p: &mut [VecTensor<f32>],
    bytes: &[u8],
) -> Result<(), ProfitError> {
    opt.load_checkpoint(bytes, &mut p.iter_mut().collect::<Vec<_>>(), LoadOptions::default())
}

/// Every single-byte corruption of a checkpoint (each byte XORed with each of several masks,
/// header, tensor table, padding and data alike) is refused, and nothing changes.
#[test]
fn every_single_byte_corruption_is_refused() {
    for rms in [false, true] {
        let (mut opt, mut p) = setup(rms);
        let good = save(&opt, &p);
        let mut accepted = vec![];
        let mut tried = 0;
        for i in 0..good.len() {
            for mask in [0x01u8, 0x02, 0x20, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= mask;
                tried += 1;
                if load(&mut opt, &mut p, &bad).is_ok() {
                    accepted.push((i, mask));
                }
            }
        }
        assert_eq!(save(&opt, &p), good, "a refused load changed the state");
        println!(
            "byte-flip sweep ({} main): {tried} single-byte corruptions of a {}-byte file, {} accepted",
            if rms { "RMSprop" } else { "Adam" },
            good.len(),
            accepted.len()
        );
        assert!(accepted.is_empty(), "accepted corruptions (byte, mask): {accepted:?}");
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), any::<u64>()).prop_map(|(i, v)| Mutation::Overwrite(i, v)),
    ]
}

fn apply(mut bytes: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let n = bytes.len().max(1);
        match m {
            Mutation::Flip(i, x) => {
                if !bytes.is_empty() {
                    bytes[i % n] ^= x;
                }
            }
            Mutation::Truncate(i) => bytes.truncate(i % n),
            Mutation::Insert(i, v) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, v.iter().copied());
            }
            Mutation::Overwrite(i, v) => {
                let at = i % n;
                for (k, b) in v.to_le_bytes().iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_checkpoints_never_panic_and_refusals_change_nothing(
        rms in any::<bool>(),
        muts in proptest::collection::vec(mutation(), 1..4),
    ) {
        let (mut opt, mut p) = setup(rms);
        let good = save(&opt, &p);
        let bad = apply(good.clone(), &muts);
        // Every changed byte is covered by the checksum: a changed file never loads.
        prop_assume!(bad != good);
        match load(&mut opt, &mut p, &bad) {
            Err(profit_core::ProfitError::Checkpoint(_)) => prop_assert_eq!(save(&opt, &p), good),
            Err(e) => prop_assert!(false, "wrong error kind: {}", e),
            Ok(()) => prop_assert!(false, "a mutated checkpoint was accepted: {:?}", muts),
        }
    }

    #[test]
    fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (mut opt, mut p) = setup(false);
        let good = save(&opt, &p);
        prop_assert!(load(&mut opt, &mut p, &bytes).is_err());
        prop_assert_eq!(save(&opt, &p), good);
    }
}

#[test]
fn checkpoint_size_relative_to_parameters() {
    // 1M f32 parameters, SGD reference (no state), Adam main: anchor + exp_avg + exp_avg_sq
    // (realized delta), + delta (accumulated).
    let w = VecTensor::new(&[1000, 1000], vec![0.0f32; 1_000_000]).unwrap();
    let param_bytes = 1_000_000 * 4;
    for (delta, buffers) in [(Delta::Realized, 3), (Delta::Accumulated, 4)] {
        let config =
            ProfitConfig { delta, ..ProfitConfig::new(Sgd { lr: 1e-4, ..Sgd::default() }, Adam::default()) };
        let opt = Profit::<VecBackend<f32>>::with_names(config, &[("w", &w)]).unwrap();
        assert_eq!(opt.state_bytes(), buffers * param_bytes, "{delta:?}");
        assert_eq!(opt.profit_overhead_bytes(), (buffers - 2) * param_bytes, "{delta:?}");
        let bytes = opt.save_checkpoint(&[&w], SaveOptions::default()).unwrap().len();
        let ratio = bytes as f64 / param_bytes as f64;
        println!(
            "checkpoint of 1M f32 params (SGD ref, Adam main, {delta:?} delta): {bytes} bytes = {ratio:.4} x parameter bytes"
        );
        assert!(bytes >= buffers * param_bytes && bytes < buffers * param_bytes + 4096, "{bytes}");
    }
}
