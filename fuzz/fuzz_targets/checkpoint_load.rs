//! Fuzz the checkpoint loader: arbitrary bytes must never panic; a refused file must leave
//! the optimizer exactly as it was; an accepted one must leave it usable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut p = profit_fuzz::params();
    let mut opt = profit_fuzz::optimizer(&p);
    profit_fuzz::run(&mut opt, &mut p, 4);
    let before = opt.save_checkpoint().expect("save");
    match opt.load_checkpoint(data) {
        Err(_) => assert_eq!(opt.save_checkpoint().expect("save"), before, "refused load changed state"),
        Ok(()) => {
            // Accepted: a round trip reproduces it and stepping does not panic.
            let again = opt.save_checkpoint().expect("save");
            let mut fresh = profit_fuzz::optimizer(&p);
            fresh.load_checkpoint(&again).expect("reload of a saved checkpoint");
            profit_fuzz::run(&mut opt, &mut p, 3);
        }
    }
});
