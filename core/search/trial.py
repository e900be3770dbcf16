"""A trial seen from its run's training process: a heartbeat, the validation accuracy reported after each
epoch (which may prune it), and the end told to the study.

The study's database may be away for a while (down, restarting, out of reach): training goes on regardless.
Each epoch's report waits, in order, until the database answers again (the heartbeat's thread retries with
back-off, core.search.study's RETRY_*), and no pruning is asked meanwhile. The end waits too, retrying, up to
END_WAIT_S, before the process exits: the run's final state is in its folder already. train.log says when the
database went away and when it came back.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from core.design.budget import count
from core.runs.run import PruneRequested, Run
from core.search.study import END_WAIT_S, HEARTBEAT_S, RETRY_FIRST_S, RETRY_MAX_S, StorageAway, Study


class SearchTrial:
    """The Optuna trial a run is, seen from the run's training process: the hooks the loop calls
    (core.engine.loop.RunHooks)."""

    def __init__(self, run: Run, tag: dict):
        self.run, self.tag, self.trial_id = run, tag, tag["trial_id"]
        self.handle = Study(tag["study"], tag["storage"])
        self.storage = self.study = self.space = self.trial = None
        self.reports: dict[int, float] = {}  # epoch -> validation accuracy, not yet in the study
        self.lock = threading.Lock()          # one talk with the study at a time: the loop's or the heartbeat's
        self.away_since: float | None = None
        self.talk(lambda: None)  # the study, now if its database answers; a study that is not there fails the run
        # heartbeats from a thread, so an epoch of any length never looks like a dead trial
        threading.Thread(target=self.beat, daemon=True).start()

    @classmethod
    def of(cls, run: Run) -> SearchTrial:
        return cls(run, run.status()["search"])

    # -- talking to the study, which may be away --
    def talk(self, action: Callable[[], None]) -> bool:
        """`action` with the study (opened first if need be); False, and noted once, while its database is away."""
        with self.lock:
            try:
                with self.handle.reaching():
                    if self.study is None:
                        self.storage = self.handle.storage
                        self.study, self.space = self.handle.load()
                        self.trial = optuna.Trial(self.study, self.trial_id)
                    action()
            except StorageAway as e:
                if self.away_since is None:
                    self.away_since = time.time()
                    self.note(f"database away since {time.strftime('%H:%M')}, retrying; training goes on ({e})")
                return False
            if self.away_since is not None:
                self.note(f"database back after {time.time() - self.away_since:.0f} s; waiting reports sent")
                self.away_since = None
            return True

    def note(self, message: str) -> None:
        self.run.log(f"search: {message}")

    def beat(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                sent = self.talk(self.send)
            except Exception as e:  # the heartbeat must outlive anything: the next beat tries again
                self.note(f"heartbeat: {type(e).__name__}: {e}")
                sent = False
            time.sleep(HEARTBEAT_S if sent else delay)
            delay = RETRY_FIRST_S if sent else min(2 * delay, RETRY_MAX_S)

    def send(self) -> None:
        self.storage.record_heartbeat(self.trial_id)
        self.flush()

    def flush(self) -> None:
        """The reports that waited, in epoch order; none where the study has them (a resumed run) or has ended
        the trial, and none for several objectives (Optuna prunes single-objective studies only)."""
        if not self.reports:
            return
        stored = self.storage.get_trial(self.trial_id)
        if len(self.space.objectives) == 1 and stored.state == TrialState.RUNNING:
            for epoch in sorted(self.reports):
                if epoch not in stored.intermediate_values:
                    self.trial.report(self.reports[epoch], epoch)
                del self.reports[epoch]  # one at a time: an outage halfway keeps the rest waiting
        self.reports.clear()

    # -- the hooks --
    def on_epoch(self, epoch: int, accuracy: float) -> None:
        """After each epoch: the validation accuracy to the study; raises PruneRequested when the pruner says so.
        With the database away, the report waits and training goes on unpruned."""
        with self.lock:
            self.reports[epoch] = accuracy
        prune = []

        def report_and_ask() -> None:
            self.flush()
            if len(self.space.objectives) == 1 and self.trial.should_prune():
                prune.append(epoch)
        if self.talk(report_and_ask) and prune:
            raise PruneRequested(epoch)

    def on_end(self, status: dict) -> None:
        """The run's end, told to the study after the reports that waited. A stopped run stays RUNNING: resuming
        the study resumes it. While the database is away this retries, with back-off, for up to END_WAIT_S."""
        deadline, delay = time.monotonic() + END_WAIT_S, RETRY_FIRST_S
        while not self.talk(lambda: self.tell(status)):
            if time.monotonic() > deadline:
                self.note(f"the database was away for {END_WAIT_S / 60:.0f} min after the run ended: giving up. "
                          f"Its heartbeat lapses, and the study retries the trial from this run's last checkpoint")
                return
            time.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_S)

    def tell(self, status: dict) -> None:
        self.flush()
        state = status.get("state")
        if self.storage.get_trial(self.trial_id).state != TrialState.RUNNING:
            return  # told already (this is a relaunch of an ended trial): Optuna keeps the first answer
        if state == "finished":
            cost = count(self.run.config().arch)
            values = {"accuracy": status["best_acc"], "params": cost.params, "macs": cost.macs}
            self.study.tell(self.trial, [values[o] for o in self.space.objectives], skip_if_finished=True)
        elif state == "pruned":
            self.study.tell(self.trial, state=TrialState.PRUNED, skip_if_finished=True)
        elif state == "failed":
            self.trial.set_user_attr("error", status.get("error"))
            self.study.tell(self.trial, state=TrialState.FAIL, skip_if_finished=True)
