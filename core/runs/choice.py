"""Which run a page opens on: the best run (the finished one with the highest best accuracy and a checkpoint to
use), else the newest one that can be used; and which run the Train page follows. The pages show the choice; the
rule is here, one place for all."""
from __future__ import annotations

from core.runs.run import ACTIVE, Run


def best_run(runs: list[Run]) -> Run | None:
    """The finished run with a best checkpoint and the highest best accuracy, if one has an accuracy."""
    scored = [(summary["best_acc"], run) for run in runs if run.has_checkpoint("best")
              for summary in [run.summary()] if summary["state"] == "finished" and summary["best_acc"] is not None]
    return max(scored, key=lambda pair: pair[0])[1] if scored else None


def default_run(runs: list[Run]) -> Run:
    """The best run (best_run), else the newest finished run with a checkpoint (an imported one), else the newest
    with one, else the newest (`runs` are newest first, as list_runs gives them)."""
    usable = [run for run in runs if run.has_checkpoint("best")]
    finished = [run for run in usable if run.status().get("state") == "finished"]
    return best_run(runs) or (finished or usable or runs)[0]


def run_to_follow(runs: list[Run], states: dict[str, str | None]) -> Run:
    """The run to follow live: the newest active one (queued or running), else the newest; `states`: each run's
    state by name, as the page just read them (`runs` are newest first)."""
    return next((run for run in runs if states[run.name] in ACTIVE), runs[0])
