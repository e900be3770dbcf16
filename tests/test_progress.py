"""core.runs.progress: a run's path through its metrics lines and where it stands."""
import pytest

from core.runs.progress import history, metric_frames, progress


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
    at = progress(TWO_EPOCHS[:4], epochs=4, batch_size=50)         # at 1.5: from 0.5 (10 s) to 1.5 (34 s)
    assert at.epoch == 1.5 and at.fraction == pytest.approx(1.5 / 4)
    assert at.eta_s == pytest.approx(2.5 * 24) and at.elapsed_s == 34 and at.images_per_s == 100


def test_progress_from_the_first_point_and_after_the_end():
    nothing_yet = progress([], epochs=3, batch_size=50)
    assert (nothing_yet.epoch, nothing_yet.fraction, nothing_yet.eta_s, nothing_yet.images_per_s) == (0, 0, None, None)
    first = progress(TWO_EPOCHS[:1], epochs=3, batch_size=50)      # 40 steps of 50 images an epoch, at 100 images/s
    assert first.eta_s == pytest.approx(2.5 * 40 * 50 / 100)
    assert progress(TWO_EPOCHS, epochs=2, batch_size=50).eta_s == 0
    assert progress(TWO_EPOCHS, epochs=2, batch_size=50).fraction == 1
