"""`distillery <command>`: one CLI over every component.

Each command lives in the module that owns it and exposes `add_parser(subparsers)`,
which registers its parser and sets `func(args) -> int` (the exit status). Modules are
imported here, so they must keep heavy imports (torch, transformers) inside functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "service.solve_cmd",  # solve
    "service.model_cmd",  # model prepare
    "service.serve_cmd",  # serve
    "retrieval.cli",  # index build|search
    "training.cli",  # generate, train build-data|sft, export
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillery",
        description="Serve and train small tool-using agents (Agent Distillation).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("distillery: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
