"""core.report.charts.epoch_chart: one wild point does not flatten the other curves, and many curves keep their
names readable. Checked on the Vega-Lite spec the pages draw and reports render."""
import pandas as pd

from core.report.charts import epoch_chart, robust_top


def curves(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"Epoch": range(1, len(v) + 1), "Value": v, "Curve": name})
                      for name, v in values.items()], ignore_index=True)


def y_scale(chart) -> dict:
    return chart.to_dict()["layer"][0]["encoding"]["y"].get("scale", {})


def test_an_early_test_loss_of_126_is_clipped_and_marked_not_allowed_to_flatten_the_train_loss():
    # the run: train loss about 2 within and at the end of its first epoch, a test loss of 126.4
    within = pd.DataFrame({"Epoch": [i / 13 for i in range(1, 14)], "Value": [2.3 - 0.02 * i for i in range(13)],
                           "Curve": "train, within epochs"})
    ends = pd.DataFrame({"Epoch": [1, 1], "Value": [2.05, 126.4], "Curve": ["train", "test"]})
    chart = epoch_chart(pd.concat([within, ends]), "Loss", 1, thin=("train, within epochs",))
    scale = y_scale(chart)
    assert scale["clamp"] and scale["domain"][0] == 2.05 and 2.3 < scale["domain"][1] < 2.4  # the inliers fill it
    spec = chart.to_dict()
    assert spec["title"] == {"text": "Loss", "subtitle": ["▲ 1 point off the scale (126.4): drawn at the top edge"]}
    marks = [layer["mark"] for layer in spec["layer"]]
    assert {"type": "point", "shape": "triangle-up", "filled": True, "size": 110, "opacity": 1} in marks


def test_curves_without_a_wild_point_keep_their_whole_range():
    falling = {"train": [2.3, 1.2, 0.6, 0.3, 0.1, 0.05, 0.02], "test": [2.0, 1.3, 0.9, 0.8, 0.7, 0.7, 0.75]}
    accuracy = {"train": [0.1, 0.3, 0.6, 0.9, 0.99], "test": [0.1, 0.35, 0.5, 0.6, 0.62]}
    lr = {"learning rate": [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0]}  # a step schedule, to 0
    for values in (falling, accuracy, lr):
        chart = epoch_chart(curves(values), "Some", 7)
        assert robust_top(curves(values)["Value"]) is None
        assert "domain" not in y_scale(chart) and isinstance(chart.to_dict()["title"], str)


def test_one_runs_wild_loss_among_five_runs_is_clipped_and_the_legend_wraps_whole_names():
    names = [f"resnet26-seed-2025010{k}-120000" for k in range(5)]
    values = {name: [2.1 - 0.1 * k, 1.8 - 0.1 * k, 1.5 - 0.1 * k] for k, name in enumerate(names)}
    values[names[2]][0] = 126.4
    chart = epoch_chart(curves(values), "Loss on the evaluation split", 3)
    assert y_scale(chart)["domain"][1] < 3
    legend = chart.to_dict()["layer"][0]["encoding"]["color"]["legend"]
    assert legend["labelLimit"] == 0 and legend["symbolLimit"] == 0  # no name cut, no entry dropped
    assert 1 <= legend["columns"] < 5  # wrapped onto rows instead of one row wider than the chart
