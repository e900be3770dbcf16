"""Evaluate: how a run does on a whole labelled test set, class by class, and beside another run; and a
run's predictions for an unlabelled test set, as the course's submission CSV.

The test data is the built-in slice, a CIFAR-10 copy on disk, or an uploaded archive of class
folders. Evaluating runs on a button press (10,000 images take seconds on a CPU) and its report is
cached per checkpoint save, data and test-time augmentation, so asking again, or going back to an earlier
choice, is instant. The last report of each section stays in session state, named by what it is of, and is
marked as made with other settings when the controls have changed since; so do the data source, path, upload and
TTA across a page switch. Each run is tested with its own test-time augmentation unless the page is told otherwise.
The unlabelled set (the course pickle, .npy/.npz or a zip of images) is read by core.data.testsets and predicted by
core.deploy.submit as soon as it is uploaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

from core.data.sources import BUILTIN, suggested_data
from core.data.testsets import read_unlabelled_bytes
from core.deploy.predict import Classifier, Report, evaluate_archive, evaluate_run
from core.deploy.submit import Submission, predict_test_set
from core.errors import StudioError
from core.nn.visual import enlarge
from core.report.charts import confusion_chart, per_class_chart
from core.runs.run import Run
from core.runs.choice import default_run
from pages._ui import (RUN_CHOICE, checkpoint_id, runs_or_stop, open_classifier,
                       select_checkpoint, select_run, show_record, through_app_shell)

through_app_shell()

DATA_SOURCE = "evaluate_data"
DATA_PATH = "evaluate_path"
DATA_UPLOAD = "evaluate_upload"
TTA = "evaluate_tta"                # "own", "flip" or "none"
TTA_CHOICES = {"own": "Each run's own", "flip": "Flip", "none": "None"}
# (tta_flip, tta_shift) as core.deploy.predict takes them: None, the run's own; "flip" is the flip alone for every run
TTA_VIEWS = {"own": (None, None), "flip": (True, False), "none": (False, False)}
SUBMIT_UPLOAD = "evaluate_submit_upload"
SUBMIT_RUN = "evaluate_submit_run"
SUBMIT_SUFFIXES = ["pkl", "pickle", "npy", "npz", "zip", "tar", "gz", "tgz"]
PREVIEW = 24                        # the first images of a test set shown with their predicted class
PREVIEW_COLUMNS = 8
PREVIEW_SCALE = 3
KEPT_UPLOAD = "evaluate_upload_kept"  # the last upload's (name, bytes), kept across a page switch
PERSIST = {"persist_state": "session"}  # the data source, path and TTA, as left, after a visit to another page
REPORT = "evaluate_report"          # the last Evaluated of the One run section
COMPARISON = "evaluate_comparison"  # the last pair of Evaluated of the Side by side section
SOURCES = {"builtin": "Built-in test slice", "path": "CIFAR-10 on disk", "upload": "Upload class folders"}
MISTAKES = 20
GALLERY_COLUMNS = 10
MISTAKE_SCALE = 3  # mistakes shown 96 px wide


@dataclass(frozen=True)
class TestData:
    source: str | tuple[str, bytes]  # "builtin", a path, or an upload's (name, bytes)
    version: int | None = None       # a path's modification time: part of the cache key


@dataclass(frozen=True)
class Evaluated:
    label: str   # whose report: run and checkpoint
    report: Report
    tta: str     # the test-time augmentation used, and whether it is the run's own (tta_words)
    made_with: tuple    # the controls it was made with: run, checkpoint, data, TTA choice


@st.cache_data(show_spinner=False, max_entries=16)
def evaluation(_classifier: Classifier, checkpoint: tuple, data: TestData, tta: tuple) -> Report:
    """`checkpoint` (checkpoint_id) stands for the classifier in the cache key."""
    if isinstance(data.source, tuple):
        return evaluate_archive(_classifier, *data.source, MISTAKES, *tta)
    return evaluate_run(_classifier, data.source, MISTAKES, *tta)


def choose_test_data() -> TestData | None:
    """The test data the controls describe, or None (with a word on what is missing) until it is given."""
    source = st.segmented_control("Test data", list(SOURCES), format_func=SOURCES.get, default="builtin",
                                  required=True, key=DATA_SOURCE, **PERSIST)
    if source == "builtin":
        st.caption("The 1,000 test images shipped with the app, 100 of each class, from the JPEG copy of CIFAR-10.")
        return TestData(BUILTIN)
    if source == "path":
        st.session_state.setdefault(DATA_PATH, suggested_data())
        path = st.text_input("Folder or archive", key=DATA_PATH, placeholder="path/to/cifar10",
                             help="torchvision's cifar-10-batches-py/ folder, or train/<class>/ and test/<class>/ "
                                  "folders as a folder, .tar.gz or .zip: its test split is used. Or a folder or "
                                  "archive of class folders alone. The first read decodes every image, then a "
                                  "cache makes it instant.", **PERSIST).strip()
        if not path:
            st.caption("Give the path of a CIFAR-10 copy on this machine.")
            return None
        resolved = Path(path).expanduser().resolve()
        if not resolved.exists():
            st.error(f"{path}: no such file or folder on this machine.", icon=":material/error:")
            return None
        return TestData(str(resolved), resolved.stat().st_mtime_ns)
    upload = st.file_uploader("Archive of class folders", type=["zip", "tar", "gz", "tgz"], key=DATA_UPLOAD,
                              help="A .zip, .tar.gz or .tar holding <class>/<image> folders named after CIFAR-10 "
                                   "classes (all ten or some), under one top folder or none. An archive with "
                                   "train/ and test/ is evaluated on test/.")
    if upload is not None:
        st.session_state[KEPT_UPLOAD] = (upload.name, upload.getvalue())
    elif KEPT_UPLOAD in st.session_state:  # a file uploader forgets its file on a page switch: this page does not
        name, data = st.session_state[KEPT_UPLOAD]
        kept, clear = st.columns([4, 1], vertical_alignment="center")
        kept.caption(f"{name}, uploaded before ({len(data) / 1e6:.1f} MB). Upload another to replace it.")
        clear.button("Clear it", icon=":material/close:", on_click=lambda: st.session_state.pop(KEPT_UPLOAD, None))
    if KEPT_UPLOAD not in st.session_state:
        st.caption("Upload a .zip, .tar.gz or .tar of folders named after the classes, e.g. cat/, dog/, ship/.")
        return None
    return TestData(st.session_state[KEPT_UPLOAD])


def evaluate(name: str, run: Run, tag: str, classifier: Classifier, data: TestData, tta: str) -> Evaluated:
    """Raises StudioError, saying what is wrong with the data or checkpoint."""
    with st.spinner(f"Evaluating {run.name}…"):
        report = evaluation(classifier, checkpoint_id(run, tag, classifier), data, TTA_VIEWS[tta])
    return Evaluated(f"{name}{run.name} · {tag}", report, classifier.tta_said(*TTA_VIEWS[tta]),
                     (run.name, tag, data, tta))


def mark_if_stale(shown: tuple[Evaluated, ...], now: tuple[tuple, ...]) -> None:
    """A result the controls above no longer describe says so, rather than pass for theirs."""
    if tuple(e.made_with for e in shown) != now:
        st.warning("Made with other settings than those above (run, checkpoint, test data or test-time "
                   "augmentation). Press the button to evaluate with the settings shown.",
                   icon=":material/history:")


def per_class_table(*evaluated: Evaluated) -> pd.DataFrame:
    return pd.DataFrame([{"Run": e.label, "Class": name, "Accuracy": accuracy}
                         for e in evaluated for name, accuracy in e.report.per_class_accuracy.items()])


def describe(evaluated: Evaluated) -> str:
    report = evaluated.report
    return (f"{report.images:,} images of {report.data} · test-time augmentation: "
            f"{evaluated.tta}")


def show_report(evaluated: Evaluated) -> None:
    report = evaluated.report
    st.subheader(evaluated.label, divider="gray")
    st.caption(describe(evaluated))
    accuracy, images, hardest = st.columns(3)
    accuracy.metric("Accuracy", f"{report.accuracy:.2%}", border=True, height="stretch")
    images.metric("Images", f"{report.images:,}", border=True, height="stretch")
    worst = min(report.per_class_accuracy, key=report.per_class_accuracy.get)
    hardest.metric("Hardest class", worst, f"{report.per_class_accuracy[worst]:.1%} right", delta_color="off",
                   delta_arrow="off", border=True, height="stretch")
    matrix, bars = st.columns([3, 2])
    matrix.markdown("**Confusion matrix** :gray[· rows: true class, columns: predicted]")
    matrix.altair_chart(confusion_chart(report.classes, report.confusion))
    bars.markdown("**Accuracy per class**")
    bars.altair_chart(per_class_chart(per_class_table(evaluated)))
    st.markdown(f"**Most confident mistakes** :gray[· the {len(report.mistakes)} wrong answers it was surest of: "
                f"true → predicted, confidence]")
    if not report.mistakes:
        st.success("No mistakes: every image was classified right.")
    for start in range(0, len(report.mistakes), GALLERY_COLUMNS):
        for column, mistake in zip(st.columns(GALLERY_COLUMNS), report.mistakes[start:start + GALLERY_COLUMNS]):
            column.image(enlarge(mistake.image, MISTAKE_SCALE),
                         caption=f"{mistake.true} → {mistake.predicted} · {mistake.confidence:.0%}")


def show_comparison(first: Evaluated, second: Evaluated) -> None:
    st.subheader("A against B", divider="gray")
    st.caption(f"A: {describe(first)}")
    st.caption(f"B: {describe(second)}")
    a, b, _ = st.columns([1, 1, 1])
    a.metric(f"Accuracy of {first.label}", f"{first.report.accuracy:.2%}", border=True, height="stretch")
    difference = 100 * (second.report.accuracy - first.report.accuracy)
    b.metric(f"Accuracy of {second.label}", f"{second.report.accuracy:.2%}", f"{difference:+.2f} points against A",
             delta_color="normal" if difference else "off", border=True, height="stretch")
    st.markdown("**Accuracy per class**")
    st.altair_chart(per_class_chart(per_class_table(first, second)))
    for column, evaluated in zip(st.columns(2), (first, second)):
        column.markdown(f"**Confusion matrix of {evaluated.label}**")
        column.altair_chart(confusion_chart(evaluated.report.classes, evaluated.report.confusion))


@st.cache_data(show_spinner=False, max_entries=4)
def submission(_classifier: Classifier, checkpoint: tuple, name: str, data: bytes, tta: tuple) -> Submission:
    """`checkpoint` (checkpoint_id) stands for the classifier in the cache key. Raises StudioError."""
    return predict_test_set(_classifier, read_unlabelled_bytes(name, data), *tta)


def show_submission(result: Submission) -> None:
    summary = result.summary()
    st.caption(f"{summary['count']:,} images · read as {summary['layout']} · test-time augmentation: "
               f"{summary['tta']} · sha256 {summary['sha256'][:16]}…")
    st.download_button("Download submission.csv", result.csv(), file_name="submission.csv", mime="text/csv",
                       on_click="ignore", icon=":material/download:", type="primary", key="submit_download",
                       help="ID,Labels: one row per image in the file's order, the label 0-9 in CIFAR-10's class "
                            "order")
    rows = result.rows()
    st.markdown(f"**The first {min(PREVIEW, len(rows))} images** :gray[· as read from the file, with the predicted "
                f"class: pictures that look scrambled mean the file's layout was misread]")
    shown = list(zip(rows[:PREVIEW], result.test_set.images[:PREVIEW]))
    for start in range(0, len(shown), PREVIEW_COLUMNS):
        for column, (row, image) in zip(st.columns(PREVIEW_COLUMNS), shown[start:start + PREVIEW_COLUMNS]):
            column.image(enlarge(torch.from_numpy(image), PREVIEW_SCALE), width=PREVIEW_SCALE * 32,
                         caption=f"{row['ID']}: {row['class']} · {row['probability']:.0%}")
    st.markdown("**Images per predicted class** :gray[· a test set of CIFAR-10 has about as many of each]")
    st.bar_chart(pd.Series(summary["histogram"], name="Images"), horizontal=True, x_label="Predicted class",
                 y_label="Images", sort=False)  # horizontal: x still names the index, drawn upright


# ---- the page's sections ---------------------------------------------------------------------------------

def choose_tta() -> str:
    return st.segmented_control("Test-time augmentation", list(TTA_CHOICES), format_func=TTA_CHOICES.get,
                                default="own", required=True, key=TTA, **PERSIST,
                                help="Each run's own: as it was tested when it trained (flip: each image's "
                                     "prediction averaged with its mirror image's; 6 views: with 1-pixel shifts "
                                     "too), which its best accuracy comes from. Flip (alone) or None: the same for "
                                     "every run.")


def waiting_for(data: TestData | None) -> str | None:
    """Why the buttons that evaluate are off, as their help says: no test data yet."""
    return "Choose the test data first" if data is None else None


def pick_network(runs: list[Run], remember: str, tag_key: str) -> tuple[Run, str, Classifier | None]:
    """A run and its checkpoint side by side, and the network they name (None when it can't be opened: it says
    why)."""
    pick_run, pick_tag = st.columns([3, 2], vertical_alignment="bottom")
    with pick_run:
        run = select_run("Run", runs, remember, default_run(runs))
    with pick_tag:
        tag = select_checkpoint(tag_key)
    return run, tag, open_classifier(run, tag)


def evaluate_one_run(runs: list[Run], data: TestData | None, tta: str) -> None:
    run, tag, classifier = pick_network(runs, RUN_CHOICE, "evaluate_tag")
    show_record(run)
    if st.button("Evaluate", type="primary", icon=":material/fact_check:", key="evaluate",
                 disabled=classifier is None or data is None, help=waiting_for(data)):
        try:
            st.session_state[REPORT] = evaluate("", run, tag, classifier, data, tta)
        except StudioError as e:
            st.session_state.pop(REPORT, None)
            st.error(f"Could not evaluate {run.name}: {e}", icon=":material/error:")
    if REPORT in st.session_state:
        mark_if_stale((st.session_state[REPORT],), ((run.name, tag, data, tta),))
        show_report(st.session_state[REPORT])


def compare_two_runs(runs: list[Run], data: TestData | None, tta: str) -> None:
    first_default = default_run(runs)
    others = [r for r in runs if r != first_default and r.has_checkpoint("best")]
    # with one usable run, its best and last checkpoints are the pair worth comparing
    second_default, second_tag = (others[0], "best") if others else (first_default, "last")
    left, right = st.columns(2)
    with left:
        run_a = select_run("Run A", runs, "compare_a", first_default)
        tag_a = select_checkpoint("compare_a_tag")
        classifier_a = open_classifier(run_a, tag_a)
    with right:
        run_b = select_run("Run B", runs, "compare_b", second_default)
        tag_b = select_checkpoint("compare_b_tag", default=second_tag)
        classifier_b = open_classifier(run_b, tag_b)
    if st.button("Compare", type="primary", icon=":material/compare:", key="compare",
                 disabled=any(x is None for x in (classifier_a, classifier_b, data)), help=waiting_for(data)):
        try:
            st.session_state[COMPARISON] = (evaluate("A: ", run_a, tag_a, classifier_a, data, tta),
                                            evaluate("B: ", run_b, tag_b, classifier_b, data, tta))
        except StudioError as e:
            st.session_state.pop(COMPARISON, None)
            st.error(f"Could not compare: {e}", icon=":material/error:")
    if COMPARISON in st.session_state:
        mark_if_stale(st.session_state[COMPARISON], ((run_a.name, tag_a, data, tta), (run_b.name, tag_b, data, tta)))
        show_comparison(*st.session_state[COMPARISON])


def predict_a_test_set(runs: list[Run], tta: str) -> None:
    st.caption("A test set without labels, such as the course's Kaggle one: each image's predicted class as the "
               "submission CSV, ID,Labels, in the file's order.")
    run, tag, classifier = pick_network(runs, SUBMIT_RUN, "evaluate_submit_tag")
    unlabelled = st.file_uploader("Unlabelled test set", type=SUBMIT_SUFFIXES, key=SUBMIT_UPLOAD,
                                  help="The course pickle (a dict of b'data': (N, 3072) CIFAR rows or (N, 32, 32, 3) "
                                       "uint8, and b'ids'), a .npy/.npz of (N, 32, 32, 3) or (N, 3, 32, 32) uint8, "
                                       "or a .zip/.tar.gz of images (ID = file name without its suffix). A pickle "
                                       "is read with numpy arrays and plain containers allowed, nothing else.")
    if unlabelled is None:
        st.caption("Upload the test set to see its first images with their predicted class, and to download the CSV.")
    elif classifier is not None:
        try:
            with st.spinner(f"Predicting {unlabelled.name} with {run.name}…"):
                result = submission(classifier, checkpoint_id(run, tag, classifier), unlabelled.name,
                                    unlabelled.getvalue(), TTA_VIEWS[tta])
        except StudioError as e:
            st.error(f"Could not predict {unlabelled.name}: {e}", icon=":material/error:")
        else:
            show_submission(result)


# ---- the page -----------------------------------------------------------------------------------------------

st.title("Evaluate")
st.write("See how a trained network does on a whole labelled test set: where it is right, what it confuses, "
         "the mistakes it is surest of, and how it compares with another run.")

runs = runs_or_stop("Evaluating")

data_column, tta_column = st.columns([3, 1], vertical_alignment="top")
with data_column:
    data = choose_test_data()
with tta_column:
    tta = choose_tta()

one_run, side_by_side, test_set = st.tabs(["One run", "Side by side", "Predict a test set"])
with one_run:
    evaluate_one_run(runs, data, tta)
with side_by_side:
    compare_two_runs(runs, data, tta)
with test_set:
    predict_a_test_set(runs, tta)
