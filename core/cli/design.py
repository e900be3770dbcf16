"""`python -m core` commands for designs: the presets, and a design's parameters and MACs against the budget."""
from __future__ import annotations


from core.cli.common import add_source, config_from_args, emit
from core.design.budget import BUDGET, count, fit_to_budget
from core.design.config import RunConfig
from core.design.presets import PRESETS
from core.units import macs_text, margin_text, params_text


def budget_report(cfg: RunConfig, budget: int) -> dict:
    cost = count(cfg.arch)
    summary = (f"{params_text(cost.params)} parameters ({margin_text(cost.params - budget)}), "
               f"{macs_text(cost.macs)} MACs per image")
    return {"summary": summary, "params": cost.params, "budget": budget, "within_budget": cost.params <= budget,
            "margin": budget - cost.params, "macs": cost.macs,
            "frozen_params": cost.frozen_params,  # a whitened stem's filters: not trained, not in the budget
            "stem": {"params": cost.stem_params, "macs": cost.stem_macs, "frozen_params": cost.frozen_params},
            "stages": [{"stage": s.index, "blocks": len(s.blocks), "channels": cfg.arch.stages[s.index].channels,
                        "params": s.params, "macs": s.macs, "out_size": s.out_size,
                        "receptive_field": s.receptive_field} for s in cost.stages],
            "head": {"params": cost.head_params, "macs": cost.head_macs, "features": cost.head_features},
            "spec": cfg.arch.to_dict()}


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


def add_commands(sub) -> None:
    p = sub.add_parser("presets", help="list the presets with their parameter counts")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("params", help="count parameters and MACs of a design, without building it")
    add_source(p)
    p.add_argument("--budget", type=int, default=BUDGET, help="parameter budget (default 5,000,000)")
    p.add_argument("--fit", action="store_true", help="also scale widths to the largest design within budget")
    p.add_argument("--multiple-of", type=int, default=1, help="with --fit: round widths to a multiple of this")
    p.set_defaults(func=cmd_params)
