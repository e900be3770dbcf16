"""The Runs page's export buttons and Import box, through Streamlit's AppTest, on a run the engine really
trained: what the page shows is what the files it wrote say."""
import json
import os
import shutil
from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

from core.deploy.importer import OURS, _apply
from core.deploy.onnx_model import OnnxModel, exported_file, report_path
from core.deploy.predict import Classifier
from core.nn.checkpoint import load_checkpoint
from core.runs.run import Run

APP = Path(__file__).resolve().parents[1] / "app.py"


def runs_page(monkeypatch, runs_dir: Path) -> AppTest:
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(runs_dir))
    app = AppTest.from_file(APP, default_timeout=300).run()
    app.switch_page("pages/runs.py").run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def metric(app: AppTest, label: str, index: int) -> str:
    return [m.value for m in app.metric if m.label == label][index]


def export_downloads(app: AppTest) -> list[str]:
    """The download buttons of exported models (the Runs page's Report is a download too)."""
    return [b.label for b in app.download_button if b.key != "report"]


def test_export_buttons_show_size_agreement_and_accuracy_before_the_download(trained, tmp_path, monkeypatch):
    run = Run(shutil.copytree(trained.dir, tmp_path / "runs" / "small"))
    app = runs_page(monkeypatch, tmp_path / "runs")
    assert not export_downloads(app)  # nothing exported yet
    app.button(key="export_fp32").click().run()
    app.button(key="export_int8").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    for index, precision in enumerate(("fp32", "int8")):
        path = exported_file(run, precision)
        report = json.loads(report_path(path).read_text())
        assert report["precision"] == precision and report["images"] == 1000  # the run's data: the built-in slice
        assert metric(app, "Size", index) == f"{path.stat().st_size / 1e6:.2f} MB"
        assert metric(app, "Agrees with PyTorch", index) == f"{report['agreement']:.2%}"
        assert metric(app, "Accuracy", index) == f"{report['accuracy']:.2%}"
        assert OnnxModel.load(path).classes == Classifier.load(run).classes
    assert export_downloads(app) == ["Download small-fp32.onnx", "Download small-int8.onnx"]
    app.run()  # the next script run labels both buttons for a re-export
    assert [b.label for b in app.button if b.key in ("export_fp32", "export_int8")] == ["Export again"] * 2


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_import_box_makes_a_run_and_refuses_a_file_with_code(trained, tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    app = runs_page(monkeypatch, runs_dir)  # no runs yet: the box is there all the same
    weights = {_apply(OURS, k): v for k, v in load_checkpoint(trained.checkpoints).weights.items()}
    pt, hostile = tmp_path / "seed.pt", tmp_path / "evil.pt"
    torch.save({"net": weights}, pt)
    marker = tmp_path / "payload-ran"
    torch.save({"x": Payload(marker)}, hostile)
    design = json.dumps(trained.config().arch.to_dict()).encode()

    app.segmented_control(key="import_design_source").set_value("file").run()
    app.file_uploader(key="import_design").set_value(("design.json", design, "application/json")).run()
    app.file_uploader(key="import_weights").set_value(("evil.pt", hostile.read_bytes(), "application/octet-stream"))
    app.text_input(key="import_name").input("evil").run()
    app.button(key="import").click().run()
    assert any("holds code" in e.value for e in app.error), [e.value for e in app.error]
    assert not marker.exists() and not (runs_dir / "evil").exists()

    app.file_uploader(key="import_weights").set_value(("seed.pt", pt.read_bytes(), "application/octet-stream"))
    app.text_input(key="import_name").input("seed").run()
    app.button(key="import").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    imported = Run(runs_dir / "seed")
    assert imported.status()["state"] == "finished"
    assert any("Imported from seed.pt" in i.value for i in app.info)  # the page now shows the new run
    app.file_uploader(key="import_weights").set_value(("again.pt", pt.read_bytes(), "application/octet-stream"))
    app.text_input(key="import_name").input("again").run()
    app.button(key="import").click().run()
    assert any("Imported from again.pt" in i.value for i in app.info)  # a second import is shown, not the first
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(Classifier.load(imported).probabilities(images), Classifier.load(trained).probabilities(images))
