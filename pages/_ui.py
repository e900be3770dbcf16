"""Display helpers shared by the pages (a module, not a page: app.py's st.navigation lists the pages)."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from core.design.config import TrainConfig
from core.design.last import LastDesign, read_last, save_last
from core.design.link import KEYS as LINK_KEYS, PRESET as LINK_PRESET, from_query, to_query
from core.design.presets import PRESETS, preset_spec
from core.design.settings import LABELS, recipe
from core.design.spec import ArchSpec, SpecError
from core.errors import StudioError
from core.runs.choice import best_run
from core.runs.record import read_record, summary_lines
from core.runs.run import ACTIVE, Damage, Run, delete, find_damage, repair, scan_runs
from core.units import epoch_text, significant

# core.nn.checkpoint and core.deploy.predict load torch, which takes seconds: they are imported where a page
# uses a network, so the Design page, which never does, opens without that wait.
if TYPE_CHECKING:
    from core.deploy.predict import Classifier


def through_app_shell() -> None:
    """Run this page inside app.py's navigation, also when it is the server's first request.

    Streamlit treats a folder named pages/ beside app.py as a legacy multipage app until app.py has
    called st.navigation once, so a deep link (say /train) as the first request after a start
    would run this page alone: no navigation, no wide layout. Clear that legacy flag and rerun,
    which now goes through app.py to the same page. Only on a session's first run: a later rerun
    would swallow the click that caused it.
    """
    first_run = "shell_checked" not in st.session_state
    st.session_state["shell_checked"] = True
    if first_run and PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


# ---- runs and checkpoints, for the pages that use a trained network ---------------------------

RUN_CHOICE = "run_choice"  # the run being looked at, the same on Classify and Evaluate


def run_label(run: Run, best: Run | None = None) -> str:
    summary = run.summary()
    accuracy = f" · best {summary['best_acc']:.1%}" if summary["best_acc"] is not None else ""
    return f"{run.name} · {summary['state']}{accuracy}" + (" · best run" if run == best else "")


def select_run(label: str, runs: list[Run], remember: str, default: Run, **kwargs) -> Run:
    """A choice of run kept under `remember` across pages (Streamlit forgets the state of a widget its page
    does not render); a run that has gone since falls back to `default`. The best run says so, and a caption says
    when the run shown is not `default` because it was picked on another page, or fell back because it is gone."""
    by_name = {run.name: run for run in runs}
    widget, picked_on = remember + ":widget", remember + ":picked_on"
    here = this_page()
    gone = None
    if st.session_state.get(widget) not in by_name:
        remembered = st.session_state.get(remember)
        st.session_state[widget] = remembered if remembered in by_name else default.name
        gone = remembered if remembered is not None and remembered not in by_name else None
    best = best_run(runs)
    name = st.selectbox(label, list(by_name), key=widget, format_func=lambda n: run_label(by_name[n], best),
                        on_change=lambda: st.session_state.__setitem__(picked_on, this_page()), **kwargs)
    # what the page opens on, when not its default, is said, never silently: a run gone, or one picked elsewhere
    if gone:
        st.caption(f"{gone}, the run picked before, is gone: this is {default.name}, the default.")
    elif name != default.name and st.session_state.get(picked_on) not in (None, here):
        st.caption(f"Picked on another page; the default here is {default.name}.")
    st.session_state[remember] = name
    return by_name[name]


def this_page() -> str:
    """Which page this script run draws (its script's hash)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.page_script_hash if ctx else ""


def chosen_run(remember: str) -> Run:
    """For a button's callback: the run select_run's box holds at the click. Args bound when the page last drew
    can name the run shown before, when the click comes just after a pick, ahead of the redraw."""
    return Run.named(st.session_state.get(remember + ":widget") or st.session_state[remember])


def select_checkpoint(key: str, default: str = "best", **kwargs) -> str:
    from core.nn.checkpoint import TAGS

    return st.segmented_control("Checkpoint", TAGS, default=default, required=True, key=key,
                                format_func=str.capitalize, persist_state="session", **kwargs)


@st.cache_resource(show_spinner="Loading the checkpoint…", max_entries=8)
def load_classifier(run_dir: str, tag: str, saved: float) -> Classifier:
    """One loaded model per checkpoint save: `saved` (its file's mtime) changes when training writes a new one."""
    from core.deploy.predict import Classifier

    return Classifier.load(Run(Path(run_dir)), tag)


def open_classifier(run: Run, tag: str) -> Classifier | None:
    """The run's checkpoint ready to predict, or None with a message saying why not and what to do."""
    meta = run.checkpoint_file(tag)  # written last in a save: its mtime marks the save
    if not meta.exists():
        state = run.status().get("state")
        if state in ACTIVE:
            st.info(f"**{run.name}** has no checkpoint yet: it appears after the first epoch, and this page "
                    f"uses it as soon as it does.", icon=":material/hourglass_top:")
        else:
            st.warning(f"**{run.name}** has no {tag} checkpoint: it is {state} and never finished an epoch. "
                       f"Resume it on the Train page, or pick another run.", icon=":material/warning:")
        return None
    try:
        classifier = load_classifier(str(run.dir), tag, meta.stat().st_mtime)
    except (StudioError, OSError) as e:
        st.error(f"The {tag} checkpoint of **{run.name}** can't be loaded: {e}", icon=":material/error:")
        return None
    saved = classifier.meta
    if saved.get("eval_acc") is not None:
        epoch = run.checkpoint_epoch(saved)
        st.caption(f"{tag.capitalize()} checkpoint: epoch {'?' if epoch is None else epoch_text(epoch)}, "
                   f"{saved['eval_acc']:.1%} on its {saved.get('eval_split', 'evaluation')} split.")
    return classifier


def show_record(run: Run) -> None:
    """The run's reproducibility record, folded: what made it, on which code, machine, libraries and data."""
    with st.expander("Reproducibility record", icon=":material/fingerprint:"):
        rows = summary_lines(read_record(run.record_path))
        # a static table: it wraps a long value (a command, a path, a hash) where a data frame's cell cuts it off
        st.table(pd.DataFrame([{"Fact": fact, "Value": str(value)} for fact, value in rows]).set_index("Fact"))


def checkpoint_id(run: Run, tag: str, classifier: Classifier) -> tuple[str, str, str]:
    """What names a loaded checkpoint in a cache key: its run, tag and save (each save has its own generation)."""
    return str(run.dir), tag, classifier.meta["generation"]


def usable_runs() -> list[Run]:
    """The runs that can be used, newest first. A damaged run is shown here, with what is wrong and what can be
    done (repair, delete): never dropped in silence, and never in the way of the others."""
    if note := st.session_state.pop(DAMAGE_NOTE, None):
        (st.success if note[0] else st.error)(note[1], icon=":material/build:")
    runs, damaged = scan_runs()
    for run, damage in damaged:
        show_damaged(run, damage)
    return runs


DAMAGE_NOTE = "damage_note"  # how the last repair or delete of a damaged run went: (worked, message)


def show_damaged(run: Run, damage: Damage) -> None:
    with st.container(border=True, horizontal=True, vertical_alignment="center"):
        st.markdown(f":material/broken_image: **{run.name}** is damaged: `{damage.file}` is {damage.problem}. " +
                    ("The run is still listed; that checkpoint can't be loaded." if damage.usable else
                     "The other runs are not affected."))
        if damage.repair:
            st.button("Repair", key=f"repair:{run.name}", on_click=mend_damaged, args=(run.name, repair),
                      help=f"Repair: {damage.repair}.")
        with st.popover("Delete…"):
            st.button(f"Delete {run.name} for good", key=f"delete-damaged:{run.name}", type="primary",
                      on_click=mend_damaged, args=(run.name, delete), help="Its checkpoints and metrics go with it.")


def mend_damaged(name: str, action) -> None:
    try:
        action(Run.named(name))
    except (StudioError, OSError) as e:
        st.session_state[DAMAGE_NOTE] = (False, f"{name}: not done: {e}")
    else:
        st.session_state[DAMAGE_NOTE] = (True, f"{name}: {'repaired' if action is repair else 'deleted'}.")


def damage_shown(run: Run) -> bool:
    """Show `run` as damaged if it has become so since the page listed it; True if it can't be used."""
    damage = find_damage(run)
    if damage is not None and not damage.usable:
        show_damaged(run, damage)
    return damage is not None and not damage.usable


def runs_or_stop(purpose: str) -> list:
    """Every run that reads well, newest first (the damaged ones shown apart); with none, the page's empty state
    (what to do, with the buttons to do it) and the end of the script run."""
    runs = usable_runs()
    if not runs:
        no_runs_yet(purpose)
        st.stop()
    return runs


def no_runs_yet(purpose: str) -> None:
    st.info(f"No runs yet. {purpose} needs a network trained here: design one, train it, and its checkpoint "
            f"appears here after its first epoch.", icon=":material/info:")
    design, train, _ = st.columns([1, 1, 4])
    if design.button("Design a network", icon=":material/architecture:", width="stretch"):
        st.switch_page("pages/design.py")
    if train.button("Train", type="primary", icon=":material/model_training:", width="stretch"):
        st.switch_page("pages/train.py")


# ---- widgets that show a value kept elsewhere (the Design page's draft) ----------------------------------
#
# A page never deletes a drawn widget's key, and a callback never sets one: it changes the value the widget shows,
# and the widget is set to show it just before it is drawn (show_value). The browser sends every widget's value with
# each interaction, and a quick hand (three arrow presses) sends the next one before the rerun the last one caused
# has drawn every widget again: Streamlit then stops that rerun, and a widget not yet drawn anew still had its key
# deleted. Its value from the browser, unchanged, then counted as changed, its callback ran and read the deleted
# key: a KeyError in place of the page (issue 27). Or it wrote that stale value back.

NOTHING = object()  # no value: the widget's key is gone, or it was not moved
WIDGETS_SHOWN = "widgets_shown"  # {key: the value the widget showed when last drawn}


def show_value(key: str, value: object) -> str:
    """`key`, for a widget about to be drawn, set to show `value` when it is missing (a page switch forgot it) or
    shows another (another control, a preset or a link changed the value)."""
    if st.session_state.get(key, NOTHING) != value:
        st.session_state[key] = value
    return key


def drawn(key: str, value: object) -> object:
    """Note what the widget keyed `key` shows now that it is drawn, for moved(); returns it."""
    st.session_state.setdefault(WIDGETS_SHOWN, {})[key] = value
    return value


def moved(key: str) -> object:
    """In a widget's callback: the value a person moved it to, or NOTHING when its key is gone or it holds what it
    showed when last drawn (the browser sent it again, ahead of a redraw that would have shown another)."""
    value = st.session_state.get(key, NOTHING)
    return NOTHING if value is NOTHING or value == st.session_state.get(WIDGETS_SHOWN, {}).get(key, NOTHING) else value


# ---- the design and its recipe in session state: Design edits the design, Train trains it with the recipe ----

DRAFT = "design_draft"           # what the Design page's controls show, as a spec dict; may be invalid
DESIGN = "design"                # the last valid design, ArchSpec.to_dict()
PRESET = "design_preset"         # the preset the design started from, or None (RunConfig.preset)
RECIPE = "design_recipe"         # training settings that came with the design: {"name", "train"}, or None (the
                                 # preset's recipe then): a search trial's, opened in Design
DESIGN_CONTROL = "design:"       # key prefix of the Design page's controls, each showing the draft (show_value)
DEFAULT_PRESET = "resnet26-seed"  # the best seed's network, within budget
SETTING = "train:"               # key prefix of the Train page's settings: "train:" + TrainConfig field
SETTINGS_FROM = "train_settings_from"  # the recipe the settings were loaded from (None: the defaults)
ORIGIN = "design_origin"         # where the session's first design came from: {"how", "saved", "design"}
LINK_ERROR = "design_link_error"  # what was wrong with the design in the link the session opened with
RESTORED = "train_settings_restored"  # the last settings on disk, for the Train page to start from
REMEMBERED = "design_remembered"  # what was last written to (or read from) disk, so only changes are written


def load_design(spec: ArchSpec, preset: str | None, recipe_with: tuple[str, TrainConfig] | None = None) -> None:
    """Make `spec` the design; the Design page's controls re-read it. `recipe_with`: the settings that come with
    it, and their name (a search trial's); Train starts from them as from a preset's recipe. Without them,
    the preset's recipe (or the defaults) comes with the design."""
    st.session_state[DRAFT] = spec.to_dict()
    st.session_state[DESIGN] = spec.to_dict()
    st.session_state[PRESET] = preset
    st.session_state[RECIPE] = ({"name": recipe_with[0], "train": rounded(recipe_with[1]).to_dict()} if recipe_with
                                else None)


def rounded(train: TrainConfig) -> TrainConfig:
    """Settings a search drew, to 3 significant figures: what the Train page shows is what a run trains, and
    nobody reads lr 0.12524567764709546 (a difference far below what training notices)."""
    return TrainConfig.from_dict({name: significant(value) if isinstance(value, float) else value
                                  for name, value in train.to_dict().items()})


def load_settings(train: TrainConfig, source: str | None) -> None:
    """The Train page's settings, from `train`; `source` names the recipe they came from."""
    for name, value in train.to_dict().items():
        st.session_state[SETTING + name] = value
    st.session_state[SETTINGS_FROM] = source


def matching_preset(spec: ArchSpec) -> str | None:
    return next((name for name in PRESETS if preset_spec(name) == spec), None)


def link_design() -> ArchSpec | None:
    """The design in the address bar's link, if it holds one; a broken one is remembered under LINK_ERROR."""
    if not any(key in st.query_params for key in LINK_KEYS):
        return None
    try:
        return from_query({key: st.query_params.get_all(key) for key in st.query_params})
    except SpecError as e:
        st.session_state[LINK_ERROR] = str(e)
        return None


def linked_preset() -> str | None:
    """The preset the link's design started from, when the link names one this app knows."""
    name = st.query_params.get(LINK_PRESET)
    return name if name in PRESETS else None


def start_design() -> None:
    """A session's first design: the link's (a design in the address bar), else the last one worked on (on
    disk, with its training settings), else the default preset. ORIGIN says which, for the pages to show.

    The last design's own recipe (a search trial's) comes along only with that design, so a new tab never pairs
    a design with another's settings: the last settings are restored with it when they followed a preset, the
    defaults or that recipe; a trial's settings are not restored for another design."""
    spec, last, saved = link_design(), read_last(), None
    if spec is not None:
        own = last.recipe if last is not None and last.arch == spec else None
        load_design(spec, linked_preset() or matching_preset(spec), own)
        how = "link"
    elif last is not None:
        own = last.recipe
        load_design(last.arch, last.preset if last.preset in PRESETS else matching_preset(last.arch), own)
        how, saved = "saved", last.saved
    else:
        own = None
        load_design(preset_spec(DEFAULT_PRESET), DEFAULT_PRESET)
        how = "default"
    if last is not None and last.train is not None:
        source = last.settings_from
        if source is None or source in PRESETS or (own is not None and source == own[0]):
            st.session_state[RESTORED] = (last.train, source)
    st.session_state[ORIGIN] = {"how": how, "saved": saved, "design": st.session_state[DESIGN]}
    st.session_state[REMEMBERED] = last.to_dict() if last is not None else None


def current_design() -> tuple[ArchSpec, str | None]:
    """The design and its preset; on a session's first page, as start_design finds it."""
    if DESIGN not in st.session_state:
        start_design()
    return ArchSpec.from_dict(st.session_state[DESIGN]), st.session_state.get(PRESET)


def own_recipe() -> tuple[str, TrainConfig] | None:
    """The settings that came with the design and their name (a search trial's), or None."""
    own = st.session_state.get(RECIPE)
    return (own["name"], TrainConfig.from_dict(own["train"])) if own else None


def design_recipe() -> str | None:
    """The name of the recipe that comes with the design: its own, else its preset's."""
    own = own_recipe()
    return own[0] if own else current_design()[1]


def recipe_named(name: str | None) -> TrainConfig:
    """The training settings of a recipe: the design's own when so named, a preset's, or the defaults."""
    own = own_recipe()
    return own[1] if own and own[0] == name else recipe(name)


def design_origin() -> str | None:
    """Where the design came from while it is still the one the session opened with: "link", "saved" (the last
    design on disk) or "default"; None once it was changed or chosen here."""
    origin = st.session_state.get(ORIGIN)
    return origin["how"] if origin and origin["design"] == st.session_state.get(DESIGN) else None


def origin_text() -> str | None:
    """design_origin in words."""
    how = design_origin()
    if how == "link":
        return "the design in this page's link"
    if how == "saved":
        when = time.strftime("%H:%M on %d %b", time.localtime(st.session_state[ORIGIN]["saved"]))
        return f"your last design, restored as you left it at {when}"
    if how == "default":
        return f"the default design, {DEFAULT_PRESET}: no design was chosen yet on this machine"
    return None


def restored_settings() -> tuple[TrainConfig, str | None] | None:
    """The training settings last used (on disk, read at the session's start), once: for the Train page."""
    return st.session_state.pop(RESTORED, None)


def keep_link(spec: ArchSpec, preset: str | None) -> None:
    """The address bar links to `spec` and the preset it started from, so that a reload, a bookmark or a shared
    link opens it again."""
    link = to_query(spec, preset)
    if {key: st.query_params.get_all(key) for key in st.query_params} != link:
        st.query_params.from_dict(link)


def remember() -> None:
    """Keep the design, its own recipe, and the training settings once the Train page has them, on disk for the
    next reload or tab (core.design.last); written only when they change. Settings that are not valid are not
    kept. Settings that follow another recipe than the design's (a trial's design just opened in Design) are
    kept as the Train page will show them: the design's recipe."""
    previous = st.session_state.get(REMEMBERED) or {}
    train, source = previous.get("train"), previous.get("settings_from")
    if all(SETTING + name in st.session_state for name in LABELS):
        with contextlib.suppress(SpecError):
            train = TrainConfig.from_dict({name: st.session_state[SETTING + name] for name in LABELS}).to_dict()
            source = st.session_state.get(SETTINGS_FROM)
    follows = design_recipe()
    if follows is not None and follows != source:
        train, source = recipe_named(follows).to_dict(), follows
    if design_origin() == "default" and train in (None, recipe(DEFAULT_PRESET).to_dict()):
        return  # nothing chosen yet: a new tab should still say it shows the default
    record = {"arch": st.session_state[DESIGN], "preset": st.session_state.get(PRESET), "train": train,
              "settings_from": source, "recipe": st.session_state.get(RECIPE)}
    if record != previous:
        own = own_recipe()
        with contextlib.suppress(OSError):  # a read-only cache: the app works on, it just can't remember
            save_last(LastDesign(ArchSpec.from_dict(record["arch"]), record["preset"],
                                 TrainConfig.from_dict(train) if train else None, source, recipe=own))
        st.session_state[REMEMBERED] = record


# ---- runs in training: shared by Train (which follows one) and Runs (which compares them) -----------

FOLLOWED = "train_followed"  # the run the Train page follows; the Runs page may pick it
STATE_BADGES = {"queued": ("gray", ":material/hourglass_top:"), "running": ("blue", ":material/sprint:"),
                "finished": ("green", ":material/check_circle:"), "failed": ("red", ":material/error:"),
                "stopped": ("orange", ":material/pause_circle:"), "pruned": ("violet", ":material/content_cut:")}


def state_badge(state: str | None) -> None:
    colour, icon = STATE_BADGES.get(state, ("gray", None))
    st.badge(state or "unknown", color=colour, icon=icon)


def plural(n: int, thing: str) -> str:
    return f"{n:,} {thing}{'' if n == 1 else 's'}"


def data_label(data: str | None) -> str:
    """A run's data in a few words: the built-in slice, or the name of the folder or archive."""
    return "built-in slice" if data in (None, "builtin") else Path(data).name


def data_words(data: str | None) -> str:
    """data_label in a sentence: "on {data_words(data)}" reads "on the built-in slice", "on cifar10-jpg.tar.gz"."""
    return "the built-in slice" if data in (None, "builtin") else data_label(data)
