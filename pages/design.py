"""Design: shape a residual network for CIFAR-10 and see what it costs on every change.

The design lives in session state as plain spec dicts, so it survives page switches (Streamlit
forgets the state of widgets a page does not render). Every control is a view of the draft and
writes back to it; every number comes from core.design.budget.count, arithmetic on the spec, never
from building the model.
"""
from __future__ import annotations

import json
from functools import reduce
from operator import getitem
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from core.design.budget import BUDGET, Cost, count, fit_to_budget
from core.design.config import RunConfig
from core.design.presets import PRESETS, preset_spec
from core.design.spec import (ACTIVATION_NAMES, ACTIVATIONS, BLOCKS_RANGE, CHANNELS_RANGE, DOWNSAMPLES,
                              DROPOUT_RANGE, IMAGE_SIZE, KERNEL_SIZES, LOGIT_SCALE_RANGE, POOLING_NAMES, POOLINGS,
                              SE_RATIO_RANGE, SHORTCUT_KERNEL_SIZES, STAGES_RANGE, STRIDES, WHITENED_STEM_KERNEL_SIZES,
                              ArchSpec, SpecError, stage_sizes, stem_size)
from core.design.link import to_query
from core.report.charts import parameter_share_chart
from core.units import macs_text, margin_text, params_text
from pages._ui import (DESIGN, DESIGN_CONTROL as CONTROL, DRAFT, LINK_ERROR, NOTHING, PRESET, drawn, keep_link,
                       load_design, matching_preset, moved, origin_text, own_recipe, remember, show_value,
                       start_design, through_app_shell)

through_app_shell()

UPLOAD = "design_upload"
UPLOAD_ERROR = "design_upload_error"
FIT_REPORT = "design_fit_report"  # (st element name, markdown), shown once under the Fit button
EXACT = ":exact"                  # key suffix of a width's exact box, beside its slider
EXACT_BOX_WIDTH = 76              # pixels: a width of 4 digits, whole
WIDTH_STEP = 8
OVER_COLOUR = "#dc2626"          # red: over budget
DOWNSAMPLE_LABELS = {"stride": "strided conv", "maxpool": "max pool"}
SLIDER_WIDTHS = 512               # one 3×3 block of 512 channels is 4.7M parameters; of 1,024, 18.9M


# ---- the design in session state --------------------------------------------------------------

def parse_config(text: str | bytes) -> RunConfig:
    """A run config or a bare spec, from JSON text; any failure is one SpecError saying what is wrong."""
    try:
        data = json.loads(text)
    except UnicodeDecodeError:
        raise SpecError("not a text file; expected JSON") from None
    except json.JSONDecodeError as e:
        raise SpecError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    return RunConfig.from_dict(data)


def map_sizes(draft: dict) -> list[int]:
    """Side of each stage's output map (ArchSpec.feature_sizes) for a draft, which may not validate."""
    return stage_sizes(((stage["stride"], stage.get("downsample", "stride")) for stage in draft["stages"]),
                       draft["stem"]["kernel_size"])


# ---- callbacks: they change the draft; the controls show it when next drawn (pages._ui.show_value) ------------

def store(path: tuple, key: str) -> None:
    value = moved(key)
    if value is NOTHING:
        return
    reduce(getitem, path[:-1], st.session_state[DRAFT])[path[-1]] = value
    keep_pool_within_map()


def set_stage_count(key: str) -> None:
    wanted = moved(key)
    if wanted is NOTHING:
        return
    draft = st.session_state[DRAFT]
    stages = draft["stages"]
    del stages[wanted:]
    while len(stages) < wanted:  # a new stage repeats the last one, halving the map while it can
        stages.append({**stages[-1], "stride": 2 if map_sizes(draft)[-1] > 1 else 1})
    keep_pool_within_map()


def keep_pool_within_map() -> None:
    """A stride change must never strand the pool window outside the last feature map."""
    draft = st.session_state[DRAFT]
    last = map_sizes(draft)[-1]
    if draft["pool_size"] > last:
        draft["pool_size"] = last
        st.toast(f"Pool size lowered to {last}: the last feature map is now {last}×{last}.")


def choose_preset() -> None:
    name = moved(CONTROL + "preset")
    if name not in (NOTHING, None):
        load_design(preset_spec(name), name)


def fit_design() -> None:
    try:
        fit = fit_to_budget(ArchSpec.from_dict(st.session_state[DESIGN]), multiple_of=WIDTH_STEP)  # slider steps
    except SpecError as e:
        st.session_state[FIT_REPORT] = ("error", str(e))
        return
    load_design(fit.spec, st.session_state[PRESET], own_recipe())  # a fitted design keeps its recipe
    if fit.changes:
        changes = "\n".join(f"- `{change}`" for change in fit.changes)
        st.session_state[FIT_REPORT] = (
            "success", f"Every width scaled by {fit.factor:.3f}, to a multiple of {WIDTH_STEP} (the sliders' step): "
                       f"{fit.params_before:,} → {fit.params_after:,} parameters.\n\n{changes}")
    else:
        st.session_state[FIT_REPORT] = ("info", f"No width can change by a step of {WIDTH_STEP} channels and "
                                                f"stay within budget.")


def load_uploaded_design() -> None:
    upload = st.session_state[UPLOAD]
    st.session_state.pop(UPLOAD_ERROR, None)
    if upload is None:  # the file was removed
        return
    try:
        config = parse_config(upload.getvalue())
    except SpecError as e:
        st.session_state[UPLOAD_ERROR] = f"{upload.name}: {e}"
        return
    load_design(config.arch, config.preset if config.preset in PRESETS else matching_preset(config.arch))
    st.toast(f"Loaded the design in {upload.name}.")


# ---- controls ---------------------------------------------------------------------------------

def control(widget, label: str, path: tuple, key_suffix: str = "", **kwargs):
    """`widget` showing the draft's value at `path`; moving it writes the value back."""
    key = show_value(CONTROL + ".".join(map(str, path)) + key_suffix, reduce(getitem, path, st.session_state[DRAFT]))
    return drawn(key, widget(label, key=key, on_change=store, args=(path, key), **kwargs))


def whole_number(label: str, path: tuple, bounds: tuple[int, int], **kwargs):
    return control(st.number_input, label, path, min_value=bounds[0], max_value=bounds[1], step=1, **kwargs)


def width_options(current: int) -> list[int]:
    """The widths a slider offers: multiples of 8 (what hardware computes best) up to the widest that fits
    the budget in one block, and the current width; the exact box takes any other."""
    return sorted(set(range(WIDTH_STEP, SLIDER_WIDTHS + 1, WIDTH_STEP)) | {current})


def width(label: str, path: tuple, **kwargs) -> None:
    """A width as a slider over width_options, with a small box beside it for an exact number."""
    current = reduce(getitem, path, st.session_state[DRAFT])
    # the box as wide as 4 digits, the slider the rest: in columns, a card at 800 px left the box too narrow to
    # show its number
    with st.container(horizontal=True, vertical_alignment="bottom", gap="small"):
        control(st.select_slider, label, path, options=width_options(current), width="stretch", **kwargs)
        control(st.number_input, f"Exact {label.lower()}", path, key_suffix=EXACT, min_value=CHANNELS_RANGE[0],
                max_value=CHANNELS_RANGE[1], step=1, label_visibility="collapsed", width=EXACT_BOX_WIDTH,
                help=f"Any width from {CHANNELS_RANGE[0]} to {CHANNELS_RANGE[1]}")


def one_of(label: str, path: tuple, options, **kwargs):
    return control(st.segmented_control, label, path, options=options, required=True, **kwargs)


def card_columns(count: int, per_row: int):
    """`count` equal columns in rows of at most `per_row`."""
    for start in range(0, count, per_row):
        yield from st.columns(per_row)[:count - start]


def square(side: int) -> str:
    return f"{side}×{side}"


# ---- display ----------------------------------------------------------------------------------

def preset_label(name: str) -> str:
    params = count(preset_spec(name)).params
    return f"{name} · {params_text(params)} parameters" + (" · over budget" if params > BUDGET else "")


def breakdown(spec: ArchSpec, cost: Cost) -> pd.DataFrame:
    rows = [{"Part": "Stem", "Blocks": None, "Channels": spec.stem.channels, "Parameters": cost.stem_params,
             "MACs": cost.stem_macs, "Output": square(stem_size(spec.stem.kernel_size)),
             "Receptive field": spec.stem.kernel_size}]
    rows += [{"Part": f"Stage {s.index}", "Blocks": stage.blocks, "Channels": stage.channels,
              "Parameters": s.params, "MACs": s.macs, "Output": square(s.out_size),
              "Receptive field": s.receptive_field} for stage, s in zip(spec.stages, cost.stages)]
    rows.append({"Part": "Head", "Blocks": None, "Channels": None, "Parameters": cost.head_params,
                 "MACs": cost.head_macs, "Output": f"{spec.num_classes} classes", "Receptive field": None})
    table = pd.DataFrame(rows).astype({"Blocks": "Int64", "Channels": "Int64", "Receptive field": "Int64"})
    table.insert(4, "Share", 100 * table["Parameters"] / cost.params)
    return table


ROW_HEIGHT = 35  # pixels per table row; the chart's bars line up with it
CHART_WIDTH = 420  # pixels: beside the table on a wide page, below it on a narrow one
BREAKDOWN_COLUMNS = {
    "Blocks": st.column_config.NumberColumn(format="%d"),
    "Channels": st.column_config.NumberColumn(format="%d", help="Output channels"),
    "Parameters": st.column_config.NumberColumn(format="%,d"),
    "Share": st.column_config.NumberColumn(format="%.1f%%", help="Share of the design's parameters"),
    "MACs": st.column_config.NumberColumn(format="compact", help="Multiply-accumulates for one image"),
    "Receptive field": st.column_config.NumberColumn(
        format="%d px", help="Side of the input window one output pixel sees"),
}

# ---- the page's sections, top to bottom ----------------------------------------------------------

def current_draft() -> tuple[dict, ArchSpec, str | None]:
    """The draft the controls show; the design it makes, the last valid one while it can't be built; and what is
    wrong with it then."""
    if DRAFT not in st.session_state:
        start_design()
    draft = st.session_state[DRAFT]
    try:
        spec = ArchSpec.from_dict(draft)
        st.session_state[DESIGN] = spec.to_dict()
        return draft, spec, None
    except SpecError as e:
        return draft, ArchSpec.from_dict(st.session_state[DESIGN]), str(e)


def introduction() -> None:
    st.title("Design")
    st.write(f"Shape a residual network for {square(IMAGE_SIZE)} CIFAR-10 images within {BUDGET:,} trainable "
             f"parameters. Every number is counted from the design as you change it.")
    # always a line here: vanishing at the first change, it moved every control up
    st.caption(f"Showing {origin_text() or 'the design as you changed it here; the address bar links to it'}.")
    if LINK_ERROR in st.session_state:
        st.error(f"The design in this link can't be used: {st.session_state.pop(LINK_ERROR)}  \n"
                 f"Showing {origin_text() or 'another design'} instead.")


def preset_row(spec: ArchSpec, draft_error: str | None) -> bool:
    """The preset the design started from, what it is, and a way back to it; returns whether the design was
    changed from it."""
    preset = st.session_state[PRESET]
    # specs compared, not drafts: a draft holds defaults a preset's JSON leaves out (whiten false, relu, ...)
    modified = preset is not None and (draft_error is not None or spec != preset_spec(preset))
    picker, about = st.columns([2, 3], vertical_alignment="bottom")
    drawn(CONTROL + "preset", picker.selectbox(
        "Start from a preset", list(PRESETS), key=show_value(CONTROL + "preset", preset), format_func=preset_label,
        placeholder="Your own design", on_change=choose_preset))
    if preset is not None:
        about.markdown(f"{PRESETS[preset]['description']}  \n:gray[Source: {PRESETS[preset]['source']}]")
    elif own_recipe() is not None:
        about.markdown(f"From **{own_recipe()[0]}**  \n:gray[Train starts from its training settings]")
    if preset is not None:  # always there (greyed while unchanged): appearing, it moved every control down
        about.button(f"Modified: revert to {preset}" if modified else f"Unchanged from {preset}", type="tertiary",
                     icon=":material/undo:", disabled=not modified, on_click=load_design, key="design_revert",
                     args=(preset_spec(preset), preset))
    return modified


def budget_section(cost: Cost, draft_error: str | None) -> None:
    """The design's parameters against the budget, its MACs and costliest stage; Train and Fit to budget."""
    over = cost.params - BUDGET
    st.subheader("Budget", divider="gray")
    if draft_error:
        st.error(f"This design can't be built. {draft_error}  \nThe numbers below are for the last valid design.")
    params, used, macs, costliest = st.columns([5, 4, 4, 4])  # room for 11,173,962 at 800 px
    params.metric("Parameters", params_text(cost.params), margin_text(over),
                  delta_color="inverse" if over > 0 else "normal", delta_arrow="off", border=True, height="stretch",
                  help=f"Trainable parameters; the budget is {BUDGET:,}"
                       + (f". Besides them, {cost.frozen_params:,} frozen weights (the whitened stem's filters)"
                          if cost.frozen_params else ""))
    used.metric("Budget used", f"{cost.params / BUDGET:.1%}", border=True, height="stretch")
    macs.metric("MACs per image", macs_text(cost.macs), border=True, height="stretch",
                help=f"{cost.macs:,} multiply-accumulates for one {square(IMAGE_SIZE)} image, forward pass")
    largest = cost.largest_stage()
    costliest.metric("Costliest stage", f"Stage {largest.index}", f"{largest.params / cost.params:.0%} of parameters",
                     delta_color="off", delta_arrow="off", border=True, height="stretch")
    # always a line here, so that the controls below stay where they are when the design goes over budget
    share = f"Stage {largest.index} costs the most: {largest.params:,} parameters"
    if over > 0:
        st.error(f"Over budget by {over:,} parameters. {share}. Narrow it, give it fewer blocks, or let Fit to "
                 f"budget scale every width.")
    else:
        st.success(f"Within budget, {-over:,} parameters to spare. {share}, {largest.params / cost.params:.0%} of "
                   f"the design: widen or deepen it within budget.")
    train_buttons(over, draft_error)


def train_buttons(over: int, draft_error: str | None) -> None:
    """Train this design (or why it can't be), Fit to budget, and what the last fit did."""
    if draft_error:
        train_blocked = "Can't train: the design can't be built; see the error above."
    elif over > 0:
        train_blocked = f"Can't train: the design is {over:,} parameters over budget."
    else:
        train_blocked = None
    # buttons as wide as their labels, side by side (at 800 px, columns cut them), the reason beside them
    buttons = st.container(horizontal=True, vertical_alignment="center")
    if buttons.button("Train this design", type="primary", icon=":material/play_arrow:", key="design_train",
                      disabled=bool(train_blocked), help=train_blocked, width="content"):
        st.switch_page("pages/train.py")
    buttons.button("Fit to budget", icon=":material/fit_width:", on_click=fit_design, disabled=bool(draft_error),
                   width="content", key="design_fit",
                   help=f"Scale every width by one factor, the largest that keeps the design within "
                        f"{BUDGET:,} parameters")
    if train_blocked:
        buttons.caption(train_blocked)
    if FIT_REPORT in st.session_state:
        kind, report = st.session_state.pop(FIT_REPORT)
        getattr(st, kind)(report)


def architecture_section(draft: dict, cost: Cost, draft_error: str | None) -> None:
    """Every control of the design: stages and stem, the budget where the hands are, a card per stage, and what
    applies to every block."""
    st.subheader("Architecture", divider="gray")
    sizes = map_sizes(draft)
    count_column, stem_column, stem_kernel_column = st.columns(3)
    drawn(CONTROL + "stage_count", count_column.segmented_control(
        "Stages", range(STAGES_RANGE[0], STAGES_RANGE[1] + 1),
        key=show_value(CONTROL + "stage_count", len(draft["stages"])), required=True, on_change=set_stage_count,
        args=(CONTROL + "stage_count",)))
    with stem_column:
        width("Stem channels", ("stem", "channels"), help="Width of the first convolution")
    with stem_kernel_column:
        one_of("Stem kernel", ("stem", "kernel_size"), WHITENED_STEM_KERNEL_SIZES,
               help="Side of its square kernel: 3 means 3×3. 2 is for a whitened stem only: a 2×2 whitening "
                    "without padding gives 31×31 maps, which max pooling takes to 15, 7 and 3 (airbench): about a "
                    "fifth fewer MACs than 32, 16 and 8")
        draft["stem"].setdefault("whiten", False)  # a draft kept from before whitened stems
        control(st.toggle, "Whitened stem", ("stem", "whiten"),
                help="The first convolution whitens the image's patches: its filters are computed from training "
                     "images when a run starts and never trained (airbench), then a 1×1 convolution gives the stem's "
                     "channels. Its frozen weights are counted apart from the budget's trainable parameters")
    budget_gauge(cost, draft_error)
    stage_cards(draft, sizes)
    every_block_row(draft)
    head_row(draft, sizes)


def budget_gauge(cost: Cost, draft_error: str | None) -> None:
    over = cost.params - BUDGET
    # the bar in red over budget (st.progress takes the theme's blue, which said nothing)
    st.html(f"<style>.st-key-design_gauge_over [data-testid='stProgressBarTrack'] > div "
            f"{{background-color: {OVER_COLOUR}}}</style>")
    # the budget again where the hands are: colour and what is left, changing with every move of a slider
    # the button is always there (greyed within budget): appearing, it made the row taller and moved the controls
    gauge = st.container(horizontal=True, vertical_alignment="center")
    gauge.container(key="design_gauge_over" if over > 0 else "design_gauge").progress(
        min(cost.params / BUDGET, 1.0), text=f":{'red' if over > 0 else 'green'}[**{params_text(cost.params)} "
                                             f"parameters** · {margin_text(over)} · {cost.params / BUDGET:.1%} of "
                                             f"{params_text(BUDGET)}]")
    gauge.button("Fit to budget", icon=":material/fit_width:", on_click=fit_design,
                 disabled=bool(draft_error) or over <= 0, key="design_fit_near_controls", width="content",
                 help="Within budget already" if over <= 0 else None)


def stage_cards(draft: dict, sizes: list[int]) -> None:
    in_channels = draft["stem"]["channels"]
    stages = len(draft["stages"])
    cards = card_columns(stages, stages if stages <= 4 else 3)  # narrower cards would wrap the kernel choices
    for i, (card, stage, size) in enumerate(zip(cards, draft["stages"], sizes)):
        with card.container(border=True, height="stretch"):
            st.markdown(f"**Stage {i}** :gray[· {square(size)} out]")
            control(st.slider, "Blocks", ("stages", i, "blocks"), min_value=BLOCKS_RANGE[0], max_value=BLOCKS_RANGE[1])
            width("Channels", ("stages", i, "channels"))
            one_of("Kernel", ("stages", i, "kernel_size"), KERNEL_SIZES,
                   help="Side of the square kernel of every convolution in the stage: 3 means 3×3")
            one_of("Stride", ("stages", i, "stride"), STRIDES,
                   help="2 halves the feature map in the stage's first block")
            stage.setdefault("downsample", "stride")  # a draft kept from before max-pool downsampling
            one_of("Halve by", ("stages", i, "downsample"), DOWNSAMPLES, disabled=stage["stride"] == 1,
                   format_func=DOWNSAMPLE_LABELS.get,
                   help="How the first block halves the map: its first convolution strided (ResNet), or that "
                        "convolution at full size then 2×2 max pooling, on the shortcut too (ResNet-9, airbench): "
                        "4× that convolution's MACs, often more accuracy an epoch"
                        + ("" if stage["stride"] != 1 else "; this stage keeps its map (stride 1)"))
            projects = stage["stride"] != 1 or stage["channels"] != in_channels
            one_of("Shortcut kernel", ("stages", i, "shortcut_kernel_size"), SHORTCUT_KERNEL_SIZES,
                   disabled=not projects,
                   help="Kernel of the projection shortcut, which the first block needs when it changes the "
                        "resolution or the width" + ("" if projects else "; this stage changes neither"))
        in_channels = stage["channels"]


def every_block_row(draft: dict) -> None:
    """Batch norm, the activation, SE and dropout."""
    batch_norm, activation, se_ratio, dropout = st.columns(4)
    with batch_norm:
        control(st.toggle, "Batch norm", ("batch_norm",), help="Batch normalization after every convolution")
    with activation:
        draft.setdefault("activation", "relu")  # a draft kept from before the choice
        one_of("Activation", ("activation",), ACTIVATIONS, format_func=ACTIVATION_NAMES.get,
               help="After every convolution of the stem and the blocks. GELU (airbench94's) learned more an epoch "
                    "than ReLU on CIFAR-10 and costs about 5% more time a step on a CPU (docs/PERFORMANCE.md)")
    with se_ratio:
        whole_number("SE ratio", ("se_ratio",), SE_RATIO_RANGE,
                     help="Squeeze-and-excitation in every block, with channels ÷ ratio hidden units (16 is usual); "
                          "0 turns it off")
    with dropout:
        control(st.slider, "Dropout", ("dropout",), min_value=DROPOUT_RANGE[0], max_value=DROPOUT_RANGE[1], step=0.05,
                help="Dropout between the two convolutions of every block")


def head_row(draft: dict, sizes: list[int]) -> None:
    """The pool over the last feature map, and the scale of the linear head's logits."""
    pool, pooling, logit_scale = st.columns(3)
    with pool:
        control(st.select_slider, "Pool size", ("pool_size",), options=range(1, sizes[-1] + 1),
                help=f"Window of the pool before the linear head; the last feature map is {square(sizes[-1])}")
    with pooling:
        draft.setdefault("pooling", "avg")  # a draft kept from before the choice
        one_of("Pooling", ("pooling",), POOLINGS, format_func=POOLING_NAMES.get,
               help="Average or max over each window. ResNet-9 and airbench94 take the max over the last map")
    with logit_scale:
        draft.setdefault("logit_scale", 1.0)
        control(st.number_input, "Logit scale", ("logit_scale",), min_value=LOGIT_SCALE_RANGE[0],
                max_value=LOGIT_SCALE_RANGE[1], step=0.01, format="%g",
                help="A constant the head's outputs are multiplied by before the loss: no parameters. Below 1 the "
                     "loss starts flatter and the head learns more slowly (ResNet-9: 0.125, airbench94: 1/9); 1 "
                     "leaves them as they are")


def breakdown_section(spec: ArchSpec, cost: Cost) -> None:
    """Where the parameters go: a row per part, a bar per row, and what the head does."""
    st.subheader("Where the parameters go", divider="gray")
    table = breakdown(spec, cost)
    # the table as wide as its columns and the chart beside it, below it where the page is too narrow for both (in
    # columns, at 800 px, the table scrolled sideways)
    with st.container(horizontal=True, wrap=True, gap="medium"):
        st.dataframe(table, hide_index=True, column_config=BREAKDOWN_COLUMNS, placeholder="", row_height=ROW_HEIGHT,
                     width="content")
        st.altair_chart(parameter_share_chart(table), height=ROW_HEIGHT * (len(table) + 1), width=CHART_WIDTH)
    pooled = cost.stages[-1].out_size // spec.pool_size
    scale = f", its outputs multiplied by {spec.logit_scale:g}" if spec.logit_scale != 1 else ""
    st.caption(f"Head: {square(spec.pool_size)} {POOLING_NAMES[spec.pooling].lower()} pool on the "
               f"{square(cost.stages[-1].out_size)} map, then {cost.head_features:,} features "
               f"({spec.stages[-1].channels} channels × {square(pooled)}) into a linear layer to {spec.num_classes} "
               f"classes{scale}. Total: {cost.params:,} parameters, "
               + (f"plus {cost.frozen_params:,} frozen (the whitened stem's filters), " if cost.frozen_params else "")
               + f"{cost.macs:,} MACs per image.")


def save_and_share_section(spec: ArchSpec, preset: str | None, modified: bool) -> None:
    """Download the design, load one, and the link that opens it."""
    st.subheader("Save and share", divider="gray")
    save, load, share = st.columns(3)
    file_name = preset if preset is not None and not modified else "resnet-design"
    save.download_button("Download the design as JSON", spec.to_json(), file_name=f"{file_name}.json",
                         mime="application/json", on_click="ignore", icon=":material/download:")
    load.file_uploader("Load a design", type="json", key=UPLOAD, on_change=load_uploaded_design,
                       help="A design saved here, or a run config (its arch is used)")
    if UPLOAD_ERROR in st.session_state:
        load.error(f"Could not load {st.session_state[UPLOAD_ERROR]}")
    share.markdown("**Link to this design**")
    share.code(f"{st.context.url or ''}?{urlencode(to_query(spec, preset), doseq=True)}", language=None,
               wrap_lines=True)
    share.caption("The address bar holds the same link.")


# ---- the page ---------------------------------------------------------------------------------

draft, spec, draft_error = current_draft()
cost = count(spec)
keep_link(spec, st.session_state[PRESET])
remember()

introduction()
modified = preset_row(spec, draft_error)
budget_section(cost, draft_error)
architecture_section(draft, cost, draft_error)
breakdown_section(spec, cost)
save_and_share_section(spec, st.session_state[PRESET], modified)
