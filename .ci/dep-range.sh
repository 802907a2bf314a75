#!/usr/bin/env bash
# The adapters accept a semver range of their tensor library (ndarray 0.17, nalgebra 0.35), not
# one patch version; Cargo.lock holds the version the rest of CI tests. This runs the adapters'
# tests (their doc-tests drive the optimizer) against the oldest and the newest release of each
# range, then restores Cargo.lock. Needs the crates.io index (network).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/dep-range"
mkdir -p "$CARGO_TARGET_DIR"
backup="$CARGO_TARGET_DIR/Cargo.lock.orig"
cp Cargo.lock "$backup"
trap 'cp "$backup" Cargo.lock' EXIT
for bound in oldest newest; do
    if [ "$bound" = oldest ]; then
        cargo update -p ndarray --precise 0.17.0
        cargo update -p nalgebra --precise 0.35.0
    else
        cargo update -p ndarray -p nalgebra
    fi
    echo "dep-range: $bound: $(cargo tree -p profit-ndarray -e normal --depth 1 | grep -o 'ndarray v[0-9.]*' | tail -1), $(cargo tree -p profit-nalgebra -e normal --depth 1 | grep -o 'nalgebra v[0-9.]*' | tail -1)"
    cargo test -p profit-ndarray -p profit-nalgebra --quiet
done
echo "dep-range: the adapters pass with the oldest and the newest ndarray 0.17 and nalgebra 0.35"
