"""Rank processes for test_distributed.py (gloo on 127.0.0.1, CPU): an MLP with LayerNorm
under FSDP2 (``fully_shard`` per layer and at the root) or DDP, the same batches on every rank
(so the averaged gradients equal the single-process ones), stepped by torch_profit.PROFIT.
Rank 0 writes what the parent test compares to a file."""

import datetime
import os
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

import torch_profit

DTYPE = torch.float64
SETTINGS = dict(lr=1e-2, main="adam", ratio=1e2, max_grad_norm=5.0)


def make_model(device="cpu"):
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
        torch.nn.ReLU(), torch.nn.Linear(16, 4),
    )
    return m.to(DTYPE).to(device)


def batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 8, generator=g, dtype=DTYPE), torch.randn(32, 4, generator=g, dtype=DTYPE)) for _ in range(n)]


def single_process(calls, device="cpu", **settings):
    """The reference: the same model and batches in one process. Parameters after each call."""
    torch.set_num_threads(1)
    m = make_model(device)
    opt = torch_profit.PROFIT(m.parameters(), **{**SETTINGS, **settings})
    out, seconds = [], 0.0
    for x, y in batches(calls):
        torch.nn.functional.mse_loss(m(x.to(device)), y.to(device)).backward()
        t0 = time.perf_counter()
        opt.step()
        seconds += time.perf_counter() - t0
        opt.zero_grad()
        out.append([p.detach().cpu().clone() for p in m.parameters()])
    single_process.ms_per_call = 1e3 * seconds / calls
    return out, opt.projected_calls


def _init(rank, world, port, backend="gloo"):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))


def _sharded_model(world, device="cpu"):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device, (world,))
    m = make_model(device)
    for layer in m:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    fully_shard(m, mesh=mesh)
    return m


def _full(m):
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone() for p in m.parameters()]


def fsdp_run(rank, world, port, out, calls, settings, local_sums, backend="gloo"):
    """FSDP2 over `world` ranks (gloo on the CPU, or NCCL with one GPU per rank); rank 0 saves
    the gathered parameters after every call, the projected count and the mean time per call."""
    _init(rank, world, port, backend)
    if local_sums:
        # The negative control: each rank keeps its own partial sums.
        torch_profit._distributed.Ranks.all_reduce = lambda self, data: data
    device = "cuda" if backend == "nccl" else "cpu"
    m = _sharded_model(world, device)
    opt = torch_profit.PROFIT(m.parameters(), **{**SETTINGS, **settings})
    traj, seconds = [], 0.0
    for x, y in batches(calls):
        torch.nn.functional.mse_loss(m(x.to(device)), y.to(device)).backward()
        dist.barrier()
        t0 = time.perf_counter()
        opt.step()
        seconds += time.perf_counter() - t0
        opt.zero_grad()
        traj.append(_full(m))
    if rank == 0:
        torch.save({"traj": traj, "projected": opt.projected_calls, "ms_per_call": 1e3 * seconds / calls}, out)
    dist.barrier()
    dist.destroy_process_group()


def ddp_run(rank, world, port, out, calls):
    """DDP over `world` ranks; every rank saves its parameters after every call."""
    _init(rank, world, port)
    m = torch.nn.parallel.DistributedDataParallel(make_model())
    opt = torch_profit.PROFIT(m.parameters(), **SETTINGS, process_group=dist.group.WORLD)
    traj = []
    for x, y in batches(calls):
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()
        opt.zero_grad()
        traj.append([p.detach().clone() for p in m.parameters()])
    torch.save({"traj": traj}, f"{out}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


def checkpoint_run(rank, world, port, out, ckpt, first, calls, resume):
    """FSDP2: without `resume`, `first` calls then (unless `ckpt` is None) a
    torch.distributed.checkpoint save; with it, a fresh model and optimizer load that
    checkpoint and take calls `first..calls`. Rank 0 saves the gathered parameters after the
    last call."""
    _init(rank, world, port)
    m = _sharded_model(world)
    opt = torch_profit.PROFIT(m.parameters(), **SETTINGS)
    bs = batches(calls)
    if resume:
        state = {"model": m.state_dict(), "optim": opt.state_dict()}
        dcp.load(state, checkpoint_id=ckpt)
        m.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        todo = bs[first:]
    else:
        todo = bs[:first]
    for x, y in todo:
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()
        opt.zero_grad()
    if ckpt is not None and not resume:
        dcp.save({"model": m.state_dict(), "optim": opt.state_dict()}, checkpoint_id=ckpt)
    full = _full(m)
    if rank == 0:
        torch.save({"params": full, "phase": opt.last_report.phase, "next": opt.next_phase}, out)
    dist.barrier()
    dist.destroy_process_group()


def fault_run(rank, world, port, out, policy, fault):
    """FSDP2, one reference call, then at the main call rank 1 alone has a bad gradient:
    `fault="nan"` (a NaN in its shard) or `"layout"` (a non-contiguous shard). Every rank
    saves what its step raised or reported and whether its parameters and state changed."""
    _init(rank, world, port)
    m = _sharded_model(world)
    opt = torch_profit.PROFIT(m.parameters(), **{**SETTINGS, "non_finite": policy})
    (x, y), (x2, y2) = batches(2)
    torch.nn.functional.mse_loss(m(x), y).backward()
    opt.step()
    opt.zero_grad()
    torch.nn.functional.mse_loss(m(x2), y2).backward()
    if rank == 1:
        g = next(p for p in m.parameters() if p.grad is not None and p.grad._local_tensor.dim() == 2 and p.grad._local_tensor.shape[0] == p.grad._local_tensor.shape[1])
        if fault == "nan":
            g.grad._local_tensor.view(-1)[0] = float("nan")
        else:
            g.grad._local_tensor = g.grad._local_tensor.t()
    before = ([p._local_tensor.clone() for p in m.parameters()], opt.calls)
    state_before = {(i, k): v._local_tensor.clone() if hasattr(v, "_local_tensor") else v.clone() for i, s in opt.state_dict()["state"].items() for k, v in s.items()}
    try:
        opt.step()
        result = ("ok", opt.last_report.phase)
    except torch_profit.ProfitError as e:
        result = (type(e).__name__, str(e))
    unchanged = all(torch.equal(a, p._local_tensor) for a, p in zip(before[0], m.parameters())) and before[1] == opt.calls
    state_after = {(i, k): v._local_tensor.clone() if hasattr(v, "_local_tensor") else v.clone() for i, s in opt.state_dict()["state"].items() for k, v in s.items()}
    state_unchanged = all(torch.equal(state_before[k], state_after[k]) for k in state_before)
    torch.save({"result": result, "unchanged": unchanged, "state_unchanged": state_unchanged}, f"{out}.{rank}")
    dist.barrier()
    dist.destroy_process_group()
