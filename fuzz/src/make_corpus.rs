//! Write valid checkpoints (after 0..6 calls) as the fuzzer's seed corpus.

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus/checkpoint_load".into());
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for calls in 0..6 {
        let mut p = profit_fuzz::params();
        let mut opt = profit_fuzz::optimizer(&p);
        profit_fuzz::run(&mut opt, &mut p, calls);
        let bytes = profit_fuzz::save(&opt, &p);
        std::fs::write(format!("{dir}/seed-{calls}.safetensors"), bytes).expect("write");
    }
}
