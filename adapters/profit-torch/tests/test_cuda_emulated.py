"""The engine's CUDA path (profit-cuda's kernels on borrowed device memory, ordered with a
stream of the memory's owner) through the Python-facing engine, on the CPU emulation of the
CUDA driver (cuda-kernels/emu): device memory allocated with the driver, as torch's allocator
would, stepped in place, against the CPU engine: the same phases and projection decisions,
statistics within 1e-12 (the device adds the f64 sums in another fixed order), parameters and
state within 1e-12 in float64 (and, as measured, bitwise in float32 and bfloat16). torch's own CUDA
tensors need a GPU (scripts/gpu-check.sh runs test_cuda.py there). Skipped when the emulated
driver has not been built (cuda-kernels/emu/test-emulated.sh builds it; CI runs that first)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EMU = ROOT / "target" / "cuda-emu"

SCRIPT = r'''
import ctypes, json, sys
import torch, torch_profit
from torch_profit import _core

cu = ctypes.CDLL("libcuda.so")
def ok(r, what):
    if r != 0:
        raise SystemExit(f"{what}: CUDA error {r}")
ok(cu.cuInit(0), "cuInit")
ctx = ctypes.c_void_p()
ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0), "retain")
ok(cu.cuCtxSetCurrent(ctx), "set current")

def device(t):
    """A device copy of a CPU tensor (what torch's CUDA allocator would hand over)."""
    p = ctypes.c_uint64()
    ok(cu.cuMemAlloc_v2(ctypes.byref(p), t.numel() * t.element_size()), "alloc")
    ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(p.value), ctypes.c_void_p(t.data_ptr()), t.numel() * t.element_size()), "copy in")
    return p.value

def host(ptr, like):
    out = torch.empty_like(like)
    ok(cu.cuMemcpyDtoH_v2(ctypes.c_void_p(out.data_ptr()), ctypes.c_uint64(ptr), out.numel() * out.element_size()), "copy out")
    return out

stream = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(stream), 1), "stream")

results = {}
for dtype in (torch.float32, torch.float64, torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 8), (8,), (4, 16)]
    w = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=g).to(dtype) for s in shapes] for _ in range(8)]
    cpu = [t.clone() for t in w]
    opt = torch_profit.PROFIT([torch.nn.Parameter(t) for t in cpu], lr=1e-2, main="adam", ratio=10.0, max_grad_norm=5.0)
    config = opt._config_json()[0]
    groups = [(json.dumps({"lr": 1e-2, "ref_lr": 1e-3, "weight_decay": 0.0, "frozen": False}), [str(i) for i in range(3)], [list(s) for s in shapes])]
    name = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16"}[dtype]
    host_engine = _core.Engine(name, config, groups, [t.data_ptr() for t in cpu], -1)
    dev = [device(t) for t in w]
    dev_engine = _core.Engine(name, config, groups, dev, 0)
    reports = []
    for k, gs in enumerate(grads):
        missing = k == 5  # one tensor without a gradient at one call
        gcpu = [0 if (missing and i == 1) else t.data_ptr() for i, t in enumerate(gs)]
        gdev = [0 if (missing and i == 1) else device(t) for i, t in enumerate(gs)]
        a = host_engine.step([t.data_ptr() for t in cpu], gcpu)
        b = dev_engine.step(dev, gdev, stream.value or 0)
        # The device sums the f64 reductions in another (fixed) order than the host: the
        # statistics and the clipping factor agree to about 1e-15, decisions exactly.
        close = lambda x, y: abs(x - y) <= 1e-12 * max(abs(x), abs(y), 1e-300)
        same = a[:2] == b[:2] and close(a[2], b[2]) and (a[3] is None) == (b[3] is None)
        if a[3] is not None and b[3] is not None:
            same &= a[3][3] == b[3][3] and all(close(x, y) for x, y in zip(a[3][:3], b[3][:3]))
        reports.append(same)
    ok(cu.cuStreamSynchronize(stream), "sync")
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    err = lambda a, b: float((a.double() - b.double()).abs().max()) / max(1.0, float(b.double().abs().max()))
    worst = max(err(host(p, t), t) for p, t in zip(dev, cpu))
    same = worst <= tol
    moved = any(not torch.equal(t, w0) for t, w0 in zip(cpu, w))
    # State buffers read back from the device engine into device memory equal the host's.
    keys = [k for k, _ in host_engine.buffer_keys()]
    state_same = True
    for key in keys:
        i = int(key.split("/")[0])
        h = torch.empty(shapes[i], dtype=dtype)
        host_engine.read_buffer(key, h.data_ptr())
        d = device(torch.zeros(shapes[i], dtype=dtype))
        dev_engine.read_buffer(key, d, 0)
        state_same &= err(host(d, h), h) <= tol
    results[name] = dict(reports=all(reports), params=same, worst=worst, moved=moved, state=state_same, keys=len(keys))
print("RESULT " + json.dumps(results))
'''


@pytest.mark.skipif(not (EMU / "libcuda.so").exists(), reason="the emulated CUDA driver is not built (cuda-kernels/emu/test-emulated.sh)")
def test_cuda_engine_on_the_emulated_driver_equals_the_cpu_engine():
    env = dict(os.environ, LD_LIBRARY_PATH=f"{EMU}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    line = next((l for l in run.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line is not None, f"the emulated run failed:\n{run.stdout}\n{run.stderr}"
    results = json.loads(line[len("RESULT "):])
    print(results)
    for name, r in results.items():
        assert r["moved"], f"{name}: nothing was stepped"
        assert r["reports"], f"{name}: the CUDA engine reported differently from the CPU engine"
        assert r["params"], f"{name}: device parameters differ from the CPU engine's"
        assert r["state"] and r["keys"] > 0, f"{name}: device state differs from the CPU engine's"
