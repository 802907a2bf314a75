"""PROFIT for PyTorch: ``torch_profit.PROFIT`` is a ``torch.optim.Optimizer`` whose ``step()``
runs the Rust core of https://arxiv.org/abs/2412.01930's PROFIT (the repository's
``profit-core``) on the tensors' own memory::

    opt = torch_profit.PROFIT(model.parameters(), lr=1e-3, main="adam", ratio=1e3)
"""

from ._errors import (
    NonFiniteGradientError,
    ProfitCollectiveError,
    ProfitConfigError,
    ProfitDeviceError,
    ProfitError,
    ProfitInputError,
    ProfitStateError,
    ProjectionOverflowError,
)
from ._optimizer import PROFIT, MainReport, StepReport

__all__ = [
    "PROFIT",
    "StepReport",
    "MainReport",
    "ProfitError",
    "ProfitConfigError",
    "ProfitInputError",
    "ProfitDeviceError",
    "NonFiniteGradientError",
    "ProjectionOverflowError",
    "ProfitStateError",
    "ProfitCollectiveError",
]
