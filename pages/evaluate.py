"""Evaluate: how a run does on a whole labelled test set, class by class, and beside another run.

The test data is the built-in slice, a CIFAR-10 copy on disk, or an uploaded archive of class
folders. Evaluating runs on a button press (10,000 images take seconds on a CPU) and its report is
cached per checkpoint save, data and flip setting, so asking again, or going back to an earlier
choice, is instant. The last report of each section stays in session state, named by what it is of, and so do the
data source, path, upload and TTA across a page switch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from core.data.sources import BUILTIN, resolve_data
from core.deploy.predict import Classifier, Report, evaluate_archive, evaluate_run
from core.errors import StudioError
from core.nn.visual import enlarge
from core.report.charts import confusion_chart, per_class_chart
from core.runs.run import Run
from pages._ui import (RUN_CHOICE, checkpoint_id, default_run, has_checkpoint, runs_or_stop, open_classifier,
                       select_checkpoint, select_run, show_record, through_app_shell)

through_app_shell()

DATA_SOURCE = "evaluate_data"
DATA_PATH = "evaluate_path"
DATA_UPLOAD = "evaluate_upload"
KEPT_UPLOAD = "evaluate_upload_kept"  # the last upload's (name, bytes), kept across a page switch
PERSIST = {"persist_state": "session"}  # the data source, path and TTA, as left, after a visit to another page
TTA = "evaluate_tta"
REPORT = "evaluate_report"          # the last Evaluated of the One run section
COMPARISON = "evaluate_comparison"  # the last pair of Evaluated of the Side by side section
SOURCES = {"builtin": "Built-in test slice", "path": "CIFAR-10 on disk", "upload": "Upload class folders"}
SHARED_COPY = Path(__file__).resolve().parents[2] / "shared" / "cifar10" / "cifar10-jpg.tar.gz"
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
    tta_flip: bool


@st.cache_data(show_spinner=False, max_entries=16)
def evaluation(_classifier: Classifier, checkpoint: tuple, data: TestData, tta_flip: bool) -> Report:
    """`checkpoint` (checkpoint_id) stands for the classifier in the cache key."""
    if isinstance(data.source, tuple):
        return evaluate_archive(_classifier, *data.source, mistakes=MISTAKES, tta_flip=tta_flip)
    return evaluate_run(_classifier, data.source, mistakes=MISTAKES, tta_flip=tta_flip)


def suggested_path() -> str:
    """CIFAR10_DATA or ./data when set up, else the JPEG copy beside the repo when there is one."""
    resolved = resolve_data(None)
    if resolved != BUILTIN:
        return resolved
    return str(SHARED_COPY) if SHARED_COPY.exists() else ""


def choose_test_data() -> TestData | None:
    """The test data the controls describe, or None (with a word on what is missing) until it is given."""
    source = st.segmented_control("Test data", list(SOURCES), format_func=SOURCES.get, default="builtin",
                                  required=True, key=DATA_SOURCE, **PERSIST)
    if source == "builtin":
        st.caption("The 1,000 test images shipped with the app, 100 of each class, from the JPEG copy of CIFAR-10.")
        return TestData(BUILTIN)
    if source == "path":
        st.session_state.setdefault(DATA_PATH, suggested_path())
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


def evaluate(name: str, run: Run, tag: str, classifier: Classifier, data: TestData, tta_flip: bool) -> Evaluated:
    """Raises StudioError, saying what is wrong with the data or checkpoint."""
    with st.spinner(f"Evaluating {run.name}…"):
        report = evaluation(classifier, checkpoint_id(run, tag, classifier), data, tta_flip)
    return Evaluated(f"{name}{run.name} · {tag}", report, tta_flip)


def per_class_table(*evaluated: Evaluated) -> pd.DataFrame:
    return pd.DataFrame([{"Run": e.label, "Class": name, "Accuracy": accuracy}
                         for e in evaluated for name, accuracy in e.report.per_class_accuracy.items()])


def describe(evaluated: Evaluated) -> str:
    report = evaluated.report
    mirrored = ", each averaged with its mirror image" if evaluated.tta_flip else ""
    return f"{report.images:,} images of {report.data}{mirrored}"


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
    st.caption(describe(first))
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


st.title("Evaluate")
st.write("See how a trained network does on a whole labelled test set: where it is right, what it confuses, "
         "the mistakes it is surest of, and how it compares with another run.")

runs = runs_or_stop("Evaluating")

data_column, tta_column = st.columns([3, 1], vertical_alignment="top")
with data_column:
    data = choose_test_data()
tta_flip = tta_column.toggle("Flip test-time augmentation", key=TTA, **PERSIST,
                             help="Average each image's prediction with its mirror image's")
waiting = "Choose the test data first" if data is None else None

one_run, side_by_side = st.tabs(["One run", "Side by side"])

with one_run:
    pick_run, pick_tag = st.columns([3, 2], vertical_alignment="bottom")
    with pick_run:
        run = select_run("Run", runs, RUN_CHOICE, default_run(runs))
    with pick_tag:
        tag = select_checkpoint("evaluate_tag")
    classifier = open_classifier(run, tag)
    show_record(run)
    if st.button("Evaluate", type="primary", icon=":material/fact_check:", key="evaluate",
                 disabled=classifier is None or data is None, help=waiting):
        try:
            st.session_state[REPORT] = evaluate("", run, tag, classifier, data, tta_flip)
        except StudioError as e:
            st.session_state.pop(REPORT, None)
            st.error(f"Could not evaluate {run.name}: {e}", icon=":material/error:")
    if REPORT in st.session_state:
        show_report(st.session_state[REPORT])

with side_by_side:
    first_default = default_run(runs)
    others = [r for r in runs if r != first_default and has_checkpoint(r)]
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
                 disabled=any(x is None for x in (classifier_a, classifier_b, data)), help=waiting):
        try:
            st.session_state[COMPARISON] = (evaluate("A: ", run_a, tag_a, classifier_a, data, tta_flip),
                                            evaluate("B: ", run_b, tag_b, classifier_b, data, tta_flip))
        except StudioError as e:
            st.session_state.pop(COMPARISON, None)
            st.error(f"Could not compare: {e}", icon=":material/error:")
    if COMPARISON in st.session_state:
        show_comparison(*st.session_state[COMPARISON])
