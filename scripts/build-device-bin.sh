#!/usr/bin/env bash
# Build, here, the executables that scripts/gpu-check.sh runs on a GPU machine (which has CUDA
# but no Rust toolchain and no network), and copy just those into the git-ignored device-bin/:
#   device-bin/conformance-cuda   the conformance suite on profit-cuda (tests/tests/cuda.rs)
#   device-bin/profit-cuda-gpu    profit-cuda's GPU tests against the host backend
#   device-bin/profit-cuda-ptx    profit-cuda's PTX / no-GPU checks
#   device-bin/bench              the GPU benchmark (adapters/profit-cuda/examples/bench.rs)
#   device-bin/profit-cuda-nccl   profit-cuda's unit tests with the `nccl` feature (NCCL loaded
#                                 at run time: an all-reduce over a communicator of one)
#   device-bin/golden-dir         the conformance crate's folder as compiled into the binary
#                                 (it reads golden/, golden32/ and golden16/ there)
#   device-bin/wheels/            the torch-profit wheel (abi3, built by maturin in the cached
#                                 venv of scripts/test-python.sh) and pytest's pure-Python wheels
# Binaries embed the committed PTX (cuda-kernels/ptx), so no CUDA is needed to build them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=device-bin
LIST="$(mktemp)"
trap 'rm -f "$LIST"' EXIT

# Executables of a cargo build, one "name<TAB>path" per line.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"] + "\t" + m["executable"])
'
}

cargo test --release -p profit-conformance --test cuda --no-run --message-format=json | executables >>"$LIST"
cargo test --release -p profit-cuda --tests --no-run --message-format=json | executables >>"$LIST"
cargo build --release -p profit-cuda --examples --message-format=json | executables >>"$LIST"

NCCL_LIST="$(mktemp)"
trap 'rm -f "$LIST" "$NCCL_LIST"' EXIT
cargo test --release -p profit-cuda --features nccl --lib --no-run --message-format=json | executables >"$NCCL_LIST"

rm -rf "$OUT"
mkdir -p "$OUT"
pick() { # target name, file name in device-bin
    local path
    path="$(awk -F'\t' -v n="$1" '$1 == n { p = $2 } END { print p }' "$LIST")"
    [ -n "$path" ] || { echo "build-device-bin: no executable for target $1" >&2; exit 1; }
    cp "$path" "$OUT/$2"
    strip --strip-debug "$OUT/$2" 2>/dev/null || true
}
pick cuda conformance-cuda
pick gpu profit-cuda-gpu
pick ptx profit-cuda-ptx
pick bench bench
nccl="$(awk -F'\t' '$1 == "profit_cuda" { p = $2 } END { print p }' "$NCCL_LIST")"
[ -n "$nccl" ] || { echo "build-device-bin: no nccl test executable" >&2; exit 1; }
cp "$nccl" "$OUT/profit-cuda-nccl"
strip --strip-debug "$OUT/profit-cuda-nccl" 2>/dev/null || true
# The conformance binary reads its golden cases (golden/, golden32/, golden16/) below the crate folder
# compiled into it.
echo "$PWD/tests" >"$OUT/golden-dir"
# The PyTorch package and pytest, for a machine without network.
VENV="${PROFIT_TORCH_VENV:-$HOME/.cache/profit-torch-venv}"
PATH="$VENV/bin:$PATH" maturin build --release --quiet -m adapters/profit-torch/Cargo.toml -o "$OUT/wheels"
"$VENV/bin/pip" download --quiet --only-binary=:all: --dest "$OUT/wheels" pytest iniconfig pluggy packaging exceptiongroup tomli
ls -l "$OUT"
total=$(du -sm "$OUT" | cut -f1)
echo "build-device-bin: ${total} MiB in $OUT/"
[ "$total" -lt 64 ] || { echo "build-device-bin: $OUT/ is over 64 MiB" >&2; exit 1; }
