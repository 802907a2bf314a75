#!/usr/bin/env bash
# The PyTorch package's tests (adapters/profit-torch), as CI runs them:
#   1. a venv with torch, numpy, maturin, pytest and expecttest from PyPI, made once and cached
#      at $PROFIT_TORCH_VENV (default ~/.cache/profit-torch-venv; torch's CUDA wheels make it
#      about 5.5 GB and 5 minutes to install the first time);
#   2. `pip install ./adapters/profit-torch` into it (the user's install command: maturin builds
#      the Rust extension in release mode, about a minute);
#   3. pytest over adapters/profit-torch/tests (golden replays through the Python API, PyTorch's
#      optimizer test matrix, models, conventions, bad input, torch.distributed with gloo).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${PROFIT_TORCH_VENV:-$HOME/.cache/profit-torch-venv}"
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"  # the maturin the build hook calls
if ! "$PY" -c "import torch, numpy, maturin, pytest, expecttest" 2>/dev/null; then
    echo "test-python: making the venv at $VENV (once)"
    python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet "torch==2.15.*" numpy "maturin==1.16.*" pytest expecttest
fi
"$PY" -m pip install --quiet --no-build-isolation --force-reinstall --no-deps "$ROOT/adapters/profit-torch"
cd "$ROOT/adapters/profit-torch"
"$PY" -m pytest tests -q "$@"
