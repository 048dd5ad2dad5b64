"""Results folders and atomic JSON/CSV writes (a killed run never leaves a half-written file)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "config_hash",
    "results_dir",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "read_json",
    "read_csv",
    "to_jsonable",
]


def to_jsonable(x: Any) -> Any:
    """Converts numpy/jax arrays, tuples, dataclass-like mappings and NaN to JSON-safe values."""
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "__array__") and not isinstance(x, (str, bytes)):
        arr = np.asarray(x)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else (1e308 if x > 0 else -1e308)
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return to_jsonable(x.item())
    if isinstance(x, Path):
        return str(x)
    return x


def config_hash(obj: Any, n: int = 8) -> str:
    """A short stable hash of a JSON-able object (sorted keys)."""
    text = json.dumps(to_jsonable(obj), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def results_dir(root: str | os.PathLike, name: str) -> Path:
    """``root/name`` created if missing: one folder per run (re-using it resumes the run)."""
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to a temporary file in the same folder, then renames it over ``path``.

    The file gets the mode a new file gets (``0o666`` less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; results files get the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON write (numpy arrays become lists, NaN becomes null)."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=1, sort_keys=True) + "\n")


def atomic_write_csv(
    path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], fields: list[str] | None = None
) -> Path:
    """Atomic CSV write of dict rows; ``fields`` defaults to the keys in first-seen order."""
    rows = [dict(r) for r in rows]
    if fields is None:
        fields = []
        for r in rows:
            fields.extend(k for k in r if k not in fields)
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: to_jsonable(r.get(k, "")) for k in fields})
    return atomic_write_text(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
