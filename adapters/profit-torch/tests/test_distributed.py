"""torch_profit under torch.distributed (gloo, CPU, ranks as processes on 127.0.0.1): FSDP2
shards against the single-process run, DDP, torch.distributed.checkpoint resume mid-cycle, and
a fault on one rank. Every spawn is bounded in time (a hung rank fails the test)."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

import dist_worker as w

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")

TIMEOUT = 120.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, world, *args):
    ctx = mp.start_processes(fn, args=(world, free_port()) + args, nprocs=world, join=False, start_method="spawn")
    import time

    deadline = time.monotonic() + TIMEOUT
    while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{fn.__name__} over {world} ranks did not finish within {TIMEOUT:.0f} s")


def worst(a, b):
    """Worst |difference| / max(1, |reference|) over every tensor of every call."""
    return max(float((x - y).abs().max()) / max(1.0, float(y.abs().max())) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


CALLS = 12
# How far a sharded run may be from the single-process one in float64: only the order of the
# f64 sums differs (per rank, then over the ranks).
TOL = 1e-12


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("projection", ["global", "per_tensor"])
def test_fsdp2_equals_the_single_process_run(tmp_path, world, projection):
    out = str(tmp_path / "fsdp.pt")
    spawn(w.fsdp_run, world, out, CALLS, {"projection": projection}, False)
    got = torch.load(out)
    ref, projected = w.single_process(CALLS, projection=projection)
    err = worst(got["traj"], ref)
    print(f"FSDP2 world {world} {projection}: worst difference from single-process {err:.3e}, "
          f"{got['projected']} of {CALLS // 2} main calls projected, {got['ms_per_call']:.2f} ms per call "
          f"(single process {w.single_process.ms_per_call:.2f} ms)")
    assert got["projected"] == projected and projected > 0, "the projection must fire, as in one process"
    if world == 1:
        assert err == 0.0, "one rank must be bitwise the single-process run"
    assert err <= TOL


def test_local_sums_give_another_trajectory(tmp_path):
    """The negative control: without the all-gather (each rank projecting with its own partial
    sums) the run is measurably not the single-process one, so the test above can fail."""
    out = str(tmp_path / "local.pt")
    spawn(w.fsdp_run, 2, out, CALLS, {}, True)
    got = torch.load(out)
    ref, _ = w.single_process(CALLS)
    err = worst(got["traj"], ref)
    print(f"FSDP2 world 2 with local sums: worst difference {err:.3e}")
    assert err > 1e3 * TOL


def test_ddp_equals_the_single_process_run_on_every_rank(tmp_path):
    out = str(tmp_path / "ddp.pt")
    spawn(w.ddp_run, 2, out, CALLS)
    ref, _ = w.single_process(CALLS)
    ranks = [torch.load(f"{out}.{r}")["traj"] for r in range(2)]
    assert worst(ranks[0], ranks[1]) == 0.0, "replicated parameters must be identical on every rank"
    err = worst(ranks[0], ref)
    print(f"DDP world 2: worst difference from single-process {err:.3e}")
    assert err <= TOL


def test_checkpoint_mid_cycle_resumes_bitwise(tmp_path):
    first, calls = 5, 9  # saved after a reference call: the next call is a main call
    whole = str(tmp_path / "whole.pt")
    spawn(w.checkpoint_run, 2, whole, None, calls, calls, False)
    ckpt = str(tmp_path / "ckpt")
    part = str(tmp_path / "part.pt")
    spawn(w.checkpoint_run, 2, part, ckpt, first, calls, False)
    saved = torch.load(part)
    assert saved["phase"] == "reference" and saved["next"] == "main", "the checkpoint must be mid-cycle"
    resumed = str(tmp_path / "resumed.pt")
    spawn(w.checkpoint_run, 2, resumed, ckpt, first, calls, True)
    a, b = torch.load(whole)["params"], torch.load(resumed)["params"]
    assert all(torch.equal(x, y) for x, y in zip(a, b)), "resumed run differs from the uninterrupted one"


@pytest.mark.parametrize("policy,fault,expected", [
    ("error", "nan", ["NonFiniteGradientError", "NonFiniteGradientError"]),
    ("skip", "nan", ["ok", "ok"]),
    ("error", "layout", ["ProfitCollectiveError", "ProfitInputError"]),
])
def test_a_fault_on_one_rank_is_every_ranks_outcome(tmp_path, policy, fault, expected):
    out = str(tmp_path / "fault.pt")
    spawn(w.fault_run, 2, out, policy, fault)
    res = [torch.load(f"{out}.{r}") for r in range(2)]
    print([r["result"] for r in res])
    assert [r["result"][0] for r in res] == expected
    if policy == "skip":
        assert all(r["result"][1] == "skipped" for r in res)
    assert all(r["unchanged"] and r["state_unchanged"] for r in res), "a refused or skipped call changed something"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (NCCL needs one)")
def test_fsdp2_over_nccl_one_gpu_equals_the_single_process_run(tmp_path):
    """NCCL with one rank on one GPU (what a one-GPU machine can run): bitwise the
    single-process CUDA run."""
    out = str(tmp_path / "nccl.pt")
    spawn(w.fsdp_run, 1, out, CALLS, {}, False, "nccl")
    got = torch.load(out)
    ref, projected = w.single_process(CALLS, device="cuda")
    err = worst(got["traj"], ref)
    print(f"FSDP2 over NCCL, one GPU: worst difference from single-process {err:.3e}, {got['ms_per_call']:.2f} ms per call")
    assert got["projected"] == projected and projected > 0
    assert err == 0.0
