"""Helpers of the torch_profit suite: ``torch_profit.PROFIT`` and the oracle
``reference.ReferencePROFIT`` stepping identical copies of a real ``nn.Module`` in lockstep
(gradients from autograd, each model's own), compared after every call through the public API
only: parameters (the golden README's error measure), phase, the projection decisions and the
main-call statistics.
"""
import copy
import math
from collections import defaultdict

import torch
from torch import nn

import torch_profit
from reference import ReferencePROFIT

# Measured worst errors, printed at the end of the run by conftest.py: section -> key -> line.
RESULTS = defaultdict(dict)


def record(section, key, line):
    RESULTS[section][key] = line
    print(f"[{section}] {key}: {line}")


# -- reports -----------------------------------------------------------------------------------

def profit_report(opt):
    """``opt.last_report`` (and ``tensor_reports()`` at main calls) as the dict the golden
    harness and the oracle use: phase, clip_factor, omega, delta_sq, grad_sq, projected and the
    per-tensor lists ``tensor_omega``, ``tensor_delta_sq``, ``tensor_grad_sq``,
    ``tensor_projected`` (one entry per trainable parameter)."""
    r = opt.last_report
    if r is None:
        return None
    d = {"call": r.call, "phase": r.phase, "clip_factor": r.grad_scale}
    if r.main is not None:
        m = r.main
        d.update(omega=m.omega, delta_sq=m.delta_sq, grad_sq=m.grad_sq, projected=m.projected,
                 cos=m.cos, removed=m.removed)
        tr = opt.tensor_reports()
        d.update(tensor_omega=[t["omega"] for t in tr], tensor_delta_sq=[t["delta_sq"] for t in tr],
                 tensor_grad_sq=[t["grad_sq"] for t in tr],
                 tensor_projected=[t["projected"] for t in tr])
    return d


def param_error(got, expected):
    """max |got - expected| / max(1, max |expected|) (the golden README's measure)."""
    got, expected = got.detach().double(), expected.detach().double()
    if expected.numel() == 0:
        return 0.0
    scale = max(1.0, expected.abs().max().item())
    return (got - expected).abs().max().item() / scale


def rel(a, b):
    if a == b:
        return 0.0
    return abs(a - b) / abs(b) if b != 0 else math.inf


def omega_error(o_a, o_b, dsq, gsq):
    """|omega_a - omega_b| relative to |delta| |g| (an error of cos(delta, g)): omega itself
    may be near zero."""
    if o_a == o_b:
        return 0.0
    scale = math.sqrt(dsq * gsq)
    return abs(o_a - o_b) / scale if scale > 0 else math.inf


def stat_errors(ra, rb, trainable_slots=None):
    """Max relative error of (omega, |delta|^2, |g|^2), totals and per tensor where the oracle
    reports them, and the list of decision mismatches (strings)."""
    bad = []
    errs = [rel(ra["delta_sq"], rb["delta_sq"]), rel(ra["grad_sq"], rb["grad_sq"]),
            omega_error(ra["omega"], rb["omega"], rb["delta_sq"], rb["grad_sq"])]
    if bool(ra["projected"]) != bool(rb["projected"]):
        bad.append(f"projected {ra['projected']} vs oracle {rb['projected']}")
    if rb.get("tensor_omega") is not None:
        slots = trainable_slots if trainable_slots is not None else range(len(rb["tensor_omega"]))
        if len(ra["tensor_omega"]) != len(slots):
            bad.append(f"{len(ra['tensor_omega'])} tensor reports for {len(slots)} trainable tensors")
        for k, i in enumerate(slots):
            if rb["tensor_omega"][i] is None:  # no gradient at this call: sits out
                if ra["tensor_projected"][k] or ra["tensor_grad_sq"][k] != 0:
                    bad.append(f"tensor {i} without gradient reported {ra['tensor_projected'][k]}, "
                               f"|g|^2 {ra['tensor_grad_sq'][k]}")
                continue
            d, g = rb["tensor_delta_sq"][i], rb["tensor_grad_sq"][i]
            errs += [rel(ra["tensor_delta_sq"][k], d), rel(ra["tensor_grad_sq"][k], g),
                     omega_error(ra["tensor_omega"][k], rb["tensor_omega"][i], d, g)]
            if bool(ra["tensor_projected"][k]) != bool(rb["tensor_projected"][i]):
                bad.append(f"tensor {i} projected {ra['tensor_projected'][k]} vs oracle "
                           f"{rb['tensor_projected'][i]}")
    return max(errs), bad


# -- models and data ---------------------------------------------------------------------------

def mlp(seed=0, d_in=6, hidden=12, d_out=3):
    """float64 (``.to(dtype)`` for others)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.Tanh(),
                         nn.Linear(hidden, d_out)).double()


def cnn(seed=0, d_out=3):
    """Input [batch, 1, 8, 8]; float64."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, d_out)).double()


MLP_INPUT = (6,)
CNN_INPUT = (1, 8, 8)


def batches(n, input_shape, d_out=3, batch=8, seed=1, dtype=torch.float64):
    """n (x, y) pairs, drawn in float64 and rounded once to `dtype`."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn((batch, *input_shape), generator=gen, dtype=torch.float64)
        y = torch.randn((batch, d_out), generator=gen, dtype=torch.float64)
        out.append((x.to(dtype), y.to(dtype)))
    return out


def mse(out, y):
    return ((out - y) ** 2).mean()


# -- lockstep ----------------------------------------------------------------------------------

TOL = {  # parameters (golden measure), statistics (relative)
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-3),
    torch.bfloat16: (0.0, 0.0),
    torch.float16: (0.0, 0.0),
}

PACKAGE_ONLY = ("restore",)
ORACLE_ONLY = ("rounding",)


class Lockstep:
    """PROFIT over model `a` and ReferencePROFIT over `b`, a copy; `groups(model)` gives the
    parameter groups (default: ``model.parameters()``)."""

    def __init__(self, model, dtype=torch.float64, groups=None, rounding="once", tol=None,
                 oracle_groups=None, **kwargs):
        self.a = copy.deepcopy(model).to(dtype)
        self.b = copy.deepcopy(self.a)
        self.dtype = dtype
        groups = groups or (lambda m: m.parameters())
        pk = {k: v for k, v in kwargs.items() if k not in ORACLE_ONLY}
        ok = {k: copy.deepcopy(v) for k, v in kwargs.items() if k not in PACKAGE_ONLY}
        self.opt = torch_profit.PROFIT(groups(self.a), **pk)
        self.ref = ReferencePROFIT((oracle_groups or groups)(self.b), rounding=rounding, **ok)
        self.tol = tol or TOL[dtype]
        self.worst = 0.0
        self.worst_stat = 0.0
        self.reports = []  # (package report, oracle report) per call
        self.trainable = [i for i, p in enumerate(self.b_params()) if p.requires_grad]

    def a_params(self):
        return [p for g in self.opt.param_groups for p in g["params"]]

    def b_params(self):
        return [p for g in self.ref.param_groups for p in g["params"]]

    def backward(self, x, y, loss_fn=mse):
        for m in (self.a, self.b):
            m.zero_grad(set_to_none=True)
            loss_fn(m(x), y).backward()

    def step(self, x=None, y=None, edit=None, loss_fn=mse):
        """One call on both: gradients at (x, y) (skipped when x is None: the caller set them),
        `edit(params, call)` may change them (the same edit on both; `params` in the module's
        order), then compare."""
        if x is not None:
            self.backward(x, y, loss_fn)
        if edit is not None:
            call = len(self.reports)
            edit(list(self.a.parameters()), call)
            edit(list(self.b.parameters()), call)
        self.opt.step()
        self.ref.step()
        return self.compare()

    def compare(self):
        ra, rb = profit_report(self.opt), dict(self.ref.last_report)
        call = len(self.reports)
        self.reports.append((ra, rb))
        where = f"call {call} ({rb['phase']})"
        assert ra["phase"] == rb["phase"], f"{where}: phase {ra['phase']} vs oracle {rb['phase']}"
        assert ra["call"] == rb["call"], f"{where}: call index {ra['call']} vs oracle {rb['call']}"
        err = max(param_error(p, q) for p, q in zip(self.a.parameters(), self.b.parameters()))
        self.worst = max(self.worst, err)
        assert err <= self.tol[0], f"{where}: parameter error {err:.3e} > {self.tol[0]:.1e}"
        serr = 0.0 if rb["phase"] == "skipped" else rel(ra["clip_factor"], rb["clip_factor"])
        if rb["phase"] == "main":
            s, bad = stat_errors(ra, rb, self.trainable)
            assert not bad, f"{where}: {bad}"
            serr = max(serr, s)
        self.worst_stat = max(self.worst_stat, serr)
        assert serr <= self.tol[1], f"{where}: statistics error {serr:.3e} > {self.tol[1]:.1e}"
        return ra, rb

    def run(self, data, edit=None, loss_fn=mse):
        for x, y in data:
            self.step(x, y, edit=edit, loss_fn=loss_fn)
        return self

    def main_reports(self):
        return [ra for ra, _ in self.reports if ra["phase"] == "main"]

    def summary(self):
        mains = self.main_reports()
        n_proj = sum(bool(r["projected"]) for r in mains)
        return (f"params {self.worst:.2e}  stats {self.worst_stat:.2e}  "
                f"main calls {len(mains)} (projected {n_proj})")
