"""Search: Optuna tries designs and recipes within the budget, and the page shows the trade-off as it learns.

Define the space with sliders (their defaults span the presets), launch a study in a background process
(`python -m core search --detach`), and follow it: a table of trials, validation accuracy against parameters
or MACs with the Pareto front and the budget, and which settings mattered most. The best design opens in
Design, or trains in full, in one click. Every trial is a run: Runs, Evaluate and Classify show it too.
"""
from __future__ import annotations

import time

import altair as alt
import pandas as pd
import streamlit as st

from core.design.budget import BUDGET
from core.design.presets import get_preset
from core.design.spec import BLOCKS_RANGE, KERNEL_SIZES, STAGES_RANGE
from core.errors import StudioError
from core.report.charts import PRIMARY
from core.runs.run import Run, create_run, launch
from core.search.report import pareto_front, study_status
from core.search.space import PRUNERS, Space, default_ranges
from core.search.study import list_studies, start_study, storage_url
from core.search.worker import detach, request_stop
from pages._ui import FOLLOWED, load_design, plural, through_app_shell

through_app_shell()

STUDY = "search_study"            # the study the page follows
LAUNCH_ERROR = "search_launch_error"
CONTROL = "search:"               # key prefix of the space's controls
REFRESH_S = 2                     # how often a live study is re-read
PERSIST = {"persist_state": "session"}
DEFAULTS = default_ranges()
LOG_STEPS = {"lr": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0],
             "weight_decay": [1e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2]}
AUGMENT_SETS = list(dict.fromkeys(["+".join(a) for a in DEFAULTS["augment"]["choices"]] +
                                  ["crop+flip+cutout", "crop+flip+trivialaugment"]))
OBJECTIVE_SETS = {"accuracy": "Accuracy", "accuracy,params": "Accuracy and parameters",
                  "accuracy,macs": "Accuracy and MACs"}
STATE_COLOURS = {"finished": PRIMARY, "pruned": "#9ca3af", "running": "#f59e0b", "queued": "#fcd34d",
                 "rejected": "#dc2626", "failed": "#7f1d1d", "stopped": "#fb923c", "retried": "#d1d5db",
                 "waiting": "#e5e7eb"}


# ---- the space, from the controls ---------------------------------------------------------------------

def span(low, high, log: bool = False):
    """A range, or the one value when both ends meet (then the setting is fixed, not searched)."""
    return {"low": low, "high": high, "log": log} if low != high else low


def int_range(column, label: str, name: str, lo: int, hi: int) -> dict | int:
    default = DEFAULTS[name]
    low, high = column.slider(label, lo, hi, (default["low"], default["high"]), key=CONTROL + name, **PERSIST)
    return span(low, high, default["log"])


def float_range(column, label: str, name: str, lo: float, hi: float, step: float) -> dict | float:
    on_step = [round(round(DEFAULTS[name][end] / step) * step, 2) for end in ("low", "high")]
    low, high = column.slider(label, lo, hi, tuple(on_step), step=step, key=CONTROL + name, **PERSIST)
    return span(low, high)


def log_range(column, label: str, name: str) -> dict | float:
    steps, default = LOG_STEPS[name], DEFAULTS[name]
    nearest = [min(steps, key=lambda s: abs(s - v)) for v in (default["low"], default["high"])]
    low, high = column.select_slider(label, steps, value=tuple(nearest), format_func=lambda v: f"{v:g}",
                                     key=CONTROL + name, **PERSIST)
    return span(low, high, log=True)


def choices(column, label: str, name: str, options: list, default: list, **kwargs) -> dict | None:
    picked = column.pills(label, options, selection_mode="multi", default=default, key=CONTROL + name, **PERSIST,
                          **kwargs) or []
    picked = [o for o in options if o in picked]
    return {"choices": picked} if len(picked) > 1 else (picked[0] if picked else None)


def space_controls() -> dict:
    """The space as JSON (`Space.from_dict` checks it), from sliders and pills."""
    st.markdown("**Design**")
    left, middle, right = st.columns(3)
    ranges = {
        "stages": int_range(left, "Stages", "stages", *STAGES_RANGE),
        "blocks": int_range(middle, "Blocks per stage", "blocks", BLOCKS_RANGE[0], 8),
        "width": int_range(right, "First stage's width (channels)", "width", 4, 256),
        "growth": float_range(left, "Width growth per stage", "growth", 0.5, 4.0, 0.05),
        "dropout": float_range(middle, "Dropout", "dropout", 0.0, 0.5, 0.05),
        "kernel_size": choices(right, "Kernel sizes", "kernel_size", list(KERNEL_SIZES),
                               DEFAULTS["kernel_size"]["choices"]),
        "se_ratio": choices(right, "Squeeze-and-excitation ratio (0 = off)", "se_ratio", [0, 4, 8, 16, 32],
                            DEFAULTS["se_ratio"]["choices"]),
    }
    st.markdown("**Recipe**")
    left, middle, right = st.columns(3)
    ranges |= {
        "lr": log_range(left, "Learning rate", "lr"),
        "weight_decay": log_range(middle, "Weight decay", "weight_decay"),
        "label_smoothing": float_range(right, "Label smoothing", "label_smoothing", 0.0, 0.3, 0.05),
        "batch_size": choices(left, "Batch sizes", "batch_size", [32, 64, 128, 256, 512],
                              DEFAULTS["batch_size"]["choices"]),
        "augment": choices(middle, "Augmentations", "augment", AUGMENT_SETS, AUGMENT_SETS[:2]),
        "ema_decay": choices(right, "Weight EMA", "ema_decay", [0.0, 0.999], [0.0],
                             format_func=lambda v: "off" if v == 0 else f"{v:g}"),
    }
    augment = ranges["augment"]
    if augment is not None:  # "crop+flip" -> ["crop", "flip"]
        ranges["augment"] = {"choices": [a.split("+") for a in augment["choices"]]} if isinstance(augment, dict) \
            else augment.split("+")
    missing = [name for name, value in ranges.items() if value is None]
    if missing:
        raise StudioError(f"pick at least one value for {', '.join(missing)}")
    return ranges


def study_controls() -> tuple[dict, str, int]:
    """The fixed settings of every trial, the study's name and its number of trials."""
    left, middle, right = st.columns(3)
    budget = left.number_input("Parameter budget", 1_000, BUDGET, BUDGET, step=50_000, key=CONTROL + "budget",
                               **PERSIST)
    max_macs = middle.number_input("MACs ceiling (millions, 0 = none)", 0, 100_000, 0, key=CONTROL + "max_macs",
                                   **PERSIST)
    objectives = right.segmented_control("Objectives", list(OBJECTIVE_SETS), format_func=OBJECTIVE_SETS.get,
                                         default="accuracy", required=True, key=CONTROL + "objectives", **PERSIST)
    trials = left.number_input("Trials", 1, 1_000, 20, key=CONTROL + "trials", **PERSIST)
    epochs = middle.number_input("Epochs per trial", 1, 200, 3, key=CONTROL + "epochs", **PERSIST)
    several = objectives != "accuracy"
    pruner = right.segmented_control("Pruner", PRUNERS, default="median", required=True,
                                     key=CONTROL + "pruner", disabled=several, **PERSIST,
                                     help="Stops trials whose validation accuracy trails the others' at the same "
                                          "epoch. Optuna prunes studies of one objective only.")
    device = left.segmented_control("Devices", ["auto", "cpu"], default="auto", required=True,
                                    key=CONTROL + "device", **PERSIST,
                                    format_func=lambda d: "Every GPU (else CPU)" if d == "auto" else "CPU",
                                    help="One trial at a time on each device")
    data = middle.text_input("Data", "builtin", key=CONTROL + "data", **PERSIST,
                             help="'builtin' (the slice in the repo) or a CIFAR-10 folder or archive")
    st.session_state.setdefault(CONTROL + "name", f"search-{time.strftime('%m%d-%H%M')}")  # set once: a default
    name = right.text_input("Study name", key=CONTROL + "name", **PERSIST)                  # that moved would reset it
    fixed = {"objectives": objectives.split(","), "budget": int(budget),
             "max_macs": int(max_macs * 1e6) if max_macs else None, "epochs": int(epochs),
             "pruner": "none" if several else pruner, "device": device, "data": data.strip() or "builtin"}
    return fixed, name.strip(), int(trials)


def launch_study(space: Space, name: str, trials: int) -> None:
    try:
        url = start_study(space, name, None, trials)
        detach(name, url, trials, None)
    except StudioError as e:
        st.session_state[LAUNCH_ERROR] = str(e)
        return
    st.session_state[STUDY] = name
    st.toast(f"Launched study {name}: {plural(trials, 'trial')}.", icon=":material/rocket_launch:")


# ---- a study, as it goes ---------------------------------------------------------------------------------

TRIAL_COLUMNS = {
    "Parameters": st.column_config.NumberColumn(format="%,d"),
    "MACs": st.column_config.NumberColumn(format="%,d"),
    "Val accuracy": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1,
                                                    help="Best validation accuracy (a split of train, not test)"),
}


def trials_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame({
        "Trial": [r["number"] for r in rows],
        "State": [r["state"] for r in rows],
        "Parameters": [r["params"] for r in rows],
        "MACs": [r["macs"] for r in rows],
        "Val accuracy": [r["accuracy"] for r in rows],
        "Epochs": [r["epochs_done"] for r in rows],
        "Pruned at epoch": [r["pruned_at"] for r in rows],
        "Run": [r["run"] or r["rejected"] or "" for r in rows],
        "Settings": [", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in r["settings"].items()) for r in rows],
    })


def trade_off_chart(rows: list[dict], cost: str, limit: int | None) -> alt.Chart:
    """Validation accuracy against `cost` (params or macs) for every trial that has one, the front of the
    finished ones as a step line, the over-budget rejections along the bottom, and the limit as a rule."""
    title = {"params": "Parameters", "macs": "MACs"}[cost]
    points = pd.DataFrame([{"Trial": r["number"], "State": r["state"], title: r[cost], "Val accuracy": r["accuracy"]}
                           for r in rows if r[cost] is not None and (r["accuracy"] is not None or
                                                                   r["state"] == "rejected")])
    points["Val accuracy"] = points["Val accuracy"].fillna(0.0)  # rejected: never trained, drawn at 0
    x = alt.X(f"{title}:Q", scale=alt.Scale(type="log"), axis=alt.Axis(format="~s"), title=f"{title} (log scale)")
    y = alt.Y("Val accuracy:Q", axis=alt.Axis(format="%"))
    states = [s for s in STATE_COLOURS if s in set(points["State"])]
    dots = alt.Chart(points).mark_circle(size=90, opacity=0.9).encode(
        x=x, y=y, color=alt.Color("State:N", scale=alt.Scale(domain=states, range=[STATE_COLOURS[s] for s in states]),
                                  legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["Trial", "State", alt.Tooltip(f"{title}:Q", format=","),
                 alt.Tooltip("Val accuracy:Q", format=".2%")])
    layers = [dots]
    edge = pd.DataFrame([{title: r[cost], "Val accuracy": r["accuracy"]} for r in pareto_front(rows, cost)])
    if not edge.empty:
        layers.append(alt.Chart(edge).mark_line(interpolate="step-after", color=PRIMARY, strokeDash=[2, 2])
                      .encode(x=x, y=y))
    if limit:
        rule = alt.Chart(pd.DataFrame({title: [limit], "label": [f"budget {limit:,}"]}))
        layers += [rule.mark_rule(color="#dc2626", strokeDash=[6, 4]).encode(x=f"{title}:Q"),
                   rule.mark_text(align="right", baseline="top", dx=-4, dy=4, color="#dc2626")
                   .encode(x=f"{title}:Q", y=alt.value(0), text="label")]
    return alt.layer(*layers).properties(height=340)


def importance_chart(importances: dict[str, float]) -> alt.Chart:
    frame = pd.DataFrame({"Setting": list(importances), "Importance": list(importances.values())})
    return alt.Chart(frame).mark_bar(color=PRIMARY).encode(
        x=alt.X("Importance:Q", axis=alt.Axis(format="%")), y=alt.Y("Setting:N", sort="-x", title=None),
        tooltip=["Setting", alt.Tooltip("Importance:Q", format=".1%")]).properties(height=24 * len(frame) + 30)


def is_live(study: dict) -> bool:
    return study["worker_alive"] or any(s in ("running", "queued") for s in study["states"])


def show_study(name: str, live: bool) -> None:
    try:
        study = study_status(name)
    except StudioError as e:
        st.error(f"Study {name} can't be read: {e}", icon=":material/error:")
        return
    if is_live(study) != live:
        st.rerun()  # the study started or ended: the whole page follows
    states, target = study["states"], study["trials_target"] or 0
    best = study["best"]
    done, pruned = states.get("finished", 0), states.get("pruned", 0)
    columns = st.columns(5)
    columns[0].metric("Trials", f"{study['counted']} of {target}")
    columns[1].metric("Finished", done)
    columns[2].metric("Pruned", pruned)
    columns[3].metric("Rejected (over budget)", states.get("rejected", 0))
    columns[4].metric("Best val accuracy", f"{best['accuracy']:.1%}" if best else "–")
    if not study["trials"]:
        st.info("No trials yet: the first one starts in a few seconds.", icon=":material/hourglass_top:")
        return
    st.dataframe(trials_table(study["trials"]), hide_index=True, column_config=TRIAL_COLUMNS, key="search_trials")
    chart_column, importance_column = st.columns([3, 2])
    with chart_column:
        if not any(r["accuracy"] is not None or r["state"] == "rejected" for r in study["trials"]):
            st.caption("The chart of accuracy against parameters appears when the first trial ends an epoch.")
            return
        cost = st.segmented_control("Against", ["params", "macs"], default="params", required=True,
                                    format_func={"params": "Parameters", "macs": "MACs"}.get,
                                    key="search_cost", **PERSIST)
        limit = study["space"]["budget"] if cost == "params" else study["space"]["max_macs"]
        st.altair_chart(trade_off_chart(study["trials"], cost, limit), key="search_trade_off")
        st.caption("The dotted step line is the Pareto front: no other finished trial is both more accurate and "
                   "smaller. Rejected designs were over the budget and never trained.")
    with importance_column:
        st.markdown("**Which settings mattered most**")
        if study["importances"]:
            st.altair_chart(importance_chart(study["importances"]), key="search_importances")
            st.caption(f"Optuna's parameter importances (PED-ANOVA) for validation accuracy, over "
                       f"{plural(done, 'finished trial')}: a guide, not a verdict, with this few.")
        else:
            st.caption("Shown once three trials have finished.")
    if best:
        show_best(study, best)


def show_best(study: dict, best: dict) -> None:
    st.subheader(f"Best: trial {best['number']} · {best['accuracy']:.1%}", divider="gray")
    run = Run.named(best["run"])
    if not run.exists():
        st.caption(f"Its run, {best['run']}, trained on another machine.")
        return
    cfg = run.config()
    st.markdown(f"{plural(len(cfg.arch.stages), 'stage')} · blocks "
                f"{', '.join(str(s.blocks) for s in cfg.arch.stages)} · widths "
                f"{', '.join(str(s.channels) for s in cfg.arch.stages)} · {best['params']:,} parameters · "
                f"lr {cfg.train.lr:.3g}, batch {cfg.train.batch_size}, augment {'+'.join(cfg.train.augment) or 'none'}")
    design, full, epochs_column = st.columns([1, 1, 1], vertical_alignment="bottom")
    if design.button("Open in Design", icon=":material/architecture:", width="stretch"):
        load_design(cfg.arch, None)
        st.switch_page("pages/design.py")
    recipe_epochs = get_preset(study["space"]["recipe"])["train"].get("epochs", 30)
    epochs = epochs_column.number_input("Epochs of the full training", 1, 10_000, recipe_epochs,
                                        key="search_full_epochs")
    if full.button("Train it in full", type="primary", icon=":material/model_training:", width="stretch",
                   help="Its design and recipe for more epochs, on all of train, scored on test"):
        name = f"{run.name}-full-{time.strftime('%H%M%S')}"
        try:
            launch(create_run(cfg.replace_train(epochs=int(epochs), val_fraction=0.0), name,
                              origin=f"app: Search page, Train it in full ({run.name})"), study["space"]["device"])
        except StudioError as e:
            st.error(str(e), icon=":material/error:")
            return
        st.session_state[FOLLOWED] = name
        st.switch_page("pages/train.py")


# ---- the page ------------------------------------------------------------------------------------------------

st.title("Search")
st.write("Let Optuna search designs and recipes within the budget. Every trial is a real run, scored on a "
         "validation split carved from train; weak trials are pruned early, and designs over the budget are "
         "never trained.")

with st.expander("New study", expanded=not list_studies(), icon=":material/add_circle:"):
    fixed, name, trials = study_controls()
    space, problem = None, None
    try:
        space = Space.from_dict(fixed | {"ranges": space_controls()})
    except StudioError as e:
        problem = str(e)
    if problem:
        st.error(problem, icon=":material/block:")
    st.button("Launch the study", type="primary", icon=":material/rocket_launch:", disabled=space is None,
              on_click=launch_study, args=(space, name, trials))
    if st.session_state.get(LAUNCH_ERROR):
        st.error(st.session_state.pop(LAUNCH_ERROR), icon=":material/error:")

studies = list_studies()
if not studies:
    st.info("No studies yet: define one above and launch it.", icon=":material/info:")
    st.stop()
if st.session_state.get(STUDY) not in studies:
    st.session_state[STUDY] = studies[0]
chosen = st.selectbox("Study", studies, key=STUDY)
try:
    overview = study_status(chosen)
except StudioError as e:
    st.error(f"Study {chosen} can't be read: {e}", icon=":material/error:")
    st.stop()
live = is_live(overview)
stop_column, resume_column, _ = st.columns([1, 1, 3])
if stop_column.button("Stop the study", icon=":material/stop_circle:", disabled=not live, width="stretch",
                      help="Trials in flight save a checkpoint and stop; continuing resumes them"):
    request_stop(chosen)
    st.rerun()
unfinished = overview["counted"] < (overview["trials_target"] or 0) or "stopped" in overview["states"]
if resume_column.button("Continue", icon=":material/play_arrow:", disabled=live or not unfinished, width="stretch"):
    detach(chosen, storage_url(chosen), overview["trials_target"], None)
    st.rerun()
st.fragment(show_study, run_every=REFRESH_S if live else None)(chosen, live)
