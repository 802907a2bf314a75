//! Sharded PROFIT (one optimizer per rank over its shard, ranks as threads) against the
//! single-process optimizer on the host backend, `f64`, `f32`, `bf16` and `f16` (see `profit_conformance::sharded`).

use profit_conformance::sharded;

macro_rules! sharded_tests {
    ($name:ident, $e:ty) => {
        mod $name {
            use super::*;
            #[test]
            fn golden_cases_over_one_to_four_ranks() {
                sharded::golden_sharded::<$e>();
            }
            #[test]
            fn frozen_groups_and_group_rates() {
                sharded::frozen_groups::<$e>();
            }
            #[test]
            fn resume_every_rank_mid_cycle_bitwise() {
                sharded::resume_mid_cycle::<$e>();
            }
            #[test]
            fn checkpoints_of_other_ranks_or_world_sizes_are_refused() {
                sharded::refuse_other_shards::<$e>();
            }
            #[test]
            fn a_failing_collective_changes_nothing() {
                sharded::failing_collective::<$e>();
            }
            #[test]
            fn a_non_finite_gradient_on_one_rank_stops_every_rank() {
                sharded::non_finite_on_one_rank::<$e>();
            }
            #[test]
            fn bad_input_changes_nothing() {
                sharded::bad_input::<$e>();
            }
        }
    };
}

sharded_tests!(vec_f64, f64);
sharded_tests!(vec_f32, f32);
sharded_tests!(vec_bf16, half::bf16);
sharded_tests!(vec_f16, half::f16);
