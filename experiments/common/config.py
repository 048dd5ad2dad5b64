"""Configs as code: frozen dataclasses from ``get_config()``, overridden by the command line.

Every field becomes ``--field-name``; tuples take comma-separated values (``--deltas 0.01,0.07``),
booleans take ``true/false``.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

__all__ = ["add_config_args", "config_from_args", "parse_config"]


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


def add_config_args(parser: argparse.ArgumentParser, config: Any) -> None:
    """Adds one ``--option`` per dataclass field (default: keep the config's value)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_converter(hints[f.name]),
            default=None,
            help=f"(default: {shown})",
        )


def config_from_args(config: Any, args: argparse.Namespace) -> Any:
    """``config`` with every option given on the command line replaced."""
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(config, **changes)


def parse_config(get_config, argv=None, description: str = "", quick_config=None):
    """Builds the parser, applies ``--quick`` (if given) and the overrides; returns the config."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    base = get_config()
    add_config_args(parser, base)
    args = parser.parse_args(argv)
    if args.quick:
        if quick_config is None:
            raise ValueError("this experiment has no --quick setting")
        base = quick_config()
    return config_from_args(base, args)
