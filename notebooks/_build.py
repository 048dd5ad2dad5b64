"""Generates ``notebooks/*.ipynb`` from the percent-format sources ``notebooks/src/*.py``.

The sources are plain Python (linted and formatted with the rest of the code); a line starting with
``# %%`` opens a code cell and ``# %% [markdown]`` a markdown cell whose lines are comments (the
leading ``# `` is removed). The generated notebooks carry no outputs and stable cell ids, so a
rebuild of unchanged sources reproduces them byte for byte.

Usage::

    python notebooks/_build.py           # (re)write every notebook
    python notebooks/_build.py --check   # exit 1 when a committed notebook is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def parse_cells(text: str) -> list[tuple[str, str]]:
    """Splits a percent-format source into ``(kind, source)`` cells, kind ``"code"``/``"markdown"``.

    Text before the first ``# %%`` marker (a module docstring, say) is dropped. Leading and trailing
    blank lines of each cell are removed; empty cells are dropped.

    Raises:
      ValueError: a markdown line that is not a comment, or a source without any cell marker.
    """
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            kind = "markdown" if "[markdown]" in line else "code"
            cells.append((kind, []))
        elif cells:
            cells[-1][1].append(line)
    if not cells:
        raise ValueError("source: no '# %%' cell marker found")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            md = []
            for line in lines:
                if line.strip() == "":
                    md.append("")
                elif line == "#" or line.startswith("# "):
                    md.append(line[2:])
                else:
                    raise ValueError(
                        f"markdown cell: every line must be a '# ' comment, got {line!r}"
                    )
            lines = md
        while lines and not lines[0].strip():
            lines = lines[1:]
        while lines and not lines[-1].strip():
            lines = lines[:-1]
        if lines:
            out.append((kind, "\n".join(lines)))
    return out


def build_notebook(source: Path) -> nbformat.NotebookNode:
    """The notebook (no outputs, stable cell ids) for one percent-format source file."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python", "pygments_lexer": "ipython3"},
    }
    for i, (kind, text) in enumerate(parse_cells(source.read_text())):
        cell_id = f"{source.stem[:2]}-{i:03d}"
        if kind == "code":
            nb.cells.append(nbformat.v4.new_code_cell(text, id=cell_id))
        else:
            nb.cells.append(nbformat.v4.new_markdown_cell(text, id=cell_id))
    nbformat.validate(nb)
    return nb


def sources() -> list[Path]:
    """The notebook sources, in order."""
    return sorted(SOURCES.glob("[0-9][0-9]_*.py"))


def target(source: Path) -> Path:
    """Where the notebook built from ``source`` is written."""
    return HERE / f"{source.stem}.ipynb"


def render(nb: nbformat.NotebookNode) -> str:
    """The exact text written to disk."""
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for src in sources():
        text = render(build_notebook(src))
        dst = target(src)
        if args.check:
            if not dst.exists() or dst.read_text() != text:
                stale.append(dst.name)
        else:
            dst.write_text(text)
            print(f"wrote {dst.relative_to(HERE.parent)}")
    if stale:
        print("out of date (run python notebooks/_build.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
