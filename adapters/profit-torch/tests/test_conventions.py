"""torch.optim conventions: state_dict round trips mid-cycle (bitwise resume), zero_grad,
lr schedulers against the oracle driven by the same scheduler, add_param_group after some
steps, closures, and the reports / counters."""
import io
import math

import pytest
import torch

import torch_profit
from reference import MAIN_HYPER
from lockstep import (CNN_INPUT, MLP_INPUT, Lockstep, batches, cnn, mlp, mse, profit_report,
                      record)

# -- state_dict -------------------------------------------------------------------------------

RESUME_KW = dict(lr=1e-2, main="adam", ratio=10.0, n_ref=2, warmup_steps=1,
                 reference_options={"momentum": 0.9}, amsgrad=True)


def _train(model, opt, data):
    reports = []
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        mse(model(x), y).backward()
        opt.step()
        reports.append(opt.last_report)
    return reports


def _counters(opt):
    return (opt.calls, opt.skipped_calls, opt.projected_calls, opt.stalled_calls, opt.main_steps,
            opt.next_phase)


# calls: 0 warmup, 1 reference, 2 reference, 3 main, 4 reference, ...
@pytest.mark.parametrize("stop", [2, 3, 4], ids=["after-1st-ref", "after-2nd-ref", "after-main"])
@pytest.mark.parametrize("delta", ["realized", "accumulated"])
def test_state_dict_round_trip(delta, stop):
    data = batches(12, MLP_INPUT, seed=11)
    model = mlp(seed=10)
    opt = torch_profit.PROFIT(model.parameters(), delta=delta, **RESUME_KW)
    _train(model, opt, data[:stop])
    assert opt.last_report.phase == {2: "reference", 3: "reference", 4: "main"}[stop]

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)  # torch's default (weights_only=True) loads it

    fresh_model = mlp(seed=99)  # other values until the checkpoint is loaded
    fresh = torch_profit.PROFIT(fresh_model.parameters(), delta=delta, **RESUME_KW)
    fresh_model.load_state_dict(saved["model"])
    fresh.load_state_dict(saved["opt"])
    assert _counters(fresh) == _counters(opt)

    for x, y in data[stop:]:
        a = _train(model, opt, [(x, y)])[0]
        b = _train(fresh_model, fresh, [(x, y)])[0]
        assert a == b
        for p, q in zip(model.parameters(), fresh_model.parameters()):
            assert torch.equal(p, q)
        assert _counters(fresh) == _counters(opt)
    sa, sb = opt.state_dict(), fresh.state_dict()
    for i in sa["state"]:
        for key, t in sa["state"][i].items():
            assert torch.equal(t, sb["state"][i][key]), (i, key)


def test_state_dict_layout():
    model = mlp(seed=10)
    opt = torch_profit.PROFIT(model.parameters(), **RESUME_KW)
    _train(model, opt, batches(2, MLP_INPUT, seed=11))
    sd = opt.state_dict()
    n = len(list(model.parameters()))
    assert sorted(sd["state"]) == list(range(n))
    assert sd["param_groups"][0]["params"] == list(range(n))
    for i, p in enumerate(model.parameters()):
        s = sd["state"][i]
        assert {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "anchor", "step"} <= set(s), set(s)
        assert s["exp_avg"].shape == p.shape and s["step"].item() == 1.0


# -- zero_grad --------------------------------------------------------------------------------

def test_zero_grad():
    model = mlp(seed=1)
    opt = torch_profit.PROFIT(model.parameters(), lr=1e-2, ratio=10.0)
    anchor = [p.detach().clone() for p in model.parameters()]
    x, y = batches(1, MLP_INPUT)[0]
    mse(model(x), y).backward()
    opt.step()  # reference call
    assert not any(torch.equal(p, q) for p, q in zip(anchor, model.parameters()))
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()  # torch's default: set_to_none=True
    assert all(p.grad is None for p in model.parameters())
    opt.step()  # every gradient None: a main call where every tensor sits out; restored
    assert opt.last_report.phase == "main" and opt.main_steps == 1  # the call, not a tensor
    assert all(torch.equal(p, q) for p, q in zip(anchor, model.parameters()))
    state = opt.state_dict()["state"]
    assert all(s["step"].item() == 0 and s["ref_step"].item() == 1 for s in state.values())


# -- lr schedulers ----------------------------------------------------------------------------

def _schedulers(kind, steps):
    if kind == "StepLR":
        return lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    if kind == "LambdaLR":
        return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0 / (1.0 + 0.3 * e))
    if kind == "OneCycleLR":
        return lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=5e-2, total_steps=steps, cycle_momentum=True, base_momentum=0.8,
            max_momentum=0.95)
    raise ValueError(kind)


def _scheduled_run(kind, main, steps=20, groups=None, **kw):
    make = _schedulers(kind, steps)
    ls = Lockstep(cnn(seed=2), groups=groups, lr=1e-2, ratio=10.0, main=main, **kw)
    sa, sb = make(ls.opt), make(ls.ref)
    for ga, gb in zip(ls.opt.param_groups, ls.ref.param_groups):
        for key in MAIN_HYPER[main]:
            assert ga[key] == gb[key], (key, ga[key], gb[key])
    seen = []
    for x, y in batches(steps, CNN_INPUT, seed=3):
        ls.step(x, y)
        for i, (ga, gb) in enumerate(zip(ls.opt.param_groups, ls.ref.param_groups)):
            assert ga["lr"] == gb["lr"]
            for key in MAIN_HYPER[main]:  # what the scheduler moved: betas or momentum
                assert ga[key] == gb[key], (key, ga[key], gb[key])
            # the reference rate of the call: lr / ratio unless set (the group's ref_lr is
            # brought up to date at each step, so it is read after the step, before the
            # scheduler's)
            assert math.isclose(ls.opt.reference_lrs()[i], ls.ref.group_ref_lr(gb), rel_tol=1e-12)
        sa.step()
        sb.step()
        ga = ls.opt.param_groups[0]
        seen.append((ga["lr"], ga.get("betas"), ga.get("momentum")))
    assert len({s[0] for s in seen}) > 2  # the lr moved
    return ls, seen


def _groups(m):
    params = list(m.parameters())
    return [{"params": params[:2], "lr": 2e-2, "weight_decay": 1e-2},
            {"params": params[2:]}]


@pytest.mark.parametrize("two_groups", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("kind", ["StepLR", "LambdaLR", "OneCycleLR"])
def test_lr_scheduler(kind, two_groups):
    """The group's lr read at every call; ref_lr follows it at lr / ratio (ref_lr not set)."""
    ls, seen = _scheduled_run(kind, "adam", groups=_groups if two_groups else None)
    if kind == "OneCycleLR":  # cycle_momentum moved Adam's beta1
        assert len({s[1] for s in seen}) > 2
    record("conventions", f"{kind} adam {'two groups' if two_groups else 'one group'}",
           ls.summary())


@pytest.mark.parametrize("main", ["sgd", "rmsprop"])
def test_one_cycle_momentum_non_adam(main):
    ls, seen = _scheduled_run("OneCycleLR", main, momentum=0.9)
    record("conventions", f"OneCycleLR {main}", ls.summary())


@pytest.mark.parametrize("how", ["constructor", "group-between-calls"])
def test_lr_scheduler_with_ref_lr_set(how):
    make = _schedulers("StepLR", 12)
    kw = dict(ref_lr=1e-3) if how == "constructor" else {}
    ls = Lockstep(mlp(seed=2), lr=1e-2, ratio=10.0, main="adam", **kw)
    sa, sb = make(ls.opt), make(ls.ref)
    for k, (x, y) in enumerate(batches(12, MLP_INPUT, seed=3)):
        if how != "constructor" and k == 1:
            ls.opt.param_groups[0]["ref_lr"] = ls.ref.param_groups[0]["ref_lr"] = 1e-3
        ls.step(x, y)
        sa.step()
        sb.step()
    assert ls.opt.param_groups[0]["ref_lr"] == 1e-3


# -- add_param_group --------------------------------------------------------------------------

@pytest.mark.parametrize("at", [4, 5], ids=["cycle-boundary", "mid-cycle"])
def test_add_param_group(at):
    """The last layer joins after `at` calls (n_ref 1: call 4 starts a cycle, 5 is its main
    call), with fresh state, anchored where it is. The oracle has it from the start, with no
    gradient before `at` (it sits those calls out: the same thing)."""
    steps = 14

    def first(m):
        return [{"params": list(m.parameters())[:-2]}]

    def both(m):
        params = list(m.parameters())
        return [{"params": params[:-2]}, {"params": params[-2:], "lr": 3e-2, "weight_decay": 0.1}]

    def edit(params, call):
        if call < at:
            for p in params[-2:]:
                p.grad = None

    ls = Lockstep(mlp(seed=4), groups=first, oracle_groups=both, lr=1e-2, ratio=10.0,
                  main="adam", reference_options={"momentum": 0.9})
    last = list(ls.a.parameters())[-2:]
    before = [p.detach().clone() for p in last]
    for k, (x, y) in enumerate(batches(steps, MLP_INPUT, seed=5)):
        if k == at:
            assert all(torch.equal(p, q) for p, q in zip(before, last))  # never stepped
            ls.opt.add_param_group({"params": last, "lr": 3e-2, "weight_decay": 0.1})
            assert ls.opt.reference_lrs()[1] == 3e-2 / 10.0
        ls.step(x, y, edit=edit)
    assert ls.opt.calls == steps
    assert not any(torch.equal(p, q) for p, q in zip(before, last))
    record("conventions", f"add_param_group after {at} calls", ls.summary())


# -- closure ----------------------------------------------------------------------------------

def test_closure_returns_loss():
    ls = Lockstep(mlp(seed=6), lr=1e-2, ratio=10.0, main="sgd", momentum=0.9)
    for x, y in batches(10, MLP_INPUT, seed=7):
        def closure_a():
            ls.opt.zero_grad()
            loss = mse(ls.a(x), y)
            loss.backward()
            return loss

        def closure_b():
            ls.ref.zero_grad()
            loss = mse(ls.b(x), y)
            loss.backward()
            return loss

        la = ls.opt.step(closure_a)
        lb = ls.ref.step(closure_b)
        assert isinstance(la, torch.Tensor) and la.requires_grad
        assert math.isclose(la.item(), lb.item(), rel_tol=1e-12)
        ls.compare()
    assert ls.opt.step() is None  # no closure: None, as torch.optim


# -- reports and counters ---------------------------------------------------------------------

@pytest.mark.parametrize("projection", ["global", "per_tensor"])
def test_reports_and_counters(projection):
    """Counters against the reports: calls, skipped_calls, main_steps (warm-up and main calls),
    projected_calls (main reports with projected), stalled_calls (removed > 0.95); next_phase
    says the phase of the next call; cos and removed from omega, |delta|^2, |g|^2."""
    model = mlp(seed=8)
    # ratio 1e3 and one batch for every call: the main gradient is nearly the reference one, so
    # the projection removes almost all of it (stalls) at most main calls.
    opt = torch_profit.PROFIT(model.parameters(), lr=1e-2, ratio=1e3, main="adam", n_ref=2,
                              warmup_steps=2, non_finite="skip", projection=projection)
    x, y = batches(1, MLP_INPUT, seed=9)[0]
    reports = []
    for k in range(16):
        opt.zero_grad()
        mse(model(x), y).backward()
        if k in (4, 9):
            next(model.parameters()).grad[0, 0] = math.nan
        expected = opt.next_phase
        opt.step()
        r = opt.last_report
        reports.append(r)
        if k in (4, 9):
            assert r.phase == "skipped"
            continue
        assert r.phase == expected
        if r.phase == "main":
            m = r.main
            assert m is not None
            assert math.isclose(m.cos, m.omega / math.sqrt(m.delta_sq * m.grad_sq), rel_tol=1e-9)
            tr = opt.tensor_reports()
            assert len(tr) == 6
            assert math.isclose(sum(t["omega"] for t in tr), m.omega, rel_tol=1e-9)
            assert math.isclose(sum(t["grad_sq"] for t in tr), m.grad_sq, rel_tol=1e-12)
            assert math.isclose(sum(t["delta_sq"] for t in tr), m.delta_sq, rel_tol=1e-12)
            if projection == "global":
                want = m.omega ** 2 / (m.delta_sq * m.grad_sq) if m.projected else 0.0
                assert all(t["projected"] == m.projected for t in tr)
            else:
                want = sum(t["omega"] ** 2 / t["delta_sq"] for t in tr if t["projected"]) / m.grad_sq
                assert m.projected == any(t["projected"] for t in tr)
                assert all(t["projected"] == (t["omega"] < 0) for t in tr)
            assert math.isclose(m.removed, want, rel_tol=1e-9, abs_tol=1e-300)
        else:
            assert r.main is None
    counted = [r for r in reports if r.phase != "skipped"]
    mains = [r for r in counted if r.phase == "main"]
    assert [r.call for r in counted] == list(range(len(counted)))
    assert opt.calls == len(counted) == 14 and opt.skipped_calls == 2
    assert [r.phase for r in counted][:5] == ["warmup", "warmup", "reference", "reference", "main"]
    assert opt.main_steps == 2 + len(mains)
    assert opt.projected_calls == sum(r.main.projected for r in mains)
    assert opt.stalled_calls == sum(r.main.removed > 0.95 for r in mains)
    assert opt.stalled_calls > 0  # the branch is exercised
    assert all(r.grad_scale == 1.0 for r in counted)
    record("conventions", f"counters {projection}",
           f"main calls {len(mains)}, projected {opt.projected_calls}, stalled {opt.stalled_calls}")


def test_reports_against_oracle():
    """Phase, call index, clip factor and the main-call statistics equal the oracle's (also
    checked at every call by every lockstep test); the package report round-trips through
    ``lockstep.profit_report``."""
    ls = Lockstep(cnn(seed=12), lr=1e-2, ratio=10.0, main="rmsprop", max_grad_norm=0.1,
                  n_ref=3)
    ls.run(batches(12, CNN_INPUT, seed=13))
    ra, rb = ls.reports[-1]
    assert ra == profit_report(ls.opt) and ra["phase"] == rb["phase"] == "main"
    assert ls.opt.projected_calls == ls.ref.projected_calls
    assert ls.opt.calls == ls.ref.calls == 12
