"""Resumable grids: every finished cell is written atomically to its own JSON file.

A grid killed mid-way and started again skips every cell whose file exists (and whose stored
config matches), so finished work is never redone. Each cell file carries the sha256 of its
content: a file changed or damaged after it was written is moved aside (``<name>.json.damaged``; another cell's file: ``.stale``,
nothing is deleted), reported with a warning and its cell run again. While a grid runs, its folder
is locked (:func:`experiments.common.lock.folder_lock`): a second run on it is refused, naming the
process that holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from abo_jax.distributed import broadcast_from_primary, is_primary
from experiments.common.io import atomic_write_json, config_hash, read_json, to_jsonable
from experiments.common.lock import folder_lock
from experiments.common.progress import progress

__all__ = ["cell_id", "cell_path", "run_grid", "load_cells", "verify_cell_file"]


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


def _digest(cell: Any, result: Any) -> str:
    text = json.dumps(to_jsonable({"cell": cell, "result": result}), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def verify_cell_file(path: Path) -> dict | None:
    """The record in ``path`` if it is intact (its sha256 matches, or it predates checksums),
    else None."""
    try:
        stored = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or "cell" not in stored or "result" not in stored:
        return None
    digest = stored.get("sha256")
    if digest is not None and digest != _digest(stored["cell"], stored["result"]):
        return None
    return {"cell": stored["cell"], "result": stored["result"]}


def _set_aside(path: Path, why: str = "damaged") -> Path:
    target = path.with_name(f"{path.name}.{why}")
    i = 1
    while target.exists():
        i += 1
        target = path.with_name(f"{path.name}.{why}{i}")
    path.replace(target)
    return target


def _finished(path: Path, cell: Mapping[str, Any]) -> bool:
    """Whether ``path`` holds ``cell``'s intact result. A file of another cell under this name
    (stale, or edited) is set aside quietly; a damaged file of this cell is set aside with a
    warning; either way the cell runs again and nothing is deleted."""
    if not path.exists():
        return False
    try:
        stored = read_json(path)
    except (OSError, ValueError):
        stored = None
    if isinstance(stored, dict) and stored.get("cell") != read_json_roundtrip(cell):
        _set_aside(path, "stale")
        return False
    if verify_cell_file(path) is None:
        moved = _set_aside(path)
        warnings.warn(
            f"{path}: damaged (unreadable, or its content does not match its checksum); kept as "
            f"{moved.name} and the cell is run again",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def read_json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(to_jsonable(obj)))


def run_grid(
    cells: Sequence[Mapping[str, Any]],
    run_cell: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    folder: str | Path,
    *,
    desc: str = "grid",
    show_progress: bool = True,
    lock_timeout: float = 0.0,
) -> tuple[list[dict], dict[str, int]]:
    """Runs the cells not yet finished and returns every cell's stored result.

    Args:
      cells: JSON-able dicts, one per cell (their content identifies the cell).
      run_cell: ``cell -> result dict``; its output is stored as ``{"cell": cell, "result": ...}``.
      folder: where the per-cell files live (created if missing).
      desc: progress-bar label.
      show_progress: draw a tqdm bar on stderr.
      lock_timeout: seconds to wait for another process that holds ``folder`` (0: refuse at once).

    Returns:
      ``(records, counts)`` with ``records`` in the order of ``cells`` and ``counts`` =
      ``{"run": cells computed now, "skipped": cells found finished}``.

    Raises:
      FolderLocked: another live process is running a grid on ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = [cell_id(c) for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError("cells: two cells have the same content; each cell must be unique")
    counts = {"run": 0, "skipped": 0}
    records = []
    # Several processes of one distributed run (abo_jax.distributed): each runs every cell (its
    # collectives need them all); process 0 holds the lock, decides which cells are finished and
    # writes the files, the others follow its decisions.
    primary = is_primary()
    lock = folder_lock(folder, timeout=lock_timeout) if primary else contextlib.nullcontext()
    with lock:
        bar = progress(total=len(cells), desc=desc, disable=not (show_progress and primary))
        for cell in cells:
            path = cell_path(folder, cell)
            if broadcast_from_primary(np.int32(primary and _finished(path, cell))):
                counts["skipped"] += 1
            else:
                result = run_cell(cell)
                record = {"cell": dict(cell), "result": result}
                record["sha256"] = _digest(record["cell"], result)
                counts["run"] += 1
                if not primary:
                    records.append(read_json_roundtrip({"cell": dict(cell), "result": result}))
                    bar.update(1)
                    continue
                atomic_write_json(path, record)
            stored = verify_cell_file(path)
            if stored is None:  # changed between our write and this read: say so, never hide it
                raise RuntimeError(f"{path}: changed while the grid ran (checksum mismatch)")
            records.append(stored)
            bar.update(1)
        bar.close()
    return records, counts


def load_cells(folder: str | Path) -> list[dict]:
    """Every intact finished cell record in ``folder`` (sorted by file name); a damaged file is
    reported with a warning and left out."""
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        rec = verify_cell_file(p)
        if rec is None:
            warnings.warn(f"{p}: damaged (checksum mismatch or unreadable); left out", stacklevel=2)
            continue
        out.append(rec)
    return out
