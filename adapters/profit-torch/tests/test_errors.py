"""Bad input raises a ``torch_profit.ProfitError`` subclass and changes nothing: parameters,
gradients, the state dict's tensors and settings, the counters and the last report are the
same before and after the refused call (or construction)."""
import math
import subprocess
import sys

import pytest
import torch

import torch_profit
from torch_profit import (NonFiniteGradientError, ProfitConfigError, ProfitDeviceError,
                          ProfitError, ProfitInputError, ProfitStateError,
                          ProjectionOverflowError)
from lockstep import MLP_INPUT, Lockstep, batches, mlp, mse


# -- helpers ----------------------------------------------------------------------------------

def _grad_view(g):
    if g is None:
        return None
    dense = g.to_dense() if g.layout != torch.strided else g
    return (id(g), g.layout, g.dtype, tuple(g.shape), g.stride() if g.layout == torch.strided
            else None, dense.detach().clone())


def snapshot(opt, params):
    sd = opt.state_dict()
    return {
        "params": [(p.dtype, p.detach().clone()) for p in params],
        "grads": [_grad_view(p.grad) for p in params],
        "state": {i: {k: v.clone() for k, v in s.items()} for i, s in sd["state"].items()},
        "groups": repr(sd["param_groups"]),
        "profit": sd["profit"],
        "counters": (opt.calls, opt.skipped_calls, opt.projected_calls, opt.stalled_calls,
                     opt.main_steps, opt.next_phase),
        "report": opt.last_report,
        "tensor_reports": opt.tensor_reports(),
    }


def same(a, b):
    """Bitwise equal (NaN included), same dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    if a.device.type == "meta":
        return True
    return torch.equal(a.reshape(-1).contiguous().view(torch.uint8),
                       b.reshape(-1).contiguous().view(torch.uint8))


def assert_same(a, b, skip=()):
    for key in a:
        if key in skip:
            continue
        x, y = a[key], b[key]
        if key == "params":
            assert all(d0 == d1 and same(t0, t1) for (d0, t0), (d1, t1) in zip(x, y)), key
        elif key == "grads":
            for g0, g1 in zip(x, y):
                assert (g0 is None) == (g1 is None)
                if g0 is not None:
                    assert g0[:5] == g1[:5] and same(g0[5], g1[5])
        elif key == "state":
            assert x.keys() == y.keys()
            for i in x:
                assert x[i].keys() == y[i].keys()
                for k in x[i]:
                    assert same(x[i][k], y[i][k]), (i, k)
        else:
            assert x == y, key


def trained(steps=3, **kw):
    """An MLP and its PROFIT after `steps` calls (n_ref 1: 3 calls leave it mid-cycle, after
    a reference call), with fresh gradients set for the next call."""
    kw = dict(dict(lr=1e-2, ratio=10.0, main="adam", reference_options={"momentum": 0.9}), **kw)
    model = mlp(seed=20)
    opt = torch_profit.PROFIT(model.parameters(), **kw)
    data = batches(steps + 1, MLP_INPUT, seed=21)
    for x, y in data[:steps]:
        opt.zero_grad()
        mse(model(x), y).backward()
        opt.step()
    opt.zero_grad()
    mse(model(data[steps][0]), data[steps][1]).backward()
    return model, opt, list(model.parameters())


def refused(opt, params, exc, call=None):
    """`call` (default opt.step) raises `exc` (a ProfitError) and changes nothing."""
    before = snapshot(opt, params)
    with pytest.raises(exc) as info:
        (call or opt.step)()
    assert isinstance(info.value, ProfitError)
    assert_same(before, snapshot(opt, params))
    return info.value


def step_ok(model, opt):
    x, y = batches(1, MLP_INPUT, seed=22)[0]
    opt.zero_grad()
    mse(model(x), y).backward()
    opt.step()


def p64(*shape):
    return torch.nn.Parameter(torch.randn(*shape, dtype=torch.float64))


# -- construction -----------------------------------------------------------------------------

def _constructed(params, exc, **kw):
    before = [(p.detach().clone(), p.dtype) for p in params if isinstance(p, torch.Tensor)]
    with pytest.raises(exc) as info:
        torch_profit.PROFIT(params, **kw)
    assert isinstance(info.value, ProfitError)
    after = [(p.detach().clone(), p.dtype) for p in params if isinstance(p, torch.Tensor)]
    assert all(d0 == d1 and same(a, b) for (a, d0), (b, d1) in zip(before, after))
    return info.value


def test_non_contiguous_parameter():
    _constructed([p64(3), torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64).t())],
                 ProfitInputError)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_unsupported_dtype(dtype):
    _constructed([p64(3), torch.nn.Parameter(torch.randn(3, dtype=dtype))], ProfitInputError)


def test_integer_tensor_is_frozen():
    """torch refuses requires_grad on an integer tensor ("Only Tensors of floating point can
    require gradients"), so an integer tensor in the list is necessarily frozen: accepted,
    never touched (as by torch.optim)."""
    with pytest.raises(RuntimeError):
        torch.nn.Parameter(torch.tensor([1, 2]))
    ints = torch.tensor([1, 2, 3])
    p = p64(3)
    opt = torch_profit.PROFIT([p, ints], lr=1e-2, ratio=10.0)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    assert torch.equal(ints, torch.tensor([1, 2, 3])) and len(opt.tensor_reports()) == 1


def test_mixed_dtypes():
    _constructed([p64(3), torch.nn.Parameter(torch.randn(3))], ProfitInputError)


@pytest.mark.parametrize("how", ["same-tensor-twice", "overlapping-views", "same-parameter"])
def test_shared_memory_at_construction(how):
    base = torch.randn(6, dtype=torch.float64)
    if how == "same-tensor-twice":
        params = [torch.nn.Parameter(base), torch.nn.Parameter(base)]
    elif how == "overlapping-views":
        params = [torch.nn.Parameter(base[:4]), torch.nn.Parameter(base[2:])]
    else:
        p = torch.nn.Parameter(base)
        params = [{"params": [p]}, {"params": [p]}]
        with pytest.raises(ValueError):  # torch.optim's own check comes first
            torch_profit.PROFIT(params)
        return
    _constructed(params, ProfitInputError)


def test_meta_device():
    _constructed([torch.nn.Parameter(torch.empty(3, device="meta"))], ProfitDeviceError)


def test_no_trainable_parameter():
    p = p64(3).requires_grad_(False)
    _constructed([p], ProfitInputError)


BAD_CONFIGS = [
    dict(ratio=0), dict(ratio=-1.0), dict(ratio=math.inf), dict(ratio=math.nan),
    dict(main="adagrad"), dict(reference="lbfgs"), dict(lr=-1e-3), dict(lr=math.nan),
    dict(ref_lr=-1.0), dict(n_ref=0), dict(warmup_steps=-1), dict(max_grad_norm=0.0),
    dict(max_grad_norm=-1.0), dict(delta="both"), dict(projection="layer"),
    dict(non_finite="ignore"), dict(restore="subtract"),  # subtract needs accumulated delta
    dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1)), dict(eps=-1e-8), dict(weight_decay=-0.1),
    dict(main="sgd", momentum=-0.5), dict(main="sgd", nesterov=True),  # nesterov needs momentum
    dict(main="sgd", momentum=0.9, dampening=0.5, nesterov=True), dict(main="rmsprop", alpha=-1.0),
    dict(reference_options={"momentum": -1.0}), dict(reference_options={"lr": 0.1}),
    dict(reference_options={"betas": (0.9, 0.99)}),  # not an SGD option
]


@pytest.mark.parametrize("kw", BAD_CONFIGS, ids=[repr(k) for k in BAD_CONFIGS])
def test_invalid_config(kw):
    e = _constructed([p64(3)], ProfitConfigError, **kw)
    assert isinstance(e, ValueError)  # the torch.optim convention for bad hyperparameters


def test_groups_differing_in_shared_hyperparameters():
    _constructed([{"params": [p64(3)]}, {"params": [p64(2)], "betas": (0.5, 0.9)}],
                 ProfitConfigError)


@pytest.mark.parametrize("kw", [dict(n_ref=1.5), dict(warmup_steps=2.5)], ids=["n_ref", "warmup"])
def test_non_integer_counts(kw):
    _constructed([p64(3)], ProfitConfigError, **kw)


# -- refused calls ----------------------------------------------------------------------------

def test_sparse_gradient():
    model, opt, params = trained()
    params[0].grad = params[0].grad.to_sparse()
    refused(opt, params, ProfitInputError)


def test_gradient_of_another_dtype():
    model, opt, params = trained()
    with pytest.raises(RuntimeError):  # torch refuses the plain assignment...
        params[0].grad = params[0].grad.float()
    params[0].grad_dtype = None  # ...unless grad_dtype allows any dtype (torch >= 2.9)
    params[0].grad = params[0].grad.float()
    refused(opt, params, ProfitInputError)


def test_gradient_data_changed_to_another_dtype():
    model, opt, params = trained()
    params[1].grad.data = params[1].grad.data.float()  # torch allows this one
    assert params[1].grad.dtype == torch.float32
    refused(opt, params, ProfitInputError)


def test_gradient_of_another_shape():
    model, opt, params = trained()
    with pytest.raises(RuntimeError):  # torch refuses the plain assignment
        params[0].grad = torch.zeros(5, dtype=torch.float64)
    params[0].grad.data = torch.zeros(5, dtype=torch.float64)  # but not this
    refused(opt, params, ProfitInputError)


def test_gradient_of_same_numel_other_shape():
    model, opt, params = trained()
    g = params[0].grad
    g.data = g.data.reshape(-1).clone()  # same elements, flat
    refused(opt, params, ProfitInputError)


def test_non_contiguous_gradient():
    model, opt, params = trained()
    w = params[0]
    g = torch.empty_strided(w.shape, (1, w.shape[0]), dtype=w.dtype)  # column-major
    g.copy_(w.grad)
    w.grad = g
    assert not w.grad.is_contiguous()
    refused(opt, params, ProfitInputError)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex128])
def test_parameter_data_changed_dtype(dtype):
    model, opt, params = trained()
    params[2].data = params[2].data.to(dtype)
    params[2].grad = None
    refused(opt, params, ProfitInputError)


def test_parameter_data_non_contiguous():
    model, opt, params = trained()
    w = params[0]
    w.data = w.data.t().contiguous().t()  # same shape and values, column-major
    refused(opt, params, ProfitInputError)


def test_parameters_made_to_share_memory():
    model, opt, params = trained()
    params[1].data = params[0].data.view(-1)[: params[1].numel()]  # a view into another
    refused(opt, params, ProfitInputError)


_RESHAPED = r"""
import sys, torch, torch_profit
p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
opt = torch_profit.PROFIT([p], lr=1e-2, ratio=10.0)
p.grad = torch.randn_like(p)
opt.step()
n = int(sys.argv[1])
p.data = torch.zeros(n, dtype=torch.float64)
p.grad = torch.ones(n, dtype=torch.float64)
before = p.detach().clone()
try:
    opt.step()
except torch_profit.ProfitInputError as e:
    assert torch.equal(p.detach(), before)
    print("REFUSED", e)
    sys.exit(0)
print("NOT REFUSED", p.detach().tolist())
sys.exit(3)
"""


@pytest.mark.parametrize("numel", [2, 20], ids=["smaller", "larger"])
def test_parameter_data_changed_shape(numel):
    # in a child process: the unchecked case corrupts the heap
    out = subprocess.run([sys.executable, "-c", _RESHAPED, str(numel)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "REFUSED" in out.stdout, (out.returncode, out.stdout[-500:],
                                                            out.stderr[-500:])


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("steps", [2, 3], ids=["at-reference", "at-main"])
def test_non_finite_error(steps, value):
    model, opt, params = trained(steps)
    params[3].grad[1] = value
    e = refused(opt, params, NonFiniteGradientError)
    assert isinstance(e, FloatingPointError)
    params[3].grad[1] = 0.0
    opt.step()  # the call goes through once the gradient is finite
    assert opt.calls == steps + 1


@pytest.mark.parametrize("steps", [2, 3], ids=["at-reference", "at-main"])
def test_non_finite_skip(steps):
    model, opt, params = trained(steps, non_finite="skip")
    params[0].grad[0, 0] = math.nan
    before = snapshot(opt, params)
    opt.step()
    after = snapshot(opt, params)
    assert opt.last_report.phase == "skipped" and opt.last_report.main is None
    assert opt.calls == steps and opt.skipped_calls == 1
    assert_same(before, after, skip=("counters", "report", "profit"))
    assert before["counters"][0] == after["counters"][0]  # the call is not counted
    assert before["counters"][5] == after["counters"][5]  # nor does the cycle advance


def test_non_finite_skip_against_oracle():
    """A run with NaN gradients at some calls under "skip" equals the oracle's."""
    def edit(params, call):
        if call in (2, 5, 6):
            params[call % len(params)].grad.view(-1)[0] = math.nan

    ls = Lockstep(mlp(seed=23), lr=1e-2, ratio=10.0, main="adam", non_finite="skip")
    ls.run(batches(14, MLP_INPUT, seed=24), edit=edit)
    assert [ra["phase"] for ra, _ in ls.reports].count("skipped") == 3
    assert ls.opt.skipped_calls == ls.ref.skipped_calls == 3 and ls.opt.calls == 11


def test_non_finite_propagate():
    p = p64(3)
    opt = torch_profit.PROFIT([p], lr=1e-2, ratio=10.0, main="sgd", non_finite="propagate",
                              warmup_steps=1)
    p.grad = torch.tensor([math.nan, 0.0, 0.0], dtype=torch.float64)
    before = p.detach().clone()
    opt.step()
    assert math.isnan(p[0].item()) and torch.equal(p[1:], before[1:])


def _overflow_case(opt_class, **kw):
    """float32: after a reference step with g = (1, -0.5) the main gradient (3e38, 3e38) is
    finite (|g|^2 = 1.8e77 in float64) and omega < 0, but its projection g - c delta =
    (1.8e38, 3.6e38) does not fit in float32."""
    p = torch.nn.Parameter(torch.ones(2))
    opt = opt_class([p], lr=1e-2, ratio=1.0, main="sgd", **kw)
    p.grad = torch.tensor([1.0, -0.5])
    opt.step()  # reference: delta = -0.01 * (1, -0.5)
    p.grad = torch.tensor([3e38, 3e38])
    return opt, p


def test_projection_overflow_oracle():
    from reference import ProjectionOverflowError as OracleOverflow
    from reference import ReferencePROFIT
    opt, p = _overflow_case(ReferencePROFIT)
    with pytest.raises(OracleOverflow):
        opt.step()


@pytest.mark.xfail(strict=True, reason=(
    "a known limitation (ALGORITHM.md section 4): the core refuses a projection whose "
    "coefficient is not representable, not one whose projected gradient overflows; with "
    "|g| > 3.4e38 in float32 (g = (3e38, 3e38), delta = (-0.01, 0.005)) an element goes to "
    "inf and reaches the weights, where the oracle refuses the step"))
def test_projection_overflow():
    opt, p = _overflow_case(torch_profit.PROFIT)
    refused(opt, [p], ProjectionOverflowError)


# -- state dicts ------------------------------------------------------------------------------

def _bad_state(kind, sd):
    if kind == "missing-anchor":
        del sd["state"][0]["anchor"]
    elif kind == "wrong-shape":
        sd["state"][0]["exp_avg"] = torch.zeros(2, dtype=torch.float64)
    elif kind == "not-profit":
        del sd["profit"]
    elif kind == "other-groups":
        sd["param_groups"] = sd["param_groups"] + [dict(sd["param_groups"][0], params=[])]
    return sd


@pytest.mark.parametrize("kind", ["missing-anchor", "wrong-shape", "not-profit", "other-groups"])
def test_bad_state_dict(kind):
    model, opt, params = trained()
    sd = _bad_state(kind, opt.state_dict())
    refused(opt, params, ProfitStateError, call=lambda: opt.load_state_dict(sd))


def test_state_dict_of_other_settings():
    model, opt, params = trained()
    other = torch_profit.PROFIT(mlp(seed=20).parameters(), lr=1e-2, ratio=10.0, main="adam",
                                n_ref=2, reference_options={"momentum": 0.9})
    sd = other.state_dict()
    refused(opt, params, ProfitStateError, call=lambda: opt.load_state_dict(sd))
    step_ok(model, opt)


def test_a_refused_param_group_leaves_the_optimizer_as_it_was():
    """A group the engine cannot take (another dtype) added after a step is refused, and the
    optimizer keeps its groups and keeps stepping."""
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    opt = torch_profit.PROFIT([p], lr=1e-2, ratio=10.0)
    p.grad = torch.randn_like(p)
    opt.step()
    q = torch.nn.Parameter(torch.randn(5, dtype=torch.float32))
    with pytest.raises(torch_profit.ProfitInputError):
        opt.add_param_group({"params": [q]})
    assert len(opt.param_groups) == 1
    opt.step()
    assert opt.calls == 2
