#!/usr/bin/env bash
# The adapters accept a semver range of their library (ndarray 0.17, nalgebra 0.35, cudarc
# 0.19.10 and up: older 0.19 releases lack `alloc_pinned_with_flags`), not one patch version;
# the workspace's Cargo.lock holds the version the rest of CI tests.
# This resolves a small user crate (.ci/dep-range, its own lock file) against the oldest and
# the newest release of each range and runs its tests: the adapters must match profit-core's
# VecBackend bitwise with both. Needs the crates.io index (network).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT/.ci/dep-range"
export CARGO_TARGET_DIR="$ROOT/target/dep-range"
resolved() { cargo tree -e normal --prefix none | grep -o "^$1 v[0-9.]*" | head -1 | cut -d" " -f2; }
rm -f Cargo.lock
cargo generate-lockfile --quiet
cargo update --quiet -p ndarray --precise 0.17.0
cargo update --quiet -p nalgebra --precise 0.35.0
cargo update --quiet -p cudarc --precise 0.19.10
echo "dep-range: oldest: ndarray $(resolved ndarray), nalgebra $(resolved nalgebra), cudarc $(resolved cudarc)"
cargo test --quiet
cargo update --quiet
echo "dep-range: newest: ndarray $(resolved ndarray), nalgebra $(resolved nalgebra), cudarc $(resolved cudarc)"
cargo test --quiet
rm -f Cargo.lock
echo "dep-range: the adapters pass with the oldest and the newest ndarray 0.17, nalgebra 0.35 and cudarc 0.19"
