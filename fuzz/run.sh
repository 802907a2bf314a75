#!/usr/bin/env bash
# Fuzz the checkpoint loader for a fixed time: fuzz/run.sh [SECONDS] (default 300).
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets it
# pass its unstable flags. Sanitizer "none": the target is safe Rust; panics are what we look for.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-300}
export RUSTC_BOOTSTRAP=1
cargo run --quiet --release --bin make_corpus -- corpus/checkpoint_load
cargo fuzz run checkpoint_load --sanitizer none --release -- -max_total_time="$secs" -max_len=65536
