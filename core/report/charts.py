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
