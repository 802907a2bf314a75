"""PyTorch's own optimizer test matrix (``optim_db``, ``optim_inputs_func(device="cpu")``) for
SGD, Adam, AdamW and RMSprop as PROFIT's main optimizer: ``torch_profit.PROFIT(main=kind,
**kwargs)`` against the oracle ``ReferencePROFIT`` with the same kwargs, in lockstep on an MLP
with LayerNorm in float64, realized and accumulated delta, global and per-tensor projection,
n_ref 1. After every call: parameters within 1e-10 (golden README measure), same phase, same
projection decisions, statistics within 1e-9 (relative).

Keys PROFIT does not take (foreach, fused, differentiable, capturable: implementation choices
of torch's kernels) are dropped; a tensor lr (or betas) becomes a float; a config with any other
key PROFIT cannot express is skipped, and the reason printed.
"""
import inspect

import pytest
import torch
from torch.testing._internal.common_optimizers import optim_db

from lockstep import MLP_INPUT, Lockstep, batches, mlp, record
from reference import MAIN_HYPER

KINDS = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw", "RMSprop": "rmsprop"}
DROP = {"foreach", "fused", "differentiable", "capturable"}
# Configs run per optimizer with torch 2.15's optim_db on the CPU (all of them: none is
# skipped). A change in torch's matrix shows here instead of silently running fewer.
EXPECTED_RUN = {"SGD": 9, "Adam": 5, "AdamW": 5, "RMSprop": 8}
STEPS = 20
RATIO = 10.0  # small enough that the projection fires at most main calls (both branches run)


def _float(v):
    return float(v.item()) if isinstance(v, torch.Tensor) else v


def convert(kind, cls, kwargs):
    """(PROFIT kwargs, None) or (None, why it is skipped)."""
    out = {}
    for key, v in kwargs.items():
        if key in DROP:
            continue
        if key not in ("lr", "weight_decay") + MAIN_HYPER[kind]:
            return None, f"key {key!r}={v!r} has no PROFIT equivalent"
        if key == "betas":
            v = tuple(_float(b) for b in v)
        out[key] = _float(v)
    # torch's own default lr for the class (RMSprop's is 1e-2; PROFIT's default lr is 1e-3).
    out.setdefault("lr", inspect.signature(cls.__init__).parameters["lr"].default)
    return out, None


def matrix():
    """{optimizer name: [(desc, kwargs)]} and the skipped configs [(name, desc, why)]."""
    run, skipped = {}, []
    for info in optim_db:
        name = info.optim_cls.__name__
        if name not in KINDS:
            continue
        run[name] = []
        for oi in info.optim_inputs_func(device="cpu"):
            if oi.params is not None:
                skipped.append((name, oi.desc, "custom params / param groups"))
                continue
            kw, why = convert(KINDS[name], info.optim_cls, oi.kwargs)
            if why:
                skipped.append((name, oi.desc, why))
            else:
                run[name].append((oi.desc, kw))
    return run, skipped


RUN, SKIPPED = matrix()
CASES = [(name, desc, kw) for name in sorted(RUN) for desc, kw in RUN[name]]
WORST = {}  # (name, desc) -> worst params, worst stats over the modes run so far


def test_matrix_counts():
    for name, desc, why in SKIPPED:
        print(f"skipped {name} {desc!r}: {why}")
    assert {name: len(v) for name, v in RUN.items()} == EXPECTED_RUN, (RUN.keys(), SKIPPED)


@pytest.mark.parametrize("projection", ["global", "per_tensor"])
@pytest.mark.parametrize("delta", ["realized", "accumulated"])
@pytest.mark.parametrize("name,desc,kw", CASES, ids=[f"{n}-{d}" for n, d, _ in CASES])
def test_matrix(name, desc, kw, delta, projection):
    ls = Lockstep(mlp(seed=3), main=KINDS[name], ratio=RATIO, n_ref=1, delta=delta,
                  projection=projection, **kw)
    ls.run(batches(STEPS, MLP_INPUT, seed=4))
    mains = ls.main_reports()
    assert len(mains) == STEPS // 2
    print(f"{name} {desc} {kw} {delta} {projection}: {ls.summary()}")
    p, s = WORST.get((name, desc), (0.0, 0.0))
    WORST[(name, desc)] = (max(p, ls.worst), max(s, ls.worst_stat))
    p, s = WORST[(name, desc)]
    record("matrix per config", f"{name:7s} {desc}", f"params {p:.2e}  stats {s:.2e}")
    per_opt = [v for (n, _), v in WORST.items() if n == name]
    record("matrix per optimizer", name,
           f"params {max(v[0] for v in per_opt):.2e}  stats {max(v[1] for v in per_opt):.2e}"
           f"  ({len(per_opt)} configs)")
