"""The experiments' entry points: a refused results folder is one line on stderr, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from experiments.common.lock import FolderLocked

__all__ = ["EXIT_LOCKED", "run_cli"]

#: Exit status when the results folder is held by another run (``EX_TEMPFAIL``: try again later).
EXIT_LOCKED = 75


def run_cli(main: Callable[[Sequence[str] | None], Any], prog: str, argv=None) -> int:
    """Runs ``main(argv)``; a :class:`FolderLocked` refusal prints ``prog: error: ...`` and
    returns :data:`EXIT_LOCKED` (usage errors already exit with status 2 from the parser)."""
    try:
        main(argv)
    except FolderLocked as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_LOCKED
    return 0
