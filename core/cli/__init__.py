"""`python -m core ...`: everything the app does, headless. Every command prints JSON on stdout.

A user error (bad spec, missing data, unknown run) prints `error: ...` on stderr and exits 2,
never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from core.cli import deploy, design, reports, search, training
from core.errors import StudioError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="ResNet Studio, headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (design, training, deploy, search, reports):
        commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
