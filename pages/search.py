"""Search: Optuna tries designs and recipes within the budget, and the page shows the trade-off as it learns.

Define the space with sliders (their defaults span the presets), launch a study in a background process
(`python -m core search --detach`), and follow it: a table of trials, validation accuracy against parameters
or MACs with the Pareto front and the budget, and which settings mattered most. The best design opens in
Design, or trains in full, in one click. Every trial is a run: Runs, Evaluate and Classify show it too.
"""
from __future__ import annotations

import json
import re
import time

import pandas as pd
import streamlit as st

from core.data.sources import BUILTIN, chosen_data
from core.design.budget import BUDGET
from core.design.spec import (ACTIVATION_NAMES, ACTIVATIONS, BLOCKS_RANGE, DOWNSAMPLES, KERNEL_SIZES, POOLING_NAMES,
                              POOLINGS, STAGES_RANGE)
from core.errors import StudioError
from core.report.charts import COST_TITLES, importance_chart, trade_off_chart
from core.runs.run import Run
from core.search.best import full_epochs, in_full, train_in_full
from core.search.report import is_live, is_unfinished, pareto_front, study_status
from core.search.space import PRUNERS, TOLERATED_OVER, BudgetShare, Space, budget_share, default_ranges
from core.search.study import StorageAway, Study, list_studies
from core.search.worker import detach, request_stop, search_in_background
from pages._ui import FOLLOWED, load_design, plural, through_app_shell

through_app_shell()

STUDY = "search_study"            # the study the page follows
LAUNCH_ERROR = "search_launch_error"
CONTROL = "search:"               # key prefix of the space's controls
DATA_SOURCES = {BUILTIN: "Built-in slice", "path": "A copy on this machine"}  # as the Train page names them
REFRESH_S = 2                     # how often a live study is re-read
AWAY_REFRESH_S = 10               # ... and how often one whose database is away is tried again
LABELS = {                        # each setting of the space as its control names it: errors speak the page's terms
    "stages": "Stages", "blocks": "Blocks per stage", "width": "First stage's width (channels)",
    "growth": "Width growth per stage", "dropout": "Dropout", "kernel_size": "Kernel sizes",
    "se_ratio": "Squeeze-and-excitation ratio (0 = off)", "lr": "Learning rate", "weight_decay": "Weight decay",
    "label_smoothing": "Label smoothing", "batch_size": "Batch sizes", "augment": "Augmentations",
    "ema_decay": "Weight EMA", "whiten": "Whitened stem", "downsample": "Halve by",
    "activation": "Activation", "pooling": "Pooling", "logit_scale": "Logit scale", "budget": "Parameter budget",
    "max_macs": "MACs ceiling (millions, 0 = none)",
    "objectives": "Objectives", "epochs": "Epochs per trial", "pruner": "Pruner", "device": "Devices", "data": "Data",
}
PERSIST = {"persist_state": "session"}
# a trial's settings as the trials table's column headers: short, never cut
SETTING_COLUMNS = {"stages": "Stages", "blocks": "Blocks", "width": "Width", "growth": "Growth", "dropout": "Dropout",
                   "kernel_size": "Kernel", "se_ratio": "SE ratio", "lr": "Learning rate",
                   "weight_decay": "Weight decay", "label_smoothing": "Label smoothing", "batch_size": "Batch size",
                   "augment": "Augmentations", "ema_decay": "EMA"}
DEFAULTS = default_ranges()
LOG_STEPS = {"lr": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0],
             "weight_decay": [1e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2]}
AUGMENT_SETS = list(dict.fromkeys(["+".join(a) for a in DEFAULTS["augment"]["choices"]] +
                                  ["crop+flip+cutout", "crop+flip+trivialaugment", "crop+alternating_flip"]))
LOGIT_SCALES = [1.0, 0.25, 0.125, 0.1111]  # none, and the speed-run recipes' (ResNet-9: 0.125, airbench94: 1/9)
OBJECTIVE_SETS = {"accuracy": "Accuracy", "accuracy,params": "Accuracy and parameters",
                  "accuracy,macs": "Accuracy and MACs"}
# ---- the space, from the controls ---------------------------------------------------------------------

def span(low, high, log: bool = False):
    """A range, or the one value when both ends meet (then the setting is fixed, not searched)."""
    return {"low": low, "high": high, "log": log} if low != high else low


def int_range(column, name: str, lo: int, hi: int) -> dict | int:
    default = DEFAULTS[name]
    low, high = column.slider(LABELS[name], lo, hi, (default["low"], default["high"]), key=CONTROL + name, **PERSIST)
    return span(low, high, default["log"])


def float_range(column, name: str, lo: float, hi: float, step: float) -> dict | float:
    on_step = [round(round(DEFAULTS[name][end] / step) * step, 2) for end in ("low", "high")]
    low, high = column.slider(LABELS[name], lo, hi, tuple(on_step), step=step, key=CONTROL + name, **PERSIST)
    return span(low, high)


def log_range(column, name: str) -> dict | float:
    steps, default = LOG_STEPS[name], DEFAULTS[name]
    nearest = [min(steps, key=lambda s: abs(s - v)) for v in (default["low"], default["high"])]
    low, high = column.select_slider(LABELS[name], steps, value=tuple(nearest), format_func=lambda v: f"{v:g}",
                                     key=CONTROL + name, **PERSIST)
    return span(low, high, log=True)


def choices(column, name: str, options: list, default: list, **kwargs) -> dict | None:
    # wrap: in a column, Streamlit would keep the pills on one row and hide those that do not fit
    picked = column.pills(LABELS[name], options, selection_mode="multi", default=default, key=CONTROL + name,
                          wrap=True, **PERSIST, **kwargs) or []
    picked = [o for o in options if o in picked]
    return {"choices": picked} if len(picked) > 1 else (picked[0] if picked else None)


def space_controls() -> dict:
    """The space as JSON (`Space.from_dict` checks it), from sliders and pills."""
    st.markdown("**Design**")
    left, middle, right = st.columns(3)
    ranges = {
        "stages": int_range(left, "stages", *STAGES_RANGE),
        "blocks": int_range(middle, "blocks", BLOCKS_RANGE[0], 8),
        "width": int_range(right, "width", 4, 256),
        "growth": float_range(left, "growth", 0.5, 4.0, 0.05),
        "dropout": float_range(middle, "dropout", 0.0, 0.5, 0.05),
        "kernel_size": choices(right, "kernel_size", list(KERNEL_SIZES), DEFAULTS["kernel_size"]["choices"]),
        "se_ratio": choices(right, "se_ratio", [0, 4, 8, 16, 32], DEFAULTS["se_ratio"]["choices"]),
        "whiten": choices(left, "whiten", [False, True], [False], format_func=lambda v: "on" if v else "off"),
        "downsample": choices(middle, "downsample", list(DOWNSAMPLES), ["stride"],
                              format_func={"stride": "strided conv", "maxpool": "max pool"}.get),
        "activation": choices(right, "activation", list(ACTIVATIONS), ["relu"], format_func=ACTIVATION_NAMES.get),
        "pooling": choices(left, "pooling", list(POOLINGS), ["avg"], format_func=POOLING_NAMES.get),
        "logit_scale": choices(middle, "logit_scale", LOGIT_SCALES, [1.0], format_func=lambda v: f"×{v:g}"),
    }
    st.markdown("**Recipe**")
    left, middle, right = st.columns(3)
    ranges |= {
        "lr": log_range(left, "lr"),
        "weight_decay": log_range(middle, "weight_decay"),
        "label_smoothing": float_range(right, "label_smoothing", 0.0, 0.3, 0.05),
        "batch_size": choices(left, "batch_size", [32, 64, 128, 256, 512], DEFAULTS["batch_size"]["choices"]),
        "augment": choices(middle, "augment", AUGMENT_SETS, AUGMENT_SETS[:2]),
        "ema_decay": choices(right, "ema_decay", [0.0, 0.999], [0.0],
                             format_func=lambda v: "off" if v == 0 else f"{v:g}"),
    }
    augment = ranges["augment"]
    if augment is not None:  # "crop+flip" -> ["crop", "flip"]
        ranges["augment"] = {"choices": [a.split("+") for a in augment["choices"]]} if isinstance(augment, dict) \
            else augment.split("+")
    missing = [f"**{LABELS[name]}**" for name, value in ranges.items() if value is None]
    if missing:
        raise StudioError(f"Pick at least one value for {', '.join(missing)}.")
    return ranges


def in_page_terms(message: str) -> str:
    """A message of Space's (space.ranges.width: ...) with each setting named as its control is."""
    return re.sub(r"\b(?:space\.ranges|space|ranges)\.([a-z_]+)(?:\.(?:low|high|log|choices(?:\[\d+\])?))?",
                  lambda m: f"**{LABELS[m[1]]}**" if m[1] in LABELS else m[0], message)


def study_controls() -> tuple[dict, str, int]:
    """The fixed settings of every trial, the study's name and its number of trials."""
    left, middle, right = st.columns(3)
    budget = left.number_input(LABELS["budget"], 1_000, BUDGET, BUDGET, step=50_000, key=CONTROL + "budget",
                               **PERSIST)
    left.caption(f"{int(budget):,} parameters")  # the box shows digits alone
    max_macs = middle.number_input(LABELS["max_macs"], 0, 100_000, 0, key=CONTROL + "max_macs", **PERSIST)
    objectives = right.segmented_control(LABELS["objectives"], list(OBJECTIVE_SETS), format_func=OBJECTIVE_SETS.get,
                                         default="accuracy", required=True, key=CONTROL + "objectives", wrap=True,
                                         **PERSIST)
    trials = left.number_input("Trials", 1, 1_000, 20, key=CONTROL + "trials", **PERSIST,
                               help="Designs over the budget are rejected unseen and not counted")
    epochs = middle.number_input(LABELS["epochs"], 1, 200, 3, key=CONTROL + "epochs", **PERSIST)
    several = objectives != "accuracy"
    pruner = right.segmented_control(LABELS["pruner"], PRUNERS, default="median", required=True,
                                     key=CONTROL + "pruner", disabled=several, wrap=True, **PERSIST,
                                     help="Stops trials whose validation accuracy trails the others' at the same "
                                          "epoch. Optuna prunes studies of one objective only.")
    device = left.segmented_control(LABELS["device"], ["auto", "cpu"], default="auto", required=True,
                                    key=CONTROL + "device", wrap=True, **PERSIST,
                                    format_func=lambda d: "Every GPU (else CPU)" if d == "auto" else "CPU",
                                    help="One trial at a time on each device")
    with middle:
        data = data_controls()
    st.session_state.setdefault(CONTROL + "name", f"search-{time.strftime('%m%d-%H%M')}")  # set once: a default
    # that moved would reset it; and no rerun when it changes, so Launch clicked just after typing is not lost to
    # a redraw under the pointer
    name = right.text_input("Study name", key=CONTROL + "name", on_change="ignore", **PERSIST)
    fixed = {"objectives": objectives.split(","), "budget": int(budget),
             "max_macs": int(max_macs * 1e6) if max_macs else None, "epochs": int(epochs),
             "pruner": "none" if several else pruner, "device": device, "data": data}
    return fixed, name.strip(), int(trials)


def data_controls() -> str:
    """The data every trial trains on, chosen as on the Train page: the built-in slice or a copy on this machine
    (checked at launch by checked_data)."""
    choice = st.segmented_control(LABELS["data"], list(DATA_SOURCES), format_func=DATA_SOURCES.get, default=BUILTIN,
                                  required=True, key=CONTROL + "data_choice", **PERSIST)
    if choice == BUILTIN:
        st.caption("5,000 training images of the JPEG copy, shipped with the app: trials of seconds.")
        return BUILTIN
    path = st.text_input("Folder or archive", key=CONTROL + "data", placeholder="/path/to/cifar10-jpg.tar.gz",
                         help="torchvision's CIFAR-10 (a folder holding cifar-10-batches-py/), or train/<class>/ and "
                              "test/<class>/ folders of images, as a folder, .tar.gz, .tgz, .tar or .zip", **PERSIST)
    return path.strip() or "path:"  # nothing given yet: checked_data says so at launch


def checked_data(data: str) -> str:
    """The data every trial trains on, as an absolute path (a worker's trials start elsewhere), or builtin."""
    found, missing = (BUILTIN, None) if data == BUILTIN else chosen_data("path", data.removeprefix("path:"), "")
    if missing:
        raise StudioError(f"**{LABELS['data']}**: {missing} Give a CIFAR-10 folder or archive, or pick the "
                          f"built-in slice.")
    return found


@st.cache_data(max_entries=64, show_spinner=False)
def share_over(space_json: str) -> BudgetShare:
    """budget_share, once per space: the controls rerun the page on every move."""
    return budget_share(Space.from_dict(json.loads(space_json)))


def use_widths(low: int, high: int) -> None:
    st.session_state[CONTROL + "width"] = (low, high)


def show_budget_share(space: Space) -> None:
    """Before launch: how much of the space is over its limits, and first-stage widths that fit."""
    share = share_over(json.dumps(space.to_dict(), sort_keys=True))
    limit = f"the budget of {space.budget:,} parameters" + \
        (f" or the ceiling of {space.max_macs / 1e6:,.0f} M MACs" if space.max_macs else "")
    if share.over <= TOLERATED_OVER:
        st.caption(f":material/check_circle: {share.over:.0%} of this space's designs are over {limit} "
                   f"(from {share.samples} drawn at random, as the study's first trials are).")
        return
    said = (f"**About {share.over:.0%} of this space's designs are over {limit}** (of {share.samples} drawn at "
            f"random, as the study's first trials are; the largest has {share.largest:,} parameters). The study "
            f"rejects them without training, so they cost no time, but each is a trial the sampler spends.")
    if share.width is None:
        st.warning(f"{said} Even at the narrowest first-stage width, {share.width_over:.0%} are over: lower "
                   f"**{LABELS['blocks']}**, **{LABELS['stages']}** or **{LABELS['growth']}**.",
                   icon=":material/warning:")
        return
    low, high = share.width
    st.warning(f"{said} First-stage widths {low} to {high} keep {share.width_over:.0%} over.",
               icon=":material/warning:")
    st.button(f"Use widths {low} to {high}", icon=":material/compress:", on_click=use_widths, args=(low, high),
              key="search_use_widths")


def launch_study(space: Space, name: str, trials: int) -> None:
    if name in list_studies():
        st.session_state[LAUNCH_ERROR] = (f"A study named {name} exists already: give this one another name, or "
                                          f"pick {name} under **Study** below and press **Continue**.")
        return
    try:
        search_in_background(space, name, trials)
    except StudioError as e:
        st.session_state[LAUNCH_ERROR] = f"The study could not start: {e}"
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


def setting_columns(rows: list[dict]) -> dict[str, list[str]]:
    """Each setting a trial chose in a column of its own, named and rounded: one column of them all was cut off."""
    names = list(dict.fromkeys(k for r in rows for k in r["settings"]))
    return {SETTING_COLUMNS.get(k, k): [setting_text(r["settings"].get(k)) for r in rows] for k in names}


def setting_text(value) -> str:
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def trials_table(rows: list[dict], epochs: int) -> pd.DataFrame:
    """The trials that count toward the study's number."""
    return pd.DataFrame({
        "Trial": [r["number"] for r in rows],
        "State": [r["state"] for r in rows],
        "Parameters": [r["params"] for r in rows],
        "MACs": [r["macs"] for r in rows],
        "Val accuracy": pd.array([r["accuracy"] for r in rows], dtype="Float64"),  # none yet: an empty cell
        "Epochs": [f"{r['epochs_done'] or 0} of {epochs}" for r in rows],
        "Run": [r["run"] or "" for r in rows],
    } | setting_columns(rows))


def not_counted_table(rows: list[dict]) -> pd.DataFrame:
    """Designs rejected as over the limits (never trained) and failed trials a retry replaced."""
    return pd.DataFrame({
        "Trial": [r["number"] for r in rows],
        "Why": [f"over the limit: {r['rejected']}" if r["rejected"] else
                f"failed, retried as trial {r['retried_as']}" for r in rows],
        "Parameters": [r["params"] for r in rows],
    } | setting_columns(rows))


def front_words(size: int, cost: str) -> str:
    """What the chart draws of the Pareto front, as it draws it."""
    smaller = "smaller" if cost == "params" else "cheaper"
    if size == 0:
        return "The Pareto front appears when a trial finishes."
    if size == 1:
        return (f"The ringed trial is the Pareto front so far: no other finished trial is both more accurate and "
                f"{smaller}. A dotted step line joins the front once it holds two trials.")
    return (f"The ringed trials joined by the dotted step line are the Pareto front: no other finished trial is both "
            f"more accurate and {smaller}.")


def show_study(name: str, live: bool) -> None:
    """The study as it goes: its counts, its trials, its charts and its best trial (re-read every REFRESH_S while
    it is live; reading it changes nothing in it)."""
    try:
        study = study_status(Study(name))
    except StudioError as e:
        st.error(f"Study **{name}** can't be read: {e}", icon=":material/error:")
        return
    if is_live(study) != live:
        st.rerun()  # the study started or ended: the whole page follows
    rows = [r for r in study["trials"] if r["counted"]]
    show_counts(study, rows)
    if not study["trials"]:
        st.info("No trials yet: the first one starts in a few seconds.", icon=":material/hourglass_top:")
        return
    show_trials(study, rows)
    if not show_charts(study, rows):
        return
    if study["best"]:
        show_best(study, study["best"])


def show_counts(study: dict, rows: list[dict]) -> None:
    states, target, best = study["states"], study["trials_target"] or 0, study["best"]
    columns = st.columns(5)
    waiting = study["in_flight"]
    in_flight = ", ".join(f"{n} {state}" for state, n in waiting.items() if n)
    columns[0].metric("Trials done", f"{study['counted'] - sum(waiting.values())} of {target}",
                      delta=in_flight or None, delta_color="off", delta_arrow="off",
                      help="Trials toward the study's number that have ended (finished, pruned or failed); those "
                           "running or queued are below. Designs over the budget are rejected without training and "
                           "not counted, so the study asks until it has its trials")
    columns[1].metric("Finished", states.get("finished", 0))
    columns[2].metric("Pruned", states.get("pruned", 0))
    columns[3].metric("Rejected (over budget)", states.get("rejected", 0))
    columns[4].metric("Best val accuracy", f"{best['accuracy']:.1%}" if best else "–")


def show_trials(study: dict, rows: list[dict]) -> None:
    """The trials that count, and apart from them those that do not."""
    others = [r for r in study["trials"] if not r["counted"]]
    if rows:
        st.dataframe(trials_table(rows, study["space"]["epochs"]), hide_index=True, column_config=TRIAL_COLUMNS,
                     key="search_trials")
    if others:
        rejected = sum(1 for r in others if r["rejected"])
        what = [plural(rejected, "design") + " over the budget, never trained"] if rejected else []
        what += [plural(len(others) - rejected, "failed trial") + " retried"] if len(others) > rejected else []
        with st.expander(f"Not counted: {' and '.join(what)}", icon=":material/block:"):
            st.dataframe(not_counted_table(others), hide_index=True, column_config=TRIAL_COLUMNS,
                         key="search_not_counted")


def show_charts(study: dict, rows: list[dict]) -> bool:
    """Accuracy against parameters or MACs, and which settings mattered; False while no trial has an accuracy."""
    chart_column, importance_column = st.columns([3, 2])
    with chart_column:
        if not any(r["accuracy"] is not None for r in rows):
            st.caption("The chart of accuracy against parameters appears when the first trial ends an epoch.")
            return False
        cost = st.segmented_control("Against", ["params", "macs"], default="params", required=True,
                                    format_func=COST_TITLES.get, key="search_cost", **PERSIST)
        limit = study["space"]["budget"] if cost == "params" else study["space"]["max_macs"]
        front = pareto_front(rows, cost)
        st.altair_chart(trade_off_chart(rows, front, cost, limit), key="search_trade_off")
        st.caption(f"{front_words(len(front), cost)} Designs over the budget never trained, so they have no "
                   f"accuracy to show.")
    with importance_column:
        st.markdown("**Which settings mattered most**")
        if study["importances"]:
            st.altair_chart(importance_chart(study["importances"]), key="search_importances")
            st.caption(f"Optuna's parameter importances (PED-ANOVA) for validation accuracy, over "
                       f"{plural(study['states'].get('finished', 0), 'finished trial')}: a guide, not a verdict, "
                       f"with this few.")
        else:
            st.caption("Shown once three trials have finished.")
    return True


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
    epochs = epochs_column.number_input("Epochs of the full training", 1, 10_000, full_epochs(study["space"]),
                                        key="search_full_epochs")
    if design.button("Open in Design", icon=":material/architecture:", width="stretch",
                     help="Its design in Design, and its recipe in Train (for the epochs beside)"):
        load_design(cfg.arch, None, (f"trial {best['number']} of {study['study']}", in_full(run, epochs).train))
        st.switch_page("pages/design.py")
    if full.button("Train it in full", type="primary", icon=":material/model_training:", width="stretch",
                   help="Its design and recipe for more epochs, on all of train, scored on test"):
        try:
            launched = train_in_full(run, epochs, study["space"]["device"],
                                     origin=f"app: Search page, Train it in full ({run.name})")
        except StudioError as e:
            st.error(f"The full training could not start: {e}", icon=":material/error:")
            return
        st.session_state[FOLLOWED] = launched.name
        st.switch_page("pages/train.py")


def rerun_when_back(name: str) -> None:
    """Every AWAY_REFRESH_S while a study's database is away: the whole page again once it answers."""
    try:
        study_status(Study(name))
    except StorageAway:
        return
    st.rerun()


# ---- the page's sections ----------------------------------------------------------------------------------

def new_study_section() -> None:
    with st.expander("New study", expanded=not list_studies(), icon=":material/add_circle:"):
        fixed, name, trials = study_controls()
        space, problem = None, None
        try:
            ranges = space_controls()
            space = Space.from_dict(fixed | {"data": checked_data(fixed["data"]), "ranges": ranges})
        except StudioError as e:
            problem = in_page_terms(str(e))
        if problem:
            st.error(problem, icon=":material/block:")
        else:
            show_budget_share(space)
        # not on_click=launch_study with args: those are the values of the run that last drew the button, and a
        # name typed just before the click arrives with the click, in this run
        if st.button("Launch the study", type="primary", icon=":material/rocket_launch:", disabled=space is None):
            launch_study(space, name, trials)
        if st.session_state.get(LAUNCH_ERROR):
            st.error(st.session_state.pop(LAUNCH_ERROR), icon=":material/error:")


def chosen_study() -> str:
    """The study the page follows, picked from this machine's; stops the page when there is none."""
    studies = list_studies()
    if not studies:
        st.info("No studies yet: define one above and launch it.", icon=":material/info:")
        st.stop()
    if st.session_state.get(STUDY) not in studies:
        st.session_state[STUDY] = studies[0]
    return st.selectbox("Study", studies, key=STUDY)


def overview_of(name: str) -> dict:
    """The study as study_status reads it; stops the page, saying why, when it cannot be read."""
    try:
        return study_status(Study(name))
    except StorageAway as e:  # this study only: the others in the list stay a click away
        st.error(f"Study **{name}**: {e}  \nIts trials in flight keep training and report to it when it is back. "
                 f"This page tries again every {AWAY_REFRESH_S} s; other studies are in the list above.",
                 icon=":material/cloud_off:")
        st.fragment(rerun_when_back, run_every=AWAY_REFRESH_S)(name)
        st.stop()
    except StudioError as e:
        st.error(f"Study **{name}** can't be read: {e}", icon=":material/error:")
        st.stop()


def study_actions(name: str, overview: dict, live: bool) -> None:
    """Stop a live study (which also fails its dead trials), or continue one that has trials to go."""
    stop_column, resume_column, _ = st.columns([1, 1, 3])
    try:
        if stop_column.button("Stop the study", icon=":material/stop_circle:", disabled=not live, width="stretch",
                              help="Trials in flight save a checkpoint and stop; continuing resumes them"):
            request_stop(Study(name))
            st.rerun()
        if resume_column.button("Continue", icon=":material/play_arrow:", disabled=live or not is_unfinished(overview),
                                width="stretch"):
            detach(Study(name), overview["trials_target"], None)
            st.rerun()
    except StudioError as e:
        st.error(f"Study **{name}**: {e}", icon=":material/error:")


# ---- the page ------------------------------------------------------------------------------------------------

st.title("Search")
st.write("Let Optuna search designs and recipes within the budget. Every trial is a real run, scored on a "
         "validation split carved from train; weak trials are pruned early, and designs over the budget are "
         "never trained.")
new_study_section()
chosen = chosen_study()
overview = overview_of(chosen)
live = is_live(overview)
study_actions(chosen, overview, live)
st.fragment(show_study, run_every=REFRESH_S if live else None)(chosen, live)
