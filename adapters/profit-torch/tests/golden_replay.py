"""Replay golden trajectories (format ``profit-golden/1``) through any PROFIT optimizer.

The files are those of ``tests/golden`` (float64), ``tests/golden32`` (float32, realized delta)
and ``tests/golden16`` (bfloat16 / float16, with ``delta`` and ``rounding`` fields); their
READMEs give the problem, the error measure and the tolerances used here.

    result = replay(path, make_optimizer)          # dtype: the file's own
    assert result["ok"], result["failures"]

``make_optimizer(params, config)`` gets the parameters ``[w, b]`` (``torch.nn.Parameter`` in the
replay dtype) and the file's ``config`` dict plus ``"delta"``, ``"dtype"`` and ``"rounding"``
fields; ``config_kwargs(config)`` maps it to the keyword arguments of ``ReferencePROFIT`` /
``torch_profit.PROFIT``. Before every call the harness sets ``p.grad``: the least-squares
gradient computed in float64 at the current parameters (widened exactly), rounded once to the
parameter dtype. Where the optimizer exposes a report (``last_report``: a dict, or a method
returning one; or the ``report`` argument), the call's phase, ``projected`` flag(s) and
omega / |delta|^2 / |g|^2 are checked too.

As a script it replays files (or folders) through ``reference.ReferencePROFIT`` and prints the
worst errors:  python golden_replay.py ../../../tests/golden ../../../tests/golden16
"""
import json
import math
import sys
from pathlib import Path

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32,
          "bfloat16": torch.bfloat16, "float16": torch.float16}

# Main-optimizer fields of a golden config that map one to one onto constructor keywords.
_MAIN_FIELDS = ("betas", "eps", "amsgrad", "maximize", "momentum", "dampening", "nesterov",
                "alpha", "centered", "weight_decay")


def load_case(path):
    case = json.loads(Path(path).read_text())
    if case.get("format") != "profit-golden/1":
        raise ValueError(f"{path}: format {case.get('format')!r}, expected 'profit-golden/1'")
    case["_path"] = str(path)
    return case


def case_dtype(case):
    """The element type the file was recorded in (float64 when the field is absent)."""
    return case.get("dtype", "float64")


def case_delta(case):
    """The delta mode the file was recorded with: its field, else realized (golden32 files are
    realized by construction; in float64 both modes agree to ~1e-16)."""
    return case.get("delta", "realized")


def config_kwargs(config):
    """A golden config (plus optional "delta") as constructor keyword arguments:
    ``PROFIT(params, **config_kwargs(config))``."""
    main, ref = dict(config["main"]), dict(config["reference"])
    kw = {"lr": main.pop("lr"), "main": main.pop("kind")}
    for key in _MAIN_FIELDS:
        if key in main:
            kw[key] = tuple(main.pop(key)) if key == "betas" else main.pop(key)
    if main:
        raise ValueError(f"unknown main-optimizer fields {sorted(main)}")
    kw["reference"] = ref.pop("kind")
    kw["ref_lr"] = ref.pop("lr")
    kw["ratio"] = kw["lr"] / kw["ref_lr"] if kw["ref_lr"] else math.inf
    if "betas" in ref:
        ref["betas"] = tuple(ref["betas"])
    # maximize is given to the reference explicitly whenever either side sets it, so that the
    # constructor's default (reference follows the global maximize) cannot change the run.
    if "maximize" in ref or kw.get("maximize"):
        ref["maximize"] = ref.get("maximize", False)
    kw["reference_options"] = ref
    kw["n_ref"] = config["n_ref"]
    kw["projection"] = config.get("projection", "global")
    kw["warmup_steps"] = config.get("warmup_steps", 0)
    if "delta" in config:
        kw["delta"] = config["delta"]
    return kw


def tolerance(case, dtype):
    """{"params": max parameter error, "stats": max relative error of omega, |delta|^2, |g|^2
    (None: not checked)} for replaying `case` in `dtype`, from the READMEs."""
    recorded = case_dtype(case)
    if dtype == recorded == "float64":
        return {"params": 1e-10, "stats": None}
    if dtype == "float32" and recorded == "float32":
        return {"params": 1e-5, "stats": None}
    if dtype == "float32" and recorded == "float64":
        return {"params": 1e-4, "stats": None}
    if dtype == recorded and dtype in ("bfloat16", "float16"):
        if case.get("rounding", "per_op") == "once":
            return {"params": 0.0, "stats": 0.0}
        return {"params": 5e-2, "stats": 0.2} if dtype == "bfloat16" else {"params": 1.5e-2, "stats": 1e-2}
    raise ValueError(f"{case['name']}: no tolerance for a {recorded} file replayed in {dtype}")


def gradients(X, Y, params, rows):
    """Least-squares gradients [grad_w, grad_b] and loss, in float64, at `params` (float64)."""
    x, y = X[rows], Y[rows]
    w, b = params
    r = x @ w + b - y
    m = len(rows)
    return [x.T @ r / m, r.sum(0) / m], (0.5 * (r * r).sum() / m).item()


def param_error(got, expected):
    """max |got - expected| / max(1, max |expected|), the golden README's measure."""
    exp = torch.tensor(expected, dtype=torch.float64)
    scale = max(1.0, exp.abs().max().item()) if exp.numel() else 1.0
    return (got.detach().double().flatten() - exp).abs().max().item() / scale


def _rel(got, expected):
    return abs(got - expected) / max(abs(expected), 1e-300)


def _report_of(opt):
    rep = getattr(opt, "last_report", None)
    return rep() if callable(rep) else rep


def _stat_errors(rep, rec, failures, call):
    """Relative errors of the main call's statistics, and the `projected` agreement."""
    errs = []
    per_tensor = isinstance(rec["projected"], list)
    pairs = [("omega", "omega"), ("delta_norm_sq", "delta_sq"), ("grad_norm_sq", "grad_sq")]
    for fkey, rkey in pairs:
        exp = rec[fkey]  # per-tensor files: a list for omega and |delta|^2, a total for |g|^2
        if isinstance(exp, list) and rep.get("tensor_" + rkey) is not None:
            errs += [_rel(g, e) for g, e in zip(rep["tensor_" + rkey], exp)]
        elif rep.get(rkey) is not None:
            errs.append(_rel(rep[rkey], math.fsum(exp) if isinstance(exp, list) else exp))
    got = rep.get("tensor_projected") if per_tensor else None
    if got is None:
        got = rep.get("projected")
        exp = any(rec["projected"]) if per_tensor and not isinstance(got, list) else rec["projected"]
    else:
        exp = rec["projected"]
    if got is not None and (list(got) if isinstance(got, (list, tuple)) else bool(got)) != exp:
        failures.append(f"call {call}: projected {got}, expected {exp}")
    return max(errs) if errs else None


def replay(path, make_optimizer, dtype=None, delta=None, report=_report_of):
    """Replay one golden file through `make_optimizer`; returns a dict:
    errors (per-call max parameter error), max_error, stat_errors ({call: max relative error
    of omega / |delta|^2 / |g|^2}, main calls with a report), max_stat_error, tolerance,
    failures (list of strings) and ok, plus name, path, dtype, delta and rounding."""
    case = path if isinstance(path, dict) else load_case(path)
    dtype = dtype or case_dtype(case)
    delta = delta or case_delta(case)
    tol = tolerance(case, dtype)
    torch_dtype = DTYPES[dtype]
    prob = case["problem"]
    X = torch.tensor(prob["features"]["data"], dtype=torch.float64).reshape(prob["features"]["shape"])
    Y = torch.tensor(prob["targets"]["data"], dtype=torch.float64).reshape(prob["targets"]["shape"])
    names = [p["name"] for p in prob["params"]]
    params = [torch.nn.Parameter(torch.tensor(p["init"], dtype=torch.float64)
                                 .reshape(p["shape"]).to(torch_dtype)) for p in prob["params"]]
    config = dict(case["config"], delta=delta, dtype=dtype, rounding=case.get("rounding", "per_op"))
    opt = make_optimizer(params, config)

    errors, stat_errors, failures = [], {}, []
    for call, (rows, rec) in enumerate(zip(prob["batches"], case["trajectory"])):
        grads, _ = gradients(X, Y, [p.detach().double() for p in params], rows)
        for p, g in zip(params, grads):
            p.grad = g.to(torch_dtype)
        try:
            opt.step()
        except Exception as e:  # a refused call (e.g. a non-finite gradient) fails the file
            failures.append(f"call {call}: step raised {type(e).__name__}: {e}")
            break
        err = max(param_error(p, rec["params"][n]) for p, n in zip(params, names))
        errors.append(err)
        if not err <= tol["params"]:
            failures.append(f"call {call}: parameter error {err:.3e} > {tol['params']:.1e}")
        rep = report(opt) if report else None
        if rep:
            if rep.get("phase") is not None and rep["phase"] != rec["phase"]:
                failures.append(f"call {call}: phase {rep['phase']}, expected {rec['phase']}")
            if rec["phase"] == "main":
                s = _stat_errors(rep, rec, failures, call)
                if s is not None:
                    stat_errors[call] = s
                    if tol["stats"] is not None and not s <= tol["stats"]:
                        failures.append(f"call {call}: statistics error {s:.3e} > {tol['stats']:.1e}")
    max_stat = max(stat_errors.values()) if stat_errors else None
    return {"name": case["name"], "path": case.get("_path"), "dtype": dtype, "delta": delta,
            "rounding": case.get("rounding"), "errors": errors,
            "max_error": max(errors) if errors else math.inf,
            "stat_errors": stat_errors, "max_stat_error": max_stat, "tolerance": tol,
            "failures": failures, "ok": not failures}


def golden_files(*folders):
    """The *.json files of the given folders, sorted."""
    return [f for d in folders for f in sorted(Path(d).glob("*.json"))]


def _main(argv):
    from reference import ReferencePROFIT

    def make(params, config):
        return ReferencePROFIT(params, **config_kwargs(config), rounding=config["rounding"])

    torch.set_num_threads(1)
    paths = [q for a in argv for q in (golden_files(a) if Path(a).is_dir() else [Path(a)])]
    bad = 0
    for path in paths:
        case = load_case(path)
        modes = ["realized", "accumulated"] if case_dtype(case) == "float64" else [None]
        for mode in modes:
            r = replay(case, make, delta=mode)
            bad += not r["ok"]
            stat = "-" if r["max_stat_error"] is None else f"{r['max_stat_error']:.2e}"
            print(f"{'ok ' if r['ok'] else 'BAD'} {Path(path).name:45s} {r['dtype']:8s} "
                  f"{r['delta']:11s} params {r['max_error']:.2e} stats {stat}"
                  + ("" if r["ok"] else f"  {r['failures'][:3]}"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
