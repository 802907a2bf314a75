//! Schedules driving a PROFIT optimizer: main rate from the schedule, reference rate at the
//! fixed ratio or on its own schedule; a bad schedule changes nothing.

use approx::assert_abs_diff_eq;
use profit_core::config::LrCoupling;
use profit_core::host::{VecBackend, VecTensor};
use profit_core::schedule::{CosineAnnealing, ExponentialLr, Scheduler, StepLr};
use profit_core::{Adam, GroupOptions, ParamGroup, Profit, ProfitConfig, Sgd};

fn opt(coupling: LrCoupling) -> Profit<VecBackend<f64>> {
    let w = VecTensor::new(&[2], vec![0.0f64; 2]).unwrap();
    let b = VecTensor::new(&[1], vec![0.0f64]).unwrap();
    let config = ProfitConfig {
        lr_coupling: coupling,
        ..ProfitConfig::new(Sgd { lr: 1e-4, ..Sgd::default() }, Adam { lr: 1e-2, ..Adam::default() })
    };
    let groups = vec![
        ParamGroup::new([("w", &w)]),
        ParamGroup::new([("b", &b)]).options(GroupOptions { lr: Some(2e-2), ..Default::default() }),
    ];
    Profit::with_groups(config, groups).unwrap()
}

#[test]
fn fixed_ratio_reference_follows_main() {
    let mut o = opt(LrCoupling::FixedRatio);
    let mut s = Scheduler::new(StepLr { step_size: 2, gamma: 0.5 });
    for t in 1..=5u64 {
        let lr = s.step(&mut o).unwrap();
        let f = 0.5f64.powi((t / 2) as i32);
        assert_eq!(lr, 1e-2 * f);
        assert_abs_diff_eq!(o.groups()[0].lr, 1e-2 * f, epsilon = 1e-18);
        assert_abs_diff_eq!(o.groups()[0].ref_lr, 1e-4 * f, epsilon = 1e-18); // ref follows at ratio 100
        assert_abs_diff_eq!(o.groups()[1].lr, 2e-2 * f, epsilon = 1e-18); // groups keep their proportion
        assert_abs_diff_eq!(o.groups()[1].ref_lr, 2e-4 * f, epsilon = 1e-18);
    }
}

#[test]
fn reference_on_its_own_schedule() {
    let mut o = opt(LrCoupling::Free);
    let mut s = Scheduler::new(CosineAnnealing { t_max: 10, min_factor: 0.0 })
        .with_reference(ExponentialLr { gamma: 0.9 });
    for _ in 0..3 {
        s.step(&mut o).unwrap();
    }
    assert_abs_diff_eq!(
        o.lr(),
        1e-2 * CosineAnnealing { t_max: 10, min_factor: 0.0 }.factor_at(3),
        epsilon = 1e-15
    );
    assert_abs_diff_eq!(o.ref_lr(), 1e-4 * 0.9f64.powi(3), epsilon = 1e-18);
}

#[test]
fn bad_schedule_changes_nothing() {
    let mut o = opt(LrCoupling::FixedRatio);
    let mut s = Scheduler::new(ExponentialLr { gamma: -1.0 });
    let before = o.groups().to_vec();
    assert!(s.step(&mut o).is_err(), "a negative rate is refused");
    assert_eq!(o.groups(), &before[..]);
    assert_eq!(s.steps(), 0);
}

trait At {
    fn factor_at(&self, t: u64) -> f64;
}
impl<S: profit_core::schedule::Schedule> At for S {
    fn factor_at(&self, t: u64) -> f64 {
        self.factor(t)
    }
}

#[test]
fn groups_keep_their_proportions_through_zero_and_back() {
    // LinearWarmup from 0: every group passes through rate 0 and must come back to its own rate.
    let mut o = opt(LrCoupling::FixedRatio);
    let mut s = Scheduler::new(profit_core::schedule::LinearWarmup {
        start_factor: 0.0,
        end_factor: 1.0,
        total_iters: 2,
    });
    s.apply(&mut o).unwrap();
    assert_eq!([o.groups()[0].lr, o.groups()[1].lr], [0.0, 0.0]);
    s.step(&mut o).unwrap();
    s.step(&mut o).unwrap();
    assert_eq!([o.groups()[0].lr, o.groups()[1].lr], [1e-2, 2e-2]);
    assert_abs_diff_eq!(o.groups()[1].ref_lr, 2e-4, epsilon = 1e-18);
}

#[test]
fn set_ref_lr_keeps_group_proportions() {
    let mut o = opt(LrCoupling::Free);
    o.set_ref_lr(5e-5).unwrap();
    assert_eq!(o.groups()[0].ref_lr, 5e-5);
    assert_abs_diff_eq!(o.groups()[1].ref_lr, 1e-4, epsilon = 1e-18); // group 1 was built at 2e-4
}

#[test]
fn own_group_lr_with_zero_main_lr_builds() {
    // Main lr 0 (to be raised by a schedule): a group's own lr must not give an infinite ref lr.
    let w = VecTensor::new(&[2], vec![0.0f64; 2]).unwrap();
    let b = VecTensor::new(&[1], vec![0.0f64]).unwrap();
    let config = ProfitConfig::new(Sgd { lr: 1e-4, ..Sgd::default() }, Adam { lr: 0.0, ..Adam::default() });
    let groups = vec![
        ParamGroup::new([("w", &w)]),
        ParamGroup::new([("b", &b)]).options(GroupOptions { lr: Some(1e-3), ..Default::default() }),
    ];
    let o = Profit::<VecBackend<f64>>::with_groups(config, groups).unwrap();
    assert_eq!(o.groups()[1].ref_lr, 1e-4);
}
