"""A study as JSON: its trials, the best one, the Pareto front and which settings mattered most."""
from __future__ import annotations

import math
import warnings

import optuna
from optuna.trial import TrialState

from core.files import FileError
from core.search.study import Study, counted, is_counted, retried_numbers, retry_of, trial_run, worker_alive


def trial_row(trial: optuna.trial.FrozenTrial, retried: dict[int, int]) -> dict:
    run = trial_run(trial)
    try:
        run_status = run.status() if run is not None else {}
    except FileError:  # its run's status is damaged: the Runs page lists it so; the study goes on
        run_status = {"state": "damaged"}
    state = {TrialState.WAITING: "waiting", TrialState.RUNNING: run_status.get("state", "running"),
             TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[trial.state]
    if trial.user_attrs.get("rejected"):
        state = "rejected"
    elif trial.number in retried:
        state = "retried"
    steps = trial.intermediate_values
    accuracy = trial.values[0] if trial.state == TrialState.COMPLETE else \
        (steps[max(steps)] if steps else run_status.get("best_acc"))
    settings = {k: ("+".join(v) if isinstance(v, list) else v) for k, v in trial.params.items()}
    return {"number": trial.number, "state": state, "run": trial.user_attrs.get("run"),
            "params": trial.user_attrs.get("params"), "macs": trial.user_attrs.get("macs"),
            "accuracy": accuracy, "epochs_done": max(steps) if steps else run_status.get("epoch"),
            "pruned_at": max(steps) if state == "pruned" and steps else None,
            "rejected": trial.user_attrs.get("rejected"), "error": trial.user_attrs.get("error"),
            "retry_of": retry_of(trial), "retried_as": retried.get(trial.number),
            "counted": is_counted(trial, retried), "settings": settings}


def study_status(handle: Study) -> dict:
    """The study as JSON: its trials, the best one, and the Pareto front (several objectives). A read: it changes
    nothing in the study (Study.fail_dead_trials does)."""
    study, space = handle.load()
    with handle.reaching():
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best_numbers = [t.number for t in study.best_trials] if complete else []  # feasible ones only
        found = importances(study, complete)
    retried = retried_numbers(trials)
    rows = [trial_row(t, retried) for t in trials if not t.user_attrs.get("surplus")]  # asked, given back: noise
    by_number = {row["number"]: row for row in rows}
    best_trials = [by_number[n] for n in best_numbers]
    best = max(best_trials, key=lambda r: r["accuracy"]) if best_trials else None
    states = [r["state"] for r in rows]
    return {"study": handle.name, "storage": handle.shown_url, "space": space.to_dict(),
            "objectives": list(space.objectives), "trials_target": study.user_attrs.get("trials"),
            "counted": counted(trials), "in_flight": in_flight(rows), "worker_alive": worker_alive(handle.name),
            "stop_requested": handle.stop_requested(),
            "states": {s: states.count(s) for s in dict.fromkeys(states)},
            "best": best, "pareto_front": best_trials if len(space.objectives) > 1 else pareto_front(rows),
            "importances": found, "trials": rows}


def in_flight(rows: list[dict]) -> dict[str, int]:
    """Counted trials that have not ended: running, or queued (their run waits for a device in the run queue, or
    Optuna queued them again after their process died, `waiting`). The rest of the counted trials are done."""
    counted_rows = [r for r in rows if r["counted"]]
    return {"running": sum(r["state"] == "running" for r in counted_rows),
            "queued": sum(r["state"] in ("queued", "waiting") for r in counted_rows)}


def pareto_front(rows: list[dict], cost: str = "params") -> list[dict]:
    """The finished trials that no other beats on both accuracy (higher) and `cost` (lower), cheapest first:
    the edge of the trade-off, in a study of one objective (with several, Optuna's best_trials is the front)."""
    edge, best = [], -1.0
    for row in sorted((r for r in rows if r["state"] == "finished"), key=lambda r: (r[cost], -r["accuracy"])):
        if row["accuracy"] > best:
            edge.append(row)
            best = row["accuracy"]
    return edge


def importances(study: optuna.Study, complete: list) -> dict[str, float] | None:
    """Which settings mattered most for accuracy (Optuna's default evaluator, PED-ANOVA), once a few trials
    have finished. PED-ANOVA explains low values of its target, so the target is accuracy negated."""
    if len(complete) < 3:
        return None
    try:
        with warnings.catch_warnings():  # its notes on few trials per region: the page says how many there are
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, target=lambda t: -t.values[0])
    except (RuntimeError, ValueError):  # e.g. every finished trial had the same settings
        return None
    return {k: float(v) for k, v in found.items() if not math.isnan(v)}


def is_live(status: dict) -> bool:
    """Whether a study (as study_status gives it) is searching: a worker of it lives here, or a trial trains or
    waits for its device."""
    return status["worker_alive"] or any(s in ("running", "queued") for s in status["states"])


def is_unfinished(status: dict) -> bool:
    """Whether searching again would do anything: trials short of the target, or a trial stopped midway."""
    return status["counted"] < (status["trials_target"] or 0) or "stopped" in status["states"]
