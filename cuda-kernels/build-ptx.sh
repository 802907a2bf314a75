#!/usr/bin/env bash
# Compile cuda-kernels/*.cu to PTX (compute_80) with the pinned CUDA 13.0 compiler set.
#
#   cuda-kernels/build-ptx.sh            # regenerate the committed cuda-kernels/ptx/*.ptx
#   cuda-kernels/build-ptx.sh OUT_DIR    # write the PTX into OUT_DIR instead (check-ptx.sh)
#
# The compiler comes from PyPI wheels installed into a git-ignored venv (default
# target/ptx-venv, override with PROFIT_PTX_VENV). Versions are pinned exactly: an unpinned
# nvidia-nvvm pulls 13.5, whose PTX ISA 9.5 a CUDA 13.0 driver (580 series) refuses to load.
# The install is skipped when the venv already holds exactly these versions, and pip's own
# cache keeps the wheels between venvs.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OUT="${1:-$HERE/ptx}"
VENV="${PROFIT_PTX_VENV:-$ROOT/target/ptx-venv}"
PINS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96)
# Flags shared with adapters/profit-cuda/build.rs: no FMA contraction, IEEE division and sqrt,
# so that the kernels round exactly as profit-core's host loops do.
NVCC_FLAGS=(-ptx -arch=compute_80 -std=c++17 -fmad=false -prec-div=true -prec-sqrt=true -ftz=false)

py="$VENV/bin/python"
have_pins() {
    [ -x "$py" ] || return 1
    local frozen
    frozen="$("$py" -m pip freeze --disable-pip-version-check 2>/dev/null)" || return 1
    for p in "${PINS[@]}"; do
        grep -qix "$p" <<<"$frozen" || return 1
    done
}
if ! have_pins; then
    echo "build-ptx: installing ${PINS[*]} into $VENV" >&2
    [ -x "$py" ] || python3 -m venv "$VENV"
    "$py" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
    have_pins || { echo "build-ptx: pinned versions not installed" >&2; exit 1; }
fi

# Locate the toolkit the wheels unpack (nvidia/cu13/bin/nvcc in the 13.x wheels).
SITE="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
NVCC="$(find "$SITE/nvidia" -type f -name nvcc -path '*/bin/*' 2>/dev/null | head -n1)"
[ -n "$NVCC" ] || { echo "build-ptx: nvcc not found under $SITE/nvidia" >&2; exit 1; }
CUDA_ROOT="$(cd "$(dirname "$NVCC")/.." && pwd)"
export PATH="$CUDA_ROOT/bin:$PATH"
# nvcc finds cicc and libdevice under nvvm/ next to bin/; make sure it does whichever wheel holds them.
if [ ! -d "$CUDA_ROOT/nvvm" ]; then
    NVVM_DIR="$(dirname "$(dirname "$(find "$SITE/nvidia" -type f -name cicc | head -n1)")")"
    [ -d "$NVVM_DIR" ] && ln -s "$NVVM_DIR" "$CUDA_ROOT/nvvm"
fi

mkdir -p "$OUT"
for cu in "$HERE"/*.cu; do
    name="$(basename "$cu" .cu)"
    # Compile from inside the folder so the PTX carries no machine-specific path.
    (cd "$HERE" && "$NVCC" "${NVCC_FLAGS[@]}" "$name.cu" -o "$OUT/$name.ptx")
    echo "build-ptx: $OUT/$name.ptx ($(grep -c '^\.visible \.entry' "$OUT/$name.ptx") entries)" >&2
done
