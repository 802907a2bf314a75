#!/usr/bin/env python3
"""Make extra golden trajectories (format `profit-golden/1`) with PyTorch's own optimizers.

PROFIT (ALGORITHM.md, section 1) is written here from the algorithm's description, independently of the Rust code, around
`torch.optim` optimizers (foreach=False) in float64, on the golden README's least-squares
problem. Used for configurations the shared golden cases do not cover (reference optimizers with
state, AMSGrad, centered RMSprop with momentum, n_ref = 3, per-tensor with warm-up, other
shapes). Needs torch (any recent version; these files were made with torch 2.5.1 on CPU):

    python3 scripts/make_golden.py tests/golden/extra

With `--dtype bfloat16` or `--dtype float16` it makes the 16-bit cases of `tests/golden16/`
instead (format `profit-golden/1` plus `"dtype"`, `"delta"` and `"rounding"` fields; that
folder's README.md says more; made with torch 2.15.0 on CPU): parameters, gradients and optimizer
state in that dtype as `torch.optim` keeps them (foreach=False, every op rounded to the dtype as
torch does); the problem data in float64; each gradient computed in float64 from the 16-bit
parameters (widened exactly) and rounded to the dtype once. `--delta accumulated` (default)
keeps PROFIT's delta as a 16-bit buffer to which each reference step adds the update
torch.optim.SGD applied (`delta.add_(d_p, alpha=-lr)`, the same op as on the parameter; SGD
reference only); `--delta realized` takes `delta = theta' - theta_ref`, the 16-bit difference
of the stored weights. `--rounding once` runs the same torch ops in float32 and rounds every
stored value (parameters, optimizer state, delta) to the dtype after each step: this library's
16-bit semantics, with PyTorch's formulas.

    for d in accumulated realized; do for r in per_op once; do
        python3 scripts/make_golden.py tests/golden16 --dtype bfloat16 --delta $d --rounding $r
        python3 scripts/make_golden.py tests/golden16 --dtype float16 --delta $d --rounding $r
    done; done

With `--dtype float32` it makes float32 cases of the kind of `tests/golden32/` (`"dtype":
"float32"`, realized delta only; the configurations of CASES32): `run16` in float32, that is
torch.optim on float32 parameters, each gradient computed in float64 from the float32
parameters and rounded once to float32, `delta = theta' - theta_ref` in float32, `omega`,
`|delta|^2` and `|g|^2` as float64 sums, the projected gradient computed in float64 and rounded
to float32; no `"delta"` or `"rounding"` field. The shipped `tests/golden32/` files come from the
shared generator (another problem draw), not from this mode:

    python3 scripts/make_golden.py OUT --dtype float32

(The float64 case list, CASES, dropped by mistake when the 16-bit mode was added, is restored as
it was when the `x_*.json` files were made.)
"""
import argparse
import json
import math
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


def make_problem(n, d, k, batch, calls, seed):
    """Features, targets, initial w and b (float64) and the batches of one case."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    W_true = torch.randn(d, k, generator=g) * 1.5
    Y = X @ W_true + 0.3 * torch.randn(n, k, generator=g) + 0.5
    w = torch.randn(d, k, generator=g) * 0.8
    b = torch.randn(k, generator=g) * 0.8
    batches = [torch.randperm(n, generator=g)[:batch].tolist() for _ in range(calls)]
    return X, Y, w, b, batches


def problem_json(X, Y, w, b, batches):
    n, d = X.shape
    k = Y.shape[1]
    return {
        "kind": "least_squares",
        "loss": "0.5 * sum((x @ w + b - y)^2) / batch_len over the batch's rows",
        "features": {"shape": [n, d], "data": X.flatten().tolist()},
        "targets": {"shape": [n, k], "data": Y.flatten().tolist()},
        "params": [
            {"name": "w", "shape": [d, k], "init": w.double().flatten().tolist()},
            {"name": "b", "shape": [k], "init": b.double().tolist()},
        ],
        "batches": batches,
    }


def run(name, config, n, d, k, batch, calls, seed):
    X, Y, w, b, batches = make_problem(n, d, k, batch, calls, seed)
    params = [w.clone(), b.clone()]
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
        "problem": problem_json(X, Y, w, b, batches),
        "trajectory": traj,
    }, min_cos


def grads16(X, Y, params, rows, dtype):
    """The least-squares gradients in float64 at the 16-bit parameters (widened exactly),
    each rounded once to `dtype`; the loss in float64."""
    x, y = X[rows], Y[rows]
    w, b = (p.detach().double() for p in params)
    r = x @ w + b - y
    m = len(rows)
    loss = 0.5 * (r * r).sum() / m
    return [(x.T @ r / m).to(dtype), (r.sum(0) / m).to(dtype)], loss.item()


def sgd_direction(cfg, state, p_before, grad):
    """The `d_p` torch.optim.SGD (foreach=False) has just applied as `p.add_(d_p, alpha=-lr)`,
    recomputed with the same ops (in the dtype torch ran in) from the parameter before the step, the gradient and
    the momentum buffer the step left."""
    d_p = -grad if cfg.get("maximize", False) else grad
    if cfg.get("weight_decay", 0.0) != 0.0:
        d_p = d_p.add(p_before, alpha=cfg["weight_decay"])
    if cfg.get("momentum", 0.0) != 0.0:
        buf = state["momentum_buffer"]
        d_p = d_p.add(buf, alpha=cfg["momentum"]) if cfg.get("nesterov", False) else buf
    return d_p


def stat(a, b):
    """<a, b> in float64 over 16-bit tensors."""
    return (a.double() * b.double()).sum().item()


def round_state(opts, dtype):
    """Round every stored optimizer-state tensor (not the step counts) to `dtype`, in place."""
    for opt in opts:
        for st in opt.state.values():
            for key, v in st.items():
                if key != "step" and torch.is_tensor(v):
                    v.copy_(v.to(dtype))


def run16(name, config, n, d, k, batch, calls, seed, dtype, delta_mode, rounding="per_op"):
    """One PROFIT run with parameters, gradients and optimizer state in `dtype` (see the
    module docstring). `rounding="once"` (a diagnostic, see --rounding) runs the same
    torch.optim steps in float32 on float32 copies of the 16-bit values and rounds every stored
    value (parameters, optimizer state, delta) to `dtype` after each step."""
    once = rounding == "once"
    cd = torch.float32 if once else dtype  # the dtype torch computes in
    X, Y, w, b, batches = make_problem(n, d, k, batch, calls, seed)
    params = [w.to(dtype).to(cd), b.to(dtype).to(cd)]
    ref_cfg = config["reference"]
    if delta_mode == "accumulated" and ref_cfg["kind"] != "sgd":
        raise SystemExit(f"{name}: the accumulated 16-bit delta is made for an SGD reference only")
    ref_opt = make_opt(ref_cfg, params)
    main_opt = make_opt(config["main"], params)
    n_ref = config["n_ref"]
    warm = config.get("warmup_steps", 0)
    per_tensor = config.get("projection", "global") == "per_tensor"

    def stored(t):
        """`t` as stored: rounded to `dtype` (a no-op when torch computes in `dtype`)."""
        return t.to(dtype).to(cd)

    def rounded_step(opt):
        opt.step()
        if once:
            with torch.no_grad():
                for p in params:
                    p.copy_(stored(p))
            round_state([ref_opt, main_opt], dtype)

    def project(g, dl, coef):
        """`g - coef * delta` in float64; per op: rounded to `dtype` (torch's float16
        `g.add(delta, alpha=-coef)` refuses |coef| > 65504, as at ratios >= 1e4); once: kept in
        float32, as a fused pass keeps it."""
        return (g.double() - coef * dl.double()).to(cd)

    traj = []
    anchor = delta = None
    min_cos = math.inf
    for call, rows in enumerate(batches):
        gr, loss = grads16(X, Y, params, rows, dtype)
        gr = [gg.to(cd) for gg in gr]
        rec = {"call": call, "loss": loss}
        if call < warm:
            for p, gg in zip(params, gr):
                p.grad = gg.clone()
            rounded_step(main_opt)
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
                if delta_mode == "accumulated":
                    for dl, p, bf, gg in zip(delta, params, before, gr):
                        d_p = sgd_direction(ref_cfg, ref_opt.state[p], bf, gg)
                        # The recomputed update is the one torch applied, bit for bit.
                        want = bf.add(d_p, alpha=-ref_cfg["lr"])
                        assert torch.equal(want, p.detach()) or not torch.isfinite(want).all(), name
                        dl.add_(d_p, alpha=-ref_cfg["lr"])
                        dl.copy_(stored(dl))
                if once:
                    with torch.no_grad():
                        for p in params:
                            p.copy_(stored(p))
                    round_state([ref_opt, main_opt], dtype)
                rec["phase"] = "reference"
            else:
                if delta_mode == "realized":
                    delta = [stored(p.detach() - a) for p, a in zip(params, anchor)]
                gns = sum(stat(gg, gg) for gg in gr)
                if per_tensor:
                    oms = [stat(dl, gg) for dl, gg in zip(delta, gr)]
                    dds = [stat(dl, dl) for dl in delta]
                    proj = [om < 0 for om in oms]
                    used = [project(gg, dl, om / dd) if pj else gg
                            for gg, dl, om, dd, pj in zip(gr, delta, oms, dds, proj)]
                    for gg, om, dd in zip(gr, oms, dds):
                        if dd > 0:
                            min_cos = min(min_cos, abs(om) / math.sqrt(dd * stat(gg, gg)))
                    rec.update(grad_norm_sq=gns, omega=oms, delta_norm_sq=dds, projected=proj)
                else:
                    om = sum(stat(dl, gg) for dl, gg in zip(delta, gr))
                    dd = sum(stat(dl, dl) for dl in delta)
                    pj = om < 0
                    used = [project(gg, dl, om / dd) if pj else gg for gg, dl in zip(gr, delta)]
                    # A zero delta (every update rounded away) is a certain decision, not a
                    # fragile one.
                    if dd > 0:
                        min_cos = min(min_cos, abs(om) / math.sqrt(dd * gns))
                    rec.update(grad_norm_sq=gns, omega=om, delta_norm_sq=dd, projected=pj)
                with torch.no_grad():
                    for p, a in zip(params, anchor):
                        p.copy_(a)
                for p, gg in zip(params, used):
                    p.grad = gg.clone()
                rounded_step(main_opt)
                rec["phase"] = "main"
        if not all(torch.isfinite(p).all() for p in params):
            # float16 Adam / RMSprop can overflow (a second moment that underflows to zero
            # while eps = 1e-8 rounds away): not a case to keep.
            return None, 0.0
        rec["params"] = {"w": params[0].detach().double().flatten().tolist(),
                         "b": params[1].detach().double().tolist()}
        traj.append(rec)
    flags = f"--dtype {DTYPE_NAMES[dtype]} --delta {delta_mode}" + (" --rounding once" if once else "")
    case = {
        "format": "profit-golden/1",
        "name": name,
        "dtype": DTYPE_NAMES[dtype],
        "delta": delta_mode,
        "rounding": rounding,
        "source": f"scripts/make_golden.py {flags}, torch {torch.__version__} torch.optim (foreach=False), CPU",
        "seed": seed,
        "config": config,
        "problem": problem_json(X, Y, w.to(dtype), b.to(dtype), batches),
        "trajectory": traj,
    }
    if dtype == torch.float32:
        # tests/golden32's format: `"dtype": "float32"` alone means the realized delta.
        del case["delta"], case["rounding"]
    return case, min_cos


DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


# float64 cases (tests/golden/x_*.json).
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


# 16-bit cases (tests/golden16/): SGD reference (the paper's), the main optimizers, per-tensor
# projection and warm-up; ratios lr_main / lr_ref from 10 to 1e3.
CASES16 = [
    ("sgd_adam_nref1", {"n_ref": 1, "reference": {"kind": "sgd", "lr": 0.001},
                        "main": {"kind": "adam", "lr": 0.01}}, (64, 5, 3, 8, 24)),
    ("sgd_adam_ratio1e3", {"n_ref": 1, "reference": {"kind": "sgd", "lr": 1e-5},
                           "main": {"kind": "adam", "lr": 0.01}}, (64, 5, 3, 8, 24)),
    ("sgd_adamw_nref2_wd", {"n_ref": 2, "reference": {"kind": "sgd", "lr": 0.001},
                            "main": {"kind": "adamw", "lr": 0.01, "weight_decay": 0.05}}, (64, 5, 3, 8, 36)),
    ("sgd_rmsprop_nref1", {"n_ref": 1, "reference": {"kind": "sgd", "lr": 0.0005},
                           "main": {"kind": "rmsprop", "lr": 0.005}}, (64, 5, 3, 8, 24)),
    ("sgd_adam_pertensor", {"n_ref": 1, "projection": "per_tensor", "reference": {"kind": "sgd", "lr": 0.01},
                            "main": {"kind": "adam", "lr": 0.01}}, (64, 5, 3, 8, 24)),
    ("sgdmom_sgdnest_warmup", {"n_ref": 1, "warmup_steps": 3,
                               "reference": {"kind": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.01},
                               "main": {"kind": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": True}},
     (64, 5, 3, 8, 27)),
]

# float32 cases (`--dtype float32`, realized delta): the configurations of tests/golden32/ (those
# files come from the shared generator, whose problem draw differs: these are not them).
CASES32 = [
    ("sgd_adam_ratio10", {"n_ref": 1, "reference": {"kind": "sgd", "lr": 0.001},
                          "main": {"kind": "adam", "lr": 0.01}}, (64, 5, 3, 8, 24)),
    ("sgd_adam_ratio1e4", {"n_ref": 1, "reference": {"kind": "sgd", "lr": 1e-6},
                           "main": {"kind": "adam", "lr": 0.01}}, (64, 5, 3, 8, 24)),
    ("sgd_rmsprop_ratio1e3", {"n_ref": 1, "reference": {"kind": "sgd", "lr": 5e-6},
                              "main": {"kind": "rmsprop", "lr": 0.005}}, (64, 5, 3, 8, 24)),
]

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default="tests/golden/extra", help="output folder")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    ap.add_argument("--delta", choices=["accumulated", "realized"], default=None,
                    help="16-bit runs only: how PROFIT's delta is formed (default accumulated; "
                         "float64 runs sum the reference steps' differences, equal to both to "
                         "~1e-16; float32 runs take the realized delta only)")
    ap.add_argument("--rounding", choices=["per_op", "once"], default="per_op",
                    help="16-bit runs only: per_op (default) as torch.optim in that dtype rounds "
                         "after every op; once: the same ops in float32, every stored value "
                         "rounded once per step (a diagnostic: this library's 16-bit semantics)")
    ap.add_argument("--min-cos", type=float, default=None,
                    help="draw seeds until |cos(delta, g)| exceeds this at every main call "
                         "(default 1e-3 in float64, 2e-2 in float32 and 16 bits)")
    args = ap.parse_args()
    if args.dtype == "float32":
        if args.delta == "accumulated" or args.rounding != "per_op":
            ap.error("--dtype float32 makes realized-delta files only (tests/golden32/)")
        args.delta = "realized"
    elif args.delta is None:
        args.delta = "accumulated"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = DTYPES[args.dtype]
    wide = dtype == torch.float64
    min_cos_wanted = args.min_cos if args.min_cos is not None else (1e-3 if wide else 2e-2)
    cases = CASES if wide else CASES32 if dtype == torch.float32 else CASES16
    for name, config, (n, d, k, batch, calls) in cases:
        for seed in range(1000, 1100):
            if wide:
                case, min_cos = run(name, config, n, d, k, batch, calls, seed)
            else:
                case, min_cos = run16(name, config, n, d, k, batch, calls, seed, dtype, args.delta, args.rounding)
            if min_cos > min_cos_wanted:  # as the shared cases: the projection decision is robust to rounding
                break
        assert case is not None and min_cos > min_cos_wanted, name
        if not wide:
            rejected = seed - 1000
            if rejected:
                print(f"{name}: {rejected} seed(s) rejected (projection decision near |cos| {min_cos_wanted} or non-finite)")
        short = {"float64": "", "float32": "f32_", "bfloat16": "bf16_", "float16": "f16_"}[args.dtype]
        once = "once_" if args.rounding == "once" else ""
        fname = name if wide else f"{short}{name}" if dtype == torch.float32 else f"{short}{once}{args.delta[:3]}_{name}"
        (out / f"{fname}.json").write_text(json.dumps(case))
        fired = sum(1 for r in case["trajectory"] if r["phase"] == "main" and
                    (any(r["projected"]) if isinstance(r["projected"], list) else r["projected"]))
        mains = sum(1 for r in case["trajectory"] if r["phase"] == "main")
        print(f"{fname}: seed {case['seed']}, {mains} main calls, projection fired at {fired}, min |cos| {min_cos:.2e}")


if __name__ == "__main__":
    main()
