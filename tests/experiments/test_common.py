"""Shared experiment utilities: atomic writes, resumable grids (incl. SIGKILL), statistics, CLI."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from experiments.common.config import parse_config
from experiments.common.grid import cell_path, load_cells, run_grid
from experiments.common.io import atomic_write_csv, atomic_write_json, read_csv, read_json
from experiments.common.stats import mean_ci

REPO = Path(__file__).resolve().parents[2]


def test_mean_ci_matches_the_t_formula():
    x = np.array([0.3, 1.2, 0.7, 2.0, 1.1])
    iv = mean_ci(x, 0.95)
    half = stats.t.ppf(0.975, 4) * x.std(ddof=1) / np.sqrt(5)
    assert iv.mean == pytest.approx(x.mean())
    assert (iv.lo, iv.hi) == pytest.approx((x.mean() - half, x.mean() + half))
    one = mean_ci([3.0])
    assert one.mean == 3.0 and one.lo == -np.inf and one.hi == np.inf
    with pytest.raises(ValueError, match="values"):
        mean_ci([])
    with pytest.raises(ValueError, match="finite"):
        mean_ci([1.0, np.nan])
    with pytest.raises(ValueError, match="level"):
        mean_ci([1.0, 2.0], level=1.5)


def test_atomic_writes_roundtrip(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": np.arange(3), "y": np.float32(1.5), "z": np.nan})
    assert read_json(tmp_path / "a.json") == {"x": [0, 1, 2], "y": 1.5, "z": None}
    atomic_write_csv(tmp_path / "b.csv", [{"a": 1, "b": 2.5}, {"a": 3, "c": "q"}])
    assert read_csv(tmp_path / "b.csv") == [
        {"a": "1", "b": "2.5", "c": ""},
        {"a": "3", "b": "", "c": "q"},
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_run_grid_resumes_after_an_exception(tmp_path):
    cells = [{"i": i} for i in range(4)]
    calls = []

    def flaky(cell):
        if cell["i"] == 2 and not calls.count("failed"):
            calls.append("failed")
            raise RuntimeError("injected")
        calls.append(cell["i"])
        return {"square": cell["i"] ** 2}

    with pytest.raises(RuntimeError, match="injected"):
        run_grid(cells, flaky, tmp_path, show_progress=False)
    mtimes = {i: cell_path(tmp_path, cells[i]).stat().st_mtime_ns for i in (0, 1)}
    records, counts = run_grid(cells, flaky, tmp_path, show_progress=False)
    assert calls == [0, 1, "failed", 2, 3]  # 0 and 1 were not redone
    assert counts == {"run": 2, "skipped": 2}
    assert [r["result"]["square"] for r in records] == [0, 1, 4, 9]
    assert {i: cell_path(tmp_path, cells[i]).stat().st_mtime_ns for i in (0, 1)} == mtimes
    assert len(load_cells(tmp_path)) == 4


def test_run_grid_redoes_a_cell_whose_config_changed(tmp_path):
    run_grid([{"i": 0}], lambda c: {"v": 1}, tmp_path, show_progress=False)
    path = cell_path(tmp_path, {"i": 0})
    data = read_json(path)
    data["cell"]["i"] = 99  # a stale or foreign file under the same name
    path.write_text(json.dumps(data))
    _, counts = run_grid([{"i": 0}], lambda c: {"v": 2}, tmp_path, show_progress=False)
    assert counts == {"run": 1, "skipped": 0}


def test_run_grid_resumes_after_sigkill(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from experiments.common.grid import run_grid
        log = open({str(tmp_path / "calls.txt")!r}, "a")
        def cell_fn(cell):
            log.write(f"{{cell['i']}}\\n"); log.flush()
            time.sleep(float(sys.argv[1]))
            return {{"i": cell["i"]}}
        run_grid([{{"i": i}} for i in range(5)], cell_fn, {str(tmp_path / "cells")!r},
                 show_progress=False)
        """
    )
    (tmp_path / "job.py").write_text(script)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "job.py"), "0.4"])
    folder = tmp_path / "cells"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(folder.glob("*.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(folder.glob("*.json"))
    assert 2 <= len(done) < 5, "the job should be killed mid-grid"
    mtimes = {p.name: p.stat().st_mtime_ns for p in done}
    first_calls = (tmp_path / "calls.txt").read_text().split()
    subprocess.run([sys.executable, str(tmp_path / "job.py"), "0"], check=True)
    all_calls = (tmp_path / "calls.txt").read_text().split()
    resumed = all_calls[len(first_calls) :]
    finished = {str(read_json(p)["cell"]["i"]) for p in done}
    assert not finished & set(resumed), "finished cells were redone"
    assert sorted(finished | set(resumed)) == ["0", "1", "2", "3", "4"]
    assert {p.name: p.stat().st_mtime_ns for p in done} == mtimes
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


@dataclasses.dataclass(frozen=True)
class _Toy:
    deltas: tuple[float, ...] = (0.1, 0.2)
    name: str = "x"
    seeds: int = 3
    flag: bool = True


def test_cli_overrides_a_frozen_config():
    cfg = parse_config(_Toy, ["--deltas", "0.5,0.7", "--seeds", "2", "--flag", "false"])
    assert cfg == _Toy(deltas=(0.5, 0.7), name="x", seeds=2, flag=False)
    quick = parse_config(_Toy, ["--quick"], quick_config=lambda: _Toy(name="q"))
    assert quick.name == "q"


def test_plot_partition():
    from matplotlib.figure import Figure

    from abo_jax.data import dirichlet
    from experiments.common.plotting import plot_partition

    y = np.random.default_rng(0).integers(0, 10, size=600).astype(np.int32)
    p = dirichlet(y, num_clients=6, alpha=0.3, key=0)
    ax = Figure().subplots()
    assert plot_partition(p, ax) is ax
    heights = np.array([patch.get_height() for patch in ax.patches]).reshape(10, 6)
    np.testing.assert_array_equal(heights.T, p.class_histogram)
    assert ax.get_title() == p.scheme
    with pytest.raises(ValueError, match="class_names"):
        plot_partition(p, ax, class_names=["a"])
    # without an Axes, a new pyplot figure is made
    import matplotlib.pyplot as plt

    ax = plot_partition(p, class_names=[f"c{c}" for c in range(10)])
    try:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"c{c}" for c in range(10)]
    finally:
        plt.close(ax.figure)
