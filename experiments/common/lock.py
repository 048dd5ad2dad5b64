"""An exclusive lock on a results folder while a grid runs (``flock``; a dead holder frees it).

A second run on the same folder refuses at once (or waits, with ``timeout``) and names the
process that holds it. The lock is an advisory ``fcntl.flock`` on ``<folder>/.lock``: the kernel
releases it when its process ends, however it ends, so the lock file of a killed run is simply
taken over by the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FolderLocked", "folder_lock"]

LOCK_NAME = ".lock"


class FolderLocked(RuntimeError):
    """Another process holds the results folder; names it."""

    def __init__(self, folder: Path, holder: dict):
        self.folder, self.holder = folder, holder
        who = f"process {holder.get('pid', '?')}"
        if holder.get("host") and holder.get("host") != socket.gethostname():
            who += f" on {holder['host']}"
        since = holder.get("started")
        if since:
            who += f" (since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))})"
        cmd = " ".join(holder.get("argv") or [])
        if cmd:
            who += f": {cmd[:200]}"
        super().__init__(
            f"results folder {folder} is in use by {who}; wait for that run to finish (or stop "
            "it), or give this run another folder"
        )


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, timeout: float = 0.0) -> Iterator[Path]:
    """Holds ``<folder>/.lock`` exclusively for the ``with`` block.

    Args:
      folder: the results folder (created if missing).
      timeout: seconds to wait for a running holder (0: refuse at once).

    Raises:
      FolderLocked: another live process holds the folder (after ``timeout``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    deadline = time.monotonic() + float(timeout)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise FolderLocked(folder, _holder(path)) from None
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            continue
        try:  # the file may have been removed by a holder releasing it meanwhile: lock it again
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "argv": list(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # releases the flock
