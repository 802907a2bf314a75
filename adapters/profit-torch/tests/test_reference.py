"""The PyTorch reference (reference.py) against the golden files, and its torch-specific rules.

Golden folders: tests/golden (float64, both delta modes; also replayed in float32 at the README's
float32 tolerance), tests/golden32 (float32, realized delta), tests/golden16 (16-bit, the file's
delta mode and rounding), plus every file of $PROFIT_GOLDEN_DIR when set.
"""
import copy
import math
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_replay import (case_dtype, config_kwargs, golden_files, load_case,  # noqa: E402
                           replay)
from reference import NonFiniteGradientError, ReferencePROFIT  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[3]
GOLDEN64 = golden_files(REPO / "tests" / "golden")
GOLDEN32 = golden_files(REPO / "tests" / "golden32")
GOLDEN16 = golden_files(REPO / "tests" / "golden16")
EXTRA = golden_files(os.environ["PROFIT_GOLDEN_DIR"]) if os.environ.get("PROFIT_GOLDEN_DIR") else []


def make_reference(params, config):
    return ReferencePROFIT(params, **config_kwargs(config), rounding=config["rounding"])


def check(path, **kw):
    r = replay(path, make_reference, **kw)
    assert r["ok"], f"{r['name']} ({r['dtype']}, {r['delta']}): {r['failures'][:5]}"
    return r


def ids(files):
    return [f.name for f in files]


def test_golden_folders_present():
    assert len(GOLDEN64) >= 14 and len(GOLDEN32) >= 3 and len(GOLDEN16) >= 48


@pytest.mark.parametrize("delta", ["realized", "accumulated"])
@pytest.mark.parametrize("path", GOLDEN64, ids=ids(GOLDEN64))
def test_golden64(path, delta):
    check(path, delta=delta)


@pytest.mark.parametrize("path", GOLDEN64, ids=ids(GOLDEN64))
def test_golden64_in_float32(path):
    # The golden README's float32 tolerance (1e-4), realized delta.
    check(path, dtype="float32", delta="realized")


@pytest.mark.parametrize("path", GOLDEN32, ids=ids(GOLDEN32))
def test_golden32(path):
    check(path)


def test_golden32_tells_delta_modes_apart():
    # README: the accumulated delta misses the ratio >= 1e3 files; ratio 10 is a control.
    for path in GOLDEN32:
        r = replay(path, make_reference, delta="accumulated")
        assert r["ok"] == ("ratio10" in path.name), (path.name, r["max_error"])


@pytest.mark.parametrize("path", GOLDEN16, ids=ids(GOLDEN16))
def test_golden16(path):
    r = check(path)
    if r["rounding"] == "once":
        assert r["max_error"] == 0 and r["max_stat_error"] == 0


def test_golden16_rounding_semantics():
    # README (golden16): the library's "once" semantics stays within the per-op tolerances of
    # torch's per-op files, while the "once" files are bitwise and fail under per-op rounding.
    for path in GOLDEN16:
        case = load_case(path)
        other = {"once": "per_op", "per_op": "once"}[case["rounding"]]
        r = replay(case, lambda params, config: ReferencePROFIT(
            params, **config_kwargs(config), rounding=other))
        assert r["ok"] == (other == "once"), (path.name, r["max_error"])


@pytest.mark.skipif(not EXTRA, reason="PROFIT_GOLDEN_DIR not set")
@pytest.mark.parametrize("path", EXTRA, ids=ids(EXTRA))
def test_golden_extra_dir(path):
    case = load_case(path)
    for delta in (["realized", "accumulated"] if case_dtype(case) == "float64" else [None]):
        check(case, delta=delta)


def test_config_kwargs_mapping():
    config = {"n_ref": 2, "projection": "per_tensor", "warmup_steps": 1,
              "reference": {"kind": "sgd", "lr": 0.003, "momentum": 0.5},
              "main": {"kind": "adamw", "lr": 0.006, "betas": [0.8, 0.99], "maximize": True},
              "delta": "accumulated"}
    assert config_kwargs(config) == {
        "lr": 0.006, "main": "adamw", "betas": (0.8, 0.99), "maximize": True,
        "reference": "sgd", "ref_lr": 0.003, "ratio": 0.006 / 0.003,
        "reference_options": {"momentum": 0.5, "maximize": False},
        "n_ref": 2, "projection": "per_tensor", "warmup_steps": 1, "delta": "accumulated"}


# -- torch-specific rules ---------------------------------------------------------------------

def leaf(*values):
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def grad(*values):
    return torch.tensor(values, dtype=torch.float64)


def feed(opt, params, grads):
    """One call with the given gradients (None: missing)."""
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()
    opt.step()
    return opt.last_report


def snapshot(opt, params):
    return ([p.detach().clone() for p in params], copy.deepcopy(opt.main_optimizer.state_dict()),
            copy.deepcopy(opt.reference_optimizer.state_dict()), opt.calls)


def assert_same_snapshot(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    assert str(a[1]) == str(b[1]) and str(a[2]) == str(b[2]) and a[3] == b[3]


def test_phases_warmup_and_cycles():
    p = leaf(1.0, 2.0)
    opt = ReferencePROFIT([p], lr=0.01, main="sgd", n_ref=2, warmup_steps=2)
    phases = [feed(opt, [p], [grad(0.1, 0.2)])["phase"] for _ in range(8)]
    assert phases == ["warmup", "warmup", "reference", "reference", "main",
                      "reference", "reference", "main"]
    assert opt.calls == 8


def test_hand_computed_projection():
    # theta0 = (1, 1); reference SGD lr 0.1 with g0 = (1, 0): theta' = (0.9, 1), delta = (-0.1, 0).
    # Main g1 = (1, 1): omega = -0.1 < 0, |delta|^2 = 0.01, g1 - (omega/|delta|^2) delta = (0, 1);
    # restored and stepped by SGD lr 1: theta = (1, 0).
    p = leaf(1.0, 1.0)
    opt = ReferencePROFIT([p], lr=1.0, main="sgd", ratio=10.0)
    assert feed(opt, [p], [grad(1.0, 0.0)])["phase"] == "reference"
    assert torch.allclose(p.detach(), grad(0.9, 1.0), rtol=0, atol=1e-15)
    rep = feed(opt, [p], [grad(1.0, 1.0)])
    assert rep["phase"] == "main" and rep["projected"]
    assert math.isclose(rep["omega"], -0.1, rel_tol=1e-14)
    assert math.isclose(rep["delta_sq"], 0.01, rel_tol=1e-14) and rep["grad_sq"] == 2.0
    assert torch.allclose(p.detach(), grad(1.0, 0.0), rtol=0, atol=1e-14)
    assert opt.projected_calls == 1
    # omega >= 0: no projection, the gradient reaches the main optimizer unchanged.
    feed(opt, [p], [grad(1.0, 0.0)])
    rep = feed(opt, [p], [grad(-1.0, 0.0)])
    assert not rep["projected"] and torch.equal(p.detach(), grad(2.0, 0.0))


def test_missing_gradient_at_reference_and_main_is_restored():
    # b has a gradient at the first reference call only: it takes that reference step (and its
    # momentum buffer), sits out the second (buffer unchanged) and the main call, where it is
    # restored to its anchor. a runs exactly as if b did not exist.
    a, b = leaf(1.0, -2.0, 0.5), leaf(0.3, 0.7)
    kw = dict(lr=0.01, main="adam", ratio=100.0, n_ref=2, reference_options={"momentum": 0.9})
    opt = ReferencePROFIT([a, b], **kw)
    a_alone = leaf(1.0, -2.0, 0.5)
    solo = ReferencePROFIT([a_alone], **kw)
    ga = [grad(0.2, -0.1, 0.4), grad(0.3, 0.1, -0.2), grad(-0.5, 0.2, 0.1)]
    b0 = b.detach().clone()

    feed(opt, [a, b], [ga[0], grad(1.0, -1.0)])
    feed(solo, [a_alone], [ga[0]])
    assert torch.equal(b.detach(), b0 - 1e-4 * grad(1.0, -1.0))
    buf = opt.reference_optimizer.state[b]["momentum_buffer"].clone()
    feed(opt, [a, b], [ga[1], None])
    feed(solo, [a_alone], [ga[1]])
    assert torch.equal(opt.reference_optimizer.state[b]["momentum_buffer"], buf)
    assert not torch.equal(b.detach(), b0)
    rep = feed(opt, [a, b], [ga[2], None])
    rep_solo = feed(solo, [a_alone], [ga[2]])
    assert rep["phase"] == "main"
    assert torch.equal(b.detach(), b0)  # restored, not stepped
    assert b not in opt.main_optimizer.state
    assert torch.equal(a.detach(), a_alone.detach())
    for key in ("omega", "delta_sq", "grad_sq", "projected"):
        assert rep[key] == rep_solo[key]


def test_gradient_only_at_main_call():
    # b sits out the reference call: its delta is 0, it adds |g_b|^2 only, and the main
    # optimizer steps it with its raw gradient (Adam's first step, its own step count 1).
    a, b = leaf(1.0, 2.0), leaf(-1.0)
    opt = ReferencePROFIT([a, b], lr=0.01, main="adam", ratio=10.0)
    feed(opt, [a, b], [grad(0.5, 0.5), None])
    rep = feed(opt, [a, b], [grad(0.4, 0.3), grad(2.0)])
    assert rep["projected"]  # omega over a only: delta_a = -lr_ref * (0.5, 0.5), negative
    assert math.isclose(rep["grad_sq"], 0.4 ** 2 + 0.3 ** 2 + 4.0, rel_tol=1e-15)
    twin = leaf(-1.0)
    twin.grad = grad(2.0)
    torch.optim.Adam([twin], lr=0.01, foreach=False).step()
    assert torch.equal(b.detach(), twin.detach())
    assert opt.main_optimizer.state[b]["step"].item() == 1
    # The next cycle with b missing at its main call: b's step count stays 1.
    feed(opt, [a, b], [grad(0.1, 0.1), grad(1.0)])
    feed(opt, [a, b], [grad(0.1, 0.1), None])
    assert opt.main_optimizer.state[b]["step"].item() == 1
    assert opt.main_optimizer.state[a]["step"].item() == 2


def test_missing_gradient_at_warmup():
    a, b = leaf(1.0), leaf(2.0)
    opt = ReferencePROFIT([a, b], lr=0.1, main="sgd", warmup_steps=1)
    assert feed(opt, [a, b], [grad(1.0), None])["phase"] == "warmup"
    assert torch.equal(b.detach(), grad(2.0)) and torch.equal(a.detach(), grad(0.9))


@pytest.mark.parametrize("delta", ["realized", "accumulated"])
def test_skip_does_not_advance(delta):
    grads = [grad(0.3, -0.2), grad(-0.1, 0.4), grad(0.2, 0.2), grad(-0.3, 0.1), grad(0.1, -0.5)]
    kw = dict(lr=0.01, main="adam", ratio=10.0, delta=delta, reference_options={"momentum": 0.9})
    p, q = leaf(1.0, -1.0), leaf(1.0, -1.0)
    clean = ReferencePROFIT([p], **kw)
    skip = ReferencePROFIT([q], non_finite="skip", **kw)
    for i, g in enumerate(grads):
        if i in (1, 2):  # a non-finite gradient mid-cycle (after a reference call) and at start
            before = snapshot(skip, [q])
            bad = g.clone()
            bad[0] = math.nan if i == 1 else math.inf
            assert feed(skip, [q], [bad])["phase"] == "skipped"
            assert_same_snapshot(before, snapshot(skip, [q]))
        assert feed(skip, [q], [g])["phase"] == feed(clean, [p], [g])["phase"]
        assert torch.equal(p.detach(), q.detach())
    assert skip.calls == clean.calls == len(grads) and skip.skipped_calls == 2


def test_error_changes_nothing():
    p = leaf(1.0, -1.0)
    opt = ReferencePROFIT([p], lr=0.01, main="adam", ratio=10.0)
    feed(opt, [p], [grad(0.3, -0.2)])
    before = snapshot(opt, [p])
    with pytest.raises(NonFiniteGradientError):
        feed(opt, [p], [grad(math.nan, 0.0)])
    assert_same_snapshot(before, snapshot(opt, [p]))
    assert feed(opt, [p], [grad(0.1, 0.1)])["phase"] == "main"


def test_propagate_lets_non_finite_through():
    p = leaf(1.0, -1.0)
    opt = ReferencePROFIT([p], lr=0.01, main="sgd", non_finite="propagate", warmup_steps=1)
    feed(opt, [p], [grad(math.nan, 0.0)])
    assert math.isnan(p[0].item()) and p[1].item() == -1.0


def test_clipping_factor():
    gs = [[grad(3.0, -4.0), grad(12.0)], [grad(-2.0, 1.0), grad(0.5)], [grad(0.1, 0.0), grad(0.1)]]
    kw = dict(lr=0.01, main="adam", ratio=10.0, warmup_steps=1)
    a, b = leaf(1.0, 2.0), leaf(-1.0)
    clipped = ReferencePROFIT([a, b], max_grad_norm=2.0, **kw)
    a2, b2 = leaf(1.0, 2.0), leaf(-1.0)
    plain = ReferencePROFIT([a2, b2], **kw)
    for g in gs:
        norm = math.sqrt(sum((x * x).sum().item() for x in g))
        rep = feed(clipped, [a, b], g)
        want = min(1.0, 2.0 / (norm + 1e-6))
        assert rep["clip_factor"] == want
        # The same call fed with gradients scaled by torch's own clip_grad_norm_.
        for p, x in zip([a2, b2], g):
            p.grad = x.clone()
        torch.nn.utils.clip_grad_norm_([a2, b2], 2.0)
        rep2 = plain.step() or plain.last_report
        assert torch.allclose(a.detach(), a2.detach(), rtol=1e-15, atol=0)
        assert torch.allclose(b.detach(), b2.detach(), rtol=1e-15, atol=0)
        if rep["phase"] == "main":  # the projection sees the scaled gradient
            assert math.isclose(rep["grad_sq"], want ** 2 * norm ** 2, rel_tol=1e-14)
            assert math.isclose(rep["omega"], rep2["omega"], rel_tol=1e-12)
    assert gs[2] and clipped.last_report["clip_factor"] == 1.0  # below the norm: untouched


def test_user_gradients_left_alone():
    p = leaf(1.0, 2.0)
    opt = ReferencePROFIT([p], lr=0.01, main="adam", ratio=10.0, max_grad_norm=0.1)
    for g in [grad(1.0, 0.0), grad(-1.0, -1.0)]:
        p.grad = g.clone()
        held = p.grad
        opt.step()
        assert p.grad is held and torch.equal(p.grad, g)


def test_frozen_parameter_is_never_touched():
    a, f = leaf(1.0, 2.0), leaf(5.0)
    f.requires_grad_(False)
    opt = ReferencePROFIT([a, f], lr=0.01, main="sgd", ratio=10.0)
    a_alone = leaf(1.0, 2.0)
    solo = ReferencePROFIT([a_alone], lr=0.01, main="sgd", ratio=10.0)
    for g in [grad(1.0, 0.0), grad(-1.0, 1.0), grad(0.5, 0.5)]:
        f.grad = grad(100.0)  # ignored: the parameter is frozen
        rep = feed(opt, [a], [g])
        rep_solo = feed(solo, [a_alone], [g])
        assert torch.equal(f.detach(), grad(5.0)) and torch.equal(a.detach(), a_alone.detach())
        assert rep.get("grad_sq") == rep_solo.get("grad_sq")


def test_per_group_rates():
    a, b, c = leaf(1.0), leaf(2.0), leaf(3.0)
    groups = [{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.2, "ref_lr": 0.05, "weight_decay": 0.1},
              {"params": [c]}]
    opt = ReferencePROFIT(groups, lr=0.3, main="adamw", ratio=10.0)
    feed(opt, [a, b, c], [grad(1.0)] * 3)
    assert [g["lr"] for g in opt.reference_optimizer.param_groups] == [0.1 / 10.0, 0.05, 0.3 / 10.0]
    assert [g["lr"] for g in opt.main_optimizer.param_groups] == [0.1, 0.2, 0.3]
    assert [g["weight_decay"] for g in opt.main_optimizer.param_groups] == [1e-2, 0.1, 1e-2]
    assert torch.equal(a.detach(), grad(1.0 - 0.01))  # the reference step used lr / ratio
    # The reference rate follows a changed lr at the fixed ratio; a global ref_lr overrides it.
    opt.param_groups[0]["lr"] = 0.5
    feed(opt, [a, b, c], [grad(1.0)] * 3)
    feed(opt, [a, b, c], [grad(1.0)] * 3)
    assert opt.reference_optimizer.param_groups[0]["lr"] == 0.5 / 10.0
    opt2 = ReferencePROFIT([{"params": [leaf(1.0)], "lr": 0.1}], ratio=10.0, ref_lr=0.03)
    opt2._sync_rates()
    assert opt2.reference_optimizer.param_groups[0]["lr"] == 0.03
    with pytest.raises(ValueError):
        ReferencePROFIT([{"params": [leaf(1.0)], "betas": (0.5, 0.9)}])


def test_16bit_state_holds_16bit_values():
    # "once": float32 working copies, every stored value a bfloat16 value after each call;
    # "per_op": torch.optim's own bfloat16 state.
    for rounding in ("once", "per_op"):
        p = torch.nn.Parameter(torch.tensor([1.0, -0.5], dtype=torch.bfloat16))
        opt = ReferencePROFIT([p], lr=0.01, main="adam", ratio=10.0, delta="accumulated",
                              rounding=rounding)
        for g in [[0.3, 0.1], [-0.2, 0.4], [0.1, 0.1]]:
            p.grad = torch.tensor(g, dtype=torch.bfloat16)
            opt.step()
        assert p.dtype == torch.bfloat16
        state = opt.main_optimizer.state[opt._slots[0].work]
        for key, v in state.items():
            if key != "step":
                assert v.dtype == (torch.float32 if rounding == "once" else torch.bfloat16)
                assert torch.equal(v, v.to(torch.bfloat16).to(v.dtype))
        assert opt._slots[0].delta.dtype == torch.bfloat16
