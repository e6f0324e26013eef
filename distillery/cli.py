"""`distillery <command>`: one CLI over every component.

Each command lives in its module under distillery/commands/ and exposes
`add_parser(subparsers)`, which registers its parser and sets `func(args) -> int` (the exit
status, see distillery/options.py). Modules are imported here, so they must keep heavy
imports (torch, transformers) inside functions. Flags that set a Settings field are generated
from the field (distillery/options.py), so a flag and its DISTILLERY_* variable agree.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["build_parser", "main"]

COMMAND_MODULES = [
    "distillery.commands.solve",  # solve
    "distillery.commands.model",  # model prepare
    "distillery.commands.serve",  # serve
    "distillery.commands.index",  # index build|search
    "distillery.commands.training",  # generate, train build-data|sft, export
    "distillery.commands.eval",  # eval run|report|compare
    "distillery.commands.study",  # study run
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
