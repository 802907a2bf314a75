"""The package's exceptions: every error it raises is a ``ProfitError``; a refused call changes
nothing (no parameter, no optimizer state, no counter)."""


class ProfitError(Exception):
    """Base class of every error this package raises."""


class ProfitConfigError(ProfitError, ValueError):
    """An invalid setting or hyperparameter (PyTorch's rules), or settings the optimizer cannot
    change after it was built."""


class ProfitInputError(ProfitError, ValueError):
    """A parameter or gradient the optimizer cannot step: unsupported dtype, sparse or
    non-contiguous memory, a gradient of another shape, dtype or device, tensors sharing
    memory."""


class ProfitDeviceError(ProfitInputError):
    """A tensor on a device this build cannot serve, or moved to another device after the
    optimizer was built."""


class NonFiniteGradientError(ProfitError, FloatingPointError):
    """A gradient holds NaN or infinity (``non_finite="error"``, the default)."""


class ProjectionOverflowError(ProfitError, FloatingPointError):
    """The projection coefficient overflows even with the delta scaled (ALGORITHM.md,
    section 4)."""


class ProfitStateError(ProfitError, ValueError):
    """A state dict that does not fit this optimizer."""


class ProfitCollectiveError(ProfitError, RuntimeError):
    """A distributed all-reduce failed, or the ranks disagreed about a call."""


_KINDS = {
    "config": ProfitConfigError,
    "input": ProfitInputError,
    "device": ProfitDeviceError,
    "non_finite": NonFiniteGradientError,
    "overflow": ProjectionOverflowError,
    "state": ProfitStateError,
    "collective": ProfitCollectiveError,
}


def from_core(e):
    """The package exception for an engine ``CoreError(kind, message)``."""
    kind, msg = e.args if len(e.args) == 2 else ("backend", str(e))
    return _KINDS.get(kind, ProfitError)(msg)
