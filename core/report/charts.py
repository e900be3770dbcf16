"""The app's charts, as Altair specs built from plain tables: the pages draw them, reports render them to images.

No Streamlit here; the pages show these with st.altair_chart, and core.report renders the same specs with
vl-convert, so a report shows exactly what the app shows.
"""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from core.design.budget import BUDGET

PRIMARY = "#2563eb"             # the theme's primary colour (.streamlit/config.toml)
RUN_COLOURS = [PRIMARY, "#f59e0b"]  # side by side: blue, then amber
# many runs: Vega's tableau10, colours far apart, then tableau20's lighter ones
RUN_PALETTE = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
               "#bab0ac", "#9ecae9", "#ffbf79", "#88d27a", "#f2cf5b", "#83bcb6", "#ff9d98", "#d67195", "#d6a5c9",
               "#d8b5a5", "#79706e"]
CELL = 34                       # pixels per class in a confusion matrix


def confusion_chart(classes: list[str], confusion: list[list[int]]) -> alt.Chart:
    """Rows are true classes, columns predicted ones; shade is the share of the row, so classes of
    different sizes compare, and each cell is labelled with its count."""
    cells = pd.DataFrame([{"True": true, "Predicted": predicted, "Images": n, "Share": n / max(sum(row), 1)}
                          for true, row in zip(classes, confusion) for predicted, n in zip(classes, row)])
    base = alt.Chart(cells).encode(
        x=alt.X("Predicted:N", sort=classes, axis=alt.Axis(orient="top", labelAngle=-45, labelOverlap=False)),
        y=alt.Y("True:N", sort=classes, axis=alt.Axis(labelOverlap=False)),
        tooltip=["True", "Predicted", "Images", alt.Tooltip("Share:Q", format=".1%", title="Share of true")],
    )
    heat = base.mark_rect().encode(color=alt.Color("Share:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]),
                                                   legend=alt.Legend(format="%", title="Share of true")))
    counts = base.mark_text(fontSize=11).encode(
        text="Images:Q", color=alt.condition("datum.Share > 0.5", alt.value("white"), alt.value("#1f2937")))
    return (heat + counts).properties(height=CELL * len(classes))


def per_class_chart(accuracy: pd.DataFrame) -> alt.Chart:
    """Bars of accuracy per class, one per run side by side; columns Class, Accuracy and Run."""
    runs = list(dict.fromkeys(accuracy["Run"]))
    classes = list(dict.fromkeys(accuracy["Class"]))
    colour = alt.Color("Run:N", scale=alt.Scale(domain=runs, range=RUN_COLOURS[:len(runs)]),
                       legend=alt.Legend(orient="bottom", title=None) if len(runs) > 1 else None)
    base = alt.Chart(accuracy).encode(
        y=alt.Y("Class:N", sort=classes, title=None, axis=alt.Axis(labelOverlap=False)),
        x=alt.X("Accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%", tickCount=10)),
        yOffset=alt.YOffset("Run:N", sort=runs),
        tooltip=["Run", "Class", alt.Tooltip("Accuracy:Q", format=".1%")],
    )
    labels = base.mark_text(align="left", dx=3, fontSize=11).encode(text=alt.Text("Accuracy:Q", format=".0%"))
    return (base.mark_bar().encode(color=colour) + labels).properties(height=CELL * len(classes))


def robust_top(values: pd.Series) -> float | None:
    """Where a y-scale should stop so that a few wild points (a test loss of 126 in an early epoch, among losses
    of about 2) do not flatten every other curve; None when nothing is that far out. The fence is in log space,
    where losses and learning rates spread evenly: three interquartile ranges above the upper quartile, and at
    least ten times it. Accuracies (at most 1, at least chance) and a loss falling from 2.3 to 0.01 stay inside."""
    positive = pd.to_numeric(values, errors="coerce")
    positive = positive[positive > 0]
    if len(positive) < 4:  # too few points to call one of them wild
        return None
    q1, q3 = np.log10(positive).quantile([0.25, 0.75])
    top = 10 ** (q3 + max(3 * (q3 - q1), 1.0))
    return float(top) if positive.max() > top else None


def legend_columns(names: list[str]) -> int:
    """How many legend entries fit side by side under a chart half a page wide, so that many curves wrap onto
    more rows instead of being cut off at the chart's edge."""
    longest = max((len(str(n)) for n in names), default=1)
    return max(1, min(len(names), 520 // (7 * longest + 40)))


def epoch_chart(curves: pd.DataFrame, title: str, epochs: float, colours: dict[str, str] | None = None,
                value_format: str = "~g", thin: tuple[str, ...] = ()) -> alt.Chart:
    """Lines over epochs 0 to `epochs`, from columns Epoch, Value and Curve, with a dot on every point so that
    a curve of one point shows; `thin` curves (dense ones, logged within epochs) get thin lines and small dots.

    A few points far above the rest (robust_top) are not allowed to flatten the others: the scale stops at the
    largest point inside the fence, those beyond it sit on its top edge as triangles whose tooltip has their
    value, and the subtitle says so."""
    names = list(dict.fromkeys(curves["Curve"]))
    scale = alt.Scale(domain=names, range=[colours[n] for n in names]) if colours else \
        alt.Scale(domain=names, scheme="tableau10")  # runs: colours far apart
    is_thin = alt.FieldOneOfPredicate(field="Curve", oneOf=list(thin))
    top = robust_top(curves["Value"])
    if top is None:
        y_scale, subtitle = alt.Scale(zero=False), []
    else:
        above, inside = curves[curves["Value"] > top], curves.loc[curves["Value"] <= top, "Value"]
        low, high = float(inside.min()), float(inside.max())
        # the inliers fill the scale, with a margin above them for the triangles
        y_scale = alt.Scale(domain=[low, high + 0.08 * (high - low or high)], clamp=True)
        values = ", ".join(f"{v:.4g}" for v in above["Value"][:3])
        subtitle = [f"▲ {len(above)} point{'s' if len(above) > 1 else ''} off the scale "
                    f"({values}{', …' if len(above) > 3 else ''}): drawn at the top edge"]
    colour = alt.Color("Curve:N", scale=scale, sort=names,
                       legend=alt.Legend(orient="bottom", title=None, columns=legend_columns(names), labelLimit=0,
                                         symbolLimit=0))
    tooltip = ["Curve", alt.Tooltip("Epoch:Q", format=".2f"),
               alt.Tooltip("Value:Q", format=".2%" if "%" in value_format else ".4~g")]
    base = alt.Chart(curves).encode(
        x=alt.X("Epoch:Q", scale=alt.Scale(domain=[0, max(epochs, 1)], padding=6),
                axis=alt.Axis(tickMinStep=1, format="~g")),
        y=alt.Y("Value:Q", title=None, scale=y_scale, axis=alt.Axis(format=value_format)),
        color=colour, tooltip=tooltip)
    lines = base.mark_line().encode(strokeWidth=alt.condition(is_thin, alt.value(1), alt.value(2.5)))
    dots = base.mark_circle(opacity=1).encode(size=alt.condition(is_thin, alt.value(12), alt.value(36)))
    layers = [lines, dots]
    if top is not None:  # the clipped points, on the top edge, where the clamped lines lead
        layers.append(base.transform_filter(alt.datum.Value > top).mark_point(
            shape="triangle-up", filled=True, size=110, opacity=1).encode(y=alt.value(0)))
    return alt.layer(*layers).properties(title=alt.TitleParams(title, subtitle=subtitle) if subtitle else title,
                                         height=260)


WITHIN = "train, within epochs"  # the training loss logged every few steps, between the epochs' points


def training_charts(steps: pd.DataFrame, per_epoch: pd.DataFrame, split: str, epochs: float
                    ) -> tuple[alt.Chart, alt.Chart | None, alt.Chart]:
    """A run's loss (train within and at the end of epochs, and on `split`), accuracy (train and `split`; None
    before the first epoch) and learning rate, from its step and epoch lines (core.runs.progress.metric_frames)."""
    loss = pd.concat([
        pd.DataFrame({"Epoch": steps["epoch"], "Value": steps["train_loss"], "Curve": WITHIN}),
        pd.DataFrame({"Epoch": per_epoch["epoch"], "Value": per_epoch["train_loss"], "Curve": "train"}),
        pd.DataFrame({"Epoch": per_epoch["epoch"], "Value": per_epoch["eval_loss"], "Curve": split})])
    accuracy = pd.concat([
        pd.DataFrame({"Epoch": per_epoch["epoch"], "Value": per_epoch["train_acc"], "Curve": "train"}),
        pd.DataFrame({"Epoch": per_epoch["epoch"], "Value": per_epoch["eval_acc"], "Curve": split})])
    lr = pd.concat([pd.DataFrame({"Epoch": lines["epoch"], "Value": lines["lr"], "Curve": "learning rate"})
                    for lines in (steps, per_epoch)]).sort_values("Epoch")
    colours = {WITHIN: "#93c5fd", "train": PRIMARY, split: RUN_COLOURS[1], "learning rate": PRIMARY}
    return (epoch_chart(loss, "Loss", epochs, colours, thin=(WITHIN,)),
            None if per_epoch.empty else epoch_chart(accuracy, "Accuracy", epochs, colours, value_format=".1~%"),
            epoch_chart(lr, "Learning rate", epochs, colours, thin=("learning rate",)))


def run_colours(names: list[str]) -> dict[str, str]:
    """Each run's colour by its place in `names`, every run a page lists: a run has one colour in all its charts,
    whichever of the runs each chart shows."""
    return {name: RUN_PALETTE[i % len(RUN_PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


def overlay_chart(lines: dict[str, pd.DataFrame], column: str, title: str, value_format: str,
                  colours: dict[str, str] | None = None) -> alt.Chart:
    """One curve per run of an epoch-line `column` (eval_acc, eval_loss, ...), overlaid; `lines`: run -> its epoch
    lines; `colours`: run -> colour (run_colours), else tableau10 in the order of `lines`."""
    curves = pd.concat([pd.DataFrame({"Epoch": frame["epoch"], "Value": frame[column], "Curve": name})
                        for name, frame in lines.items()])
    return epoch_chart(curves, title, curves["Epoch"].max(), colours, value_format=value_format)


def parameter_share_chart(table: pd.DataFrame) -> alt.Chart:
    """Bars of the parameters of each part of a design, in the order of the table's rows, each labelled with its
    share; columns Part, Parameters and Share (a percentage), as the Design page's breakdown has them."""
    base = alt.Chart(table).encode(
        y=alt.Y("Part:N", sort=list(table["Part"]), title=None),
        x=alt.X("Parameters:Q", axis=alt.Axis(labelExpr="datum.value ? format(datum.value, '~s') : '0'")),
        tooltip=["Part", alt.Tooltip("Parameters:Q", format=","),
                 alt.Tooltip("Share:Q", format=".1f", title="Share %")],
    )
    labels = base.mark_text(align="left", dx=4).encode(text="label:N").transform_calculate(
        label="format(datum.Share, '.0f') + '%'")
    return base.mark_bar() + labels


def probability_chart(probabilities: dict[str, float]) -> alt.Chart:
    """One image's probability of each class, in the classes' fixed order so that images compare at a glance; the
    most probable one in colour (the Classify page)."""
    top = max(probabilities, key=probabilities.get)
    table = pd.DataFrame(probabilities.items(), columns=["Class", "Probability"])
    base = alt.Chart(table).encode(
        y=alt.Y("Class:N", sort=None, title=None, axis=alt.Axis(labelOverlap=False)),
        x=alt.X("Probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%", title=None)),
        tooltip=["Class", alt.Tooltip("Probability:Q", format=".2%")],
    )
    bars = base.mark_bar().encode(color=alt.condition(alt.datum.Class == top, alt.value(PRIMARY), alt.value("#cbd5e1")))
    labels = base.mark_text(align="left", dx=3, fontSize=11).encode(text=alt.Text("Probability:Q", format=".0%"))
    return bars + labels


TRIAL_SPLIT = "validation split, a search trial's few epochs"  # where a search trial's accuracy is measured
LIMIT_COLOUR = "#dc2626"  # a budget line: red, dashed


def accuracy_vs_parameters_chart(rows: list[dict]) -> alt.Chart:
    """Each run's best accuracy against its parameters (log scale), with the parameter budget as a line; `rows`:
    run summaries (core.runs.run.Run.summary), every run a page lists, so that a run has its colour of the curves
    (run_colours). A search trial is a triangle, named in the legend: its accuracy is on a validation split after
    its few epochs, not comparable with a full run's on the test split."""
    points = pd.DataFrame([{"Run": r["name"], "Parameters": r["params"], "Best accuracy": r["best_acc"],
                            "State": r["state"], "Measured on": TRIAL_SPLIT if r["search"] else "test split"}
                           for r in rows if r["best_acc"] is not None])
    x = alt.X("Parameters:Q", axis=alt.Axis(format="~s", grid=False), title="Parameters (log scale)",
              scale=alt.Scale(type="log", domain=[points["Parameters"].min() / 2,
                                                  max(BUDGET, points["Parameters"].max()) * 1.5]))
    # runs named by colour, not by labels beside their dots: runs of similar size and accuracy would overlap
    colours = run_colours([r["name"] for r in rows])
    colour = alt.Color("Run:N", scale=alt.Scale(domain=list(points["Run"]), range=[colours[n] for n in points["Run"]]),
                       sort=list(points["Run"]),
                       legend=alt.Legend(orient="bottom", title=None, columns=legend_columns(list(points["Run"])),
                                         labelLimit=0, symbolLimit=0))
    base = alt.Chart(points).encode(x=x, y=alt.Y("Best accuracy:Q", axis=alt.Axis(format="%")),
                                    tooltip=["Run", "State", alt.Tooltip("Parameters:Q", format=","),
                                             alt.Tooltip("Best accuracy:Q", format=".2%"), "Measured on"])
    shape = alt.Shape("Measured on:N", scale=alt.Scale(domain=["test split", TRIAL_SPLIT],
                                                       range=["circle", "triangle-up"]),
                      legend=alt.Legend(orient="bottom", title=None, labelLimit=0)
                      if (points["Measured on"] == TRIAL_SPLIT).any() else None)
    dots = base.mark_point(size=90, opacity=0.9, filled=True).encode(color=colour, shape=shape)
    return alt.layer(*limit_rule("Parameters", BUDGET, f"{BUDGET / 1e6:g}M budget"), dots).properties(height=320)


def limit_rule(field: str, limit: float, label: str) -> list[alt.Chart]:
    """A limit on a chart's x axis (the parameter budget), as layers to put under its marks: a dashed red rule at
    `limit` of the quantitative `field`, `label` at its top."""
    line = alt.Chart(pd.DataFrame({field: [limit], "label": [label]}))
    return [line.mark_rule(color=LIMIT_COLOUR, strokeDash=[6, 4]).encode(x=f"{field}:Q"),
            line.mark_text(align="right", baseline="top", dx=-4, dy=4, color=LIMIT_COLOUR).encode(
                x=f"{field}:Q", y=alt.value(0), text="label")]


# ---- a search's trials (the Search page) ----

TRIAL_STATE_COLOURS = {"finished": PRIMARY, "pruned": "#9ca3af", "running": "#f59e0b", "queued": "#fcd34d",
                       "failed": "#7f1d1d", "stopped": "#fb923c", "waiting": "#e5e7eb"}
COST_TITLES = {"params": "Parameters", "macs": "MACs"}


def trade_off_chart(rows: list[dict], front: list[dict], cost: str, limit: int | None) -> alt.Chart:
    """Validation accuracy against `cost` (params or macs) for every trial that has one (rejected designs never
    trained and have none), the Pareto `front` of the finished ones as a step line, and the limit as a rule.
    `rows` and `front`: trials as core.search.report.study_status lists them."""
    title = COST_TITLES[cost]
    points = pd.DataFrame([{"Trial": r["number"], "State": r["state"], title: r[cost], "Val accuracy": r["accuracy"]}
                           for r in rows if r[cost] is not None and r["accuracy"] is not None])
    x = alt.X(f"{title}:Q", scale=alt.Scale(type="log"), axis=alt.Axis(format="~s"), title=f"{title} (log scale)")
    y = alt.Y("Val accuracy:Q", axis=alt.Axis(format="%"))
    states = [s for s in TRIAL_STATE_COLOURS if s in set(points["State"])]
    dots = alt.Chart(points).mark_circle(size=90, opacity=0.9).encode(
        x=x, y=y, color=alt.Color("State:N", scale=alt.Scale(domain=states,
                                                             range=[TRIAL_STATE_COLOURS[s] for s in states]),
                                  legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["Trial", "State", alt.Tooltip(f"{title}:Q", format=","),
                 alt.Tooltip("Val accuracy:Q", format=".2%")])
    layers = [dots]
    edge = pd.DataFrame([{title: r[cost], "Val accuracy": r["accuracy"]} for r in front])
    if not edge.empty:
        layers += [alt.Chart(edge).mark_line(interpolate="step-after", color=PRIMARY, strokeDash=[2, 2], strokeWidth=2)
                   .encode(x=x, y=y),
                   alt.Chart(edge).mark_point(size=260, color=PRIMARY, strokeWidth=1.5).encode(x=x, y=y)]
    if limit:
        layers += limit_rule(title, limit, f"budget {limit:,}")
    return alt.layer(*layers).properties(height=340)


def importance_chart(importances: dict[str, float]) -> alt.Chart:
    """Bars of how much each setting mattered (Optuna's parameter importances, shares of 1), the most first."""
    frame = pd.DataFrame({"Setting": list(importances), "Importance": list(importances.values())})
    return alt.Chart(frame).mark_bar(color=PRIMARY).encode(
        x=alt.X("Importance:Q", axis=alt.Axis(format="%")), y=alt.Y("Setting:N", sort="-x", title=None),
        tooltip=["Setting", alt.Tooltip("Importance:Q", format=".1%")]).properties(height=24 * len(frame) + 30)
