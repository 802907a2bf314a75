"""torch_profit on CUDA tensors (needs a GPU: skipped without one; scripts/gpu-check.sh runs
it on a GPU machine): the model on the GPU against the same model on the CPU, the optimizer
state through state_dict, work on a side stream, and mixed devices refused."""

import io

import pytest
import torch

import torch_profit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def mlp(dtype, device):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.LayerNorm(32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return m.to(device=device, dtype=dtype)


def batches(n, dtype):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 8, generator=g).to(dtype), torch.randn(16, 4, generator=g).to(dtype)) for _ in range(n)]


def err(a, b):
    return float((a.double().cpu() - b.double().cpu()).abs().max()) / max(1.0, float(b.double().abs().max()))


def run(m, opt, data, device, calls):
    out = []
    for x, y in data[:calls]:
        torch.nn.functional.mse_loss(m(x.to(device)), y.to(device)).backward()
        opt.step()
        opt.zero_grad()
        out.append((opt.last_report, [p.detach().clone() for p in m.parameters()]))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cuda_equals_cpu(dtype):
    data = batches(12, dtype)
    kw = dict(lr=1e-2, main="adam", ratio=10.0, max_grad_norm=5.0)
    mc, mg = mlp(dtype, "cpu"), mlp(dtype, "cuda")
    a = run(mc, torch_profit.PROFIT(mc.parameters(), **kw), data, "cpu", 12)
    b = run(mg, torch_profit.PROFIT(mg.parameters(), **kw), data, "cuda", 12)
    worst = 0.0
    for (ra, pa), (rb, pb) in zip(a, b):
        assert ra.phase == rb.phase
        if ra.main is not None:
            assert ra.main.projected == rb.main.projected
        worst = max(worst, max(err(x, y) for x, y in zip(pb, pa)))
    print(f"CUDA vs CPU {dtype}: worst parameter difference {worst:.3e}")
    # The forward and backward passes themselves differ between devices (cuBLAS): the
    # tolerance is the gradients', not the optimizer's.
    assert worst <= TOL[dtype]


def test_cuda_state_dict_resumes_bitwise():
    data = batches(9, torch.float32)
    kw = dict(lr=1e-2, main="adamw", ratio=10.0)
    m = mlp(torch.float32, "cuda")
    opt = torch_profit.PROFIT(m.parameters(), **kw)
    run(m, opt, data, "cuda", 5)  # ends after a reference call: mid-cycle
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "optim": opt.state_dict()}, buf)
    whole = run(m, opt, data[5:], "cuda", 4)
    buf.seek(0)
    saved = torch.load(buf)
    m2 = mlp(torch.float32, "cuda")
    m2.load_state_dict(saved["model"])
    opt2 = torch_profit.PROFIT(m2.parameters(), **kw)
    opt2.load_state_dict(saved["optim"])
    resumed = run(m2, opt2, data[5:], "cuda", 4)
    for (_, a), (_, b) in zip(whole, resumed):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_cuda_on_a_side_stream():
    """The engine orders its kernels after torch's current stream and before what torch
    queues next: a whole training loop on a side stream gives the default stream's result."""
    data = batches(8, torch.float32)
    kw = dict(lr=1e-2, main="adam", ratio=10.0)
    m1, m2 = mlp(torch.float32, "cuda"), mlp(torch.float32, "cuda")
    a = run(m1, torch_profit.PROFIT(m1.parameters(), **kw), data, "cuda", 8)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        b = run(m2, torch_profit.PROFIT(m2.parameters(), **kw), data, "cuda", 8)
    torch.cuda.synchronize()
    for (_, x), (_, y) in zip(a, b):
        assert all(torch.equal(p, q) for p, q in zip(x, y))


def test_mixed_devices_are_refused():
    p = torch.nn.Parameter(torch.randn(4, device="cuda"))
    q = torch.nn.Parameter(torch.randn(4))
    with pytest.raises(torch_profit.ProfitDeviceError):
        torch_profit.PROFIT([p, q])
    opt = torch_profit.PROFIT([p])
    p.data = torch.randn(4)  # the parameter moved to the CPU after the optimizer was built
    p.grad = torch.randn(4)
    before = p.detach().clone()
    with pytest.raises(torch_profit.ProfitDeviceError):
        opt.step()
    assert torch.equal(p.detach(), before)
