"""A report a person can hand in (`python -m core report RUN [RUN ...]`, the Runs page's Report button): the
seed projects' hyperparameter table for each run side by side, parameters and MACs per stage, results, the
training curves, confusion matrix, most confident mistakes, exports, and the reproducibility record.

One run makes a report of it; several make one comparison, their curves overlaid. Charts are the app's own
(core.report.charts) rendered to PNG; for a paper (`--format latex`), the architecture/recipe and results tables as
LaTeX and every chart as a PDF. The confusion matrix, per-class accuracy and mistakes come from the best
checkpoint evaluated when the report is made, on the run's own test data when it is on this machine (else the
built-in slice, or `data`); the report says which.
"""
from __future__ import annotations

import io
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.deploy.onnx_model import exported_file, report_path
from core.design.budget import count
from core.design.config import RunConfig
from core.design.table import hyperparameters
from core.errors import StudioError
from core.files import read_json
from core.report.charts import confusion_chart, overlay_chart, per_class_chart, training_charts
from core.report.document import (Block, Figure, Gallery, Heading, LatexTable, Table, Text, chart_png, image_png, write,
                                  write_latex)
from core.runs.progress import metric_frames
from core.runs.record import data_copy, git_state, read_record, summary_lines
from core.runs.run import Run, epochs_trained
from core.units import duration_text, epoch_text, epochs_done_text

MISTAKES = 20
MISTAKE_SCALE = 3       # mistakes shown 96 px wide, each pixel a crisp square
CURVE_WIDTH = 290       # CSS pixels of one curve chart's plot; three charts fit side by side
OVERLAY_WIDTH = 440     # two overlays side by side


@dataclass
class RunData:
    """What a report says about one run, read from its folder (and its best checkpoint, evaluated)."""
    run: Run
    cfg: RunConfig
    status: dict
    record: dict | None
    steps: pd.DataFrame
    epochs: pd.DataFrame
    results: dict | None
    evaluation: object | None  # core.deploy.predict.Report of the best checkpoint, or None
    evaluation_note: str       # what it was evaluated on, or why it was not

    @property
    def imported(self) -> bool:
        return bool(self.status.get("imported_from"))

    @property
    def copy(self) -> str:
        """Which CIFAR-10 its figures come from, by the record's hash of the data where there is one."""
        return data_copy(self.record, (self.results or {}).get("data") or self.cfg.data)

    @property
    def split(self) -> str:
        return self.epochs["eval_split"].iloc[-1] if len(self.epochs) else "test"

    def best_epoch(self) -> tuple[float, float] | None:
        """(accuracy, epoch) of the best epoch line, or None before the first."""
        if self.epochs.empty:
            return None
        best = self.epochs.loc[self.epochs["eval_acc"].idxmax()]
        return float(best["eval_acc"]), float(best["epoch"])


def gather(run: Run, data: str | None, mistakes: int) -> RunData:
    from core.deploy.onnx_export import verification_data
    from core.deploy.predict import Classifier, evaluate_run

    run.require()
    steps, epochs = metric_frames(run.metrics())
    evaluation, note = None, "no best checkpoint: it never finished an epoch"
    if run.has_checkpoint("best"):
        source = data or verification_data(run)
        try:
            evaluation = evaluate_run(Classifier.load(run, "best"), source, mistakes)
            note = (f"best checkpoint evaluated on {evaluation.images:,} images of {evaluation.data}"
                    + (", each averaged with its mirror (the run's test-time augmentation)" if evaluation.tta_flip
                       else ""))
        except StudioError as e:
            note = f"best checkpoint not evaluated: {e}"
    return RunData(run, run.config(), run.status(), read_record(run.record_path), steps, epochs,
                   read_json(run.results_path), evaluation, note)


# ---- the tables -----------------------------------------------------------------------------------------

def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def summary_table(runs: list[RunData]) -> Table:
    def row(name: str, value) -> list[str]:
        return [name, *(value(r) for r in runs)]

    def best(r: RunData) -> str:
        found = r.best_epoch()
        return "–" if found is None else f"{found[0]:.2%} at epoch {epoch_text(found[1])}"

    def trained(r: RunData) -> str:
        if r.imported:
            return "imported"
        return epochs_done_text(epochs_trained(r.status, r.epochs.to_dict("records")), r.cfg.train.epochs,
                                r.cfg.train.time_limit)

    def device(r: RunData) -> str:
        where = r.status.get("device_name") or r.status.get("device") or "–"
        world = r.status.get("world_size") or 1
        return f"{where} × {world} processes" if world > 1 else where

    return Table(["", *(r.run.name for r in runs)], [
        row("State", lambda r: r.status.get("state", "unknown")),
        row("Design", lambda r: r.cfg.preset or "custom"),
        row("Parameters", lambda r: f"{count(r.cfg.arch).params:,}"),
        row("MACs per image", lambda r: f"{count(r.cfg.arch).macs / 1e6:.1f} M"),
        row("Accuracy at the end", lambda r: f"{r.results['accuracy']:.2%} on {r.results['eval_split']}"
            if r.results else "–"),
        row("Best accuracy", best),
        row("Epochs trained", trained),
        row("Training time", lambda r: duration_text(r.epochs["elapsed"].iloc[-1]) if len(r.epochs) else "–"),
        row("Device", device),
        row("Data", lambda r: r.copy),
    ])


def hyperparameter_table(runs: list[RunData]) -> Table:
    columns = [hyperparameters(r.cfg, r.imported) for r in runs]
    return Table(["", *(r.run.name for r in runs)], [[name, *(c[name] for c in columns)] for name in columns[0]])


RESULTS = ("Parameters", "MACs per image", "Accuracy at the end", "Best accuracy", "Epochs trained", "Training time")


def results_table(runs: list[RunData]) -> Table:
    """The summary's figures with a row per run, as a paper's results table has them."""
    rows = {row[0]: row[1:] for row in summary_table(runs).rows}
    return Table(["Run", *RESULTS], [[r.run.name, *(rows[name][i] for name in RESULTS)] for i, r in enumerate(runs)])


def cost_table(cfg: RunConfig) -> Table:
    cost = count(cfg.arch)
    frozen = f" (+{cost.frozen_params:,} frozen: the whitening filters)" if cost.frozen_params else ""
    stem = "whitened stem" if cfg.arch.stem.whiten else "stem"
    rows = [[stem, "–", str(cfg.arch.stem.channels), "1", "32×32", f"{cost.stem_params:,}{frozen}",
             f"{cost.stem_macs:,}"]]
    for spec, stage in zip(cfg.arch.stages, cost.stages):
        rows.append([f"layer {stage.index + 1}", str(spec.blocks), str(spec.channels), str(spec.stride),
                     f"{stage.out_size}×{stage.out_size}", f"{stage.params:,}", f"{stage.macs:,}"])
    rows += [["head", "–", f"{cost.head_features} → {cfg.arch.num_classes}", "–", "–", f"{cost.head_params:,}",
              f"{cost.head_macs:,}"],
             ["total", str(sum(s.blocks for s in cfg.arch.stages)), "", "", "", f"{cost.params:,}", f"{cost.macs:,}"]]
    return Table(["", "Blocks", "Channels", "Stride", "Output", "Parameters", "MACs"], rows)


def exports_table(run: Run) -> Table | None:
    rows = []
    for precision in ("fp32", "int8"):
        path = exported_file(run, precision)
        found = read_json(report_path(path)) if path.exists() else None
        if found:
            rows.append([f"ONNX {precision}", f"{found['bytes'] / 1e6:.2f} MB", f"{found['accuracy']:.2%}",
                         f"{found['agreement']:.2%}", f"{found['images']:,} test images of {found['data']}"])
    return Table(["Export", "Size", "Accuracy", "Agrees with PyTorch", "Measured on"], rows) if rows else None


# ---- the figures ----------------------------------------------------------------------------------------

def figure(name: str, chart, caption: str, width: int | None = None) -> Figure:
    chart = chart.properties(width=width) if width else chart
    png, shown = chart_png(chart)
    return Figure(name, png, caption, shown, chart)


def curves(r: RunData, prefix: str) -> list[Block]:
    if r.steps.empty and r.epochs.empty:
        return [Text("No training curves: " + ("the weights were imported." if r.imported else
                                                "it logged no step yet."), note=True)]
    loss, accuracy, lr = training_charts(r.steps, r.epochs, r.split, r.cfg.train.epochs)
    shown = [figure(f"{prefix}-loss", loss, f"Loss: train and {r.split}", CURVE_WIDTH)]
    if accuracy is not None:
        shown.append(figure(f"{prefix}-accuracy", accuracy, f"Accuracy: train and {r.split}", CURVE_WIDTH))
    shown.append(figure(f"{prefix}-lr", lr, "Learning rate", CURVE_WIDTH))
    return shown


def two_figures(r: RunData, report) -> str:
    """Why the best checkpoint's accuracy here differs from the accuracy at the end of training, when it does."""
    if not r.results or round(r.results["accuracy"], 4) == round(report.accuracy, 4):
        return ""
    reasons = []
    found, last = r.best_epoch(), (float(r.epochs["epoch"].iloc[-1]) if len(r.epochs) else None)
    if found and last is not None and found[1] != last:
        reasons.append(f"it holds the weights of epoch {epoch_text(found[1])}, the best by accuracy during training, "
                       f"and the figure at the end those of the last epoch ({epoch_text(last)})")
    else:
        reasons.append("it was measured again now, with this machine's arithmetic" +
                       (", from weights saved in half precision since" if r.status.get("half") else ""))
    end_images = sum(map(sum, r.results.get("confusion") or []))
    if end_images != report.images or r.results.get("data") not in (None, report.data):
        reasons.append(f"it was measured on {report.images:,} images of {report.data}, the figure at the end on "
                       f"{end_images:,} images of the {r.results['eval_split']} split")
    return (f" It differs from the {r.results['accuracy']:.2%} at the end of training because "
            f"{'; and '.join(reasons)}.")


def results_blocks(r: RunData, prefix: str) -> list[Block]:
    blocks: list[Block] = []
    if r.results:
        found = r.best_epoch()
        best = f"; the best epoch ({epoch_text(found[1])}) reached {found[0]:.2%}" if found else ""
        blocks.append(Text(f"At the end of training: {r.results['accuracy']:.2%} on the {r.results['eval_split']} "
                           f"split of {r.copy}, loss {r.results['loss']:.3f}{best}."))
    report = r.evaluation
    blocks.append(Text(f"Below: the {r.evaluation_note}.", note=True))
    if report is None:
        return blocks
    hardest = min(report.per_class_accuracy, key=report.per_class_accuracy.get)
    blocks.append(Text(f"Best checkpoint: {report.accuracy:.2%} on {report.images:,} images; hardest class "
                       f"{hardest} ({report.per_class_accuracy[hardest]:.1%}).{two_figures(r, report)}"))
    totals = [sum(row) for row in report.confusion]
    blocks.append(Table(["Class", "Accuracy", "Images"], [[name, f"{acc:.1%}", f"{n:,}"] for (name, acc), n in
                                                          zip(report.per_class_accuracy.items(), totals)]))
    blocks.append(figure(f"{prefix}-confusion", confusion_chart(report.classes, report.confusion),
                         "Confusion matrix: rows true class, columns predicted; shade is the share of the row"))
    per_class = pd.DataFrame({"Class": list(report.per_class_accuracy),
                              "Accuracy": list(report.per_class_accuracy.values()), "Run": r.run.name})
    blocks.append(figure(f"{prefix}-per-class", per_class_chart(per_class), "Accuracy per class", 360))
    if report.mistakes:
        from core.nn.visual import enlarge

        blocks.append(Heading(f"Most confident mistakes of {r.run.name}", 3))
        blocks.append(Text(f"The {len(report.mistakes)} wrong answers it was surest of: true → predicted, "
                           f"confidence.", note=True))
        blocks.append(Gallery([Figure(f"{prefix}-mistake-{i + 1}", image_png(enlarge(m.image, MISTAKE_SCALE)),
                                      f"{m.true} → {m.predicted} · {m.confidence:.0%}", 32 * MISTAKE_SCALE)
                               for i, m in enumerate(report.mistakes)]))
    return blocks


def record_table(r: RunData) -> Table:
    return Table(["Fact", "Value"], [[name, f"`{value}`" if name in ("command", "origin", "code") or "sha256" in name
                                      else str(value)] for name, value in summary_lines(r.record)])


# ---- the report -----------------------------------------------------------------------------------------

def gather_all(runs: list[Run], data: str | None = None, mistakes: int = MISTAKES) -> list[RunData]:
    if not runs:
        raise StudioError("a report needs at least one run")
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise StudioError(f"a run is named twice: {', '.join(names)}")
    return [gather(run, data, mistakes) for run in runs]


def made_by() -> str:
    git = git_state()
    return f"Made by ResNet Studio on {time.strftime('%Y-%m-%d %H:%M')}" + (
        f", code {git['commit'][:12]}{' (with uncommitted changes)' if git['dirty'] else ''}" if git else "") + "."


def build(runs: list[Run], data: str | None = None, mistakes: int = MISTAKES) -> tuple[str, list[Block]]:
    """(title, blocks) of the report of `runs` (one, or several to compare)."""
    return compose(gather_all(runs, data, mistakes))


def compose(gathered: list[RunData]) -> tuple[str, list[Block]]:
    names = [r.run.name for r in gathered]
    several = len(gathered) > 1
    title = f"Runs compared: {', '.join(names)}" if several else f"Run {names[0]}"
    blocks: list[Block] = [Text(made_by(), note=True), Heading("Summary"), summary_table(gathered)]
    with_curves = {r.run.name: r.epochs for r in gathered if len(r.epochs)}
    if several and with_curves:
        blocks += [Heading("Curves compared"),
                   figure("compare-eval-accuracy", overlay_chart(with_curves, "eval_acc", "Accuracy on the evaluation "
                                                                 "split", ".1~%"), "Accuracy, each run", OVERLAY_WIDTH),
                   figure("compare-eval-loss", overlay_chart(with_curves, "eval_loss", "Loss on the evaluation split",
                                                             "~g"), "Loss, each run", OVERLAY_WIDTH),
                   figure("compare-train-loss", overlay_chart(with_curves, "train_loss", "Training loss", "~g"),
                          "Training loss, each run", OVERLAY_WIDTH),
                   figure("compare-lr", overlay_chart(with_curves, "lr", "Learning rate", "~g"),
                          "Learning rate at each epoch's end, each run", OVERLAY_WIDTH)]
    elif with_curves:
        blocks += [Heading("Training curves"), *curves(gathered[0], "run")]
    blocks += [Heading("Architecture and recipe"), hyperparameter_table(gathered)]
    for i, r in enumerate(gathered):
        prefix = f"run{i + 1}" if several else "run"
        blocks += [Heading(f"Results of {r.run.name}"), *results_blocks(r, prefix)]
        if several or not with_curves:
            blocks += [Heading(f"Training curves of {r.run.name}", 3), *curves(r, prefix)]
        blocks += [Heading(f"Parameters and MACs per stage of {r.run.name}", 3), cost_table(r.cfg)]
        exports = exports_table(r.run)
        if exports is not None:
            blocks += [Heading(f"Exports of {r.run.name}", 3), exports]
        blocks += [Heading(f"Reproducibility record of {r.run.name}", 3), record_table(r)]
    return title, blocks


def write_report(runs: list[Run], out: str | Path, fmt: str = "html", data: str | None = None,
                 mistakes: int = MISTAKES) -> dict:
    start = time.perf_counter()
    if fmt == "latex":
        files = write_paper(gather_all(runs, data, mistakes), out)
    else:
        title, blocks = build(runs, data, mistakes)
        files = write(title, blocks, out, fmt)
    return {"report": str(files[0]), "format": fmt, "runs": [run.name for run in runs],
            "files": [str(f) for f in files], "bytes": sum(f.stat().st_size for f in files),
            "seconds": time.perf_counter() - start}


def write_paper(gathered: list[RunData], out: str | Path) -> list[Path]:
    """For a paper: the folder `out` with tables.tex (the architecture and recipe table, the results table) and every
    chart of the report as a PDF, with figures.tex including them."""
    _, blocks = compose(gathered)
    charts = [b for b in blocks if isinstance(b, Figure) and b.chart is not None]
    names = ", ".join(r.run.name for r in gathered)
    tables = [LatexTable(hyperparameter_table(gathered), f"Architecture and training recipe of {names}",
                         "tab:hyperparameters"),
              LatexTable(results_table(gathered), "Results: " + "; ".join(
                  f"{r.run.name} on {r.copy}" for r in gathered), "tab:results", "r")]
    return write_latex(tables, charts, out, made_by())


def paper_zip(runs: list[Run], data: str | None = None) -> bytes:
    """write_paper's folder as one zip, under a top folder paper/ (the Runs page's download)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = write_paper(gather_all(runs, data), Path(tmp) / "paper")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            for file in files:
                z.write(file, f"paper/{file.name}")
    return buffer.getvalue()
