"""`python -m core ...`: everything the app does, headless. Every command prints JSON on stdout.

A user error (bad spec, missing data, unknown run) prints `error: ...` on stderr and exits 2,
never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from core.budget import BUDGET, count, fit_to_budget
from core.config import RunConfig
from core.errors import StudioError
from core.presets import PRESETS
from core.spec import load_json_file


def emit(obj) -> None:
    print(json.dumps(obj, indent=2))


def config_from_args(args) -> RunConfig:
    if args.preset:
        return RunConfig.from_preset(args.preset)
    return RunConfig.from_dict(load_json_file(args.config))


def add_source(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--preset", help="a preset name (see `python -m core presets`)")
    g.add_argument("--config", metavar="FILE.json", help="a run config or a bare architecture spec")


def budget_report(cfg: RunConfig, budget: int) -> dict:
    cost = count(cfg.arch)
    return {"params": cost.params, "budget": budget, "within_budget": cost.params <= budget,
            "margin": budget - cost.params, "macs": cost.macs,
            "stem": {"params": cost.stem_params, "macs": cost.stem_macs},
            "stages": [{"stage": s.index, "blocks": len(s.blocks), "channels": cfg.arch.stages[s.index].channels,
                        "params": s.params, "macs": s.macs, "out_size": s.out_size,
                        "receptive_field": s.receptive_field} for s in cost.stages],
            "head": {"params": cost.head_params, "macs": cost.head_macs, "features": cost.head_features},
            "spec": cfg.arch.to_dict()}


# ---- commands ----------------------------------------------------------------------------------

def cmd_presets(args) -> int:
    rows = []
    for name, preset in PRESETS.items():
        params = count(RunConfig.from_preset(name).arch).params
        rows.append({"name": name, "params": params, "within_budget": params <= BUDGET,
                     "description": preset["description"], "source": preset["source"]})
    emit(rows)
    return 0


def cmd_params(args) -> int:
    cfg = config_from_args(args)
    report = budget_report(cfg, args.budget)
    if args.fit:
        fit = fit_to_budget(cfg.arch, args.budget, args.multiple_of)
        report["fit"] = {"factor": fit.factor, "params_before": fit.params_before,
                         "params_after": fit.params_after, "changes": fit.changes, "spec": fit.spec.to_dict()}
    emit(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="ResNet Studio, headless.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the presets with their parameter counts")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("params", help="count parameters and MACs of a design, without building it")
    add_source(p)
    p.add_argument("--budget", type=int, default=BUDGET, help="parameter budget (default 5,000,000)")
    p.add_argument("--fit", action="store_true", help="also scale widths to the largest design within budget")
    p.add_argument("--multiple-of", type=int, default=1, help="with --fit: round widths to a multiple of this")
    p.set_defaults(func=cmd_params)
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
