"""Command line: ``python -m theory certify sum_product [--json] [--thorough]``.

``certify`` takes operator names known to abo_jax (``python -m theory list`` shows them) or
``module:function`` for a user's own operator factory (or ABO object). It prints one table per
operator, one JSON document (a list of reports) with ``--json``, or one markdown row per operator
with ``--markdown`` (the README's certify table). Exit status 0 when every
operator was certified (whatever the verdicts), 2 on bad input.

Our formalization of the conditions of arXiv:2508.01348 (see ``theory``).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m theory",
        description="Convergence theory of LoRA aggregation-broadcast operators "
        "(our formalization of arXiv:2508.01348).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cert = sub.add_parser(
        "certify", help="check identities, weak/strong conditions and consistency"
    )
    cert.add_argument("operators", nargs="+", help="name (e.g. sum_product) or module:function")
    cert.add_argument("--json", action="store_true", help="print JSON instead of tables")
    cert.add_argument(
        "--markdown", action="store_true", help="one markdown table row per operator (README)"
    )
    cert.add_argument("--thorough", action="store_true", help="more search (slower)")
    cert.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    cert.add_argument("--scale", type=float, default=1.0, help="LoRA scale of base_delta")
    sub.add_parser("list", help="operators certify knows by name")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    from theory.certify import available_operators, certify, resolve_operator

    if args.command == "list":
        print("\n".join(sorted(available_operators(include_ranked=True))))
        return 0
    try:
        resolved = [resolve_operator(spec) for spec in args.operators]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    reports = [
        certify(abo, name=label, thorough=args.thorough, seed=args.seed, scale=args.scale)
        for label, abo in resolved
    ]
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    elif args.markdown:
        print("| operator | weak (lower / upper) | strong (lower / upper) | consistency |")
        print("|---|---|---|---|")
        print("\n".join(r.markdown_row() for r in reports))
    else:
        print("\n\n".join(r.table() for r in reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
