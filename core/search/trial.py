"""A trial seen from its run's training process: a heartbeat, the validation accuracy reported after each
epoch (which may prune it), and the end told to the study."""
from __future__ import annotations

import contextlib
import threading
import time

import optuna
from optuna.trial import TrialState

from core.design.budget import count
from core.runs.run import PruneRequested, Run
from core.search.study import HEARTBEAT_S, load_study, open_storage


class SearchTrial:
    """The Optuna trial a run is, seen from the run's training process: the hooks the loop calls
    (core.engine.loop.RunHooks)."""

    def __init__(self, run: Run, tag: dict):
        self.run, self.trial_id = run, tag["trial_id"]
        self.storage = open_storage(tag["storage"])
        self.study, self.space = load_study(tag["study"], self.storage)
        self.trial = optuna.Trial(self.study, self.trial_id)
        # heartbeats from a thread, so an epoch of any length never looks like a dead trial
        threading.Thread(target=self.beat, daemon=True).start()

    def beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a database hiccup: the next beat tries again
                self.storage.record_heartbeat(self.trial_id)
            time.sleep(HEARTBEAT_S)

    @classmethod
    def of(cls, run: Run) -> SearchTrial:
        return cls(run, run.status()["search"])

    def on_epoch(self, epoch: int, accuracy: float) -> None:
        """After each epoch: the validation accuracy to the study; raises PruneRequested when the pruner says so."""
        if len(self.space.objectives) > 1:  # Optuna prunes single-objective studies only
            return
        if epoch not in self.storage.get_trial(self.trial_id).intermediate_values:  # resumed: reported before
            self.trial.report(accuracy, epoch)
        if self.trial.should_prune():
            raise PruneRequested(epoch)

    def on_end(self, status: dict) -> None:
        """The run's end, told to the study. A stopped run stays RUNNING: resuming the study resumes it."""
        state = status.get("state")
        if self.storage.get_trial(self.trial_id).state != TrialState.RUNNING:
            return  # told already (this is a relaunch of an ended trial): Optuna keeps the first answer
        if state == "finished":
            cfg = self.run.config()
            cost = count(cfg.arch)
            values = {"accuracy": status["best_acc"], "params": cost.params, "macs": cost.macs}
            self.study.tell(self.trial, [values[o] for o in self.space.objectives])
        elif state == "pruned":
            self.study.tell(self.trial, state=TrialState.PRUNED)
        elif state == "failed":
            self.trial.set_user_attr("error", status.get("error"))
            self.study.tell(self.trial, state=TrialState.FAIL)
