"""A run made again (`python -m core reproduce RUN --run-dir NEW`) and how it compares with the first.

The new run gets the first's config, data included, and trains like any run. When it ends, its epochs are set
against the first's (accuracy and loss on the evaluation split, training loss) and so are their records: the
same code, machine, libraries and data, or which of these differ. On the same CPU, with the same seed, threads
and libraries, the training loop is deterministic: the two runs' figures are equal to the last bit
(docs/REPORTS.md says how that was measured); elsewhere they differ by noise, and the comparison says what
differs between the two records that could explain it.
"""
from __future__ import annotations

import time
from pathlib import Path

from core.files import read_json
from core.runs.record import differences, read_record
from core.runs.run import Run, create_run

# A copy "matches" when every epoch's accuracy and loss on the evaluation split are within these of the
# first's. 0.0: on the same machine the loop is deterministic, and any difference at all means something differed.
SAME_MACHINE_TOLERANCE = {"accuracy": 0.0, "loss": 0.0}
# elsewhere (another CPU ISA, GPU, thread count, library) the arithmetic differs in its last bits and the
# runs drift apart over the epochs: a few points of accuracy after a short run are noise, not a different recipe.
OTHER_MACHINE_TOLERANCE = {"accuracy": 0.03, "loss": 0.1}


def reproduce(original: Run, run_dir: str | Path) -> Run:
    """A new queued run at `run_dir` with `original`'s config and data, marked as reproducing it."""
    cfg = original.require().config()
    run = Run.at(run_dir)
    run = create_run(cfg, run.name, run.dir.parent, origin=f"reproduce {original.dir}")
    run.update_status(reproduces=str(original.dir))
    return run


def reproduced(run: Run) -> Run | None:
    """The run that `run` reproduces, or None for a run that reproduces none."""
    original = run.status().get("reproduces")
    return Run(Path(original)) if original else None


def compare(original: Run, copy: Run) -> dict:
    """Epoch by epoch and at the end, how `copy` differs from `original`, and whether it matches."""
    from core.runs.progress import metric_frames  # pandas: 0.4 s that every `python -m core` start would pay

    first, second = metric_frames(original.metrics())[1], metric_frames(copy.metrics())[1]
    epochs = []
    for (_, a), (_, b) in zip(first.iterrows(), second.iterrows()):
        epochs.append({"epoch": float(b["epoch"]), "eval_acc": [float(a["eval_acc"]), float(b["eval_acc"])],
                       "eval_acc_diff": float(b["eval_acc"] - a["eval_acc"]),
                       "eval_loss_diff": float(b["eval_loss"] - a["eval_loss"]),
                       "train_loss_diff": float(b["train_loss"] - a["train_loss"])})
    results = [read_json(run.results_path) for run in (original, copy)]
    final = None if None in results else {"accuracy": [results[0]["accuracy"], results[1]["accuracy"]],
                                          "difference": results[1]["accuracy"] - results[0]["accuracy"]}
    facts = differences(read_record(original.record_path), read_record(copy.record_path))
    machine = {k: v for k, v in facts.items() if not k.startswith(("data.", "git.", "seeds."))}
    tolerance = SAME_MACHINE_TOLERANCE if not machine else OTHER_MACHINE_TOLERANCE
    worst_acc = max((abs(e["eval_acc_diff"]) for e in epochs), default=None)
    worst_loss = max((abs(e["eval_loss_diff"]) for e in epochs), default=None)
    if not epochs or len(first) != len(second):
        verdict = f"cannot compare: {len(first)} epochs against {len(second)}"
    elif worst_acc == 0 and worst_loss == 0:
        verdict = "identical: every epoch's accuracy and loss are equal to the last bit"
    elif worst_acc <= tolerance["accuracy"] and worst_loss <= tolerance["loss"]:
        verdict = (f"matches within the tolerance for runs on different machines ({tolerance['accuracy']:.0%} "
                   f"accuracy, {tolerance['loss']:g} loss)")
    else:
        verdict = (f"differs: up to {worst_acc:.2%} accuracy and {worst_loss:.4f} loss apart" +
                   ("" if facts else ", on the same machine, code, libraries and data: something in the loop is "
                                     "not deterministic"))
    return {"original": str(original.dir), "copy": str(copy.dir), "verdict": verdict,
            "matches": verdict.startswith(("identical", "matches")), "tolerance": tolerance,
            "max_eval_acc_diff": worst_acc, "max_eval_loss_diff": worst_loss, "final": final, "epochs": epochs,
            "same_machine": not machine,
            "record_differences": {k: list(v) for k, v in facts.items()}, "compared": time.time()}


def finish(run: Run) -> dict | None:
    """At the end of a reproducing run's training: write and return its comparison (None for another run)."""
    original = reproduced(run)
    if original is None:
        return None
    comparison = compare(original, run)
    run.write_reproduction(comparison)
    return comparison
