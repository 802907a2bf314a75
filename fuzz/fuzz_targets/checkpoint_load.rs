//! Fuzz the checkpoint loader: arbitrary bytes must never panic; a refused file must leave
//! the optimizer exactly as it was; an accepted one must leave it usable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut p = profit_fuzz::params();
    let mut opt = profit_fuzz::optimizer(&p);
    profit_fuzz::run(&mut opt, &mut p, 4);
    let before = profit_fuzz::save(&opt, &p);
    match profit_fuzz::load(&mut opt, &mut p, data) {
        Err(_) => assert_eq!(profit_fuzz::save(&opt, &p), before, "refused load changed state"),
        Ok(()) => {
            // Accepted: a round trip reproduces it and stepping does not panic.
            let again = profit_fuzz::save(&opt, &p);
            let mut fresh = profit_fuzz::optimizer(&p);
            profit_fuzz::load(&mut fresh, &mut p, &again).expect("reload of a saved checkpoint");
            profit_fuzz::run(&mut opt, &mut p, 3);
        }
    }
});
