"""core.runs.choice: which run the pages open on, judged on copies of a run really trained by the engine."""
import json
import os
import shutil
import time
from pathlib import Path

from core.runs.choice import best_run, default_run, run_to_follow
from core.runs.run import Run, list_runs


def copy_run(trained: Run, runs_dir: Path, name: str, best_acc: float | None = None, **status) -> Run:
    """A copy of the trained run, newer than those copied before it; its epoch line's accuracy set to `best_acc`
    (None: no epoch line at all), its status changed by `status`."""
    run = Run(shutil.copytree(trained.dir, runs_dir / name))
    lines = [] if best_acc is None else [{"kind": "epoch", "epoch": 1, "step": 39, "train_loss": 2.2,
                                          "train_acc": 0.15, "eval_split": "test", "eval_loss": 2.1,
                                          "eval_acc": best_acc, "lr": 0.1, "images_per_s": 100.0, "elapsed": 30.0}]
    run.metrics_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    run.update_status(**status)
    stamp = time.time() + len(list(runs_dir.iterdir()))  # newest last copied, whatever the clock's resolution
    os.utime(run.status_path, (stamp, stamp))
    return run


def names(runs: list[Run]) -> list[str]:
    return [run.name for run in runs]


def test_the_best_run_is_the_finished_one_with_the_highest_accuracy_and_a_checkpoint(trained, tmp_path):
    runs_dir = tmp_path / "runs"
    copy_run(trained, runs_dir, "good", 0.6)
    copy_run(trained, runs_dir, "weak", 0.1)  # newer, finished, worse
    copy_run(trained, runs_dir, "stopped", 0.9, state="stopped")  # better, but never finished
    no_weights = copy_run(trained, runs_dir, "no-weights", 0.95)  # better, finished, nothing to load
    shutil.rmtree(no_weights.checkpoints)
    runs = list_runs(runs_dir)
    assert names(runs) == ["no-weights", "stopped", "weak", "good"]  # newest first
    assert not no_weights.has_checkpoint("best") and all(run.has_checkpoint("best") for run in runs[1:])
    assert best_run(runs).name == "good"
    assert default_run(runs).name == "good"


def test_without_a_best_run_the_default_is_the_newest_usable_one(trained, tmp_path):
    runs_dir = tmp_path / "runs"
    copy_run(trained, runs_dir, "imported")  # finished, with a checkpoint, no curves (trained elsewhere)
    copy_run(trained, runs_dir, "stopped", 0.9, state="stopped")
    bare = copy_run(trained, runs_dir, "bare", 0.95, state="failed")
    shutil.rmtree(bare.checkpoints)
    runs = list_runs(runs_dir)
    assert best_run(runs) is None
    assert default_run(runs).name == "imported"  # finished with a checkpoint, before newer unfinished ones
    assert default_run(runs[:2]).name == "stopped"  # no finished one: the newest with a checkpoint
    assert default_run(runs[:1]).name == "bare"  # none with a checkpoint: the newest


def test_the_run_to_follow_is_the_newest_active_one_else_the_newest(trained, tmp_path):
    runs_dir = tmp_path / "runs"
    # no pid: launched, its process not yet started; nothing has died (the trained run's process has)
    copy_run(trained, runs_dir, "queued", state="queued", pid=None)
    copy_run(trained, runs_dir, "running", 0.2, state="running", pid=None)
    copy_run(trained, runs_dir, "finished", 0.6)
    runs = list_runs(runs_dir)
    states = {run.name: run.status().get("state") for run in runs}
    assert states == {"finished": "finished", "running": "running", "queued": "queued"}
    assert run_to_follow(runs, states).name == "running"
    assert run_to_follow(runs[2:], states).name == "queued"
    assert run_to_follow(runs[:1], states).name == "finished"
