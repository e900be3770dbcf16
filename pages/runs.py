"""Runs: every training run side by side: a table, their curves overlaid, accuracy against parameters, and
one run's results class by class.

The page only reads run folders. What it reads from a run is cached until one of the run's files changes;
an active run is read afresh, since its process may have died without writing anything.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from core.budget import BUDGET
from core.errors import StudioError
from core.files import read_json
from core.progress import metric_frames
from core.runs import ACTIVE, Run, delete, list_runs, runs_root
from pages._ui import (FOLLOWED, PRIMARY, RUN_CHOICE, confusion_chart, data_label, default_run, epoch_chart,
                       per_class_chart, plural, select_run, state_badge, through_app_shell)

through_app_shell()

COMPARE = "runs_compare"
DELETING = "runs_deleting"  # the run whose deletion awaits confirmation
REFRESH_S = 5               # how often the table re-reads the runs while one is active
PERSIST = {"persist_state": "session"}


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
    "Created": st.column_config.DatetimeColumn(format="D MMM, HH:mm"),
}


def runs_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame({
        "Run": [r["name"] for r in rows],
        "State": [r["state"] for r in rows],
        "Parameters": [r["params"] for r in rows],
        "Best accuracy": [r["best_acc"] for r in rows],
        "Epochs": [f"{r['epochs_done']} of {r['epochs']}" for r in rows],
        "Training time": [r["elapsed"] / 60 if r["elapsed"] is not None else None for r in rows],
        "Device": [r["device"] for r in rows],
        "Data": [data_label(r["data"]) for r in rows],
        "Preset": [r["preset"] or "custom" for r in rows],
        "Created": [datetime.fromtimestamp(r["created"]) if r["created"] else None for r in rows],
    })


def show_table(live: bool) -> None:
    rows = [summary(run) for run in list_runs()]
    if any(row["state"] in ACTIVE for row in rows) != live:
        st.rerun()  # a run started or ended: the whole page follows
    st.dataframe(runs_table(rows), hide_index=True, column_config=RUN_COLUMNS)


def overlay(runs: list[Run], column: str, title: str, value_format: str) -> alt.Chart:
    curves = pd.concat([pd.DataFrame({"Epoch": lines["epoch"], "Value": lines[column], "Curve": run.name})
                        for run in runs for lines in [epoch_lines(run)]])
    return epoch_chart(curves, title, curves["Epoch"].max(), value_format=value_format)


def accuracy_vs_parameters(rows: list[dict]) -> alt.Chart:
    points = pd.DataFrame([{"Run": r["name"], "Parameters": r["params"], "Best accuracy": r["best_acc"],
                            "State": r["state"]} for r in rows if r["best_acc"] is not None])
    x = alt.X("Parameters:Q", axis=alt.Axis(format="~s", grid=False), title="Parameters (log scale)",
              scale=alt.Scale(type="log", domain=[points["Parameters"].min() / 2,
                                                  max(BUDGET, points["Parameters"].max()) * 1.5]))
    base = alt.Chart(points).encode(x=x, y=alt.Y("Best accuracy:Q", axis=alt.Axis(format="%")),
                                    tooltip=["Run", "State", alt.Tooltip("Parameters:Q", format=","),
                                             alt.Tooltip("Best accuracy:Q", format=".2%")])
    dots = base.mark_circle(size=90, color=PRIMARY, opacity=0.9)
    names = base.mark_text(align="left", dx=8, fontSize=11).encode(text="Run")
    budget = alt.Chart(pd.DataFrame({"Parameters": [BUDGET], "label": [f"{BUDGET / 1e6:g}M budget"]}))
    rule = budget.mark_rule(color="#dc2626", strokeDash=[6, 4]).encode(x="Parameters:Q")
    rule_label = budget.mark_text(align="right", baseline="top", dx=-4, dy=4, color="#dc2626").encode(
        x="Parameters:Q", y=alt.value(0), text="label")
    return (rule + rule_label + dots + names).properties(height=320)


def follow_on_train(name: str) -> None:
    st.session_state[FOLLOWED] = name


def ask_to_delete(name: str) -> None:
    st.session_state[DELETING] = name


def cancel_delete() -> None:
    st.session_state.pop(DELETING, None)


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


# ---- the page -----------------------------------------------------------------------------------------

st.title("Runs")
st.write("Every training run, side by side: how far it got, its curves against the others', accuracy against "
         "parameters, and where it goes wrong, class by class.")
runs = list_runs()
if not runs:
    st.info("No runs yet. A run shows up here as soon as it is launched on the Train page, and stays here with its "
            "curves and results until you delete it.", icon=":material/info:")
    with st.container(horizontal=True):
        if st.button("Train a network", type="primary", icon=":material/model_training:"):
            st.switch_page("pages/train.py")
        if st.button("Design one first", icon=":material/architecture:"):
            st.switch_page("pages/design.py")
    st.caption(f"Runs are kept in {runs_root()}.")
    st.stop()

rows = [summary(run) for run in runs]
live = any(row["state"] in ACTIVE for row in rows)
st.fragment(show_table, run_every=REFRESH_S if live else None)(live)
st.caption(f"Runs are kept in {runs_root()}." + (" The table refreshes while a run is active." if live else ""))

# -- compare --
st.subheader("Compare runs", divider="gray")
trained = [row["name"] for row in rows if row["epochs_done"]]
if not trained:
    st.caption("Curves appear here once a run has finished its first epoch.")
else:
    st.session_state[COMPARE] = [name for name in st.session_state.get(COMPARE, trained[:3]) if name in trained]
    chosen = st.multiselect("Runs", trained, key=COMPARE, placeholder="Pick runs to overlay their curves", **PERSIST)
    if chosen:
        compared = [run for run in runs if run.name in chosen]
        accuracy_column, loss_column = st.columns(2)
        accuracy_column.altair_chart(overlay(compared, "eval_acc", "Accuracy on the evaluation split", ".1~%"))
        loss_column.altair_chart(overlay(compared, "eval_loss", "Loss on the evaluation split", "~g"))
    st.markdown("**Best accuracy against parameters**")
    st.altair_chart(accuracy_vs_parameters(rows))

# -- one run --
st.subheader("One run", divider="gray")
run = select_run("Run", runs, RUN_CHOICE, default_run(runs))
row = next(r for r in rows if r["name"] == run.name)
with st.container(horizontal=True, vertical_alignment="center"):
    state_badge(row["state"])
    facts = [f"{row['params']:,} parameters", row["preset"] or "custom design", data_label(row["data"]),
             f"{row['epochs_done']} of {plural(row['epochs'], 'epoch')}"]
    st.caption(" · ".join(facts + ([row["device"]] if row["device"] else [])))
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
elif row["state"] in ACTIVE:
    st.info("Its confusion matrix and per-class accuracy appear when it finishes; follow it live on the Train page.",
            icon=":material/hourglass_top:")
else:
    st.info(f"It {row['state']} before its last epoch, so it has no final results. Resume it on the Train page.",
            icon=":material/info:")
with st.container(horizontal=True):
    if st.button("Open on the Train page", icon=":material/model_training:", on_click=follow_on_train,
                 args=(run.name,), help="Follow it there: live curves, log, stop, resume"):
        st.switch_page("pages/train.py")
    st.button("Delete…", icon=":material/delete:", on_click=ask_to_delete, args=(run.name,))
if st.session_state.get(DELETING) == run.name:
    confirm_delete(run)
