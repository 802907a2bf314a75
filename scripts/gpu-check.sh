#!/usr/bin/env bash
# Everything a GPU machine checks for the CUDA backend, in one run of a few minutes.
#
# Prepare here (Rust toolchain): scripts/build-device-bin.sh   (fills the git-ignored device-bin/)
# Run there, from the repository root, carrying device-bin:
#   scripts/gpu-check.sh            # results also land in $OUT (or ./out) as files
#
# The GPU machine has CUDA, nvcc and PyTorch but no Rust and no network. Steps:
#  1. the card and driver (nvidia-smi);
#  2. profit-cuda's PTX checks, GPU tests (bitwise against the host backend) and the
#     conformance suite on CUDA f32/f64, each in both delta modes (realized, accumulated),
#     plus PyTorch's bf16/f16 trajectories (tests/golden16) on CUDA bf16/f16;
#     with a GPU present, any "SKIPPED" is a failure;
#  3. the NCCL collective over a communicator of one (PyTorch's nvidia-nccl, linked as the
#     libnccl.so cudarc looks for);
#  4. the Rust benchmark (bench.md) and the same sizes with PyTorch (torch_bench.md), in f32
#     and bf16 (PROFIT_BENCH_DTYPES, default f32,bf16; bf16 rows count bf16 bytes): markdown
#     tables to paste into BENCHMARKS.md; the bf16 rows of both are printed again at the end;
#  5. the PyTorch package on CUDA tensors: its wheel (device-bin/wheels) in a venv over the
#     machine's torch, its CUDA tests (test_cuda.py, FSDP2 over NCCL on one GPU) and its
#     benchmark on CUDA tensors against torch's fused AdamW and the foreach PROFIT
#     (torch_profit_bench.md).
# Exits non-zero if any step failed; every step runs regardless.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=device-bin
RES="${OUT:-out}"
mkdir -p "$RES"
SIZES="${PROFIT_BENCH_SIZES:-16M,256M}"
TENSORS="${PROFIT_BENCH_TENSORS:-1,1000}"
DTYPES="${PROFIT_BENCH_DTYPES:-f32,bf16}"
failed=()

step() { # name, timeout seconds, command...
    local name="$1" limit="$2"
    shift 2
    echo
    echo "=== $name"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$RES/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc in $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
    return "$rc"
}

for f in conformance-cuda profit-cuda-gpu profit-cuda-ptx profit-cuda-nccl bench golden-dir wheels; do
    [ -e "$BIN/$f" ] || { echo "gpu-check: $BIN/$f missing: run scripts/build-device-bin.sh first" >&2; exit 2; }
done
chmod +x "$BIN"/* 2>/dev/null || true

# The conformance binary looks for its golden cases (golden/: float64, both delta modes;
# golden32/: float32, realized delta; golden16/: bf16 and f16) where the crate was when it was built.
golden="$(cat "$BIN/golden-dir")"
if [ ! -d "$golden/golden32" ]; then
    mkdir -p "$(dirname "$golden")" && ln -sfn "$PWD/tests" "$golden" \
        || echo "gpu-check: cannot link $golden to tests/: golden replays will fail" >&2
fi

# On this machine a missing GPU is a failure, not a skip.
export PROFIT_REQUIRE_GPU=1
step device 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv
step ptx-checks 60 "$BIN/profit-cuda-ptx" --nocapture
step gpu-tests 300 "$BIN/profit-cuda-gpu" --nocapture --test-threads=1
step conformance 300 "$BIN/conformance-cuda" --nocapture
# cudarc opens libnccl.so; pip's nvidia-nccl (PyTorch's) ships libnccl.so.2.
nccl_lib="$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)"
links="$(mktemp -d)"
if [ -n "$nccl_lib" ] && [ -e "$nccl_lib/libnccl.so.2" ]; then
    ln -sfn "$nccl_lib/libnccl.so.2" "$links/libnccl.so"
fi
export LD_LIBRARY_PATH="$links${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
step nccl 120 "$BIN/profit-cuda-nccl" nccl --nocapture --test-threads=1
if grep -q "SKIPPED" "$RES/gpu-tests.log" "$RES/conformance.log" "$RES/nccl.log"; then
    echo "gpu-check: tests were SKIPPED on a GPU machine (no driver or device seen?)" >&2
    failed+=("skipped tests")
fi
step bench 300 "$BIN/bench" --require-gpu --sizes "$SIZES" --tensors "$TENSORS" --dtypes "$DTYPES" --reps 20 --warmup 3
sed -n '/^| what/,$p' "$RES/bench.log" >"$RES/bench.md"
step torch-bench 300 python3 scripts/torch_bench.py --sizes "$SIZES" --tensors "$TENSORS" --dtypes "$DTYPES" --reps 20 --warmup 3
sed -n '/^| what/,$p' "$RES/torch-bench.log" >"$RES/torch_bench.md"
if grep -q "bf16 |" "$RES/bench.md" "$RES/torch_bench.md"; then
    echo
    echo "=== bf16 rows (B/param counted in bf16; % of the f32 copy bandwidth)"
    for f in "$RES/bench.md" "$RES/torch_bench.md"; do
        sed -n '1,2p' "$f"
        grep "bf16 |" "$f"
    done
fi

TV="$RES/torch-venv"
if python3 -m venv --system-site-packages "$TV" \
    && "$TV/bin/pip" install --quiet --no-index --find-links "$BIN/wheels" torch-profit pytest; then
    step torch-profit-tests 300 "$TV/bin/python" -m pytest adapters/profit-torch/tests/test_cuda.py \
        adapters/profit-torch/tests/test_distributed.py -k "cuda or nccl" -q -s -rs
    if grep -q " skipped" "$RES/torch-profit-tests.log" && ! grep -q " passed" "$RES/torch-profit-tests.log"; then
        failed+=("torch-profit tests skipped")
    fi
    step torch-profit-bench 300 "$TV/bin/python" adapters/profit-torch/bench/bench.py --device cuda --sizes 16M --tensors 1,1000 --dtypes "$DTYPES"
    sed -n '/^| what/,$p' "$RES/torch-profit-bench.log" >"$RES/torch_profit_bench.md"
else
    failed+=("torch-profit install")
fi

echo
if [ "${#failed[@]}" -eq 0 ]; then
    echo "gpu-check: all steps passed; tables in $RES/bench.md and $RES/torch_bench.md"
else
    printf 'gpu-check: FAILED: %s\n' "${failed[@]}"
    exit 1
fi
