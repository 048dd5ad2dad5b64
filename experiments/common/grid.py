"""Resumable grids: every finished cell is written atomically to its own JSON file.

A grid killed mid-way and started again skips every cell whose file exists (and whose stored
config matches), so finished work is never redone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.common.io import atomic_write_json, config_hash, read_json
from experiments.common.progress import progress

__all__ = ["cell_id", "cell_path", "run_grid", "load_cells"]


def cell_id(cell: Mapping[str, Any]) -> str:
    """A readable, filesystem-safe name for a cell plus a hash of its full config."""
    parts = []
    for k, v in cell.items():
        if isinstance(v, (str, int, float)) and len(str(v)) <= 24:
            parts.append(f"{k}={v}")
    stem = re.sub(r"[^A-Za-z0-9_.=-]+", "-", "_".join(parts))[:120]
    return f"{stem}_{config_hash(dict(cell))}"


def cell_path(folder: str | Path, cell: Mapping[str, Any]) -> Path:
    return Path(folder) / f"{cell_id(cell)}.json"


def _finished(path: Path, cell: Mapping[str, Any]) -> bool:
    if not path.exists():
        return False
    try:
        stored = read_json(path)
    except (OSError, ValueError):
        return False  # unreadable (should not happen with atomic writes): redo it
    return stored.get("cell") == read_json_roundtrip(cell)


def read_json_roundtrip(obj: Any) -> Any:
    import json

    from experiments.common.io import to_jsonable

    return json.loads(json.dumps(to_jsonable(obj)))


def run_grid(
    cells: Sequence[Mapping[str, Any]],
    run_cell: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    folder: str | Path,
    *,
    desc: str = "grid",
    show_progress: bool = True,
) -> tuple[list[dict], dict[str, int]]:
    """Runs the cells not yet finished and returns every cell's stored result.

    Args:
      cells: JSON-able dicts, one per cell (their content identifies the cell).
      run_cell: ``cell -> result dict``; its output is stored as ``{"cell": cell, "result": ...}``.
      folder: where the per-cell files live (created if missing).
      desc: progress-bar label.
      show_progress: draw a tqdm bar on stderr.

    Returns:
      ``(records, counts)`` with ``records`` in the order of ``cells`` and ``counts`` =
      ``{"run": cells computed now, "skipped": cells found finished}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = [cell_id(c) for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError("cells: two cells have the same content; each cell must be unique")
    counts = {"run": 0, "skipped": 0}
    records = []
    bar = progress(total=len(cells), desc=desc, disable=not show_progress)
    for cell in cells:
        path = cell_path(folder, cell)
        if _finished(path, cell):
            counts["skipped"] += 1
        else:
            result = run_cell(cell)
            atomic_write_json(path, {"cell": dict(cell), "result": result})
            counts["run"] += 1
        records.append(read_json(path))
        bar.update(1)
    bar.close()
    return records, counts


def load_cells(folder: str | Path) -> list[dict]:
    """Every finished cell record in ``folder`` (sorted by file name)."""
    return [read_json(p) for p in sorted(Path(folder).glob("*.json"))]
