"""core.report.charts' charts for the Classify and Runs pages (built there until issue 32): checked on the Vega-Lite
spec the pages draw."""
from core.design.budget import BUDGET
from core.report.charts import TRIAL_SPLIT, accuracy_vs_parameters_chart, probability_chart, run_colours


def summary(name: str, params: int, best_acc: float | None, search: dict | None = None) -> dict:
    """The fields of core.runs.run.Run.summary the chart reads."""
    return {"name": name, "params": params, "best_acc": best_acc, "state": "finished", "search": search}


def test_the_probability_chart_keeps_the_classes_order_and_colours_the_most_probable_one():
    probabilities = {"airplane": 0.1, "cat": 0.7, "dog": 0.2}
    spec = probability_chart(probabilities).to_dict()
    values = next(iter(spec["datasets"].values()))
    assert [row["Class"] for row in values] == ["airplane", "cat", "dog"]  # as given, not sorted by probability
    bars, labels = spec["layer"]
    assert bars["encoding"]["y"]["sort"] is None
    assert bars["encoding"]["color"]["condition"]["test"] == "(datum.Class === 'cat')"
    assert bars["encoding"]["x"]["scale"]["domain"] == [0, 1]
    assert labels["mark"]["type"] == "text"


def test_accuracy_against_parameters_draws_the_budget_and_names_trials_by_shape():
    rows = [summary("big", 3_000_000, 0.9), summary("trial-1", 400_000, 0.6, {"study": "s", "trial": 1}),
            summary("running", 1_000_000, None)]
    spec = accuracy_vs_parameters_chart(rows).to_dict()
    rule, label, dots = spec["layer"]
    assert rule["mark"]["type"] == "rule" and label["mark"]["type"] == "text"
    budget = spec["datasets"][rule.get("data", spec.get("data"))["name"]]
    assert budget == [{"Parameters": BUDGET, "label": f"{BUDGET / 1e6:g}M budget"}]
    points = spec["datasets"][dots["data"]["name"]]
    assert {p["Run"]: p["Measured on"] for p in points} == {"big": "test split", "trial-1": TRIAL_SPLIT}
    colour = dots["encoding"]["color"]["scale"]
    all_colours = run_colours([r["name"] for r in rows])  # the run without an accuracy still takes its place
    assert dict(zip(colour["domain"], colour["range"])) == {n: all_colours[n] for n in ("big", "trial-1")}
    assert dots["encoding"]["shape"]["legend"] is not None
    assert dots["encoding"]["x"]["scale"]["domain"] == [200_000, BUDGET * 1.5]


def test_without_a_trial_the_shapes_need_no_legend_and_a_large_run_widens_the_scale():
    spec = accuracy_vs_parameters_chart([summary("huge", 8_000_000, 0.9)]).to_dict()
    dots = spec["layer"][-1]
    assert dots["encoding"]["shape"]["legend"] is None
    assert dots["encoding"]["x"]["scale"]["domain"] == [4_000_000, 12_000_000]
