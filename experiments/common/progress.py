"""Progress bars (tqdm on stderr; quiet when disabled or not a terminal and ABO_PROGRESS=0)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

__all__ = ["progress", "log"]


def progress(*args, disable: bool = False, **kwargs):
    """A tqdm bar on stderr; ``ABO_PROGRESS=0`` turns every bar off."""
    if os.environ.get("ABO_PROGRESS", "1") == "0":
        disable = True
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 1.0)
    return tqdm(*args, disable=disable, **kwargs)


def log(*parts) -> None:
    """Driver-side logging (experiments only; the library never prints)."""
    print(*parts, flush=True)
