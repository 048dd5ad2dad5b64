"""Markdown tables of the benchmark results: ``python -m experiments.bench.report [--out DIR]``.

Reads the ``<name>.json`` files the benchmarks wrote to ``DIR`` (default ``results/bench``) and
prints one Markdown section per benchmark (for RESULTS.md and the README's performance section).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.bench.common import DEFAULT_OUT, format_cell


def _md(rows: list[dict], columns: Sequence[tuple[str, str, str | None]]) -> str:
    lines = [
        "| " + " | ".join(h for _, h, _ in columns) + " |",
        "|" + "|".join("---:" for _ in columns) + "|",
    ]
    lines += [
        "| " + " | ".join(format_cell(r.get(k), s) for k, _, s in columns) + " |" for r in rows
    ]
    return "\n".join(lines)


def _tables(name: str) -> list[tuple[str, Sequence[tuple[str, str, str | None]]]]:
    """``(result key, columns)`` per table, from the benchmark module's own column lists."""
    module = importlib.import_module(f"experiments.bench.{name}")
    if hasattr(module, "COLUMNS"):
        return [("rows", module.COLUMNS)]
    return [("summary", module.SUMMARY_COLUMNS), ("rows", module.ROW_COLUMNS)]


def _header(data: dict) -> str:
    env = data.get("env", {})
    return (
        f"_{env.get('date_utc', '?')}, {env.get('cpu', '?')}, nproc {env.get('nproc', '?')},"
        f" {env.get('backend', '?')}, jax {env.get('jax', '?')}"
        + (f", torch {data['torch_version']}" if "torch_version" in data else "")
        + (", --quick (not figures)" if data.get("quick") else "")
        + "_"
    )


def section(name: str, data: dict) -> str:
    if "skipped" in data:
        return f"### {name}\n\nskipped: {data['skipped']}\n"
    out = [f"### {name}", "", _header(data)]
    for key, columns in _tables(name):
        out += ["", _md(data[key], columns)]
    out += ["", f"targets: `{json.dumps(data.get('targets'))}`", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    from experiments.bench.__main__ import BENCHMARKS

    for name in BENCHMARKS:
        path = args.out / f"{name}.json"
        if path.exists():
            print(section(name, json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
