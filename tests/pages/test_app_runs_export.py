"""The Runs page's export buttons and Import box, through Streamlit's AppTest, on a run the engine really
trained: what the page shows is what the files it wrote say."""
import io
import json
import shutil
import zipfile
from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

from tests.helpers import ROOT, Payload, runs_page, wait_for
from core.deploy.importer import OURS, _apply
from core.deploy.jobs import read_job, start_export
from core.deploy.onnx_model import OnnxModel, exported_file, report_path
from core.deploy.predict import Classifier
from core.nn.checkpoint import load_checkpoint
from core.processes import process_alive
from core.runs.run import Run

def metric(app: AppTest, label: str, index: int) -> str:
    return [m.value for m in app.metric if m.label == label][index]


def export_downloads(app: AppTest) -> list[str]:
    """The download buttons of exported models (the Runs page's Report and paper are downloads too)."""
    return [b.label for b in app.download_button if b.key not in ("report", "paper")]


def test_exports_run_in_the_background_with_progress_then_show_size_agreement_and_accuracy(trained, tmp_path,
                                                                                          monkeypatch):
    run = Run(shutil.copytree(trained.dir, tmp_path / "runs" / "small"))
    app = runs_page(monkeypatch, tmp_path / "runs")
    assert not export_downloads(app)  # nothing exported yet
    app.button(key="export_fp32").click().run()
    # the click returned while the export runs in a process of its own: importing torch alone takes longer
    assert read_job(exported_file(run, "fp32"))["state"] == "running" and not exported_file(run, "fp32").exists()
    assert app.get("progress")[0].proto.text.startswith("Exporting: ")
    assert app.button(key="export_fp32").disabled
    app.button(key="export_int8").click().run()  # the page is usable meanwhile: the other one starts too
    assert not app.exception and not app.error, [e.value for e in app.error]
    jobs = [read_job(exported_file(run, precision)) for precision in ("fp32", "int8")]
    assert all(job["state"] == "running" and process_alive(job["pid"]) for job in jobs)
    wait_for(lambda: all(read_job(exported_file(run, p))["state"] != "running" for p in ("fp32", "int8")),
             timeout=900, what="both exports")
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    for index, precision in enumerate(("fp32", "int8")):
        path = exported_file(run, precision)
        assert read_job(path)["state"] == "done"
        report = json.loads(report_path(path).read_text())
        assert report["precision"] == precision and report["images"] == 1000  # the run's data: the built-in slice
        assert metric(app, "Size", index) == f"{path.stat().st_size / 1e6:.2f} MB"
        assert metric(app, "Agrees with PyTorch", index) == f"{report['agreement']:.2%}"
        assert metric(app, "Accuracy", index) == f"{report['accuracy']:.2%}"
        assert OnnxModel.load(path).classes == Classifier.load(run).classes
    size, accuracy = (next(m for i, m in enumerate(m for m in app.metric if m.label == label) if i == 1)
                      for label in ("Size", "Accuracy"))
    int8 = json.loads(report_path(exported_file(run, "int8")).read_text())
    assert size.proto.delta == f"{int8['bytes'] / int8['fp32_bytes']:.0%} of fp32's size"  # said one way, not "-74%"
    drop = round(int8["accuracy_drop"], 2)
    said = "no change vs fp32" if drop == 0 else f"{-int8['accuracy_drop']:+.2f} points vs fp32"
    assert accuracy.proto.delta == said
    assert "-0.00" not in accuracy.proto.delta
    assert export_downloads(app) == ["Download small-fp32.onnx", "Download small-int8.onnx"]
    assert [b.label for b in app.button if b.key in ("export_fp32", "export_int8")] == ["Export again"] * 2


def test_a_refused_int8_export_says_so_in_the_pages_terms(trained, tmp_path, monkeypatch):
    run = Run(shutil.copytree(trained.dir, tmp_path / "runs" / "small"))
    model = exported_file(run, "int8")
    start_export(run, "int8", max_drop=-100)  # any int8 model loses more than -100 points: refused
    wait_for(lambda: read_job(model)["state"] != "running", timeout=900, what="the export")
    app = runs_page(monkeypatch, tmp_path / "runs")
    error = "\n".join(e.value for e in app.error)
    assert "int8 loses" in error and "more than the -100 allowed, so nothing was written" in error
    assert "Raise **Allowed accuracy drop (points)** above and export again, or use fp32." in error
    assert "--max-drop" not in error and not model.exists()
    assert "allow more with --max-drop" in model.with_name(model.name + ".log").read_text()  # the command's words


def test_five_runs_compared_keep_their_names_whole(trained, tmp_path, monkeypatch):
    names = [f"resnet26-seed-2025010{k}-120000" for k in range(5)]
    for name in names:
        shutil.copytree(trained.dir, tmp_path / "runs" / name)
    app = runs_page(monkeypatch, tmp_path / "runs")
    app.multiselect(key="runs_compare").set_value(names).run()
    specs = [json.loads(chart.proto.spec) for chart in app.get("vega_lite_chart")]
    overlays = [spec for spec in specs if spec.get("title") == "Loss on the evaluation split"]
    legend = overlays[0]["layer"][0]["encoding"]["color"]["legend"]
    assert legend["labelLimit"] == 0 and 1 <= legend["columns"] < 5  # wrapped, never cut
    scatter = next(spec for spec in specs if "Best accuracy" in json.dumps(spec) and "layer" in spec
                   and any(layer.get("mark", {}).get("type") == "point" for layer in spec["layer"]))
    assert not any(layer.get("mark", {}).get("type") == "text" and layer["encoding"].get("text", {}).get("field")
                   == "Run" for layer in scatter["layer"])  # no names beside the dots to overlap
    assert scatter["layer"][-1]["encoding"]["color"]["legend"]["labelLimit"] == 0


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


def zipped_run(run: Run, path: Path, weights: bytes | None = None) -> Path:
    """A run folder's config, curves, results and best checkpoint as a run.zip (what an exported train.py writes)."""
    with zipfile.ZipFile(path, "w") as z:
        for name in ("config.json", "metrics.jsonl", "results.json", "checkpoints/best.json"):
            z.write(run.dir / name, name)
        z.writestr("checkpoints/best.safetensors", weights or (run.checkpoints / "best.safetensors").read_bytes())
    return path


def test_the_import_box_takes_a_run_zip_with_its_curves_and_refuses_one_with_code(trained, tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    app = runs_page(monkeypatch, runs_dir)
    marker = tmp_path / "payload-ran"
    pickled = io.BytesIO()
    torch.save({"x": Payload(marker)}, pickled)
    hostile = zipped_run(trained, tmp_path / "evil.zip", weights=pickled.getvalue())
    app.file_uploader(key="import_weights").set_value(("evil.zip", hostile.read_bytes(), "application/zip")).run()
    assert "import_design_source" not in [w.key for w in app.segmented_control]  # the zip holds its design
    app.text_input(key="import_name").input("evil").run()
    app.button(key="import").click().run()
    assert any("not a readable safetensors file" in e.value for e in app.error), [e.value for e in app.error]
    assert not marker.exists() and not (runs_dir / "evil").exists()

    good = zipped_run(trained, tmp_path / "run.zip")
    app.file_uploader(key="import_weights").set_value(("run.zip", good.read_bytes(), "application/zip")).run()
    app.text_input(key="import_name").input("colab").run()
    app.button(key="import").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    imported = Run(runs_dir / "colab")
    final = json.loads((trained.results_path).read_text())["accuracy"]
    assert any(f"**{final:.2%}** on the test split" in m.value for m in app.markdown)  # its results, shown
    assert "imported from run.zip" in " ".join(c.value for c in app.caption)
    assert [m for m in imported.metrics() if m["kind"] == "epoch"] == \
        [m for m in trained.metrics() if m["kind"] == "epoch"]  # its curves
    assert imported.summary()["best_acc"] == trained.summary()["best_acc"]
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(Classifier.load(imported).probabilities(images), Classifier.load(trained).probabilities(images))


def test_the_code_card_makes_the_runs_code_as_one_zip_to_download(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "runs" / "example", tmp_path / "runs" / "example")
    app = runs_page(monkeypatch, tmp_path / "runs")
    assert "Download example-code.zip" not in export_downloads(app)
    (paper,) = [b for b in app.download_button if b.key == "paper"]  # beside the Report of the runs compared
    assert paper.label == "Tables and figures for a paper" and "tables.tex" in paper.help
    app.button(key="export_code").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert "Download example-code.zip" in export_downloads(app)
    _, _, data, made = app.session_state["runs_code_zip"]
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert sorted(z.namelist()) == [f"example-code/{f}" for f in made["files"]] and \
            "train.py" in made["files"] and "notebook.ipynb" in made["files"]
        assert "def load_model(" in z.read("example-code/model.py").decode()
