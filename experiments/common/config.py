"""Configs as code: frozen dataclasses from ``get_config()``, overridden by the command line.

Every field becomes ``--field-name``; tuples take comma-separated values (``--deltas 0.01,0.07``),
booleans take ``true/false``. Each option's help is the field's entry in the config class's
``Attributes:`` docstring section. A config with a ``validate()`` method is checked before any work:
a bad value is a usage error (one line on stderr naming the option, exit status 2, no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import sys
import typing
from typing import Any

__all__ = [
    "add_config_args",
    "config_from_args",
    "parse_config",
    "field_docs",
    "module_prog",
    "bad_option",
    "CliParser",
]


def bad_option(field: str, message: str):
    """Raises the ``ValueError`` of a config's ``validate()``: ``--field-name: message``."""
    raise ValueError(f"--{field.replace('_', '-')}: {message}")


class CliParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are two short lines (no traceback, exit 2)."""

    def error(self, message: str):
        self.exit(2, f"usage: {self.prog} [options] (see --help)\n{self.prog}: error: {message}\n")


def field_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` entries of a class docstring (Google style), one line each."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    lines = doc.splitlines()
    out: dict[str, str] = {}
    inside, name = False, None
    for line in lines:
        if re.match(r"^Attributes:\s*$", line):
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break  # the next section
        m = re.match(r"^ {2}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif name and line.strip():
            out[name] += " " + line.strip()
    return out


def module_prog(obj: Any = None) -> str:
    """``python -m experiments.<name>`` for the experiment ``obj`` (a function or class) comes
    from, else for the ``__main__.py`` being run, else the script's name."""
    module = None
    if obj is not None:
        inner = getattr(obj, "func", obj)  # functools.partial
        module = getattr(inner, "__module__", None)
    if module and module.startswith("experiments."):
        return "python -m " + ".".join(module.split(".")[:2])
    main = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(main) == "__main__.py":
        parts = os.path.dirname(main).split(os.sep)
        if "experiments" in parts:
            return "python -m " + ".".join(parts[parts.index("experiments") :])
    return os.path.basename(main) or "python"


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _converter(tp: Any):
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        elem = args[0] if args else str
        conv = _converter(elem)

        def parse_tuple(text: str):
            return tuple(conv(t) for t in text.split(",") if t.strip() != "")

        return parse_tuple
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    raise TypeError(f"unsupported config field type {tp!r}")


def _metavar(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return f"{_metavar(args[0]) if args else 'STR'},..."
    return {bool: "true|false", int: "INT", float: "FLOAT", str: "TEXT"}.get(tp, "VALUE")


def add_config_args(parser: argparse.ArgumentParser, config: Any) -> None:
    """Adds one ``--option`` per dataclass field (default: keep the config's value)."""
    hints = typing.get_type_hints(type(config))
    docs = field_docs(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        text = docs.get(f.name, "").replace("%", "%%")
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_converter(hints[f.name]),
            default=None,
            metavar=_metavar(hints[f.name]),
            help=f"{text} (default: {shown!r})" if text else f"(default: {shown!r})",
        )


def config_from_args(config: Any, args: argparse.Namespace) -> Any:
    """``config`` with every option given on the command line replaced."""
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(config, **changes)


def parse_config(get_config, argv=None, description: str = "", quick_config=None, prog=None):
    """Builds the parser, applies ``--quick`` (if given) and the overrides; returns the config.

    Usage errors (an unparsable value, ``--quick`` where there is none, a value the config's
    ``validate()`` rejects) print the usage line and one line naming the option to stderr and exit
    with status 2 before any work.

    Args:
      get_config: ``() -> config`` (a frozen dataclass).
      argv: the arguments (default ``sys.argv[1:]``).
      description: the ``--help`` description.
      quick_config: ``() -> config`` for ``--quick``, or None.
      prog: the program name in the usage line (default: ``python -m experiments.<name>``).
    """
    parser = CliParser(prog=prog or module_prog(get_config), description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings for a smoke run (seconds to minutes)"
    )
    base = get_config()
    add_config_args(parser, base)
    args = parser.parse_args(argv)
    if args.quick:
        if quick_config is None:
            parser.error("--quick: this experiment has no quick setting")
        base = quick_config()
    try:
        cfg = config_from_args(base, args)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as err:
            parser.error(str(err))
    return cfg
