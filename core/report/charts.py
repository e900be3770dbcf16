"""The app's charts, as Altair specs built from plain tables: the pages draw them, reports render them to images.

No Streamlit here; the pages show these with st.altair_chart, and core.report renders the same specs with
vl-convert, so a report shows exactly what the app shows.
"""
from __future__ import annotations

import altair as alt
import pandas as pd

PRIMARY = "#2563eb"             # the theme's primary colour (.streamlit/config.toml)
RUN_COLOURS = [PRIMARY, "#f59e0b"]  # side by side: blue, then amber
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


def epoch_chart(curves: pd.DataFrame, title: str, epochs: float, colours: dict[str, str] | None = None,
                value_format: str = "~g", thin: tuple[str, ...] = ()) -> alt.Chart:
    """Lines over epochs 0 to `epochs`, from columns Epoch, Value and Curve, with a dot on every point so that
    a curve of one point shows; `thin` curves (dense ones, logged within epochs) get thin lines and small dots."""
    names = list(dict.fromkeys(curves["Curve"]))
    scale = alt.Scale(domain=names, range=[colours[n] for n in names]) if colours else \
        alt.Scale(domain=names, scheme="tableau10")  # runs: colours far apart
    is_thin = alt.FieldOneOfPredicate(field="Curve", oneOf=list(thin))
    base = alt.Chart(curves).encode(
        x=alt.X("Epoch:Q", scale=alt.Scale(domain=[0, max(epochs, 1)], padding=6),
                axis=alt.Axis(tickMinStep=1, format="~g")),
        y=alt.Y("Value:Q", title=None, scale=alt.Scale(zero=False), axis=alt.Axis(format=value_format)),
        color=alt.Color("Curve:N", scale=scale, sort=names, legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["Curve", alt.Tooltip("Epoch:Q", format=".2f"),
                 alt.Tooltip("Value:Q", format=".2%" if "%" in value_format else ".4~g")])
    lines = base.mark_line().encode(strokeWidth=alt.condition(is_thin, alt.value(1), alt.value(2.5)))
    dots = base.mark_circle(opacity=1).encode(size=alt.condition(is_thin, alt.value(12), alt.value(36)))
    return (lines + dots).properties(title=title, height=260)


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


def overlay_chart(lines: dict[str, pd.DataFrame], column: str, title: str, value_format: str) -> alt.Chart:
    """One curve per run of an epoch-line `column` (eval_acc, eval_loss, ...), overlaid; `lines`: run -> its epoch
    lines."""
    curves = pd.concat([pd.DataFrame({"Epoch": frame["epoch"], "Value": frame[column], "Curve": name})
                        for name, frame in lines.items()])
    return epoch_chart(curves, title, curves["Epoch"].max(), value_format=value_format)
