"""core.runs.progress: a run's path through its metrics lines and heartbeat, where it stands and how long it has
left."""
import pytest

from core.design.config import TrainConfig
from core.runs.progress import history, metric_frames, progress
from core.runs.speeds import epoch_seconds


def step(epoch: float, step: int, elapsed: float, loss: float = 1.0, speed: float = 100.0) -> dict:
    return {"kind": "step", "epoch": epoch, "step": step, "train_loss": loss, "lr": 0.1, "images_per_s": speed,
            "elapsed": elapsed}


def epoch_end(epoch: int, step: int, elapsed: float, acc: float = 0.5) -> dict:
    return {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": 1.0, "train_acc": acc, "eval_split": "test",
            "eval_loss": 1.1, "eval_acc": acc, "lr": 0.1, "images_per_s": 100.0, "elapsed": elapsed}


# two epochs of 40 steps, logged every 20; an epoch takes 20 s of training and 4 s of evaluation
TWO_EPOCHS = [step(0.5, 20, 10), step(1.0, 40, 20), epoch_end(1, 40, 24),
              step(1.5, 60, 34), step(2.0, 80, 44), epoch_end(2, 80, 48)]


def test_a_resume_from_an_earlier_checkpoint_drops_the_lines_it_replays():
    crashed = TWO_EPOCHS[:4] + [step(1.75, 70, 39)]                # killed at epoch 1.75; `last` was saved at 1
    resumed = crashed + [step(1.5, 60, 35, loss=0.9), step(2.0, 80, 45)]
    assert history(resumed) == TWO_EPOCHS[:3] + [step(1.5, 60, 35, loss=0.9), step(2.0, 80, 45)]


def test_the_step_line_at_an_epoch_end_stays_before_its_epoch_line():
    assert history(TWO_EPOCHS) == TWO_EPOCHS


def test_metric_frames_split_the_kinds_into_tables():
    steps, epochs = metric_frames(TWO_EPOCHS)
    assert list(steps["epoch"]) == [0.5, 1.0, 1.5, 2.0]
    assert list(epochs["eval_acc"]) == [0.5, 0.5] and list(epochs["epoch"]) == [1, 2]
    empty_steps, empty_epochs = metric_frames([])
    assert empty_steps.empty and "train_loss" in empty_steps and empty_epochs.empty and "eval_acc" in empty_epochs


def test_progress_takes_the_pace_of_the_last_epoch_with_its_evaluation():
    at = progress(TWO_EPOCHS[:4], TrainConfig(epochs=4, batch_size=50))  # at 1.5: from 0.5 (10 s) to 1.5 (34 s)
    assert at.epoch == 1.5 and at.fraction == pytest.approx(1.5 / 4) and at.steps_per_epoch == 40
    assert at.eta_s == pytest.approx(2.5 * 24) and at.elapsed_s == 34 and at.images_per_s == 100


def test_progress_from_the_first_point_and_after_the_end():
    nothing_yet = progress([], TrainConfig(epochs=3, batch_size=50))
    assert (nothing_yet.epoch, nothing_yet.fraction, nothing_yet.eta_s, nothing_yet.images_per_s) == (0, 0, None, None)
    # 40 steps of 50 images an epoch at 100 images/s, and the slice's 1,000 test images evaluated at a third the cost
    first = progress(TWO_EPOCHS[:1], TrainConfig(epochs=3, batch_size=50), "builtin")
    assert first.eta_s == pytest.approx(2.5 * (40 * 50 + 1000 / 3) / 100)
    assert progress(TWO_EPOCHS, TrainConfig(epochs=2, batch_size=50)).eta_s == 0
    assert progress(TWO_EPOCHS, TrainConfig(epochs=2, batch_size=50)).fraction == 1


SLICE_RUN = TrainConfig(epochs=1, batch_size=128)  # 5,000 images of the slice: 39 steps an epoch


def test_before_any_line_the_heartbeat_says_what_the_process_is_doing():
    for phase in ("starting", "loading data"):
        at = progress([], SLICE_RUN, "builtin", {"phase": phase, "epoch": 0, "step": 0})
        assert at.phase == phase and at.step is None and at.eta_s is None and at.epoch == 0
    warming = progress([], SLICE_RUN, "builtin", {"phase": "warming up", "epoch": 0, "step": 2, "step_time": None})
    assert (warming.step, warming.steps_per_epoch) == (2, 39) and warming.epoch == pytest.approx(2 / 39)


def test_the_heartbeat_places_a_run_step_by_step_with_an_eta_from_its_step_time():
    beat = {"phase": "training", "epoch": 0, "step": 5, "step_time": 0.5}
    at = progress([], SLICE_RUN, "builtin", beat)
    assert at.step == 5 and at.epoch == pytest.approx(5 / 39) and at.images_per_s == 256
    assert at.eta_s == pytest.approx((1 - 5 / 39) * epoch_seconds(256, 39 * 128, 1000))
    # a line at step 20 and a heartbeat at 30: the heartbeat is newer
    line = step(20 / 39, 20, 12.0, speed=200.0)
    later = progress([line], SLICE_RUN, "builtin", beat | {"step": 30})
    assert later.step == 30 and later.epoch == pytest.approx(30 / 39) and later.elapsed_s == 12.0
    assert progress([line], SLICE_RUN, "builtin").epoch == pytest.approx(20 / 39)  # no heartbeat: the line


def test_a_time_limited_run_has_its_limit_left_not_its_epochs():
    limited = TrainConfig(epochs=30, batch_size=50, time_limit=60)
    first = progress([step(0.5, 20, 10)], limited)
    assert first.trained_s == 10 and first.eta_s == 50 and first.fraction == pytest.approx(10 / 60)
    # an epoch line says how much was training (its evaluation apart); the time since is training again
    lines = [step(1.0, 40, 20), epoch_end(1, 40, 24) | {"trained": 20.0}, step(1.5, 60, 30)]
    at = progress(lines, limited)
    assert at.trained_s == 26 and at.eta_s == 34 and at.fraction == pytest.approx(26 / 60)


def test_a_time_budget_counts_the_steps_since_the_last_line_at_their_pace():
    """Issue 27, item 10: "Epoch 0.08 · 0 s of 30 s trained · step 3 of 39" before the first line."""
    limited = TrainConfig(epochs=30, batch_size=128, time_limit=30)
    at = progress([], limited, "builtin", {"phase": "training", "epoch": 0, "step": 3, "step_time": 0.5})
    assert at.step == 3 and at.trained_s == pytest.approx(1.5)
    later = progress([step(20 / 39, 20, 15.0)], limited, "builtin",
                     {"phase": "training", "epoch": 0, "step": 24, "step_time": 0.5})
    assert later.trained_s == pytest.approx(15.0 + 4 * 0.5) and later.eta_s == pytest.approx(30 - 17.0)


def test_a_validation_split_is_what_an_epoch_evaluates_and_leaves_fewer_steps():
    held_out = TrainConfig(epochs=1, batch_size=128, val_fraction=0.1)
    at = progress([], held_out, "builtin", {"phase": "training", "epoch": 0, "step": 1, "step_time": 1.0})
    assert at.steps_per_epoch == 4500 // 128
    assert at.eta_s == pytest.approx((1 - 1 / 35) * epoch_seconds(128, 35 * 128, 500))
