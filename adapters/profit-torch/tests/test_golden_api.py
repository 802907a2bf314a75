"""The golden trajectories replayed through ``torch_profit.PROFIT`` (the public API only) with the
golden harness: tests/golden (float64, both delta modes; also in float32 at the README's 1e-4),
tests/golden32 (float32, realized delta), tests/golden16 (the file's own 16-bit dtype and delta
mode: ``rounding: once`` files bitwise, parameters and statistics; ``per_op`` files within the
README's tolerances) and every file of $PROFIT_GOLDEN_DIR when set.

Each replay checks the parameters after every call, the phase, the ``projected`` flag(s) and
(16-bit files) omega / |delta|^2 / |g|^2 against the recording. The statistics are read from
``opt.last_report`` and ``opt.tensor_reports()`` (mapped by ``lockstep.profit_report``).
"""
import os
from pathlib import Path

import pytest

import torch_profit
from golden_replay import case_dtype, config_kwargs, golden_files, load_case, replay
from lockstep import profit_report, record

REPO = Path(__file__).resolve().parents[3]
FOLDERS = {
    "golden": REPO / "tests" / "golden",
    "golden32": REPO / "tests" / "golden32",
    "golden16": REPO / "tests" / "golden16",
}
FILES = {name: golden_files(path) for name, path in FOLDERS.items()}
EXTRA_DIR = os.environ.get("PROFIT_GOLDEN_DIR")
EXTRA = golden_files(EXTRA_DIR) if EXTRA_DIR else []


def make_profit(params, config):
    return torch_profit.PROFIT(params, **config_kwargs(config))


def modes(case):
    """The delta modes a file is replayed in: both for float64 files (they agree to ~1e-16
    there), else the file's own."""
    return ["realized", "accumulated"] if case_dtype(case) == "float64" else [None]


def run(path, **kw):
    r = replay(path, make_profit, report=profit_report, **kw)
    stat = "-" if r["max_stat_error"] is None else f"{r['max_stat_error']:.2e}"
    print(f"{Path(r['path']).name} {r['dtype']} {r['delta']} rounding={r['rounding']}: "
          f"params {r['max_error']:.2e} (tol {r['tolerance']['params']:.0e}) stats {stat}")
    assert r["ok"], f"{r['name']} ({r['dtype']}, {r['delta']}): {r['failures'][:5]}"
    return r


def ids(files):
    return [f.name for f in files]


def test_golden_folders_present():
    assert len(FILES["golden"]) >= 14
    assert len(FILES["golden32"]) >= 3
    assert len(FILES["golden16"]) == 48


@pytest.mark.parametrize("delta", ["realized", "accumulated"])
@pytest.mark.parametrize("path", FILES["golden"], ids=ids(FILES["golden"]))
def test_golden64(path, delta):
    run(path, delta=delta)


@pytest.mark.parametrize("path", FILES["golden"], ids=ids(FILES["golden"]))
def test_golden64_in_float32(path):
    run(path, dtype="float32", delta="realized")


@pytest.mark.parametrize("path", FILES["golden32"], ids=ids(FILES["golden32"]))
def test_golden32(path):
    run(path)


def test_golden32_tells_delta_modes_apart():
    # golden32 README: the accumulated delta misses the ratio >= 1e3 files; ratio 10 agrees.
    for path in FILES["golden32"]:
        r = replay(path, make_profit, delta="accumulated", report=profit_report)
        assert r["ok"] == ("ratio10" in path.name), (path.name, r["max_error"])


@pytest.mark.parametrize("path", FILES["golden16"], ids=ids(FILES["golden16"]))
def test_golden16(path):
    r = run(path)
    if r["rounding"] == "once":
        assert r["max_error"] == 0.0 and r["max_stat_error"] == 0.0


@pytest.mark.skipif(not EXTRA, reason="PROFIT_GOLDEN_DIR not set")
@pytest.mark.parametrize("path", EXTRA, ids=ids(EXTRA))
def test_golden_extra_dir(path):
    case = load_case(path)
    for delta in modes(case):
        run(case, delta=delta)


def test_worst_errors_per_folder():
    """Replays every folder and records the worst parameter / statistics error per folder and
    mode (printed, and in the run's summary)."""
    folders = dict(FILES)
    if EXTRA:
        folders["PROFIT_GOLDEN_DIR"] = EXTRA
    bad = []
    for folder, files in folders.items():
        worst = {}
        for path in files:
            case = load_case(path)
            runs = [(d, None) for d in modes(case)]
            if folder == "golden":
                runs.append(("realized", "float32"))
            for delta, dtype in runs:
                r = replay(case, make_profit, delta=delta, dtype=dtype, report=profit_report)
                if not r["ok"]:
                    bad.append((path.name, r["failures"][:2]))
                key = (r["dtype"], r["delta"], r["rounding"] or "-")
                p, s, n, name = worst.get(key, (0.0, 0.0, 0, ""))
                if r["max_error"] > p:
                    name = path.name
                worst[key] = (max(p, r["max_error"]), max(s, r["max_stat_error"] or 0.0), n + 1,
                              name)
        for (dtype, delta, rounding), (p, s, n, name) in sorted(worst.items()):
            record("golden", f"{folder} {dtype} {delta} rounding={rounding}",
                   f"{n:2d} files: params {p:.2e} (worst: {name or '-'})  stats {s:.2e}")
    assert not bad, bad
