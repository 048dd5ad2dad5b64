"""The experiments' entry points: a refused results folder is one line on stderr, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from abo_jax.simulation.checkpoint import CheckpointError
from experiments.common.lock import FolderLocked

__all__ = ["EXIT_LOCKED", "EXIT_CHECKPOINT", "run_cli"]

#: Exit status when the results folder is held by another run (``EX_TEMPFAIL``: try again later).
EXIT_LOCKED = 75
#: Exit status when a checkpoint is refused (damaged, or written by another run).
EXIT_CHECKPOINT = 1


def run_cli(main: Callable[[Sequence[str] | None], Any], prog: str, argv=None) -> int:
    """Runs ``main(argv)``; a refusal prints one line ``prog: error: ...`` to stderr and returns
    :data:`EXIT_LOCKED` (the results folder is held by another run) or :data:`EXIT_CHECKPOINT`
    (a checkpoint that cannot be resumed); usage errors exit with status 2 from the parser."""
    try:
        main(argv)
    except FolderLocked as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_LOCKED
    except CheckpointError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_CHECKPOINT
    return 0
