"""The worker (`python -m core search`): one machine's share of a study. It asks Optuna for trials, rejects
those over the budget unseen, launches the rest as runs (one per device), and relaunches runs that died."""
from __future__ import annotations

import os
import signal
import sys
import time

import optuna
from optuna.trial import TrialState

from core.design.budget import count
from core.files import PROJECT_DIR, locked
from core.processes import process_alive, start_detached
from core.runs.run import ACTIVE, Run, create_run, launch, stop as stop_run
from core.search.report import study_status
from core.search.space import Space, budget_share
from core.search.study import (MAX_RELAUNCHES, RETRY_FIRST_S, RETRY_MAX_S, SearchError, StorageAway, Study,
                               continue_study, counted, note_worker, record_path, retry_of, search_dir, start_study,
                               trial_run)

POLL_S = 1.0          # how often a worker looks at its trials
MAX_REJECTED = 1000   # a worker gives up after this many over-budget samples in a row


def devices(request: str) -> list[str]:
    """One trial at a time per device: every visible GPU for auto, else the CPU."""
    if request != "auto":
        return [request]
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]


class Worker:
    """One machine's share of a study: asks for trials, launches them, relaunches the ones that died."""

    def __init__(self, handle: Study, trials: int, device: str | None = None):
        self.handle, self.name, self.trials = handle, handle.name, trials
        self.study, self.space = handle.load()
        self.devices = devices(device or self.space.device)
        self.in_flight: dict[str, Run] = {}  # device -> the run of a trial training there
        self.rejected_in_a_row = 0

    def log(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)  # stdout is for the JSON

    def run(self) -> dict:
        with self.handle.reaching():
            self.study.set_user_attr("trials", self.trials)
        note_worker(self.name, os.getpid())
        stop = {"asked": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))
        self.log(f"study {self.name}: {self.trials} trials on {', '.join(self.devices)}, storage "
                 f"{self.handle.shown_url}")
        share = budget_share(self.space)
        if share.over:
            widths = f"; first-stage widths {share.width[0]} to {share.width[1]} keep {share.width_over:.0%} over" \
                if share.width else ""
            self.log(f"about {share.over:.0%} of this space's designs are over its limits: they are rejected "
                     f"without training and not counted{widths}")
        away_since, delay = None, RETRY_FIRST_S
        while True:
            if stop["asked"]:  # SIGTERM: this machine's trials stop, database or not
                self.stop_in_flight()
                break
            try:
                with self.handle.reaching():
                    ended = self.turn()
            except StorageAway as e:  # trials keep training and their reports wait: so does the worker
                if away_since is None:
                    away_since = time.time()
                    self.log(f"database away since {time.strftime('%H:%M')}, retrying; trials keep training ({e})")
                time.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            if away_since is not None:
                self.log(f"database back after {time.time() - away_since:.0f} s")
                away_since, delay = None, RETRY_FIRST_S
            if ended:
                break
        return study_status(self.handle)

    def turn(self) -> bool:
        """One look at the study: relaunch a dead trial, start one, or wait. True when the worker is done."""
        self.handle.fail_dead_trials()
        self.in_flight = {d: r for d, r in self.in_flight.items() if r.status().get("state") in ACTIVE}
        trials = self.study.get_trials(deepcopy=False)
        if self.handle.stop_requested():
            self.stop_in_flight()
            return True
        free = [d for d in self.devices if d not in self.in_flight]
        if free and self.relaunch_dead(trials, free[0]):
            return False
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if free and (counted(trials) < self.trials or waiting):
            run = self.start_trial(free[0])
            if run is not None:
                self.in_flight[free[0]] = run
            return False
        if not self.in_flight and not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
            return True
        time.sleep(POLL_S)
        return False

    def stop_in_flight(self) -> None:
        for run in self.in_flight.values():
            stop_run(run)
        self.log("stop requested: trials in flight stop at their next step and resume with the study")

    def start_trial(self, device: str) -> Run | None:
        """Ask for a trial; give it back if the study has its trials already, reject it if over budget, else
        launch its run. None when it is not trained."""
        # seeded by the trial count: one worker's study is reproducible, and every ask draws afresh
        seed = self.space.seed + len(self.study.get_trials(deepcopy=False))
        self.study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        trial = self.study.ask()
        self.handle.beat_for(trial.number)  # from now until the run beats itself
        # The reservation. Trial numbers are handed out one at a time (Optuna locks the study's row), so the
        # trials numbered up to this one are the asks that came first: when they make more than the target,
        # another worker asked at the same moment, and this one is given back, uncounted.
        if counted([t for t in self.study.get_trials(deepcopy=False) if t.number <= trial.number]) > self.trials:
            trial.set_user_attr("surplus", True)
            self.study.tell(trial, state=TrialState.FAIL)  # samplers skip failed trials
            self.log(f"trial {trial.number}: not needed, the study has its {self.trials} trials")
            return None
        values = self.space.sample(trial)
        cfg = self.space.config(values)
        cost = count(cfg.arch)
        trial.set_user_attr("params", cost.params)
        trial.set_user_attr("macs", cost.macs)
        limits = {"params_over_budget": cost.params - self.space.budget}
        if self.space.max_macs is not None:
            limits["macs_over_ceiling"] = cost.macs - self.space.max_macs
        for limit, over in limits.items():
            if limit not in trial.constraints:  # a retried trial has its failed one's
                trial.set_constraint(limit, over)
        if any(v > 0 for v in trial.constraints.values()):
            reason = (f"{cost.params:,} parameters (budget {self.space.budget:,})" if cost.params > self.space.budget
                      else f"{cost.macs:,} MACs (ceiling {self.space.max_macs:,})")
            trial.set_user_attr("rejected", reason)
            self.study.tell(trial, state=TrialState.PRUNED)  # never trained; the sampler sees it infeasible
            self.log(f"trial {trial.number}: rejected, {reason}")
            self.rejected_in_a_row += 1
            if self.rejected_in_a_row >= MAX_REJECTED:
                raise SearchError(f"{MAX_REJECTED} designs in a row were over the budget; narrow the space's "
                                  f"ranges (width, blocks, stages) or raise its budget")
            return None
        self.rejected_in_a_row = 0
        run = self.resumable_run(trial) or create_run(cfg, f"{self.name}-{trial.number:03d}",
                                                       origin=f"search {self.name}, trial {trial.number}")
        trial.set_user_attr("run", run.name)
        run.update_status(search=self.tag(trial.number))
        launch(run, device)
        self.log(f"trial {trial.number}: {run.name} on {device}, {cost.params:,} parameters")
        return run

    def tag(self, number: int) -> dict:
        """What a trial's run folder notes of it (status.json `search`): where its trial lives, and which it is."""
        return {"study": self.name, "storage": self.handle.url, "trial_id": self.handle.trial_id(number),
                "trial": number}

    def resumable_run(self, trial: optuna.Trial) -> Run | None:
        """A retried trial (Optuna queued it again after its heartbeat stopped) resumes its run if it is here."""
        original = retry_of(self.handle.trial(trial.number))
        if original is None:
            return None
        run = trial_run(self.handle.trial(original))
        return run if run is not None and run.status().get("state") not in ACTIVE else None

    def relaunch_dead(self, trials: list, device: str) -> bool:
        """Relaunch, here, one trial that Optuna has RUNNING but whose run here has no process (killed, or
        stopped). Under a lock, so two workers of this machine never relaunch the same run."""
        with locked(record_path(self.name)):
            for trial in trials:
                run = trial_run(trial) if trial.state == TrialState.RUNNING else None
                if run is None or run in self.in_flight.values():
                    continue
                status = run.status()
                if status.get("pid") is None or process_alive(status["pid"], status.get("pid_start")):
                    continue  # not launched yet, or alive (perhaps between its last status and telling Optuna)
                if self.handle.trial(trial.number).state != TrialState.RUNNING:
                    continue  # it told Optuna and ended after `trials` was read
                if status.get("stalled"):  # its watcher killed it: run again, it would stall again
                    self.handle.storage.set_trial_user_attr(self.handle.trial_id(trial.number), "error",
                                                            status.get("error"))
                    self.study.tell(trial.number, state=TrialState.FAIL)
                    self.log(f"trial {trial.number}: {run.name} stalled; failed, and the study goes on")
                    continue
                relaunches = status.get("relaunches", 0) + 1
                if relaunches > MAX_RELAUNCHES:
                    self.study.tell(trial.number, state=TrialState.FAIL)
                    self.log(f"trial {trial.number}: its process died {MAX_RELAUNCHES} times; failed")
                    continue
                run.update_status(relaunches=relaunches)
                self.handle.beat_for(trial.number)
                launch(run, device)
                self.in_flight[device] = run
                self.log(f"trial {trial.number}: {run.name} had no process ({status.get('state')}); resumed on "
                         f"{device}")
                return True
        return False


def detach(study: Study, trials: int, device: str | None) -> int:
    """Run a worker in its own process and session, logging to runs/.search/NAME.log; returns its pid."""
    continue_study(study)
    name, url = study.name, study.url
    cmd = [sys.executable, "-m", "core", "search", "--study", name, "--storage", url, "--trials", str(trials),
           "--detached"]
    if device:
        cmd += ["--device", device]
    search_dir().mkdir(parents=True, exist_ok=True)
    started = start_detached(cmd, search_dir() / f"{name}.log", cwd=PROJECT_DIR)
    note_worker(name, started.pid)  # at once, so the study shows as live before the worker has started
    return started.pid


def request_stop(study: Study) -> dict:
    """Every worker of the study stops (they read the flag from the storage) and so do its runs here. An explicit
    action, so it also fails the study's dead trials (their retries wait for the next search)."""
    with study.reaching():
        study.optuna.set_user_attr("stop", True)
        running = study.optuna.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        run = trial_run(trial)
        if run is not None:
            stop_run(run)
    study.fail_dead_trials()
    return study_status(study)


def search_in_background(space: Space, name: str, trials: int) -> Study:
    """A new study of `space` on this machine's default storage, searched by a detached worker."""
    study = start_study(space, name, None, trials)
    detach(study, trials, None)
    return study
