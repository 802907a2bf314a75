#!/usr/bin/env python3
"""Make extra golden trajectories (format `profit-golden/1`) with PyTorch's own optimizers.

PROFIT (ALGORITHM.md, section 1) is written here from the algorithm's description, independently of the Rust code, around
`torch.optim` optimizers (foreach=False) in float64, on the golden README's least-squares
problem. Used for configurations the shared golden cases do not cover (reference optimizers with
state, AMSGrad, centered RMSprop with momentum, n_ref = 3, per-tensor with warm-up, other
shapes). Needs torch (any recent version; these files were made with torch 2.5.1 on CPU):

    python3 scripts/make_golden.py tests/golden/extra
"""
import json
import math
import sys
from pathlib import Path

import torch

torch.set_default_dtype(torch.float64)


def make_opt(cfg, params):
    kind = cfg["kind"]
    kw = {k: v for k, v in cfg.items() if k != "kind"}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "rmsprop": torch.optim.RMSprop}[kind]
    return cls(params, foreach=False, **kw)


def grads_at(X, Y, w, b, rows):
    x, y = X[rows], Y[rows]
    r = x @ w + b - y
    m = len(rows)
    loss = 0.5 * (r * r).sum() / m
    return [x.T @ r / m, r.sum(0) / m], loss.item()


def run(name, config, n, d, k, batch, calls, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    W_true = torch.randn(d, k, generator=g) * 1.5
    Y = X @ W_true + 0.3 * torch.randn(n, k, generator=g) + 0.5
    w = torch.randn(d, k, generator=g) * 0.8
    b = torch.randn(k, generator=g) * 0.8
    params = [w.clone(), b.clone()]
    batches = [torch.randperm(n, generator=g)[:batch].tolist() for _ in range(calls)]
    ref_opt = make_opt(config["reference"], params)
    main_opt = make_opt(config["main"], params)
    n_ref = config["n_ref"]
    warm = config.get("warmup_steps", 0)
    per_tensor = config.get("projection", "global") == "per_tensor"
    traj = []
    anchor = delta = None
    min_cos = math.inf
    for call, rows in enumerate(batches):
        gr, loss = grads_at(X, Y, params[0], params[1], rows)
        rec = {"call": call, "loss": loss}
        if call < warm:
            for p, gg in zip(params, gr):
                p.grad = gg.clone()
            main_opt.step()
            rec["phase"] = "warmup"
        else:
            c = (call - warm) % (n_ref + 1)
            if c == 0:
                anchor = [p.detach().clone() for p in params]
                delta = [torch.zeros_like(p) for p in params]
            if c < n_ref:
                before = [p.detach().clone() for p in params]
                for p, gg in zip(params, gr):
                    p.grad = gg.clone()
                ref_opt.step()
                for dl, p, bf in zip(delta, params, before):
                    dl += p.detach() - bf
                rec["phase"] = "reference"
            else:
                gns = sum((gg * gg).sum().item() for gg in gr)
                if per_tensor:
                    oms = [(dl * gg).sum().item() for dl, gg in zip(delta, gr)]
                    dds = [(dl * dl).sum().item() for dl in delta]
                    proj = [om < 0 for om in oms]
                    used = [gg - (om / dd) * dl if pj else gg
                            for gg, dl, om, dd, pj in zip(gr, delta, oms, dds, proj)]
                    for gg, om, dd in zip(gr, oms, dds):
                        if dd > 0:
                            min_cos = min(min_cos, abs(om) / math.sqrt(dd * (gg * gg).sum().item()))
                    rec.update(grad_norm_sq=gns, omega=oms, delta_norm_sq=dds, projected=proj)
                else:
                    om = sum((dl * gg).sum().item() for dl, gg in zip(delta, gr))
                    dd = sum((dl * dl).sum().item() for dl in delta)
                    pj = om < 0
                    used = [gg - (om / dd) * dl if pj else gg for gg, dl in zip(gr, delta)]
                    if dd > 0:
                        min_cos = min(min_cos, abs(om) / math.sqrt(dd * gns))
                    rec.update(grad_norm_sq=gns, omega=om, delta_norm_sq=dd, projected=pj)
                with torch.no_grad():
                    for p, a in zip(params, anchor):
                        p.copy_(a)
                for p, gg in zip(params, used):
                    p.grad = gg.clone()
                main_opt.step()
                rec["phase"] = "main"
        rec["params"] = {"w": params[0].detach().flatten().tolist(), "b": params[1].detach().tolist()}
        traj.append(rec)
    return {
        "format": "profit-golden/1",
        "name": name,
        "source": f"scripts/make_golden.py, torch {torch.__version__} torch.optim (foreach=False), float64",
        "seed": seed,
        "config": config,
        "problem": {
            "kind": "least_squares",
            "loss": "0.5 * sum((x @ w + b - y)^2) / batch_len over the batch's rows",
            "features": {"shape": [n, d], "data": X.flatten().tolist()},
            "targets": {"shape": [n, k], "data": Y.flatten().tolist()},
            "params": [
                {"name": "w", "shape": [d, k], "init": w.flatten().tolist()},
                {"name": "b", "shape": [k], "init": b.tolist()},
            ],
            "batches": batches,
        },
        "trajectory": traj,
    }, min_cos


CASES = [
    ("x_sgdmom_adamams_nref3", {"n_ref": 3, "reference": {"kind": "sgd", "lr": 0.01, "momentum": 0.9, "dampening": 0.1},
                                "main": {"kind": "adam", "lr": 0.01, "amsgrad": True}}, (64, 5, 3, 8, 32)),
    ("x_adam_sgdnest_warm_pt", {"n_ref": 1, "warmup_steps": 2, "projection": "per_tensor",
                                "reference": {"kind": "adam", "lr": 0.001},
                                "main": {"kind": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}},
     (64, 5, 3, 8, 26)),
    ("x_sgdwd_rmscentmom", {"n_ref": 1, "reference": {"kind": "sgd", "lr": 0.005, "weight_decay": 0.01},
                            "main": {"kind": "rmsprop", "lr": 0.003, "centered": True, "momentum": 0.5, "weight_decay": 0.01}},
     (64, 5, 3, 8, 24)),
    ("x_adamw_ams_nref2_pt", {"n_ref": 2, "projection": "per_tensor", "reference": {"kind": "sgd", "lr": 0.002},
                              "main": {"kind": "adamw", "lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-6, "amsgrad": True}},
     (64, 5, 3, 8, 30)),
    ("x_rms_sgdmomdamp_shape", {"n_ref": 2, "reference": {"kind": "rmsprop", "lr": 0.001, "alpha": 0.9},
                                "main": {"kind": "sgd", "lr": 0.03, "momentum": 0.8, "dampening": 0.3}},
     (50, 7, 2, 10, 27)),
    ("x_adam_lowbeta1", {"n_ref": 1, "warmup_steps": 1, "reference": {"kind": "sgd", "lr": 0.001},
                         "main": {"kind": "adam", "lr": 0.02, "betas": [0.3, 0.9], "weight_decay": 0.05}},
     (40, 4, 4, 6, 25)),
    ("x_rmsmom_noncentered", {"n_ref": 1, "reference": {"kind": "sgd", "lr": 0.004, "momentum": 0.5, "nesterov": True},
                              "main": {"kind": "rmsprop", "lr": 0.002, "alpha": 0.95, "eps": 1e-6, "momentum": 0.3}},
     (64, 3, 1, 16, 24)),
    ("x_maximize", {"n_ref": 2, "reference": {"kind": "sgd", "lr": 0.003, "momentum": 0.5, "maximize": True},
                    "main": {"kind": "adamw", "lr": 0.005, "maximize": True}},
     (64, 5, 3, 8, 24)),
]


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/golden/extra")
    out.mkdir(parents=True, exist_ok=True)
    for name, config, (n, d, k, batch, calls) in CASES:
        for seed in range(1000, 1100):
            case, min_cos = run(name, config, n, d, k, batch, calls, seed)
            if min_cos > 1e-3:  # as the shared cases: the projection decision is robust to rounding
                break
        assert min_cos > 1e-3, name
        (out / f"{name}.json").write_text(json.dumps(case))
        fired = sum(1 for r in case["trajectory"] if r["phase"] == "main" and
                    (any(r["projected"]) if isinstance(r["projected"], list) else r["projected"]))
        mains = sum(1 for r in case["trajectory"] if r["phase"] == "main")
        print(f"{name}: seed {case['seed']}, {mains} main calls, projection fired at {fired}, min |cos| {min_cos:.2e}")


if __name__ == "__main__":
    main()
