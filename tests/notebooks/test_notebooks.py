"""Every notebook under notebooks/ runs top to bottom on a fresh kernel, and is committed clean.

Each notebook is executed with nbclient on a new ``python3`` kernel (a subprocess, so this suite's
warnings-as-errors filter does not apply inside it), at the quick sizes the notebooks choose when
``ABO_NOTEBOOK_QUICK=1``, with a wall-clock limit per notebook. A cell injected before the first one
sets that variable, and its output proves the kernel runs this environment's Python.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
# Per-notebook wall-clock limit: a guard against hangs, generous for a loaded machine. At the quick
# sizes all four together take well under 3 minutes on 2 idle cores.
LIMIT_S = 300
MARK = "ABO_KERNEL_PYTHON="


def _build_module():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _execute(nb: nbformat.NotebookNode, cwd: Path, limit_s: float) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=limit_s,  # per cell; the notebook as a whole is bounded by wait_for below
        resources={"metadata": {"path": str(cwd)}},
        allow_errors=False,
    )
    asyncio.run(asyncio.wait_for(client.async_execute(), timeout=limit_s))
    return nb


def test_notebooks_exist():
    assert [p.stem for p in PATHS] == [
        "01_aggregation_broadcast",
        "02_conditions_and_rates",
        "03_paper_figure",
        "04_your_operator",
    ]


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has stored outputs"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"


def test_notebooks_match_their_sources():
    build = _build_module()
    built = {
        build.target(src).name: build.render(build.build_notebook(src)) for src in build.sources()
    }
    assert sorted(built) == [p.name for p in PATHS]
    for name, text in built.items():
        assert (NOTEBOOKS / name).read_text() == text, (
            f"{name} is out of date with notebooks/src: run python notebooks/_build.py"
        )


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    setup = nbformat.v4.new_code_cell(
        "import os, sys\n"
        "os.environ['ABO_NOTEBOOK_QUICK'] = '1'\n"
        f"os.environ['ABO_NOTEBOOK_TMP'] = {str(tmp_path)!r}\n"
        # notebook 03 finds no results there, so it runs the paper experiment's quick setting
        f"os.environ['ABO_PAPER_RESULTS'] = {str(tmp_path / 'no-results')!r}\n"
        f"print({MARK!r} + sys.executable)"
    )
    nb.cells.insert(0, setup)
    start = time.perf_counter()
    _execute(nb, NOTEBOOKS, LIMIT_S)
    elapsed = time.perf_counter() - start
    kernel_python = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
    assert kernel_python.startswith(MARK), nb.cells[0].outputs
    assert os.path.realpath(kernel_python[len(MARK) :]) == os.path.realpath(sys.executable)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.outputs:
            assert out.output_type != "error", f"{path.name} cell {i}: {out.get('ename')}"
            if out.output_type == "stream" and out.name == "stderr":
                assert "Warning" not in out.text, f"{path.name} cell {i} warned:\n{out.text}"
    assert elapsed < LIMIT_S
