"""`python -m core` commands for search: start, continue, watch and stop an Optuna study."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.cli.common import emit
from core.design.spec import load_json_file


def cmd_search(args) -> int:
    from core.search.report import study_status  # Optuna: imported only by the command that searches
    from core.search.space import Space
    from core.search.study import Study, continue_study, search_dir, start_study
    from core.search.worker import Worker, detach, request_stop

    if args.status:
        study = Study(args.status, args.storage)
        study.fail_dead_trials()  # whoever asks notices a trial whose heartbeat stopped
        emit(study_status(study))
        return 0
    if args.stop:
        emit(request_stop(Study(args.stop, args.storage)))
        return 0
    name = args.study or (f"{Path(args.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}" if args.space else None)
    if name is None:
        print("error: give --space SPACE.json to start a study, or --study NAME to continue one", file=sys.stderr)
        return 2
    if args.space:
        study = start_study(Space.from_dict(load_json_file(args.space)), name, args.storage, args.trials or 0)
    else:
        study = Study(name, args.storage)
    trials = args.trials or study_status(study)["trials_target"]
    if not trials:
        print("error: give --trials N: how many trials the study should have", file=sys.stderr)
        return 2
    if args.detach:
        pid = detach(study, trials, args.device)
        emit({"study": name, "pid": pid, "log": str(search_dir() / f"{name}.log")})
        return 0
    if not args.detached:
        continue_study(study)
    emit(Worker(study, trials, args.device).run())
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("search", help="search designs within the budget with Optuna (each trial is a run)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--space", metavar="SPACE.json", help="the search space (see docs/SEARCH.md); starts the study")
    g.add_argument("--status", metavar="NAME", help="the study's trials, best trial and Pareto front as JSON")
    g.add_argument("--stop", metavar="NAME", help="stop the study's workers and trials (resume by searching again)")
    p.add_argument("--study", metavar="NAME", help="the study to start or continue (default: SPACE-<time>)")
    p.add_argument("--trials", type=int, help="how many trials the study should have (rejected designs not counted)")
    p.add_argument("--storage", metavar="URL", help="an Optuna storage URL, e.g. postgresql+psycopg://USER@HOST/DB "
                                                    "(default: a SQLite file under runs/.search/)")
    p.add_argument("--device", help="device for this machine's trials (default: the space's, auto = every GPU)")
    p.add_argument("--detach", action="store_true", help="search in a background process and return at once")
    p.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)  # the worker that --detach starts
    p.set_defaults(func=cmd_search)
