#!/usr/bin/env bash
# Run profit-cuda's GPU tests and the conformance suite on CUDA against a CPU emulation of the
# CUDA driver (emu.cpp: libcuda.so with host memory, the kernels of ../profit.cu compiled as
# C++ without FMA contraction, one fiber per CUDA thread). No GPU needed: this checks the Rust
# launch side (tables, scalars, copies, caching) and the kernels' logic and rounding, bitwise
# against the host backend. It cannot check the PTX itself (see check-ptx.sh), timing, or
# inter-block races: scripts/gpu-check.sh does that on a GPU machine.
#
#   cuda-kernels/emu/test-emulated.sh            # GPU tests + conformance (a few minutes)
#   cuda-kernels/emu/test-emulated.sh --quick    # GPU tests only
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
EMU="$ROOT/target/cuda-emu"
mkdir -p "$EMU"
if [ ! -f "$EMU/libcuda.so" ] || [ "$HERE/emu.cpp" -nt "$EMU/libcuda.so" ] || [ "$HERE/../profit.cu" -nt "$EMU/libcuda.so" ]; then
    "${CXX:-g++}" -std=c++17 -O2 -ffp-contract=off -fno-fast-math -Wall -Wno-unknown-pragmas -Wno-unused-function \
        -shared -fPIC "$HERE/emu.cpp" -o "$EMU/libcuda.so"
fi
export LD_LIBRARY_PATH="$EMU${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT

cargo test --release -p profit-cuda --test gpu --test external -- --nocapture 2>&1 | tee "$LOG"
if [ "${1:-}" != "--quick" ]; then
    cargo test --release -p profit-conformance --test cuda -- --nocapture 2>&1 | tee -a "$LOG"
fi
if grep -q "SKIPPED" "$LOG"; then
    echo "test-emulated: tests were SKIPPED: the emulated driver was not picked up" >&2
    exit 1
fi
echo "test-emulated: passed on the emulated CUDA driver"
