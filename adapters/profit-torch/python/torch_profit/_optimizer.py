"""``PROFIT``: a ``torch.optim.Optimizer`` whose ``step()`` runs the Rust core on the tensors'
memory (see the package docs and the repository's ALGORITHM.md)."""

import json
import math
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch.optim import Optimizer

from . import _core
from ._distributed import Ranks, is_dtensor, local
from ._errors import (
    ProfitConfigError,
    ProfitDeviceError,
    ProfitInputError,
    ProfitStateError,
    from_core,
)

_DTYPES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}

# Each inner optimizer's hyperparameters besides lr and weight_decay, with PyTorch's names.
_HYPER = {
    "sgd": ("momentum", "dampening", "nesterov", "maximize"),
    "adam": ("betas", "eps", "amsgrad", "maximize"),
    "adamw": ("betas", "eps", "amsgrad", "maximize"),
    "rmsprop": ("alpha", "eps", "momentum", "centered", "maximize"),
}
_DEFAULT_WEIGHT_DECAY = {"sgd": 0.0, "adam": 0.0, "adamw": 1e-2, "rmsprop": 0.0}
_TORCH_DEFAULTS = {
    "momentum": 0.0,
    "dampening": 0.0,
    "nesterov": False,
    "maximize": False,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "amsgrad": False,
    "alpha": 0.99,
    "centered": False,
    "weight_decay": 0.0,
}
_CHOICES = {
    "delta": ("realized", "accumulated"),
    "projection": ("global", "per_tensor"),
    "restore": ("anchor", "subtract"),
    "non_finite": ("error", "skip", "propagate"),
}


@dataclass(frozen=True)
class MainReport:
    """What a main call's projection did: ``omega = <delta, g>``, ``|delta|^2``, ``|g|^2``
    (after clipping), whether it projected, ``cos(delta, g)`` and the share of ``|g|^2``
    removed."""

    omega: float
    delta_sq: float
    grad_sq: float
    projected: bool
    cos: float
    removed: float


@dataclass(frozen=True)
class StepReport:
    """One call: its index (skipped calls are not counted), phase (``"warmup"``,
    ``"reference"``, ``"main"``, ``"skipped"``), the clipping factor applied to the gradients,
    and at main calls the projection's ``MainReport``."""

    call: int
    phase: str
    grad_scale: float
    main: Optional[MainReport]


def _inner(kind, lr, weight_decay, hyper):
    """The JSON profit-core reads for one inner optimizer."""
    c = {"kind": kind, "lr": float(lr), "weight_decay": float(weight_decay)}
    for k in _HYPER[kind]:
        v = hyper[k]
        if k == "betas":
            v = [float(v[0]), float(v[1])]
        elif k in ("nesterov", "amsgrad", "centered", "maximize"):
            v = bool(v)
        else:
            v = float(v)
        c[k] = v
    return c


def _num(x):
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def _call(f, *args):
    """An engine call, its errors raised as the package's exceptions."""
    try:
        return f(*args)
    except _core.CoreError as e:
        raise from_core(e) from None


class PROFIT(Optimizer):
    """PROFIT (arXiv 2412.01930) around a main optimizer (``"sgd"``, ``"adam"``, ``"adamw"``,
    ``"rmsprop"``), stepped in place by the Rust core, one call per batch::

        opt = torch_profit.PROFIT(model.parameters(), lr=1e-3, main="adam", ratio=1e3)
        for x, y in loader:
            loss = loss_fn(model(x), y); loss.backward()
            opt.step(); opt.zero_grad()

    ``lr`` is the main optimizer's learning rate; reference steps (``reference``, plain SGD by
    default, with ``reference_options``) use ``ref_lr``, by default ``lr / ratio`` (per group,
    following the group's ``lr`` when a scheduler moves it). The main optimizer's
    hyperparameters take PyTorch's names and defaults (``weight_decay``, ``betas``, ``eps``,
    ``amsgrad``, ``maximize``, ``momentum``, ``dampening``, ``nesterov``, ``alpha``,
    ``centered``); ``lr``, ``ref_lr`` and ``weight_decay`` may differ between parameter groups,
    the others are shared. PROFIT's own settings: ``n_ref`` reference steps per cycle,
    ``delta`` (``"realized"`` or ``"accumulated"``), ``projection`` (``"global"`` or
    ``"per_tensor"``), ``restore``, ``warmup_steps``, ``max_grad_norm`` (clipping by global
    norm), ``non_finite`` (``"error"``, ``"skip"``, ``"propagate"``).

    Parameters must be contiguous tensors of one dtype (float32, float64, bfloat16, float16)
    on one device, stepped in place with no copy: on the CPU by the fused multi-threaded host
    loops, on a CUDA device by profit-cuda's fused kernels, on the backend's own stream ordered
    after torch's current stream and before what torch queues next. A parameter whose ``grad`` is ``None`` sits the
    call out (its state does not move; it is still anchored and restored with its cycle); one
    with ``requires_grad=False`` is never touched. ``step()`` returns the closure's loss, and
    ``last_report`` says what the call did.
    """

    def __init__(
        self,
        params,
        lr=1e-3,
        main="adam",
        ratio=1e3,
        *,
        reference="sgd",
        ref_lr=None,
        n_ref=1,
        delta="realized",
        projection="global",
        restore="anchor",
        warmup_steps=0,
        max_grad_norm=None,
        non_finite="error",
        weight_decay=None,
        betas=(0.9, 0.999),
        eps=1e-8,
        amsgrad=False,
        maximize=False,
        momentum=0.0,
        dampening=0.0,
        nesterov=False,
        alpha=0.99,
        centered=False,
        reference_options=None,
        process_group=None,
    ):
        for name, v in (("main", main), ("reference", reference)):
            if v not in _HYPER:
                raise ProfitConfigError(f"{name} must be one of {sorted(_HYPER)}, got {v!r}")
        for name, v in (("delta", delta), ("projection", projection), ("restore", restore), ("non_finite", non_finite)):
            if v not in _CHOICES[name]:
                raise ProfitConfigError(f"{name} must be one of {_CHOICES[name]}, got {v!r}")
        for name, v, low in (("n_ref", n_ref, 1), ("warmup_steps", warmup_steps, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ProfitConfigError(f"{name} must be an integer >= {low}, got {v!r}")
        if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
            raise ProfitConfigError(f"ratio must be finite and > 0, got {ratio!r}")
        if not (isinstance(lr, (int, float, torch.Tensor)) and math.isfinite(_num(lr)) and _num(lr) >= 0):
            raise ProfitConfigError(f"invalid learning rate: {lr!r}")
        if weight_decay is None:
            weight_decay = _DEFAULT_WEIGHT_DECAY[main]
        given = dict(
            betas=tuple(betas),
            eps=eps,
            amsgrad=amsgrad,
            maximize=maximize,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            alpha=alpha,
            centered=centered,
        )
        # Only the main optimizer's own hyperparameters, as torch.optim's classes have them
        # (schedulers that cycle momentum look for `betas` or `momentum` in the defaults).
        defaults = dict(lr=lr, ref_lr=ref_lr, weight_decay=weight_decay, **{k: given[k] for k in _HYPER[main]})
        ref = dict(_TORCH_DEFAULTS)
        ref["maximize"] = maximize
        if reference_options:
            unknown = set(reference_options) - set(_HYPER[reference]) - {"weight_decay"}
            if unknown:
                raise ProfitConfigError(f"unknown {reference} options for the reference optimizer: {sorted(unknown)}")
            ref.update(reference_options)
        self._settings = dict(
            main=main,
            reference=reference,
            ratio=float(ratio),
            n_ref=n_ref,
            delta=delta,
            projection=projection,
            restore=restore,
            warmup_steps=warmup_steps,
            max_grad_norm=max_grad_norm,
            non_finite=non_finite,
            reference_options=ref,
        )
        self._engine = None
        self._process_group = process_group
        self.last_report: Optional[StepReport] = None
        super().__init__(params, defaults)
        self._build()

    # -- parameter groups and the engine ------------------------------------------------------

    def add_param_group(self, param_group):
        """Add a group (``torch.optim``'s convention). After the first step its tensors join
        with fresh optimizer state, anchored at their current values."""
        super().add_param_group(param_group)
        if self._engine is not None:
            try:
                self._build()
            except Exception:
                self.param_groups.pop()  # refused: the optimizer stays as it was
                raise

    def _trainable(self):
        """(global index, parameter, group index) of every parameter that requires a gradient."""
        out, k = [], 0
        for gi, g in enumerate(self.param_groups):
            for p in g["params"]:
                if p.requires_grad:
                    out.append((k, p, gi))
                k += 1
        return out

    def _hyper(self, g):
        return tuple(g[k] if k != "betas" else tuple(g[k]) for k in _HYPER[self._settings["main"]])

    def _config_json(self):
        s = self._settings
        g0 = self.param_groups[0]
        for g in self.param_groups[1:]:
            if self._hyper(g) != self._hyper(g0):
                raise ProfitConfigError(
                    f"parameter groups differ in {_HYPER[s['main']]}: only lr, ref_lr and weight_decay may differ per group"
                )
        main = _inner(s["main"], _num(g0["lr"]), g0["weight_decay"], g0)
        ref_lr = self._rates(g0)[1]
        ro = s["reference_options"]
        reference = _inner(s["reference"], ref_lr, ro["weight_decay"], ro)
        mgn = s["max_grad_norm"]
        config = {
            "reference": reference,
            "main": main,
            "n_ref": int(s["n_ref"]),
            "warmup_steps": int(s["warmup_steps"]),
            "projection": s["projection"],
            "delta": s["delta"],
            "restore": s["restore"],
            "non_finite": s["non_finite"],
            "max_grad_norm": None if mgn is None else float(mgn),
        }
        return json.dumps(config), json.dumps(reference), json.dumps(main)

    def _check_param(self, p, what="parameter", device=None):
        if not isinstance(p, torch.Tensor):
            raise ProfitInputError(f"{what} is not a tensor")
        if p.layout != torch.strided:
            raise ProfitInputError(f"{what} is {p.layout}: only dense (strided) tensors are supported")
        if not (p.is_cpu or p.is_cuda):
            raise ProfitDeviceError(f"{what} is on {p.device}: CPU and CUDA tensors are supported")
        device = device or getattr(self, "_device", None)
        if device is not None and p.device != device:
            raise ProfitDeviceError(f"{what} is on {p.device}, the optimizer's tensors on {device}")
        if p.dtype not in _DTYPES:
            raise ProfitInputError(f"{what} has dtype {p.dtype}: supported are {list(_DTYPES)}")
        if not p.is_contiguous():
            raise ProfitInputError(f"{what} is not contiguous")

    def _build(self):
        """(Re)build the engine over the trainable parameters, carrying the state of those it
        held already (a new group, or a change of ``requires_grad``)."""
        trainable = self._trainable()
        if not trainable:
            raise ProfitInputError("no parameter requires a gradient")
        dtype = trainable[0][1].dtype
        device = local(trainable[0][1]).device
        for _, p, _ in trainable:
            self._check_param(local(p), device=device)
            if p.dtype != dtype:
                raise ProfitInputError(f"parameters of dtypes {dtype} and {p.dtype}: all must share one dtype")
        seen = set()
        for _, p, _ in trainable:
            if id(p) in seen:
                raise ProfitInputError("a parameter appears twice")
            seen.add(id(p))
        config, ref_json, main_json = self._config_json()
        groups = []
        members = {}
        for k, p, gi in trainable:
            members.setdefault(gi, []).append((k, p))
        order = sorted(members)
        for gi in order:
            g = self.param_groups[gi]
            lr, ref_lr, wd = self._rates(g)
            opts = {"lr": lr, "ref_lr": ref_lr, "weight_decay": wd, "frozen": False}
            names = [str(k) for k, _ in members[gi]]
            shapes = [list(local(p).shape) for _, p in members[gi]]
            groups.append((json.dumps(opts), names, shapes))
        params = [p for gi in order for _, p in members[gi]]
        old = self._export() if self._engine is not None else None
        cuda = device.type == "cuda"
        index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else -1
        engine = _call(_core.Engine, _DTYPES[dtype], config, groups, [local(p).data_ptr() for p in params], index)
        self._device, self._cuda = device, cuda
        ranks = None
        if any(is_dtensor(p) for p in params):
            ranks = Ranks(params)
            if ranks.any_sharded:
                _call(engine.set_collective, ranks.rank, ranks.world, ranks.all_reduce)
        elif self._process_group is not None:
            ranks = Ranks.replicated(self._process_group, len(params))
        if old is not None:
            self._carry(engine, old, params, [k for gi in order for k, _ in members[gi]])
        self._ranks = ranks
        self._any_dtensor = any(is_dtensor(p) for p in params)
        self._shapes = [local(p).shape for p in params]
        self._engine = engine
        self._dtype = dtype
        self._params = params
        self._param_names = [str(k) for gi in order for k, _ in members[gi]]
        self._engine_groups = order
        self._requires = [p.requires_grad for g in self.param_groups for p in g["params"]]
        self._pushed = [self._rates(self.param_groups[gi]) for gi in order]
        self._pushed_hyper = (ref_json, main_json)
        self._pushed_hyper_values = [self._hyper(g) for g in self.param_groups]

    def _export(self):
        """The engine's state: meta (dict) and each buffer as a tensor, by key."""
        meta = json.loads(self._engine.state_meta())
        shapes = dict(zip(self._param_names, (local(p).shape for p in self._params)))
        bufs = {}
        for key, _ in self._engine.buffer_keys():
            t = torch.empty(shapes[key.split("/")[0]], dtype=self._dtype, device=self._device)
            _call(self._engine.read_buffer, key, t.data_ptr(), self._stream())
            bufs[key] = t
        return meta, bufs

    def _carry(self, engine, old, params, indices):
        """Load into a new engine the counters and per-tensor state of `old`; tensors new to
        the engine start fresh, anchored where they are; tensors that left are restored to
        their anchor (their reference steps of the cycle undone)."""
        meta, bufs = old
        held = {p["name"]: p for p in meta["params"]}
        new_meta = json.loads(engine.state_meta())
        new_meta["counters"] = meta["counters"]
        for p in new_meta["params"]:
            p["steps"] = held[p["name"]]["steps"] if p["name"] in held else {"reference": 0, "main": 0}
        by_index = dict(zip(indices, params))
        keys, tensors = [], []
        for key, _ in engine.buffer_keys():
            name, kind = key.split("/", 1)
            if key in bufs:
                t = bufs[key]
            elif kind == "anchor":
                t = local(by_index[int(name)]).detach().clone()
            else:
                t = torch.zeros_like(local(by_index[int(name)]), memory_format=torch.contiguous_format)
            keys.append(key)
            tensors.append(t)
        _call(engine.load_state, json.dumps(new_meta), keys, [t.data_ptr() for t in tensors], False, self._stream())
        everyone = [p for g in self.param_groups for p in g["params"]]
        for name in held:
            k = int(name)
            if k not in by_index and f"{name}/anchor" in bufs:
                with torch.no_grad():
                    local(everyone[k]).copy_(bufs[f"{name}/anchor"])

    # -- a call ---------------------------------------------------------------------------------

    def _rates(self, g):
        """A group's ``(lr, ref_lr, weight_decay)``; ``ref_lr`` ``None`` (the default) means
        ``lr / ratio``, following ``lr``."""
        lr = _num(g["lr"])
        ref = g["ref_lr"]
        return (lr, lr / self._settings["ratio"] if ref is None else _num(ref), float(g["weight_decay"]))

    def _sync(self):
        """Push what changed in ``param_groups`` since the last call (schedulers move ``lr``;
        a group's ``ref_lr`` left ``None`` is ``lr / ratio``, so it follows)."""
        if [p.requires_grad for g in self.param_groups for p in g["params"]] != self._requires:
            self._build()
            return
        for e, gi in enumerate(self._engine_groups):
            g = self.param_groups[gi]
            lr, ref_lr, wd = self._rates(g)
            if (lr, ref_lr, wd) == self._pushed[e]:
                continue
            old_lr, old_ref, old_wd = self._pushed[e]
            if lr != old_lr:
                _call(self._engine.set_group_lr, e, lr)  # moves the engine's ref_lr too
            if ref_lr != self._engine.group_rates()[e][1]:
                _call(self._engine.set_group_ref_lr, e, ref_lr)
            if wd != old_wd:
                _call(self._engine.set_group_weight_decay, e, wd)
            self._pushed[e] = (lr, ref_lr, wd)
        hyper = [self._hyper(g) for g in self.param_groups]
        if hyper != self._pushed_hyper_values:
            _, ref_json, main_json = self._config_json()
            if (ref_json, main_json) != self._pushed_hyper:
                _call(self._engine.set_inner, ref_json, main_json)
                self._pushed_hyper = (ref_json, main_json)
            self._pushed_hyper_values = hyper

    @torch.no_grad()
    def step(self, closure=None):
        """One PROFIT call (warm-up, reference or main, as the cycle says) on the current
        gradients. Everything is checked before anything changes."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._sync()
        if self._ranks is None:
            ptrs, gptrs = self._addresses()
        else:
            # Every rank checks its own call, then the ranks agree before any of them steps
            # (or waits in the all-gather of the sums).
            try:
                ptrs, gptrs = self._addresses()
                _call(self._engine.check, ptrs, gptrs)
                failure = None
            except Exception as e:  # re-raised below, after the ranks agreed
                failure = e
            if not self._ranks.agree(failure is None):
                raise (failure or self._ranks.refused())
        call, phase, scale, main = _call(self._engine.step, ptrs, gptrs, self._stream())
        self.last_report = StepReport(call, phase, scale, MainReport(*main) if main is not None else None)
        return loss

    def _addresses(self):
        """The parameters' and gradients' addresses (``0``: no gradient), every tensor checked
        (cheap checks first; the full check names what is wrong)."""
        dtype, strided, sharded, shapes = self._dtype, torch.strided, self._any_dtensor, self._shapes
        cuda, device = self._cuda, self._device
        ptrs, gptrs = [], []
        for q in self._params:
            p = local(q) if sharded else q
            on = p.device == device if cuda else p.is_cpu
            if p.dtype is not dtype or not on or not p.is_contiguous() or p.shape != shapes[len(ptrs)]:
                self._check_param(p)
                raise ProfitInputError(
                    f"a parameter changed to {p.dtype} {tuple(p.shape)} since the optimizer was built over {dtype} {tuple(shapes[len(ptrs)])}"
                )
            ptrs.append(p.data_ptr())
            g = q.grad
            if g is None:
                gptrs.append(0)
                continue
            if sharded:
                g = local(g)
            on = g.device == device if cuda else g.is_cpu
            if g.dtype is not dtype or not on or g.layout is not strided or not g.is_contiguous() or g.shape != p.shape:
                self._check_param(g, "a gradient")
                raise ProfitInputError(
                    f"a gradient of shape {tuple(g.shape)} and dtype {g.dtype} for a parameter of shape {tuple(p.shape)} and dtype {p.dtype}"
                )
            gptrs.append(g.data_ptr())
        return ptrs, gptrs

    def _stream(self):
        """torch's current CUDA stream on the optimizer's device (the engine orders its work
        after it and before what torch queues next), or 0 on the CPU."""
        return torch.cuda.current_stream(self._device).cuda_stream if self._cuda else 0

    # -- what a run reports ---------------------------------------------------------------------

    def _counter(self, i):
        return self._engine.counters()[i]

    @property
    def calls(self) -> int:
        """Counted calls (skipped ones are not counted)."""
        return self._counter(0)

    @property
    def skipped_calls(self) -> int:
        """Calls skipped for a non-finite gradient (``non_finite="skip"``)."""
        return self._counter(1)

    @property
    def projected_calls(self) -> int:
        """Main calls whose projection fired."""
        return self._counter(2)

    @property
    def stalled_calls(self) -> int:
        """Main calls whose projection removed more than 95% of ``|g|^2``."""
        return self._counter(3)

    @property
    def main_steps(self) -> int:
        """Main optimizer steps taken (warm-up and main calls)."""
        return self._counter(5)

    @property
    def next_phase(self) -> str:
        """The phase the next call will have."""
        return self._engine.next_phase()

    def reference_lrs(self) -> List[float]:
        """Each group's reference learning rate for the next call: its ``ref_lr``, or
        ``lr / ratio`` when that is ``None`` (the default)."""
        return [self._rates(g)[1] for g in self.param_groups]

    def tensor_reports(self) -> List[dict]:
        """Per trainable parameter at the last main call: ``omega``, ``delta_sq``,
        ``grad_sq``, ``projected``."""
        return [dict(omega=o, delta_sq=d, grad_sq=g, projected=p) for o, d, g, p in self._engine.tensor_reports()]

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self):
        """The state in ``torch.optim``'s layout: ``state`` maps each parameter's index to its
        tensors (``exp_avg``, ``momentum_buffer``, ... with PyTorch's names, and PROFIT's
        ``anchor``, ``delta``, ``ref_<slot>``; ``step`` and ``ref_step`` as float tensors),
        ``param_groups`` the groups' settings, ``profit`` the counters and configuration.
        ``torch.save`` it; ``load_state_dict`` resumes bitwise, mid-cycle included (restore
        the model's parameters too: the anchor belongs with them)."""
        self._sync()  # param_groups as the next call will see them
        meta, bufs = self._export()
        owner = dict(zip(self._param_names, self._params))
        state = {}
        for key, t in bufs.items():
            name, kind = key.split("/", 1)
            p = owner[name]
            if is_dtensor(p):
                # Sharded like its parameter (what torch.distributed.checkpoint saves and loads).
                t = type(p).from_local(t, p.device_mesh, p.placements, shape=p.shape, stride=p.stride(), run_check=False)
            if kind.startswith("main/"):
                kind = kind[len("main/"):]
            elif kind.startswith("ref/"):
                kind = "ref_" + kind[len("ref/"):]
            state.setdefault(int(name), {})[kind] = t
        for p in meta["params"]:
            s = state.setdefault(int(p["name"]), {})
            s["step"] = torch.tensor(float(p["steps"]["main"]))
            s["ref_step"] = torch.tensor(float(p["steps"]["reference"]))
        groups = []
        k = 0
        for g in self.param_groups:
            packed = {key: v for key, v in g.items() if key != "params"}
            packed["params"] = list(range(k, k + len(g["params"])))
            k += len(g["params"])
            groups.append(packed)
        return {"state": state, "param_groups": groups, "profit": {"meta": json.dumps(meta), "version": 1}}

    def load_state_dict(self, state_dict):
        """Load a ``state_dict()`` of an optimizer built the same way (parameters, groups,
        settings). Everything is checked before anything changes."""
        try:
            groups = state_dict["param_groups"]
            meta = json.loads(state_dict["profit"]["meta"])
            state = state_dict["state"]
        except (KeyError, TypeError, ValueError) as e:
            raise ProfitStateError(f"not a torch_profit state dict: {e!r}") from None
        if len(groups) != len(self.param_groups) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)
        ):
            raise ProfitStateError("the state dict's parameter groups differ from the optimizer's")
        keys, tensors = [], []
        shapes = dict(zip(self._param_names, (local(p).shape for p in self._params)))
        for key, _ in self._engine.buffer_keys():
            name, kind = key.split("/", 1)
            field = kind[len("main/"):] if kind.startswith("main/") else ("ref_" + kind[len("ref/"):] if kind.startswith("ref/") else kind)
            try:
                t = state[int(name)][field]
            except (KeyError, TypeError):
                raise ProfitStateError(f"the state dict has no {field!r} for parameter {name}") from None
            if not isinstance(t, torch.Tensor):
                raise ProfitStateError(f"state {field!r} of parameter {name} is not a tensor")
            t = local(t)
            if t.shape != shapes[name]:
                raise ProfitStateError(f"state {field!r} of parameter {name}: expected a tensor of shape {tuple(shapes[name])}, got {tuple(t.shape)}")
            t = t.detach().to(device=self._device, dtype=self._dtype).contiguous()
            keys.append(key)
            tensors.append(t)
        # A sharded state: every rank loads the same meta (torch.distributed.checkpoint keeps
        # one copy of non-tensor values); it is this rank's once the world sizes agree (the
        # shard shapes were checked above, the tensors are this rank's shards).
        world = self._ranks.world if self._ranks is not None and self._ranks.any_sharded else 1
        if meta.get("world_size", 1) != world:
            raise ProfitStateError(
                f"the state dict was saved by {meta.get('world_size', 1)} rank(s), this optimizer spans {world}: resharding is not supported"
            )
        if world > 1:
            meta["rank"] = self._ranks.rank
            local_shapes = dict(zip(self._param_names, (list(local(p).shape) for p in self._params)))
            for p in meta.get("params", []):
                if p.get("name") in local_shapes:
                    p["shape"] = local_shapes[p["name"]]
        # PROFIT's settings must be the optimizer's; the inner optimizers' hyperparameters are
        # taken from the state dict, as torch.optim takes its param_groups' (their kinds and
        # state layout must agree: checked by the engine).
        mine = json.loads(self._config_json()[0])
        theirs = meta.get("config", {})
        for key in mine:
            if key not in ("reference", "main", "lr_coupling") and mine[key] != theirs.get(key):
                raise ProfitStateError(f"the state dict's {key} is {theirs.get(key)!r}, this optimizer's {mine[key]!r}")
        _call(self._engine.load_state, json.dumps(meta), keys, [t.data_ptr() for t in tensors], True, self._stream())
        for g, saved in zip(self.param_groups, groups):
            for key, v in saved.items():
                if key != "params":
                    g[key] = v
        self._pushed = [self._rates(self.param_groups[gi]) for gi in self._engine_groups]
        rates = self._engine.group_rates()
        for e, gi in enumerate(self._engine_groups):
            g = self.param_groups[gi]
            if self._rates(g) != rates[e]:
                # The groups' settings and the engine's loaded rates agree unless the state
                # dict was edited by hand: the settings win, at the next step.
                self._pushed[e] = rates[e]
        _, ref_json, main_json = self._config_json()
        self._pushed_hyper = (ref_json, main_json)
        self._pushed_hyper_values = [self._hyper(g) for g in self.param_groups]

    def __repr__(self):
        s = self._settings
        return (
            f"PROFIT(main={s['main']!r}, reference={s['reference']!r}, ratio={s['ratio']:g}, n_ref={s['n_ref']}, "
            f"delta={s['delta']!r}, projection={s['projection']!r}, groups={len(self.param_groups)})"
        )
