"""The Runs page and `python -m core runs` on the shipped runs (copied): what they say about each run is what the
run's files say, in the words a user reads."""
import json
import shutil
from pathlib import Path

from streamlit.testing.v1 import AppTest

from conftest import ROOT, core_cli

APP = ROOT / "app.py"


def shipped_runs(tmp_path: Path, *names: str) -> Path:
    runs_dir = tmp_path / "runs"
    for name in names:
        shutil.copytree(ROOT / "runs" / name, runs_dir / name)
    return runs_dir


def runs_page(monkeypatch, runs_dir: Path) -> AppTest:
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(runs_dir))
    app = AppTest.from_file(APP, default_timeout=300).run()
    app.switch_page("pages/runs.py").run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def test_a_time_budgeted_run_counts_the_epochs_it_trained_not_its_evaluations(tmp_path, monkeypatch):
    runs_dir = shipped_runs(tmp_path, "laptop", "example")
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(runs_dir))
    listed = {row["name"]: row for row in json.loads(core_cli("runs").stdout)}
    assert listed["laptop"]["epochs_done"] == 24.5 and listed["laptop"]["time_limit"] == 1800  # 16 evaluations
    assert listed["example"]["epochs_done"] == 30 and listed["example"]["time_limit"] is None

    app = runs_page(monkeypatch, runs_dir)
    table = app.dataframe[0].value.set_index("Run")
    assert table.loc["laptop", "Epochs"] == "24.5 in a time budget of 30 min"
    assert table.loc["example", "Epochs"] == "30 of 30"
    app.selectbox(key="run_choice:widget").set_value("laptop").run()
    assert any("24.5 epochs in a time budget of 30 min" in c.value for c in app.caption), [c.value for c in app.caption]
