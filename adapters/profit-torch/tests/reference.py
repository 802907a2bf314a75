"""An independent PyTorch reference ("oracle") for PROFIT (arXiv 2412.01930, Algorithm 1).

Written from ALGORITHM.md around PyTorch's own ``torch.optim`` optimizers (``foreach=False``),
independently of the Rust code, to check the ``torch_profit`` package against. It is slow and
simple on purpose: every rule below is one visible step.

One ``step()`` per batch. The first ``warmup_steps`` calls go to the main optimizer only; then
calls run in cycles of ``n_ref + 1``:

* call 0 of a cycle: remember the anchor (a copy of every trainable parameter);
* calls 0 .. n_ref-1: reference step with the reference optimizer (its own state, never reset);
* call n_ref (main): form ``delta``; ``omega = <delta, g>`` (sums in float64, over all
  trainable tensors with a gradient, or per tensor); if ``omega < 0`` then
  ``g -= (omega / |delta|^2) * delta``; restore the anchor; main optimizer step with ``g``.

Torch-specific rules (see ``ReferencePROFIT``): a parameter whose ``.grad`` is None sits the
call out (no update, no optimizer-state change, nothing in any sum) but is still anchored and
restored with its cycle; ``max_grad_norm`` scales every gradient first, as
``torch.nn.utils.clip_grad_norm_``; ``non_finite`` refuses ("error"), skips ("skip", the call
is not counted) or lets through ("propagate") non-finite gradients.

16-bit parameters (bfloat16, float16) follow ALGORITHM.md section 4 by default
(``rounding="once"``): the torch optimizers run in float32 on float32 copies of the 16-bit
values and every stored value (parameter, optimizer state, delta) is rounded to the 16-bit type
once per step, which is ``scripts/make_golden.py --rounding once``. ``rounding="per_op"`` runs
the torch optimizers on the 16-bit parameters themselves (what PyTorch does in 16 bits).
"""
import math

import torch

KINDS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}

# The main optimizer's hyperparameters (besides lr and weight_decay) by kind, torch's names.
MAIN_HYPER = {
    "sgd": ("momentum", "dampening", "nesterov", "maximize"),
    "adam": ("betas", "eps", "amsgrad", "maximize"),
    "adamw": ("betas", "eps", "amsgrad", "maximize"),
    "rmsprop": ("alpha", "eps", "momentum", "centered", "maximize"),
}

LOW_PRECISION = (torch.bfloat16, torch.float16)

# Keys a parameter group may carry: only the main lr, weight decay and the reference lr may
# differ between groups ("param_names" and "name" are torch / user bookkeeping).
GROUP_KEYS = {"params", "lr", "weight_decay", "ref_lr", "param_names", "name"}


class NonFiniteGradientError(RuntimeError):
    """A gradient had a non-finite element under ``non_finite="error"``; nothing changed."""


class ProjectionOverflowError(RuntimeError):
    """The projected gradient overflowed the element type although its inputs were finite."""


def dot64(a, b):
    """<a, b> summed in float64 (exact widening of any float element type)."""
    return (a.double() * b.double()).sum().item()


class _Slot:
    """Bookkeeping of one parameter."""

    def __init__(self, param, group, shadow):
        self.param = param
        self.group = group  # index into param_groups
        self.trainable = param.requires_grad
        # The tensor the torch optimizers step: the parameter itself, or (16-bit, rounding
        # "once") a float32 copy of its value, kept equal to it between calls.
        self.work = param.detach().float().clone() if shadow else param
        self.shadow = shadow
        self.anchor = None  # theta_ref, in the parameter's dtype
        self.delta = None  # accumulated delta buffer, in the parameter's dtype


class ReferencePROFIT(torch.optim.Optimizer):
    """PROFIT around ``torch.optim`` optimizers; see the module docstring.

    Per group: the main lr is the group's ``lr``, the main weight decay its ``weight_decay``
    (and the main optimizer's other hyperparameters its keys of torch's names, equal across
    groups at construction, read at every call so that schedulers may move them);
    the reference lr is the group's ``ref_lr`` if set, else the global ``ref_lr`` if set, else
    ``lr / ratio`` (read at every call, so it follows lr changes). All other hyperparameters are
    global. ``weight_decay=None`` is torch's default for the main kind (AdamW 1e-2, else 0).
    ``reference_options`` holds the reference optimizer's hyperparameters (torch names, no lr);
    its ``maximize`` defaults to the global ``maximize``.

    After each call: ``last_report`` (dict), ``calls`` (counted calls), ``projected_calls``,
    ``skipped_calls``; ``main_optimizer`` and ``reference_optimizer`` are the torch optimizers.
    """

    def __init__(self, params, lr=1e-3, main="adam", ratio=1e3, *, reference="sgd", ref_lr=None,
                 n_ref=1, delta="realized", projection="global", warmup_steps=0,
                 max_grad_norm=None, non_finite="error", weight_decay=None, betas=(0.9, 0.999),
                 eps=1e-8, amsgrad=False, maximize=False, momentum=0.0, dampening=0.0,
                 nesterov=False, alpha=0.99, centered=False, reference_options=None,
                 rounding="once"):
        for name, value, allowed in [("main", main, KINDS), ("reference", reference, KINDS),
                                     ("delta", delta, ("realized", "accumulated")),
                                     ("projection", projection, ("global", "per_tensor")),
                                     ("non_finite", non_finite, ("error", "skip", "propagate")),
                                     ("rounding", rounding, ("once", "per_op"))]:
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: expected one of {sorted(allowed)}")
        if int(n_ref) != n_ref or n_ref < 1:
            raise ValueError(f"n_ref={n_ref!r}: expected an integer >= 1")
        if int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps!r}: expected an integer >= 0")
        if not ratio > 0:
            raise ValueError(f"ratio={ratio!r}: expected > 0")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={max_grad_norm!r}: expected > 0 or None")
        ref_options = dict(reference_options or {})
        if "lr" in ref_options:
            raise ValueError("the reference lr is set by ref_lr / ratio, not reference_options")
        ref_options.setdefault("maximize", maximize)
        if weight_decay is None:
            weight_decay = 1e-2 if main == "adamw" else 0.0

        hyper = dict(momentum=momentum, dampening=dampening, nesterov=nesterov, maximize=maximize,
                     betas=tuple(betas), eps=eps, amsgrad=amsgrad, alpha=alpha, centered=centered)
        main_kw = {k: hyper[k] for k in MAIN_HYPER[main]}
        # The main optimizer's hyperparameters are in the defaults (and so in every group), as
        # in the torch optimizer of that kind, so that schedulers that move them (OneCycleLR /
        # CyclicLR with cycle_momentum: "betas" for Adam, "momentum" for SGD and RMSprop) find
        # them; they are read at every call. They may not differ between groups at construction.
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, **main_kw})
        for group in self.param_groups:
            extra = set(group) - GROUP_KEYS - set(main_kw)
            extra |= {k for k in main_kw
                      if (tuple(group[k]) if k == "betas" else group[k]) != main_kw[k]}
            if extra:
                raise ValueError(f"per-group keys {sorted(extra)}: only lr, weight_decay and "
                                 "ref_lr may differ between groups")

        self.main, self.reference = main, reference
        self.ratio, self.ref_lr = ratio, ref_lr
        self.n_ref, self.warmup_steps = int(n_ref), int(warmup_steps)
        self.delta_mode, self.projection = delta, projection
        self.max_grad_norm, self.non_finite, self.rounding = max_grad_norm, non_finite, rounding

        self._slots = [
            _Slot(p, gi, shadow=rounding == "once" and p.dtype in LOW_PRECISION and p.requires_grad)
            for gi, group in enumerate(self.param_groups) for p in group["params"]
        ]
        self.main_optimizer = KINDS[main](self._inner_groups(), foreach=False, **main_kw)
        self.reference_optimizer = KINDS[reference](self._inner_groups(), foreach=False,
                                                    **ref_options)
        self._sync_rates()

        self.calls = 0  # counted calls (skipped calls are not counted)
        self.projected_calls = 0
        self.skipped_calls = 0
        self.last_report = None

    # -- groups and rates -------------------------------------------------------------------

    def _inner_groups(self):
        """One inner group per user group, over the tensors the torch optimizers step."""
        groups = [{"params": []} for _ in self.param_groups]
        for s in self._slots:
            groups[s.group]["params"].append(s.work)
        return groups

    def group_ref_lr(self, group):
        """The reference lr of a parameter group."""
        if group.get("ref_lr") is not None:
            return group["ref_lr"]
        if self.ref_lr is not None:
            return self.ref_lr
        return group["lr"] / self.ratio

    def _sync_rates(self):
        """Copy the groups' current rates into the inner optimizers."""
        for group, mg, rg in zip(self.param_groups, self.main_optimizer.param_groups,
                                 self.reference_optimizer.param_groups):
            mg["lr"] = group["lr"]
            mg["weight_decay"] = group["weight_decay"]
            for key in MAIN_HYPER[self.main]:
                mg[key] = tuple(group[key]) if key == "betas" else group[key]
            rg["lr"] = self.group_ref_lr(group)

    def add_param_group(self, param_group):
        if hasattr(self, "_slots"):
            raise NotImplementedError("ReferencePROFIT takes its parameter groups at construction")
        super().add_param_group(param_group)

    # -- one call ---------------------------------------------------------------------------

    def phase_of(self, call):
        """("warmup" | "reference" | "main", position in the cycle) of counted call `call`."""
        if call < self.warmup_steps:
            return "warmup", None
        pos = (call - self.warmup_steps) % (self.n_ref + 1)
        return ("reference" if pos < self.n_ref else "main"), pos

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._sync_rates()
        slots = self._slots

        # Gradients in the dtype the optimizers compute in, and their float64 |g_i|^2.
        # Frozen parameters (requires_grad=False) and missing gradients sit the call out.
        grads = [None] * len(slots)
        for i, s in enumerate(slots):
            if s.trainable and s.param.grad is not None:
                grads[i] = s.param.grad.detach().to(s.work.dtype)
        sq = [None if g is None else dot64(g, g) for g in grads]

        # Non-finite check: before anything changes.
        if self.non_finite != "propagate" and any(v is not None and not math.isfinite(v) for v in sq):
            if self.non_finite == "error":
                raise NonFiniteGradientError(f"non-finite gradient at call {self.calls}")
            self.skipped_calls += 1
            self.last_report = {"call": self.calls, "phase": "skipped"}
            return loss

        # Clipping by global norm, as torch.nn.utils.clip_grad_norm_ (norm summed in float64).
        factor = 1.0
        if self.max_grad_norm is not None:
            total = math.sqrt(sum(v for v in sq if v is not None))
            factor = self.max_grad_norm / (total + 1e-6)
            if factor >= 1.0:
                factor = 1.0
            else:  # also NaN, which then propagates, as in torch
                grads = [None if g is None else g * factor for g in grads]
                sq = [None if g is None else dot64(g, g) for g in grads]

        phase, pos = self.phase_of(self.calls)
        report = {"call": self.calls, "phase": phase, "clip_factor": factor}
        if pos == 0:  # a cycle starts: anchor every trainable parameter
            for s in slots:
                if s.trainable:
                    s.anchor = s.param.detach().clone()
                    if self.delta_mode == "accumulated":
                        s.delta = torch.zeros_like(s.param)
        if phase == "warmup":
            self._inner_step(self.main_optimizer, grads)
        elif phase == "reference":
            self._inner_step(self.reference_optimizer, grads,
                             accumulate=self.delta_mode == "accumulated")
        else:
            grads = self._project(grads, sq, report)
            for s in slots:  # restore the anchor, also where the gradient is missing
                if s.trainable:
                    s.param.copy_(s.anchor)
                    if s.shadow:
                        s.work.copy_(s.anchor)
            self._inner_step(self.main_optimizer, grads)
            self.projected_calls += report["projected"]
        self.calls += 1
        self.last_report = report
        return loss

    def _delta(self, s):
        """The slot's delta at the main call, in the parameter's dtype."""
        if self.delta_mode == "accumulated":
            return s.delta
        if s.shadow:  # the float32 difference of two 16-bit values, rounded to 16 bits once
            return (s.param.float() - s.anchor.float()).to(s.param.dtype)
        return s.param - s.anchor  # one rounding to the parameter's dtype

    def _project(self, grads, sq, report):
        """Main call: sums, decision and the projected gradients (nothing is mutated)."""
        idx = [i for i, g in enumerate(grads) if g is not None]
        deltas = {i: self._delta(self._slots[i]) for i in idx}
        omega = {i: dot64(deltas[i], grads[i]) for i in idx}
        dsq = {i: dot64(deltas[i], deltas[i]) for i in idx}
        total_omega = sum(omega[i] for i in idx)
        total_dsq = sum(dsq[i] for i in idx)
        total_gsq = sum(sq[i] for i in idx)
        if self.projection == "global":
            coef = {i: total_omega / total_dsq for i in idx} if total_omega < 0 else {}
        else:
            coef = {i: omega[i] / dsq[i] for i in idx if omega[i] < 0}

        out = list(grads)
        for i, c in coef.items():
            g, d = grads[i], deltas[i]
            # In float64, rounded once to the compute dtype (float32 for 16-bit "once").
            out[i] = (g.double() - c * d.double()).to(g.dtype)
            if not torch.isfinite(out[i]).all() and torch.isfinite(g).all() and torch.isfinite(d).all():
                raise ProjectionOverflowError(f"projected gradient overflows at call {self.calls}")

        n = len(self._slots)
        report.update(omega=total_omega, delta_sq=total_dsq, grad_sq=total_gsq,
                      projected=bool(coef))
        if self.projection == "per_tensor":
            report.update(tensor_omega=[omega.get(i) for i in range(n)],
                          tensor_delta_sq=[dsq.get(i) for i in range(n)],
                          tensor_grad_sq=[sq[i] if i in omega else None for i in range(n)],
                          tensor_projected=[(i in coef) if i in omega else None for i in range(n)])
        return out

    def _inner_step(self, opt, grads, accumulate=False):
        """Step `opt` with `grads` (None: the tensor sits out), then round 16-bit shadows and
        state ("once"); add the reference updates to the delta buffers when `accumulate`."""
        slots = self._slots
        saved = [s.param.grad for s in slots]
        try:
            passed = [None if g is None else g.clone() for g in grads]
            for s, g in zip(slots, passed):
                s.work.grad = g
            before = [None if g is None else s.work.detach().clone()
                      for s, g in zip(slots, passed)] if accumulate else None
            opt.step()
            if accumulate:
                for i, s in enumerate(slots):
                    if passed[i] is not None:
                        self._accumulate(s, opt, before[i], passed[i])
            for s in slots:
                if s.shadow:
                    s.param.copy_(s.work)  # one rounding to the 16-bit type
                    s.work.copy_(s.param)
                    for key, v in opt.state.get(s.work, {}).items():
                        if key != "step" and torch.is_tensor(v):
                            v.copy_(v.to(s.param.dtype))
        finally:
            for s, g0 in zip(slots, saved):
                s.work.grad = None
                s.param.grad = g0

    def _accumulate(self, s, opt, before, grad):
        """delta += the reference update `opt` has just applied to `s.work`, computed in the
        work dtype and rounded once to the parameter's dtype."""
        acc = s.delta.to(s.work.dtype)
        if self.reference == "sgd":
            # torch.optim.SGD applied `p.add_(d_p, alpha=-lr)`: recompute d_p with the same ops
            # from the parameter before the step, the gradient and the momentum buffer it left.
            group = opt.param_groups[s.group]
            d_p = -grad if group["maximize"] else grad
            if group["weight_decay"] != 0:
                d_p = d_p.add(before, alpha=group["weight_decay"])
            if group["momentum"] != 0:
                buf = opt.state[s.work]["momentum_buffer"]
                d_p = d_p.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
            want = before.add(d_p, alpha=-group["lr"])
            if not (torch.equal(want, s.work) or not torch.isfinite(want).all()):
                raise AssertionError("recomputed SGD update differs from torch.optim.SGD's")
            acc.add_(d_p, alpha=-group["lr"])
        else:
            # Other reference kinds: the applied difference (exact for a single rounded add).
            acc.add_(s.work - before)
        s.delta.copy_(acc)
