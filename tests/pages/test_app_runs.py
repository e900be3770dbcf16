"""The Runs page and `python -m core runs` on the shipped runs (copied): what they say about each run is what the
run's files say, in the words a user reads."""
import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.helpers import APP, ROOT, core_cli, runs_page


def shipped_runs(tmp_path: Path, *names: str) -> Path:
    runs_dir = tmp_path / "runs"
    for name in names:
        shutil.copytree(ROOT / "runs" / name, runs_dir / name)
    return runs_dir


def test_a_time_budgeted_run_counts_the_epochs_it_trained_not_its_evaluations(tmp_path, monkeypatch):
    runs_dir = shipped_runs(tmp_path, "laptop", "example")
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(runs_dir))
    listed = {row["name"]: row for row in json.loads(core_cli("runs").stdout)}
    assert listed["laptop"]["epochs_done"] == 24.4 and listed["laptop"]["time_limit"] == 1800  # 6 evaluations
    assert listed["example"]["epochs_done"] == 30 and listed["example"]["time_limit"] is None

    app = runs_page(monkeypatch, runs_dir)
    table = app.dataframe[0].value.set_index("Run")
    assert table.loc["laptop", "Epochs"] == "24.4 in a time budget of 30 min"
    assert table.loc["example", "Epochs"] == "30 of 30"
    app.selectbox(key="run_choice:widget").set_value("laptop").run()
    assert any("24.4 epochs in a time budget of 30 min" in c.value for c in app.caption), [c.value for c in app.caption]


def test_importing_a_fake_pt_says_what_the_file_is_not(tmp_path, monkeypatch):
    runs_dir = shipped_runs(tmp_path, "example")
    app = runs_page(monkeypatch, runs_dir)
    design = json.dumps(json.loads((runs_dir / "example" / "config.json").read_text())["arch"]).encode()
    app.segmented_control(key="import_design_source").set_value("file").run()
    app.file_uploader(key="import_design").set_value(("design.json", design, "application/json")).run()
    for fake in (b"this is a fake .pt file, not weights\n", b"PK\x03\x04 a broken zip"):
        app.file_uploader(key="import_weights").set_value(("weights.pt", fake, "application/octet-stream"))
        app.text_input(key="import_name").input("fake").run()
        app.button(key="import").click().run()
        errors = [e.value for e in app.error]
        assert any("weights.pt: not a PyTorch weights file" in e and "torch.save(model.state_dict()" in e
                   for e in errors), errors
        assert not any("IndexError" in e or "pop from empty list" in e or "miniz" in e for e in errors), errors
        assert not (runs_dir / "fake").exists()


def test_a_run_has_one_colour_in_every_chart_and_trials_say_what_their_accuracy_is(tmp_path, monkeypatch):
    runs_dir = shipped_runs(tmp_path, "example", "laptop")
    trial = shutil.copytree(runs_dir / "example", runs_dir / "trial-2")
    status = json.loads((trial / "status.json").read_text())
    (trial / "status.json").write_text(json.dumps(status | {"search": {"study": "s", "trial": 2}}))
    app = runs_page(monkeypatch, runs_dir)
    app.multiselect(key="runs_compare").set_value(["laptop"]).run()  # one run of three: its own colour all the same
    specs = [json.loads(chart.proto.spec) for chart in app.get("vega_lite_chart")]
    overlay = next(spec for spec in specs if spec.get("title") == "Accuracy on the evaluation split")
    scale = overlay["layer"][0]["encoding"]["color"]["scale"]
    curve_colour = dict(zip(scale["domain"], scale["range"]))["laptop"]
    scatter = next(spec for spec in specs if "Measured on" in json.dumps(spec))
    dots = scatter["layer"][-1]["encoding"]
    assert dict(zip(dots["color"]["scale"]["domain"], dots["color"]["scale"]["range"]))["laptop"] == curve_colour
    assert dots["shape"]["legend"] is not None  # a trial among the dots: the shapes are named
    assert any("Triangles are search trials" in c.value for c in app.caption)


def test_classify_names_a_time_budgeted_runs_checkpoint_by_the_epochs_it_trained(tmp_path, monkeypatch):
    runs_dir = shipped_runs(tmp_path, "laptop")
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(runs_dir))
    app = AppTest.from_file(APP, default_timeout=300).run()
    app.switch_page("pages/classify.py").run()
    assert not app.exception, [e.value for e in app.exception]
    best = json.loads((runs_dir / "laptop" / "checkpoints" / "best.json").read_text())
    assert best["epoch"] == 24 and best["eval_acc"] == pytest.approx(0.9131)  # the epoch it trained, to a tenth
    assert "Best checkpoint: epoch 24.4, 91.3% on its test split." in [c.value for c in app.caption]
