"""Shared setup of the torch_profit test suite: one thread (the machine is shared, and the
reductions are thread-count independent anyway), the tests folder importable, and a summary of
the measured worst errors at the end of the run (``lockstep.RESULTS``)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)

import lockstep  # noqa: E402


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not lockstep.RESULTS:
        return
    terminalreporter.section("torch_profit: worst errors measured")
    for section in sorted(lockstep.RESULTS):
        terminalreporter.write_line(f"[{section}]")
        for key, line in sorted(lockstep.RESULTS[section].items()):
            terminalreporter.write_line(f"  {key:60s} {line}")
