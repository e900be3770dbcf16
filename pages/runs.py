"""Runs: every training run side by side: a table, their curves overlaid, accuracy against parameters, and
one run's results class by class.

The page only reads run folders. What it reads from a run is cached until one of the run's files changes;
an active run is read afresh, since its process may have died without writing anything.
"""
from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from core.deploy.jobs import read_job, start_export
from core.deploy.onnx_model import exported_file, report_path
from core.design.budget import count
from core.design.config import RunConfig
from core.errors import StudioError
from core.files import read_json
from core.report.charts import (accuracy_vs_parameters_chart, confusion_chart, overlay_chart, per_class_chart,
                                 run_colours)
from core.runs.progress import metric_frames
from core.runs.run import ACTIVE, Run, delete, list_runs, runs_root
from core.units import duration_text, epoch_text, epochs_done_text, points_change_text
from core.runs.choice import default_run
from pages._ui import (FOLLOWED, RUN_CHOICE, chosen_run, current_design, data_label,
                       select_run, show_record, state_badge, through_app_shell, usable_runs)

through_app_shell()

COMPARE = "runs_compare"
DELETING = "runs_deleting"  # the run whose deletion awaits confirmation
REFRESH_S = 5               # how often the table re-reads the runs while one is active
PERSIST = {"persist_state": "session"}
NOT_KNOWN = "—"             # a cell with nothing to say: an imported run's training time, a device not yet known


# ---- reading runs, cached until their files change ---------------------------------------------------

def changed(*paths: Path) -> tuple:
    """The files' modification times (None for a missing one): a cache key that changes when they do."""
    return tuple(p.stat().st_mtime_ns if p.exists() else None for p in paths)


@st.cache_data(max_entries=1000, show_spinner=False)
def cached_summary(run_dir: str, stamp: tuple) -> dict:
    return Run(Path(run_dir)).summary()


def summary(run: Run) -> dict:
    row = cached_summary(str(run.dir), changed(run.status_path, run.metrics_path, run.config_path))
    return run.summary() if row["state"] in ACTIVE else row


@st.cache_data(max_entries=1000, show_spinner=False)
def cached_epoch_lines(run_dir: str, stamp: tuple) -> pd.DataFrame:
    return metric_frames(Run(Path(run_dir)).metrics())[1]


def epoch_lines(run: Run) -> pd.DataFrame:
    return cached_epoch_lines(str(run.dir), changed(run.metrics_path))


@st.cache_data(max_entries=200, show_spinner=False)
def results(run_dir: str, stamp: tuple) -> dict | None:
    return read_json(Run(Path(run_dir)).results_path)


# ---- display ------------------------------------------------------------------------------------------

RUN_COLUMNS = {
    "Parameters": st.column_config.NumberColumn(format="%,d"),
    "Best accuracy": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1,
                                                     help="Best accuracy on the evaluation split at an epoch's end"),
    "Training time": st.column_config.NumberColumn(format="%.1f min", help="Time spent training and evaluating"),
    "Processes": st.column_config.NumberColumn(help="The run's world size: how many processes trained it "
                                                    "(torchrun, one per GPU)"),
    "Created": st.column_config.DatetimeColumn(format="D MMM, HH:mm"),
}


def epochs_of(row: dict, unit: bool = False) -> str:
    """A summary row's epochs trained against its length: "16 of 30", "24.5 in a time budget of 30 min"."""
    return epochs_done_text(row["epochs_done"], row["epochs"], row["time_limit"], unit)


def runs_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame({
        "Run": [r["name"] for r in rows],
        "State": [r["state"] for r in rows],
        "Parameters": [r["params"] for r in rows],
        "Best accuracy": [r["best_acc"] for r in rows],
        "Epochs": [(f"{r['epochs_done']}, imported" if r["epochs_done"] else "imported") if r["imported_from"] else
                   epochs_of(r) for r in rows],
        "Training time": [r["elapsed"] / 60 if r["elapsed"] is not None else None for r in rows],
        "Device": [r["device"] for r in rows],
        "Processes": [r["world_size"] for r in rows],
        "Data": [data_label(r["data"]) for r in rows],
        "Preset": [r["preset"] or "custom" for r in rows],
        "Created": [datetime.fromtimestamp(r["created"]) if r["created"] else None for r in rows],
    })


def show_table(live: bool) -> None:
    rows = [summary(run) for run in list_runs()]
    if any(row["state"] in ACTIVE for row in rows) != live:
        st.rerun()  # a run started or ended: the whole page follows
    st.dataframe(runs_table(rows), hide_index=True, column_config=RUN_COLUMNS, placeholder=NOT_KNOWN)


def overlay(runs: list[Run], column: str, title: str, value_format: str, colours: dict[str, str]):
    return overlay_chart({run.name: epoch_lines(run) for run in runs}, column, title, value_format, colours)


def report_html(runs: list[Run]) -> str:
    """The report of `runs` as one HTML file (core.report), made when the download is clicked."""
    from core.report.document import to_html  # torch and vl-convert: only when a report is asked for
    from core.report.report import build

    return to_html(*build(runs))


def paper_zip(runs: list[Run]) -> bytes:
    from core.report.report import paper_zip  # torch and vl-convert: only when asked for

    return paper_zip(runs)


def follow_on_train() -> None:
    st.session_state[FOLLOWED] = chosen_run(RUN_CHOICE).name


def ask_to_delete() -> None:
    st.session_state[DELETING] = chosen_run(RUN_CHOICE).name


def cancel_delete() -> None:
    st.session_state.pop(DELETING, None)


# ---- export for devices, import from elsewhere ------------------------------------------------------

ALLOWED_DROP = "Allowed accuracy drop (points)"  # int8's limit against fp32; errors name this control
MAX_DROP = "export_max_drop"
EXPORT_ERROR = "runs_export_error:"               # + precision: why an export could not start
PRECISIONS = {"fp32": "The network as trained, in one file.",
              "int8": "About a quarter of the size and faster on a CPU; calibrated on training images."}
NORMALIZATION_LABELS = {"cifar10": "CIFAR-10 mean and std (as this studio trains)",
                        "kuangliu": "kuangliu pytorch-cifar's (std 0.2023, 0.1994, 0.2010)",
                        "none": "None: plain [0, 1] pixels"}


def start_job(precision: str) -> None:
    """The chosen run's export, with the run and the allowed drop as they are at the click (chosen_run). The
    drop's box does not rerun the page: a value typed arrives with the click."""
    max_drop = st.session_state[MAX_DROP] if precision == "int8" else 0.0
    try:
        start_export(chosen_run(RUN_CHOICE), precision, max_drop)
    except StudioError as e:
        st.session_state[EXPORT_ERROR + precision] = str(e)


def job_error(job: dict) -> str:
    """Why an export failed, in this page's terms."""
    refused = job.get("refused")
    if refused:
        return (f"int8 loses {refused['drop']:.2f} accuracy points against fp32, more than the {refused['allowed']:g} "
                f"allowed, so nothing was written. Raise **{ALLOWED_DROP}** above and export again, or use fp32.")
    return job.get("error") or "no reason recorded"


def show_job(model: Path, running: bool) -> None:
    """An export in the background, re-read every second while it runs; when it ends, the whole page follows."""
    job = read_job(model)
    if running != (job is not None and job.get("state") == "running"):
        st.rerun()
    if running:
        took = duration_text(time.time() - job["started"])
        st.progress(job.get("fraction", 0.0), text=f"Exporting: {job.get('stage', 'starting')}… ({took} so far; "
                                                    f"this page stays usable meanwhile)")
    elif job is not None and job.get("state") == "failed":
        st.error(f"Not exported: {job_error(job)}", icon=":material/block:")


def export_card(run: Run, precision: str, generation: str) -> None:
    """One precision's export: a button that starts (or restarts) it in the background, its progress, then what
    it measured and its download."""
    path = exported_file(run, precision)
    st.markdown(f"**ONNX {precision}**")
    st.caption(PRECISIONS[precision])
    if precision == "int8":
        st.number_input(ALLOWED_DROP, 0.0, 100.0, 1.0, 0.1, key=MAX_DROP, on_change="ignore",
                        help="Refuse the int8 model if it loses more accuracy points than this against fp32 on the "
                             "test images")
    job = read_job(path)
    running = job is not None and job.get("state") == "running"
    report = read_json(report_path(path)) if path.exists() else None
    st.button(f"Export ONNX {precision}" if report is None else "Export again", key=f"export_{precision}",
              icon=":material/memory:", disabled=running, on_click=start_job, args=(precision,),
              help="In the background: it is checked against PyTorch on the whole test split first, a minute or "
                   "more on a CPU for 10,000 images")
    if EXPORT_ERROR + precision in st.session_state:
        st.error(f"Not started: {st.session_state.pop(EXPORT_ERROR + precision)}", icon=":material/block:")
    st.fragment(show_job, run_every=1 if running else None)(path, running)
    if report is None:
        return
    size, agreement, accuracy = st.columns(3)
    size.metric("Size", f"{report['bytes'] / 1e6:.2f} MB",
                delta=f"{report['bytes'] / report['fp32_bytes']:.0%} of fp32's size" if precision == "int8" else None,
                delta_color="off", delta_arrow="off")
    agreement.metric("Agrees with PyTorch", f"{report['agreement']:.2%}", help="Share of test images where it "
                     "picks the class PyTorch picks")
    change = round(-report["accuracy_drop"], 2) if precision == "int8" else 0.0
    accuracy.metric("Accuracy", f"{report['accuracy']:.2%}",  # no change: no colour, no arrow
                    delta=points_change_text(change, "fp32") if precision == "int8" else None,
                    delta_color="normal" if change else "off", delta_arrow="auto" if change else "off")
    st.caption(f"On {report['images']:,} test images of {report['data']}; "
               f"largest logit difference from PyTorch {report['max_logit_diff']:.1e}.")
    if report["generation"] != generation:
        st.warning("Made from an earlier checkpoint than the run's best now: export again.", icon=":material/history:")
    st.download_button(f"Download {path.name}", path.read_bytes(), file_name=path.name,
                       mime="application/octet-stream", icon=":material/download:", key=f"download_{precision}")


def export_section(run: Run) -> None:
    st.markdown("**Export for devices**")
    st.caption("One ONNX file that runs with onnxruntime alone (`python -m core predict --onnx MODEL.onnx IMAGE`): "
               "it takes uint8 RGB images as (N, 3, 32, 32) and normalises them itself; its metadata holds the "
               "class names and the design.")
    if not run.has_checkpoint("best"):
        st.caption("It needs a checkpoint first: one is written after the first epoch.")
        return
    generation = run.checkpoint_meta("best")["generation"]
    for column, precision in zip(st.columns(2), PRECISIONS):
        with column.container(border=True):
            export_card(run, precision, generation)
    code_card(run, generation)


CODE_ZIP = "runs_code_zip"  # (run name, checkpoint generation, zip bytes, what the export said)


def make_code_zip(run: Run) -> None:
    from core.deploy.code_export import export_code_zip  # loads torch: only when asked

    try:
        data, made = export_code_zip(run)
    except StudioError as e:
        st.session_state[CODE_ZIP] = (run.name, None, None, str(e))
        return
    st.session_state[CODE_ZIP] = (run.name, run.checkpoint_meta("best")["generation"], data, made)


def code_card(run: Run, generation: str) -> None:
    """The run as code a grader runs with torch alone, and as a notebook for Colab: one zip to download."""
    with st.container(border=True):
        st.markdown("**Code for a grader, a notebook for Colab**")
        st.caption("model.py (the network in plain PyTorch) with weights.pt, train.py (its recipe: prints the "
                   "parameter count first and the test accuracy last) and the same as notebook.ipynb, needing torch "
                   "and torchvision alone. What the notebook trains comes back here: Import its run.zip below.")
        if st.button("Make the code", icon=":material/code:", key="export_code",
                     disabled=run.status().get("state") != "finished",
                     help="Only a finished run: its best checkpoint and recipe"):
            make_code_zip(run)
        made = st.session_state.get(CODE_ZIP)
        if made is None or made[0] != run.name:
            return
        if made[2] is None:
            st.error(f"Not exported: {made[3]}", icon=":material/block:")
        elif made[1] == generation:
            st.download_button(f"Download {run.name}-code.zip", made[2], file_name=f"{run.name}-code.zip",
                               mime="application/zip", icon=":material/download:", key="download_code")


def import_box() -> None:
    with st.expander("Import a run or weights trained elsewhere (run.zip, .pt)", icon=":material/upload_file:"):
        st.caption("The run.zip that an exported train.py wrote (Export as code; Colab, Kaggle) comes back whole: "
                   "design, recipe, curves and checkpoint. A PyTorch state_dict (.pt) is read without running "
                   "anything the file may hold (a file with code in it is refused); names in kuangliu "
                   "pytorch-cifar's layout (conv1, layer1.0.conv1, layer1.0.shortcut.0, linear) are matched to ours; "
                   "give the design it was trained with.")
        weights = st.file_uploader("run.zip or weights (.pt)", type=["zip", "pt", "pth"], key="import_weights")
        run_zip = weights is not None and weights.name.lower().endswith(".zip")
        design_file, source, normalization = None, "current", None
        if not run_zip:
            source = st.segmented_control("Design", ("current", "file"), default="current", required=True,
                                          key="import_design_source",
                                          format_func={"current": "The design on the Design page",
                                                       "file": "A design file (JSON)"}.get)
            if source == "file":
                design_file = st.file_uploader("Design (JSON): a spec or a run config", type=["json"],
                                               key="import_design")
            else:
                spec, _ = current_design()
                st.caption(f"The design on the Design page: {len(spec.stages)} stages, "
                           f"{count(spec).params:,} parameters.")
            normalization = st.selectbox("Input normalisation it was trained with", list(NORMALIZATION_LABELS),
                                         format_func=NORMALIZATION_LABELS.get, key="import_normalization")
        name = st.text_input("Run name", value="imported", key="import_name")
        if st.button("Import", type="primary", icon=":material/upload:", key="import",
                     disabled=weights is None or (source == "file" and design_file is None)):
            if run_zip:
                import_run_zip_now(weights, name)
            else:
                import_weights_now(weights, design_file, normalization, name)


def import_run_zip_now(upload, name: str) -> None:
    from core.deploy.run_zip import import_run_zip  # loads torch: only when asked to import

    try:
        run = import_run_zip(upload.getvalue(), upload.name, runs_root() / name)
    except StudioError as e:
        st.error(f"Not imported: {e}", icon=":material/block:")
        return
    show_imported(run, upload.name)


def show_imported(run: Run, what: str) -> None:
    st.session_state[RUN_CHOICE] = run.name
    st.session_state.pop(f"{RUN_CHOICE}:widget", None)  # so that select_run shows the new run, not the last one
    st.toast(f"Imported {what} as {run.name}.", icon=":material/check_circle:")
    st.rerun()


def import_weights_now(weights, design_file, normalization: str, name: str) -> None:
    from core.deploy.importer import NORMALIZATIONS, import_weights  # loads torch: only when asked to import

    try:
        if design_file is None:
            spec, preset = current_design()
            design = RunConfig(spec, preset=preset)
        else:
            try:
                design = RunConfig.from_dict(json.loads(design_file.getvalue()))
            except ValueError as e:
                raise StudioError(f"{design_file.name}: not a design ({e})") from None
        run = import_weights(weights.getvalue(), weights.name, design, runs_root() / name,
                             *NORMALIZATIONS[normalization])
    except StudioError as e:
        st.error(f"Not imported: {e}", icon=":material/block:")
        return
    show_imported(run, weights.name)


@st.dialog("Delete a run", on_dismiss=cancel_delete)
def confirm_delete(run: Run) -> None:
    st.write(f"Delete **{run.name}** with everything in its folder: checkpoints, metrics, log and results? "
             f"This can't be undone.")
    delete_column, cancel_column = st.columns(2)
    if delete_column.button("Delete", type="primary", icon=":material/delete:", width="stretch"):
        try:
            delete(run)
        except StudioError as e:
            st.error(f"Not deleted: {e}.", icon=":material/block:")
            return
        cancel_delete()
        st.toast(f"Deleted {run.name}.", icon=":material/delete:")
        st.rerun()
    if cancel_column.button("Cancel", width="stretch"):
        cancel_delete()
        st.rerun()


# ---- the page's sections ---------------------------------------------------------------------------------

def no_runs_yet() -> None:
    """What the page says before the first run, and the ways to one: train, design, import. Stops the page."""
    st.info("No runs yet. A run shows up here as soon as it is launched on the Train page, and stays here with its "
            "curves and results until you delete it.", icon=":material/info:")
    with st.container(horizontal=True):
        if st.button("Train a network", type="primary", icon=":material/model_training:"):
            st.switch_page("pages/train.py")
        if st.button("Design one first", icon=":material/architecture:"):
            st.switch_page("pages/design.py")
    st.caption(f"Runs are kept in {runs_root()}.")
    import_box()
    st.stop()


def all_runs_table(rows: list[dict]) -> None:
    """The table of every run, re-read every few seconds while one is active."""
    live = any(row["state"] in ACTIVE for row in rows)
    st.fragment(show_table, run_every=REFRESH_S if live else None)(live)
    st.caption(f"Runs are kept in {runs_root()}." + (" The table refreshes while a run is active." if live else ""))


def report_buttons(compared: list[Run], chosen: list[str]) -> None:
    st.download_button("Report", lambda: report_html(compared), file_name=f"report-{'-'.join(chosen)}.html"[:120],
                       mime="text/html", icon=":material/summarize:", on_click="ignore", key="report",
                       help="One HTML file that opens offline: the runs' hyperparameters side by side, results, "
                            "curves, confusion matrices, most confident mistakes and reproducibility records. "
                            "Making it evaluates each best checkpoint: seconds to a minute.")
    st.download_button("Tables and figures for a paper", lambda: paper_zip(compared), file_name="paper.zip",
                       mime="application/zip", icon=":material/article:", on_click="ignore", key="paper",
                       help="LaTeX: tables.tex (booktabs: architecture and recipe side by side, results) and "
                            "every chart of the report as a PDF, with figures.tex to include them")


def compare_runs(runs: list[Run], rows: list[dict]) -> None:
    """The chosen runs' curves overlaid, their report to download, and every run's accuracy against parameters."""
    st.subheader("Compare runs", divider="gray")
    trained = [row["name"] for row in rows if row["best_acc"] is not None]  # an epoch line: curves to draw
    if not trained:
        st.caption("Curves appear here once a run has finished its first epoch.")
        return
    st.session_state[COMPARE] = [name for name in st.session_state.get(COMPARE, trained[:3]) if name in trained]
    chosen = st.multiselect("Runs", trained, key=COMPARE, placeholder="Pick runs to overlay their curves", **PERSIST)
    if chosen:
        compared = [run for run in runs if run.name in chosen]
        accuracy_column, loss_column = st.columns(2)
        colours = run_colours([row["name"] for row in rows])
        accuracy_column.altair_chart(overlay(compared, "eval_acc", "Accuracy on the evaluation split", ".1~%", colours))
        loss_column.altair_chart(overlay(compared, "eval_loss", "Loss on the evaluation split", "~g", colours))
        report_buttons(compared, chosen)
    st.markdown("**Best accuracy against parameters**")
    st.altair_chart(accuracy_vs_parameters_chart(rows))
    if any(row["search"] and row["best_acc"] is not None for row in rows):
        st.caption("Triangles are search trials: their accuracy is measured on a validation split held out of the "
                   "training images, after the few epochs a trial trains, so it reads lower than a full run's test "
                   "accuracy (circles) and is not comparable with it.")


def run_facts(row: dict) -> None:
    """The run's state, size, design, data, length and device, in one line."""
    with st.container(horizontal=True, vertical_alignment="center"):
        state_badge(row["state"])
        facts = [f"{row['params']:,} parameters", row["preset"] or "custom design",
                 *([f"imported from {Path(row['imported_from']).name}"] if row["imported_from"] else
                   [data_label(row["data"]), epochs_of(row, unit=True)])]
        where = [f"{row['device']} × {row['world_size']} processes" if row["world_size"] > 1 else row["device"]]
        st.caption(" · ".join(facts + (where if row["device"] else [])))


def run_results(run: Run, row: dict) -> None:
    """The run's final results class by class, or why it has none."""
    try:
        result = results(str(run.dir), changed(run.results_path))
    except StudioError as e:
        result = None
        st.error(str(e), icon=":material/error:")
    if result:
        st.markdown(f"**{result['accuracy']:.2%}** on the {result['eval_split']} split at the end of training: "
                    f"{sum(map(sum, result['confusion'])):,} images of {result['data']}.")
        matrix_column, classes_column = st.columns([3, 2])
        matrix_column.markdown("**Confusion matrix**")
        matrix_column.altair_chart(confusion_chart(result["classes"], result["confusion"]))
        classes_column.markdown("**Accuracy per class**")
        classes_column.altair_chart(per_class_chart(pd.DataFrame(
            {"Class": list(result["per_class_accuracy"]), "Accuracy": list(result["per_class_accuracy"].values()),
             "Run": run.name})))
    elif row["imported_from"]:
        st.info(f"Imported from {Path(row['imported_from']).name}, not trained here: measure it on the Evaluate "
                f"page.", icon=":material/upload_file:")
    elif row["state"] in ACTIVE:
        st.info("Its confusion matrix and per-class accuracy appear when it finishes; follow it live on the Train "
                "page.", icon=":material/hourglass_top:")
    elif row["state"] == "pruned":
        st.info(f"Search {row['search']} pruned it after epoch {epoch_text(row['epochs_done'])}: its validation "
                f"accuracy trailed the other trials'. Its checkpoints are kept; the Search page has the study.",
                icon=":material/content_cut:")
    else:
        st.info(f"It {row['state']} before its last epoch, so it has no final results. Resume it on the Train page.",
                icon=":material/info:")


def one_run(runs: list[Run], rows: list[dict]) -> None:
    """One run: its facts, results and record; open it on the Train page, delete it, export it."""
    st.subheader("One run", divider="gray")
    run = select_run("Run", runs, RUN_CHOICE, default_run(runs))
    row = next(r for r in rows if r["name"] == run.name)
    run_facts(row)
    run_results(run, row)
    show_record(run)
    with st.container(horizontal=True):
        if st.button("Open on the Train page", icon=":material/model_training:", on_click=follow_on_train,
                     help="Follow it there: live curves, log, stop, resume"):
            st.switch_page("pages/train.py")
        st.button("Delete…", icon=":material/delete:", on_click=ask_to_delete)
    if st.session_state.get(DELETING) == run.name:
        confirm_delete(run)
    export_section(run)


# ---- the page -----------------------------------------------------------------------------------------

st.title("Runs")
st.write("Every training run, side by side: how far it got, its curves against the others', accuracy against "
         "parameters, and where it goes wrong, class by class.")
runs = usable_runs()
if not runs:
    no_runs_yet()
rows = [summary(run) for run in runs]
all_runs_table(rows)
compare_runs(runs, rows)
one_run(runs, rows)
st.subheader("Import", divider="gray")
import_box()
