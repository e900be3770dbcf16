"""Train: the design from the Design page, with training settings, data and a device; launch it and follow it live.

A run trains in a process of its own (core.runs.run.launch), so it outlives this page and the app: the page
only reads the run's folder and heartbeat, in a fragment that re-runs every two seconds while the run is active;
the queue line re-reads the machine's queue as often. The settings are widgets that keep their values for the
session and on disk (pages._ui.remember), so a reload or a new tab finds them; they start from the recipe of
the design's preset, and every check on them is TrainConfig's. A run's length is its epochs or a time budget
(train.time_limit, set here in minutes).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from core.design.budget import BUDGET, Cost, count
from core.design.config import RunConfig, TrainConfig
from core.design.presets import PRESETS, preset_for_cpu, preset_spec
from core.design.settings import LABELS, SETTINGS, Setting, settings_error
from core.design.spec import ArchSpec
from core.errors import StudioError
from core.files import cache_dir
from core.report.charts import training_charts
from core.runs.choice import run_to_follow
from core.runs.progress import Progress, metric_frames, progress
from core.runs.queue import launch_options, queue
from core.runs.run import (ACTIVE, Run, RunError, change_batch_size, check_name, create_run, launch, resume_problem,
                           runs_root, stop)
from core.runs.watch import read_heartbeat
from core.runs.speeds import (device_label, estimate, isa_caps_text, kernels_text, known_devices, probe_running,
                              read_machine, speed_basis, start_probe)
from core.data.sources import (BUILTIN, CHOICES, CIFAR10_DOWNLOAD_BYTES, DEFAULT_DIR, HOW_TO_GET_DATA, chosen_data,
                               image_counts, resolve_data)
from core.units import (bytes_text, duration_of_text, duration_text, macs_text, margin_text, params_text,
                        rate_text)
from pages._ui import (FOLLOWED, LINK_ERROR, NOTHING, SETTING, SETTINGS_FROM, current_design, damage_shown,
                       data_label, data_words, design_origin, design_recipe, drawn, keep_link, load_design,
                       load_settings, matching_preset, moved, origin_text, plural, recipe_named, remember,
                       restored_settings, state_badge, through_app_shell, usable_runs)

through_app_shell()

DATA_CHOICE = "train_data"           # one of DATA_SOURCES
DATA_PATH = "train_data_path"
DOWNLOAD_DIR = "train_download_dir"
DEVICE = "train_device"              # "cuda", "cpu", or "auto" until the probe has looked
GPUS = "train_gpus"                  # with cuda: torch's names of the GPUs (cuda:0, ...), one process each
PROCESSES = "train_processes"        # with cpu: how many processes (torchrun)
RUN_NAME = "train_run_name"         # + ":" + its generation (widget_key)
FOLLOW = "train_follow"              # the Run selectbox's key, + ":" + its generation; FOLLOWED holds the choice
SHOWN = "train_followed_shown"       # FOLLOWED as the selectbox last showed it: another value was set by code
LAUNCH_ERROR = "train_launch_error"
GO_TO_RUN = "train_go_to_run"        # set by Launch: the next draw scrolls down to the followed run
REFRESH_S = 2                        # how often the live view re-reads an active run
PERSIST = {"persist_state": "session"}  # a setting keeps its value while the user is on another page
PHASES = {"starting": "Starting (loading PyTorch)…", "waiting": "Waiting for its device…",
          "loading data": "Loading data…", "warming up": "Warming up (the first steps compile and tune kernels)…",
          "evaluating": "Evaluating…", "saving": "Saving a checkpoint…"}  # heartbeat phases, but training
LENGTH = "train_length"             # what sets a run's length: "epochs", or "time" (train.time_limit)
MINUTES = "train_minutes"           # the time budget's widget, in minutes; train.time_limit is in seconds
LENGTH_SHOWN = "train_length_shown"  # train.time_limit as the length widgets last showed it
LENGTHS = {"epochs": "Epochs", "time": "A time budget"}
FIRST_BUDGET_MIN = 30.0             # a time budget's first value: the laptop preset's half hour
DATA_SOURCES = dict(zip(CHOICES, ("Built-in slice", "A copy on this machine", "Download CIFAR-10")))
AUTO_LABEL = "Best available"         # the device while the first probe is still looking


# ---- the settings: one widget per TrainConfig field, in core.design.settings' groups --------------------

def setting_values() -> dict:
    """The settings as TrainConfig fields; the time limit from the length widgets, which a click (Launch) brings
    with it before any of their callbacks may have run."""
    return {name: st.session_state[SETTING + name] for name in LABELS} | {"time_limit": time_limit_chosen()}


def time_limit_chosen() -> float:
    """train.time_limit in seconds from the length widgets; 0: the run trains its epochs."""
    return st.session_state.get(MINUTES, FIRST_BUDGET_MIN) * 60 if st.session_state[LENGTH] == "time" else 0.0


def show_length() -> None:
    """The length widgets show the time limit of the settings as last loaded (a preset's recipe, a run's, the last
    ones used): a recipe with a time limit (laptop's) opens with the time budget chosen."""
    limit = st.session_state[SETTING + "time_limit"]
    if LENGTH not in st.session_state or st.session_state.get(LENGTH_SHOWN) != limit:
        st.session_state[LENGTH] = "time" if limit else "epochs"
        if limit:
            st.session_state[MINUTES] = limit / 60
        st.session_state[LENGTH_SHOWN] = limit
    st.session_state.setdefault(MINUTES, FIRST_BUDGET_MIN)  # what a switch to a time budget starts from


def set_length() -> None:
    st.session_state[SETTING + "time_limit"] = st.session_state[LENGTH_SHOWN] = time_limit_chosen()


def length_widgets() -> None:
    """Train for epochs or for a time budget; with a budget, the schedule drawn over the epochs is stretched over
    the time (core.engine.loop), and progress and the time left follow the time."""
    st.segmented_control("Train for", list(LENGTHS), format_func=LENGTHS.get, required=True, key=LENGTH,
                         on_change=set_length, **PERSIST,
                         help="A number of epochs, or a time budget: the run trains until its time is up "
                              "(evaluation apart), whatever the device, and stops there")
    if st.session_state[LENGTH] == "time":
        st.number_input("Time budget (minutes)", min_value=0.1, max_value=1e6 / 60, step=5.0, format="%g",
                        key=MINUTES, on_change=set_length, **PERSIST,
                        help="Minutes of training; the schedule is stretched over them")


def setting_widget(setting: Setting, values: dict) -> None:
    key, default = SETTING + setting.field, getattr(TrainConfig(), setting.field)
    reason = setting.unused(values)
    common = dict(key=key, help=setting.help + (f". {reason}." if reason else ""), disabled=bool(reason), **PERSIST)
    if isinstance(default, bool):
        st.toggle(setting.label, **common)
    elif isinstance(default, tuple):
        st.pills(setting.label, setting.options, selection_mode="multi", **common)
    elif len(setting.options) > 3:  # more would wrap in a card
        st.selectbox(setting.label, setting.options, **common)
    elif setting.options:
        st.segmented_control(setting.label, setting.options, required=True, **common)
    else:
        st.number_input(setting.label, step=setting.step, format="%g" if isinstance(default, float) else "%d",
                        **common)


# ---- data and device ------------------------------------------------------------------------------

@st.cache_data(show_spinner="Reading the data (decoded once, then cached for every run)…", max_entries=16)
def data_summary(data: str, modified: float) -> dict:
    """What a dataset holds; `modified` (the path's mtime) makes a changed copy read again."""
    from core.data.datasets import load_dataset  # torch: only when data is read

    dataset = load_dataset(data)
    return {"source": dataset.source, "train": len(dataset.train), "test": len(dataset.test)}


def modified(data: str) -> float:
    return 0.0 if data == BUILTIN else Path(data).stat().st_mtime


def use_data(choice: str, path: str | None = None) -> None:
    st.session_state[DATA_CHOICE] = choice
    if path is not None:
        st.session_state[DATA_PATH] = path


def data_choice() -> tuple[str | None, str | None]:
    """(the data a run would train on, or None; what is wrong when None), from the widgets."""
    return chosen_data(st.session_state[DATA_CHOICE], st.session_state[DATA_PATH], st.session_state[DOWNLOAD_DIR])


PAGE_DATA_ADVICE = ("Without internet here, choose **A copy on this machine** above and give the full path of a "
                    "CIFAR-10 copy (a folder or archive), or train on the **Built-in slice**.")


def in_page_terms(problem: str) -> str:
    """A data problem as the page says it: core's advice names command-line flags and variables."""
    return problem.replace(HOW_TO_GET_DATA, PAGE_DATA_ADVICE)


def download_data(folder: str) -> None:
    from core.data.datasets import load_dataset

    try:
        with st.spinner(f"Downloading CIFAR-10 into {folder} ({bytes_text(CIFAR10_DOWNLOAD_BYTES)})…"):
            load_dataset(folder, download=True)
    except StudioError as e:
        message = in_page_terms(str(e))
        if PAGE_DATA_ADVICE not in message:
            message += f" {PAGE_DATA_ADVICE}"
        st.error(f"The download failed: {message}", icon=":material/cloud_off:")
        return
    st.success(f"CIFAR-10 is in {folder}: ready to train on.", icon=":material/check_circle:")


@st.cache_resource(show_spinner=False)
def look_at_machine(cache: str) -> None:
    """Once per server (and cache folder): a probe in the background finds the devices again, since a GPU
    may have come or gone, and times those it has no speed for. The page never waits for it."""
    start_probe()


def device_name(device: str) -> str:
    return {"auto": AUTO_LABEL, "cuda": "GPUs"}.get(device) or device_label(device, known_devices())


def devices_chosen() -> dict:
    """The Device widgets' choice, as `launch` keywords."""
    return launch_options(st.session_state[DEVICE], st.session_state.get(GPUS, []),
                          st.session_state.get(PROCESSES, 1))


def devices_text() -> str:
    device = st.session_state[DEVICE]
    if device == "cuda":
        return ", ".join(map(device_name, st.session_state.get(GPUS, []))) or "no GPU"
    processes = st.session_state.get(PROCESSES, 1) if device == "cpu" else 1
    return device_name(device) + (f" as {processes} processes" if processes > 1 else "")


def when_text(when: float) -> str:
    day = "today" if time.strftime("%Y%m%d", time.localtime(when)) == time.strftime("%Y%m%d") else \
        time.strftime("%d %b", time.localtime(when))
    return f"{time.strftime('%H:%M', time.localtime(when))} {day}"


def speed_source(source: str, when: float) -> str:
    if source.startswith("run "):
        name = source[4:]
        # the speeds are the machine's: their run may be another checkout's, or deleted since
        if Run(runs_root() / name).exists():
            return f"the speed of run {name} ({when_text(when)})"
        return f"the speed of a run elsewhere on this machine ({name}, not in this runs folder; {when_text(when)})"
    return f"a short timing of the {source.removeprefix('timed on ')} preset on this machine ({when_text(when)})"


def probing(spec, device: str, data: str | None) -> bool:
    """Whether the figure for `device` is still to come from a probe that is running."""
    return (device == "auto" or estimate(spec, device, data) is None) and probe_running()


def show_estimate(spec, device: str, data: str | None, epochs: int, time_limit: float, waiting: bool) -> None:
    """How long an epoch takes on `device`, from the speed kept on disk; while a probe is still looking,
    a note, re-drawn every second, until its figure arrives."""
    if probing(spec, device, data) != waiting:
        st.rerun()  # the probe ended: the whole page follows (device list, estimate)
    figure = None if device == "auto" else estimate(spec, device, data, setting_values())
    where = "the built-in slice" if data == BUILTIN else f"{image_counts(data)[0]:,} training images"
    if figure is not None:
        length = (f"so about {time_limit / figure.epoch_s:.3g} epochs in a time budget of {duration_text(time_limit)}"
                  if time_limit else f"{duration_text(figure.epoch_s * epochs)} for {plural(epochs, 'epoch')}")
        text = (f"about **{duration_text(figure.epoch_s)} per epoch** of {where} for this design, {length} "
                f"({rate_text(figure.images_per_s)} images/s).  \n"
                f":gray[{speed_basis(figure, count(spec).macs, speed_source(figure.source, figure.when))}]")
    elif waiting:
        text = "timing it in the background (once, a few seconds): the estimate per epoch appears here."
    else:
        text = "no speed is known for it yet: time it, or launch and watch the first epoch."
    if device == "auto":
        st.info("Looking for this machine's GPUs and timing it in the background (once, a few seconds). "
                "Launch now and the run takes the best device it finds.", icon=":material/memory:")
    elif list(known_devices()) == ["cpu"]:
        st.warning(f"**No GPU found**: this run trains on the CPU, {text}  \nTry designs on the built-in slice "
                   f"for a few epochs; for full runs, open ResNet Studio on a machine with a CUDA GPU.",
                   icon=":material/memory:")
        if data != BUILTIN:
            st.button("Use the built-in slice", icon=":material/dataset:", on_click=use_data, args=(BUILTIN,))
    else:
        st.info(f"On {device_name(device)}: {text}", icon=":material/memory:")
    st.button("Time it again" if figure else "Time it", icon=":material/timer:", type="tertiary", disabled=waiting,
              on_click=start_probe, args=(True,), key="train_time_it",
              help="Time this machine's devices again, in the background: when it is less (or more) busy")


# ---- launching and following runs ---------------------------------------------------------------------

def default_run_name(preset: str | None) -> str:
    return f"{preset or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"  # as `python -m core train` names runs


def widget_key(name: str) -> str:
    """The key of a widget whose value code also sets (the followed run, the run name), of its generation. A timed
    fragment's rerun carries the browser's values of every widget, which can be older than what the code just
    set (Launch picks the new run and a fresh name): a new key for each value set by code leaves them nothing
    to put back."""
    return f"{name}:{st.session_state.get(name + ':generation', 0)}"


def renew(name: str) -> None:
    st.session_state[name + ":generation"] = st.session_state.get(name + ":generation", 0) + 1


def pick_followed(key: str) -> None:
    if (name := moved(key)) is not NOTHING:  # not a value the browser sent again ahead of a redraw (pages._ui)
        st.session_state[FOLLOWED] = st.session_state[SHOWN] = name


def launch_run() -> None:
    """Create the run and start its process, from the widgets' values as they are at the click (a value
    typed just before it arrives with the click, after the page last drew)."""
    spec, preset = current_design()
    data, data_problem = data_choice()
    name = st.session_state[widget_key(RUN_NAME)].strip()
    try:
        if data_problem:
            raise RunError(data_problem)
        devices = devices_chosen()
        launch(create_run(RunConfig(spec, TrainConfig.from_dict(setting_values()), data, preset), name,
                          origin="app: Train page, Launch"), **devices)
    except StudioError as e:
        st.session_state[LAUNCH_ERROR] = str(e)
        return
    st.session_state[FOLLOWED] = name  # the page follows it, in a new selectbox (widget_key)
    st.session_state[GO_TO_RUN] = True
    renew(RUN_NAME)  # the next run gets a fresh name
    st.toast(f"Launched {name} on {devices_text()}.", icon=":material/rocket_launch:")


def clone_run() -> None:
    """The followed run's design into the Design page and its settings and data into this page's widgets. The
    run is the box's at the click: a click just after a pick comes ahead of the redraw that would bind it."""
    cfg = Run.named(st.session_state[widget_key(FOLLOW)]).config()
    preset = cfg.preset if cfg.preset in PRESETS else matching_preset(cfg.arch)
    load_design(cfg.arch, preset)
    load_settings(cfg.train, preset)
    if cfg.data == BUILTIN:
        use_data(BUILTIN)
    else:
        use_data("path", cfg.data)


def resume_point(run: Run) -> str:
    from core.nn.checkpoint import read_meta  # torch: only for a run that failed

    try:
        saved = read_meta(run.checkpoints, "last")
    except StudioError:
        return "It saved no checkpoint: Resume starts it over."
    within = f", step {saved['step']}" if saved["step"] else ""
    return f"Its last checkpoint is at epoch {saved['epoch']}{within}: Resume continues from there."


def run_charts(steps: pd.DataFrame, per_epoch: pd.DataFrame, split: str, epochs: int) -> None:
    loss, accuracy, lr = training_charts(steps, per_epoch, split, epochs)
    loss_column, accuracy_column, lr_column = st.columns(3)
    loss_column.altair_chart(loss)
    if accuracy is None:
        accuracy_column.caption("Accuracy: after the first epoch.")
    else:
        accuracy_column.altair_chart(accuracy)
    lr_column.altair_chart(lr)


def epochs_drawn(at: Progress, epochs: int) -> int:
    """The epochs the charts span: a time-budget run's as many as its time holds at its pace (a 2-minute run
    drawn over its recipe's 30 epochs was a line squeezed into a corner), else its epochs."""
    if not at.time_limit or at.fraction <= 0 or at.epoch <= 0:
        return epochs
    return max(1, math.ceil(at.epoch / at.fraction - 1e-6))


def epoch_text(epoch: float) -> str:
    """Epochs done as a reader wants them: 0.13, 1.5, 3."""
    return f"{epoch:.2f}".rstrip("0").rstrip(".")


def pace_text(at: Progress, active: bool) -> str:
    """The progress bar's words: where the run is, down to the step while it trains, its speed and time left;
    while it has no step to show, what it is doing (loading data, warming up)."""
    doing = PHASES.get(at.phase) if active else None
    if doing and not at.step and at.epoch == 0:
        return doing
    where = (f"Epoch {epoch_text(at.epoch)} · {duration_of_text(at.trained_s, at.time_limit)} trained"
             if at.time_limit else f"Epoch {epoch_text(at.epoch)} of {at.epochs}")
    parts = [where]
    # within an epoch only: "step 0 of 19" and "step 19 of 19" said nothing the epoch did not, or contradicted it
    if active and at.step and at.step < (at.steps_per_epoch or 0) and at.phase in ("warming up", "training"):
        parts.append(f"step {at.step} of {at.steps_per_epoch}")
    if doing:
        parts.append(doing[0].lower() + doing[1:])
    if at.images_per_s:
        parts.append(f"{rate_text(at.images_per_s)} images/s")
    if active and at.eta_s is not None:
        parts.append(f"about {duration_text(at.eta_s)} left")
    return " · ".join(parts)


def show_run(run: Run, live: bool) -> None:
    """One run as it stands on disk: state, progress, curves, log and what can be done with it."""
    if damage_shown(run):  # damaged since the page listed it
        return
    status = run.status()
    state = status.get("state")
    if (state in ACTIVE) != live:
        st.rerun()  # it started or ended: the whole page follows (refreshing, buttons)
    try:
        cfg = run.config()
    except StudioError as e:
        st.error(f"{run.name} can't be read: {e}", icon=":material/error:")
        return
    rows = run.metrics()
    beat = read_heartbeat(run) if state == "running" else None  # queued: it may be a previous session's
    at = progress(rows, cfg.train, cfg.data, beat)

    run_heading(run, status, cfg)
    state_note(run, status, at, has_rows=bool(rows))
    progress_or_origin(status, at, has_rows=bool(rows))
    steps, per_epoch = metric_frames(rows)
    if not steps.empty or not per_epoch.empty:
        run_figures(steps, per_epoch, at, state, cfg.train.epochs)
    with st.expander("Log", expanded=state == "failed", icon=":material/terminal:"):
        st.code(run.log_tail(30) or "(nothing yet)", language=None)
    run_actions(run, state, at, per_epoch, cfg.train.epochs)


def run_heading(run: Run, status: dict, cfg: RunConfig) -> None:
    """The run's name, state, device, size and design, and where its data (or the run itself) came from."""
    imported = status.get("imported_from")
    with st.container(horizontal=True, vertical_alignment="center"):
        st.markdown(f"#### {run.name}")
        state_badge(status.get("state"))
        where = status.get("device_name") or status.get("device")  # known once its process has started
        st.caption(" · ".join([*([where] if where else []), f"{params_text(count(cfg.arch).params)} parameters",
                               cfg.preset or "custom design",
                               f"imported from {Path(imported).name}" if imported else data_label(cfg.data)]))


def state_note(run: Run, status: dict, at: Progress, has_rows: bool) -> None:
    """What a run that is not simply training or finished is doing, or why it ended."""
    state = status.get("state")
    if state == "queued":
        waiting = status.get("waiting_for")
        st.info(f"Queued: {waiting}. It starts by itself when the device is free." if waiting else
                "Starting: the training process is loading PyTorch and the data, and building the network.",
                icon=":material/hourglass_top:")
    elif state == "running" and not has_rows:
        st.info(f"Running: {PHASES.get(at.phase, 'training…').lower()} Progress shows here step by step, and the "
                f"loss within seconds of the first steps.", icon=":material/hourglass_top:")
    elif state == "failed":
        st.error(f"**Failed**: {status.get('error') or 'no reason recorded'}.  \n{resume_point(run)} The log "
                 f"below has the details.", icon=":material/error:")
    elif state == "stopped":
        st.info(f"Stopped at epoch {epoch_text(at.epoch)}. Resume continues from there.",
                icon=":material/pause_circle:")
    if status.get("device_note"):  # "auto" found a GPU this torch cannot use, and what would fix it
        st.warning(status["device_note"], icon=":material/memory:")


def progress_or_origin(status: dict, at: Progress, has_rows: bool) -> None:
    """The progress bar; for an imported run, which trained elsewhere, where it came from instead."""
    if imported := status.get("imported_from"):
        curves = "its curves below are the ones it recorded there" if has_rows else "so it has no curves here"
        st.info(f"Imported from {Path(imported).name}: it was trained elsewhere, {curves}. Evaluate or Classify use "
                f"it; Open in Design trains its design anew.", icon=":material/upload_file:")
    else:
        st.progress(at.fraction, text=pace_text(at, status.get("state") in ACTIVE))


def run_figures(steps: pd.DataFrame, per_epoch: pd.DataFrame, at: Progress, state: str | None, epochs: int) -> None:
    """Best accuracy, last loss, time so far and left, then the curves."""
    split = per_epoch["eval_split"].iloc[-1] if len(per_epoch) else "test"  # test, or val when held out
    best, loss, elapsed, left = st.columns(4)
    best.metric(f"Best {split} accuracy", f"{per_epoch['eval_acc'].max():.1%}" if len(per_epoch) else "–",
                border=True)
    loss.metric(f"Last {split} loss", f"{per_epoch['eval_loss'].iloc[-1]:.3f}" if len(per_epoch) else "–",
                border=True)
    elapsed.metric("Time so far", duration_text(at.elapsed_s), border=True,
                   help="Since the run started: loading, training and evaluation" +
                        ("; its time budget counts training steps alone" if at.time_limit else ""))
    left.metric("Time left", "done" if state == "finished" else duration_text(at.eta_s)
                if state in ACTIVE and at.eta_s is not None else "–", border=True)
    run_charts(steps, per_epoch, split, epochs_drawn(at, epochs))


def run_actions(run: Run, state: str | None, at: Progress, per_epoch: pd.DataFrame, epochs: int) -> None:
    """Stop an active run; resume one that can be (to its time budget, or to a number of epochs); open it in
    Design."""
    actions = st.container(horizontal=True, vertical_alignment="bottom")
    if state in ACTIVE:
        if actions.button("Stop", icon=":material/stop_circle:",
                          help="Finish the current step, save a checkpoint, and stop; Resume continues"):
            stop(run)
            st.toast(f"Stopping {run.name}: it saves a checkpoint first.", icon=":material/stop_circle:")
    elif (cannot := resume_problem(run)) is None and at.time_limit:
        resume_to_time_budget(run, state, at, actions)
    elif cannot is None:
        resume_to_epochs(run, state, per_epoch, epochs, actions)
    else:
        actions.button("Resume", icon=":material/play_arrow:", disabled=True, help=cannot + ".")
        st.caption(f"Can't resume: {cannot}: Open in Design, then Launch.")
    if actions.button("Open in Design", icon=":material/architecture:", on_click=clone_run,
                      help="Load this run's design into the Design page and its settings and data here, "
                           "to change and train again"):
        st.switch_page("pages/design.py")


def resume_to_time_budget(run: Run, state: str | None, at: Progress, actions) -> None:
    # its length is its time, not its epochs: "Epochs in all: 30" offered what a resume would never train
    if state == "finished":
        st.caption(f"It trained its whole time budget, {duration_text(at.time_limit)}. To train it longer: "
                   f"Open in Design, then Launch with a longer time budget.")
    elif actions.button("Resume", type="primary", icon=":material/play_arrow:", key=f"train_resume:{run.name}",
                        help=f"Continue from the last checkpoint on {devices_text()}, to the end of its "
                             f"{duration_text(at.time_limit)} budget"):
        relaunch(run)


def resume_to_epochs(run: Run, state: str | None, per_epoch: pd.DataFrame, epochs: int, actions) -> None:
    done = int(per_epoch["epoch"].max()) if len(per_epoch) else 0
    more = actions.number_input("Epochs in all", min_value=max(1, done), value=max(epochs, done, 1), step=1,
                                key=f"train_resume_epochs:{run.name}", width=160,
                                help="The run's new total: more epochs than first set (or fewer, down to those "
                                     "done) stretch or shrink its learning-rate schedule")
    batch = actions.number_input("Batch", min_value=1, max_value=65_536, value=run.config().train.batch_size,
                                 step=1, key=f"train_resume_batch:{run.name}", width=120,
                                 help="The batch from the saved position on: a smaller one after running out "
                                      "of memory")
    finished = state == "finished"
    if actions.button("Train longer" if finished else "Resume", type="primary", icon=":material/play_arrow:",
                      disabled=finished and more <= done, key=f"train_resume:{run.name}",
                      help=f"Continue from the last checkpoint on {devices_text()}"):
        relaunch(run, batch_size=int(batch), epochs=int(more))


def relaunch(run: Run, batch_size: int | None = None, epochs: int | None = None) -> None:
    """Resume `run` on the devices chosen above; what is wrong, said where the button is."""
    try:
        if batch_size is not None:
            change_batch_size(run, batch_size)
        launch(run, **({} if epochs is None else {"epochs": epochs}), **devices_chosen())
    except StudioError as e:
        st.error(str(e), icon=":material/error:")
    else:
        st.rerun()


def show_queue() -> None:
    """Which run holds which device and who waits, re-read every REFRESH_S: runs come and go from other tabs,
    the command line and other checkouts on this machine."""
    held = queue()
    busy = [f"{row['device'].upper()} is busy with {Path(row['held_by']).name}" for row in held["devices"]
            if row["held_by"]]
    st.caption("Queue: " + ("; ".join(busy) if busy else "every device is free") +
               "".join(f"; {Path(row['run']).name} waits" for row in held["waiting"]) +
               ". A run starts when all its devices are free.")


# ---- the page's sections, top to bottom -----------------------------------------------------------------

def settings_follow(follows: str | None) -> None:
    """The settings, when the session has none yet: the last ones used, unless they followed another recipe than
    `follows` (the design's), else that recipe; a design that came with another recipe brings its settings."""
    if any(SETTING + name not in st.session_state for name in LABELS):
        restored = restored_settings()  # the last ones used, unless they were another recipe's
        load_settings(*(restored if restored and (follows is None or restored[1] == follows)
                        else (recipe_named(follows), follows)))
    elif follows is not None and follows != st.session_state[SETTINGS_FROM]:
        load_settings(recipe_named(follows), follows)
        st.toast(f"Training settings now follow {follows}'s recipe.", icon=":material/tune:")


def introduction() -> None:
    st.title("Train")
    st.write("Train the design from the Design page on CIFAR-10 in a background process, and watch it learn. "
             "It keeps training when you leave this page.")


def design_section(spec: ArchSpec, preset: str | None, cost: Cost) -> None:
    """The design to train: its size against the budget, its preset, where it came from, a way back to Design."""
    st.subheader("Design", divider="gray")
    over = cost.params - BUDGET
    name_column, params_column, macs_column, change_column = st.columns([2, 1, 1, 1], vertical_alignment="center")
    name_column.markdown(f"**{preset or 'Your own design'}**  \n:gray[{plural(len(spec.stages), 'stage')} · "
                         f"{plural(sum(s.blocks for s in spec.stages), 'block')} · widths "
                         f"{', '.join(str(s.channels) for s in spec.stages)}]")
    params_column.metric("Parameters", params_text(cost.params), margin_text(over),
                         delta_color="inverse" if over > 0 else "normal", delta_arrow="off")
    macs_column.metric("MACs per image", macs_text(cost.macs))
    if change_column.button("Change in Design", icon=":material/architecture:", width="stretch"):
        st.switch_page("pages/design.py")
    if preset in PRESETS:  # what the preset is for
        budget = recipe_named(preset).time_limit
        st.caption(f"**{preset}**: {PRESETS[preset]['description']}" +
                   (f" Its recipe is a time budget, {duration_text(budget)} of training rather than a number of "
                    f"epochs: made for a fixed time." if budget else ""))
    if LINK_ERROR in st.session_state:
        st.error(f"The design in this page's link can't be used: {st.session_state.pop(LINK_ERROR)}",
                 icon=":material/link_off:")
    if design_origin() == "default":
        st.warning(f"This is {origin_text()}. It has {cost.params:,} parameters: pick or change the design in "
                   f"Design before a long run.", icon=":material/info:")
    elif origin := origin_text():
        st.caption(f"This is {origin}.")
    if over > 0:
        st.error(f"This design has {cost.params:,} parameters, {over:,} over the budget of {BUDGET:,}: it can't be "
                 f"trained. Make it narrower or shallower on the Design page, or let Fit to budget scale every "
                 f"width.", icon=":material/block:")
        if st.button("Fit it in Design", type="primary", icon=":material/fit_width:", key="train_fit_in_design"):
            st.switch_page("pages/design.py")


def data_section() -> tuple[str | None, str | None]:
    """Where the run's images come from: the built-in slice, a copy on this machine, or a download. Returns the
    data a run would train on (or None) and what is wrong when None."""
    st.subheader("Data", divider="gray")
    found = resolve_data(None)  # what a run would use with no choice: $CIFAR10_DATA, ./data, or the slice
    st.session_state.setdefault(DATA_CHOICE, BUILTIN if found == BUILTIN else "path")
    st.session_state.setdefault(DATA_PATH, "" if found == BUILTIN else found)
    st.session_state.setdefault(DOWNLOAD_DIR, str(DEFAULT_DIR))
    choice = st.segmented_control("Train on", list(DATA_SOURCES), format_func=DATA_SOURCES.get, required=True,
                                  key=DATA_CHOICE, **PERSIST)
    data, data_problem = data_choice()
    if choice == BUILTIN:
        builtin_slice_note(found)
    elif choice == "path":
        copy_on_this_machine(data, data_problem)
    elif download_box():
        data, data_problem = data_choice()
    return data, data_problem


def builtin_slice_note(found: str) -> None:
    st.caption("5,000 training and 1,000 test images of the JPEG copy of CIFAR-10, shipped with the app: an "
               "epoch takes seconds to minutes. Enough to try a design; its accuracy needs the full 50,000.")
    if found == BUILTIN:
        st.info("No full copy of CIFAR-10 is set up on this machine. Point to one (a folder or archive), or "
                "download the original (needs internet).", icon=":material/dataset:")
        with st.container(horizontal=True):
            st.button("Use a copy on this machine", icon=":material/folder_open:", on_click=use_data, args=("path",))
            st.button("Download CIFAR-10", icon=":material/download:", on_click=use_data, args=("download",))


def copy_on_this_machine(data: str | None, data_problem: str | None) -> None:
    """The path of a copy, what is wrong with it, and a check of what it holds."""
    st.text_input("Folder or archive", key=DATA_PATH, placeholder="/path/to/cifar10-jpg.tar.gz",
                  help="torchvision's CIFAR-10 (a folder holding cifar-10-batches-py/), or train/<class>/ and "
                       "test/<class>/ folders of images, as a folder, .tar.gz, .tgz, .tar or .zip", **PERSIST)
    if not st.session_state[DATA_PATH].strip():
        st.caption(data_problem)
    elif data_problem:
        st.error(data_problem, icon=":material/error:")
    else:
        summary_column, check_column = st.columns([4, 1], vertical_alignment="center")
        summary_column.caption("It is read when the run starts: decoded once (a minute for 60,000 JPEGs), then "
                               "cached, so later runs start at once.")
        if check_column.button("Check it now", icon=":material/fact_check:", width="stretch"):
            try:
                found_data = data_summary(data, modified(data))
            except StudioError as e:
                st.error(in_page_terms(str(e)), icon=":material/error:")
            else:
                st.success(f"{found_data['source']}: {found_data['train']:,} training and {found_data['test']:,} "
                           f"test images.", icon=":material/check_circle:")


def download_box() -> bool:
    """The folder to download CIFAR-10 into and the button; True when it was clicked (the data may be there)."""
    folder_column, download_column = st.columns([4, 1], vertical_alignment="bottom")
    folder = folder_column.text_input("Into folder", key=DOWNLOAD_DIR, **PERSIST,
                                      help=f"torchvision downloads the original, lossless CIFAR-10 "
                                           f"({bytes_text(CIFAR10_DOWNLOAD_BYTES)}) from cs.toronto.edu into this "
                                           f"folder; ./data is where runs look by default")
    st.caption("The download needs internet access from the machine running ResNet Studio.")
    if download_column.button("Download", type="primary", icon=":material/download:", width="stretch"):
        download_data(folder)
        return True
    return False


def device_section(preset: str | None) -> str:
    """The devices to train on, what a GPU lacks, the CPU's kernels, a preset's variant for this CPU, and the
    machine's queue. Returns the one device the estimate is for."""
    st.subheader("Device", divider="gray")
    look_at_machine(str(cache_dir()))
    devices = list(known_devices() or ["auto"])  # "auto" (the training process picks) until the probe has looked
    gpus = [d for d in devices if d.startswith("cuda:")]
    kinds = (["cuda"] if gpus else []) + [d for d in devices if d not in gpus]
    if st.session_state.get(DEVICE) not in kinds:
        st.session_state[DEVICE] = kinds[0]
    device = st.segmented_control("Train on device", kinds, format_func=device_name, required=True, key=DEVICE,
                                  **PERSIST)
    for problem in read_machine().get("gpu_problems", []):  # a GPU is there that this torch cannot train on
        st.warning(problem, icon=":material/memory:")
    if device == "cuda":
        st.session_state.setdefault(GPUS, gpus[:1])
        st.multiselect("GPUs", gpus, format_func=device_name, key=GPUS, **PERSIST,
                       help="One process per GPU (torchrun and DistributedDataParallel); the batch size is the "
                            "global batch, split over them. The run waits until all of them are free")
    elif device == "cpu":
        st.number_input("Processes", min_value=1, max_value=os.cpu_count(), step=1, key=PROCESSES, **PERSIST,
                        help="Train as this many processes (torchrun, gloo), one thread each; the batch size is the "
                             "global batch, split over them")
    if device != "cuda" and (kernels := kernels_text(read_machine().get("cpu"))):  # as the last probe found the CPU
        st.caption(f"Kernels that train here: {kernels}")
    if device == "cpu":
        offer_cpu_variant(preset)
    st.fragment(show_queue, run_every=REFRESH_S)()
    return (st.session_state[GPUS] or gpus)[0] if device == "cuda" else device


def offer_cpu_variant(preset: str | None) -> None:
    """A preset sized for bf16 (AMX, AVX512-BF16), on a CPU the probe found without it: its variant
    for such CPUs, as `python -m core train --preset` picks it there."""
    cpu = read_machine().get("cpu") or {}
    if preset not in PRESETS or (variant := preset_for_cpu(preset, cpu.get("computes_bf16", True))) == preset:
        return
    caps = isa_caps_text(cpu)  # a CPU with bf16 units, capped below them (how CI plays an AVX2 machine)
    why = f"Its bf16 kernels are capped off here ({caps})" if cpu.get("has_bf16") and caps else \
        "This CPU has no native bf16 (AMX or AVX512-BF16)"
    st.info(f"{why}: it trains **{preset}** in fp32, about three times slower an image than **{variant}**, which "
            f"ends ahead in the same time. {PRESETS[variant]['description']}",
            icon=":material/speed:")
    st.button(f"Train {variant} instead", icon=":material/swap_horiz:", key="train_cpu_variant",
              on_click=load_design, args=(preset_spec(variant), variant))


def estimate_section(spec: ArchSpec, timed: str, data: str | None, values: dict) -> None:
    """How long the run would take on `timed`, redrawn every second while a probe is still timing it."""
    epochs = values["epochs"] if settings_error(values) is None else TrainConfig().epochs
    waiting = probing(spec, timed, data)
    st.fragment(show_estimate, run_every=1 if waiting else None)(spec, timed, data, epochs, values["time_limit"],
                                                                 waiting)


def settings_section(values: dict) -> str | None:
    """Every training setting in its group, from the recipe they started from; returns what is wrong with them."""
    st.subheader("Training settings", divider="gray")
    source = st.session_state[SETTINGS_FROM]
    from_recipe = recipe_named(source).to_dict()
    about, reset = st.columns([4, 1], vertical_alignment="center")
    recipe_name = ((f"the {source} preset’s recipe" if source in PRESETS else f"the recipe of {source}") if source
                   else "the defaults: the best seed’s recipe")
    about.caption(f"They start from {recipe_name}{' (changed here)' if values != from_recipe else ''}. Hover over "
                  f"a setting for what it does.")
    reset.button("Back to the recipe", icon=":material/undo:", type="tertiary", disabled=values == from_recipe,
                 on_click=load_settings, args=(recipe_named(source), source), width="stretch")
    for column, (group, settings) in zip(st.columns(len(SETTINGS)), SETTINGS.items()):
        with column.container(border=True, height="stretch"):
            st.markdown(f"**{group}**")
            for setting in settings:
                if setting.field == "epochs":
                    length_widgets()
                if setting.field != "time_limit":  # the length widgets set it
                    setting_widget(setting, values)
    invalid = settings_error(setting_values())
    if invalid:
        st.error(invalid, icon=":material/error:")
    return invalid


def launch_section(preset: str | None, cost: Cost, values: dict, data: str | None, blocked: str | None) -> None:
    """The run's name and the Launch button, with why it can't launch, or what a click starts."""
    st.subheader("Launch", divider="gray")
    st.session_state.setdefault(widget_key(RUN_NAME), default_run_name(preset))
    name_column, launch_column = st.columns([3, 1], vertical_alignment="bottom")
    run_name = name_column.text_input("Run name", key=widget_key(RUN_NAME),
                                      help="The run's folder name: letters, digits, '.', '_' and '-'").strip()
    blocked = blocked or run_name_problem(run_name) or no_gpu_problem()
    launch_column.button("Launch", type="primary", icon=":material/rocket_launch:", width="stretch",
                         disabled=bool(blocked), on_click=launch_run, key="train_launch",
                         help=blocked or f"Start training {run_name} on {devices_text()} in the background")
    if blocked:
        st.caption(f"Can't launch: {blocked}")
    else:  # what a click starts, in full: no run of the wrong design or length by accident
        length = (f"for {duration_text(values['time_limit'])} of training" if values["time_limit"] else
                  f"for {plural(values['epochs'], 'epoch')}")
        st.caption(f"Launch trains **{preset or 'your own design'}** ({cost.params:,} parameters) {length} on "
                   f"{data_words(data)}, on {devices_text()}.")
    if LAUNCH_ERROR in st.session_state:
        st.error(f"Could not launch: {in_page_terms(st.session_state.pop(LAUNCH_ERROR))}", icon=":material/error:")


def run_name_problem(run_name: str) -> str | None:
    try:
        check_name(run_name)
    except StudioError as e:
        return str(e)
    return f"A run named {run_name} exists; pick another name." if Run.named(run_name).dir.exists() else None


def over_budget_problem(cost: Cost) -> str | None:
    return f"The design is {cost.params - BUDGET:,} parameters over budget." if cost.params > BUDGET else None


def no_gpu_problem() -> str | None:
    return "Pick a GPU, or train on the CPU." if st.session_state[DEVICE] == "cuda" and not st.session_state[GPUS] \
        else None


def follow_section() -> None:
    """One run followed live (the newest active one until another is picked); just after a launch, the page
    scrolls down to it."""
    st.subheader("Follow a run", divider="gray")
    runs = usable_runs()
    if not runs:
        st.caption("Launch a run above: its progress, curves and log appear here as it trains.")
    else:
        states = {run.name: run.status().get("state") for run in runs}
        if st.session_state.get(FOLLOWED) not in states:
            st.session_state[FOLLOWED] = run_to_follow(runs, states).name
        if st.session_state[FOLLOWED] != st.session_state.get(SHOWN):  # set by Launch, or on the Runs or Search page
            renew(FOLLOW)
            st.session_state[SHOWN] = st.session_state[FOLLOWED]
        follow_key = widget_key(FOLLOW)
        st.session_state.setdefault(follow_key, st.session_state[FOLLOWED])
        followed = drawn(follow_key, st.selectbox("Run", list(states), key=follow_key, on_change=pick_followed,
                                                  args=(follow_key,),
                                                  help="Newest first; until you pick one, the newest active run"))
        live = states[followed] in ACTIVE
        st.fragment(show_run, run_every=REFRESH_S if live else None)(Run.named(followed), live)
    if st.session_state.pop(GO_TO_RUN, False):  # just launched: down to the run it started, which the page follows
        st.html('<script>setTimeout(() => document.getElementById("follow-a-run")'
                '?.scrollIntoView({behavior: "smooth", block: "start"}), 300)</script>', unsafe_allow_javascript=True)


# ---- the page -----------------------------------------------------------------------------------------

spec, preset = current_design()
cost = count(spec)
keep_link(spec, preset)  # a reload of this page opens the same design
settings_follow(design_recipe())  # the preset's recipe, or the one that came with the design (a search trial's)
remember()

introduction()
design_section(spec, preset, cost)
data, data_problem = data_section()
timed = device_section(preset)
show_length()
values = setting_values()  # as the widgets hold them, before they are drawn again below
estimate_section(spec, timed, data, values)
invalid = settings_section(values)
launch_section(preset, cost, values, data, blocked=over_budget_problem(cost) or invalid or data_problem)
follow_section()
