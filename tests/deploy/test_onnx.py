"""ONNX export for devices: one self-contained file, verified by onnxruntime against PyTorch on the built-in
slice's test split, int8 within its accuracy threshold (and refused beyond it), and `predict --onnx` running
without torch. Every model here is exported from a run the engine really trained."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from tests.helpers import ROOT, SPEEDRUN_ARCH, core_cli, core_main, random_run
from core.data.datasets import CLASSES, load_dataset
from core.deploy.onnx_export import ExportError, export_onnx
from core.deploy.onnx_model import OnnxModel
from core.deploy.predict import Classifier
from core.errors import StudioError
from core.host import describe
from core.nn.infer import predict_logits
from core.runs.run import Run

pytestmark = pytest.mark.kernels  # onnxruntime's int8 kernels differ with and without VNNI


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> dict[str, Path]:
    """The trained run exported by the CLI as fp32 (in a process of its own) and as int8 (through core.cli.main
    in this process; calibrated on 256 training images). The run is trained for seconds: how much int8 costs such a
    model depends on the CPU's int8 kernels (with VNNI or not), so any drop is let through here; the threshold's
    refusal is tested on its own, and what int8 keeps of a trained model is measured (docs/MACHINES.md)."""
    folder = tmp_path_factory.mktemp("onnx")
    fp32, int8 = folder / "small.onnx", folder / "small-int8.onnx"
    int8_options = ("--int8", "--calibration-images", "256", "--max-drop", "100")
    for out, extra, command in ((fp32, (), core_cli), (int8, int8_options, core_main)):
        done = command("export", str(trained.dir), str(out), "--format", "onnx", "--data", "builtin", *extra,
                       check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == json.loads(Path(f"{out}.json").read_text())  # reported and stored alike
    return {"fp32": fp32, "int8": int8}


def test_fp32_export_is_one_verified_file_with_classes_and_design_inside(trained, exported):
    path = exported["fp32"]
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        ["small.onnx", "small.onnx.json", "small-int8.onnx", "small-int8.onnx.json"])  # no .onnx.data beside
    report = json.loads(Path(f"{path}.json").read_text())
    assert report["images"] == 1000 and "built-in slice" in report["data"]
    assert report["agreement"] >= 0.995 and report["max_logit_diff"] < 1e-4
    assert report["accuracy"] == pytest.approx(report["pytorch_accuracy"], abs=0.005)
    assert report["bytes"] == path.stat().st_size
    model = onnx.load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    classifier = Classifier.load(trained)
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert json.loads(meta["design"]) == classifier.meta["spec"]
    assert "uint8" in meta["input"] and meta["precision"] == "fp32"
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert str(ROOT).encode() not in path.read_bytes()  # no paths of this machine inside


@pytest.mark.parametrize("batch", [1, 7])
def test_any_batch_size_gives_pytorchs_logits(trained, exported, batch):
    images = load_dataset("builtin").test.images[:batch]
    classifier = Classifier.load(trained)
    expected = predict_logits(classifier.model, images, classifier.normalizer, classifier.device, precision="fp32")
    logits = OnnxModel.load(exported["fp32"]).logits(images.numpy())
    assert logits.shape == (batch, 10)
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)


def test_int8_is_smaller_and_its_report_says_what_it_lost_on_which_cpu(exported):
    report = json.loads(Path(f"{exported['int8']}.json").read_text())
    assert report["precision"] == "int8" and report["calibration_images"] == 256
    assert report["bytes"] == exported["int8"].stat().st_size
    assert report["bytes"] < report["fp32_bytes"] / 1.5  # not / 4: in a net this small the graph weighs too
    assert report["accuracy_drop"] == pytest.approx((report["fp32_accuracy"] - report["accuracy"]) * 100)
    assert report["accuracy_drop"] <= report["max_drop"] == 100
    fp32 = json.loads(Path(f"{exported['fp32']}.json").read_text())
    assert report["fp32_accuracy"] == fp32["accuracy"] and 0 <= report["agreement_with_fp32"] <= 1
    assert report["verified_on"] == describe()  # the CPU, its vector ISA and int8 kernels (VNNI or not), any caps
    assert {p.key: p.value for p in onnx.load(exported["int8"]).metadata_props}["precision"] == "int8"


def test_int8_losing_more_than_allowed_is_refused_and_nothing_is_written(trained, exported, tmp_path):
    drop = json.loads(Path(f"{exported['int8']}.json").read_text())["accuracy_drop"]
    out = tmp_path / "strict.onnx"
    with pytest.raises(ExportError, match="nothing was written") as refused:
        export_onnx(trained, out, int8=True, data="builtin", max_drop=drop - 0.5, calibration=256)
    assert f"loses {drop:.2f} accuracy points" in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_onnx_gives_evaluate_runs_json_computed_by_onnxruntime(trained, exported):
    by_run = json.loads(core_cli("evaluate", "--run", str(trained.dir), "--data", "builtin", "--mistakes", "5").stdout)
    by_onnx = json.loads(core_cli("evaluate", "--onnx", str(exported["fp32"]), "--data", "builtin",
                                  "--mistakes", "5").stdout)
    assert set(by_onnx) - set(by_run) == {"model", "precision"} and set(by_run) - set(by_onnx) == set()
    assert by_onnx["model"] == str(exported["fp32"]) and by_onnx["precision"] == "fp32"
    assert by_onnx["checkpoint"] == "best" and by_onnx["images"] == by_run["images"] == 1000
    report = json.loads(Path(f"{exported['fp32']}.json").read_text())  # what the export measured with onnxruntime
    assert by_onnx["accuracy"] == pytest.approx(report["accuracy"])
    assert sum(map(sum, by_onnx["confusion"])) == 1000 and len(by_onnx["mistakes"]) == 5
    int8 = json.loads(core_cli("evaluate", "--onnx", str(exported["int8"]), "--data", "builtin").stdout)
    assert int8["precision"] == "int8"
    assert int8["accuracy"] == pytest.approx(json.loads(Path(f"{exported['int8']}.json").read_text())["accuracy"])
    missing = core_cli("evaluate", "--onnx", str(exported["fp32"]) + ".gone", "--data", "builtin", check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def picture_files(folder: Path, count: int) -> list[str]:
    test = load_dataset("builtin").test
    files = []
    for i in range(count):
        files.append(str(folder / f"photo{i}.png"))
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).resize((120, 90)).save(files[-1])
    (folder / "notes.png").write_text("not an image")
    return files + [str(folder / "notes.png")]


def test_predict_onnx_runs_without_torch_and_gives_predict_runs_json(trained, exported, tmp_path):
    files = picture_files(tmp_path, 4)
    # torch made unimportable: any `import torch` on this path would fail the command
    script = ("import sys, json; sys.modules['torch'] = None; from core.cli import main; "
              f"code = main(['predict', '--onnx', {str(exported['fp32'])!r}, *{files!r}]); "
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))); sys.exit(code)")
    device = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert device.returncode == 1, device.stderr  # one file is not an image
    out, modules = device.stdout.rsplit("\n[", 1)
    assert json.loads("[" + modules) == ["torch"]  # only the blocking entry: nothing of torch was loaded
    onnx_rows = json.loads(out)
    run_rows = json.loads(core_main("predict", "--run", str(trained.dir), *files, check=False).stdout)
    assert [(r["file"], r["ok"], sorted(r)) for r in onnx_rows] == [(r["file"], r["ok"], sorted(r)) for r in run_rows]
    assert "not an image" in onnx_rows[-1]["error"] and onnx_rows[-1] == run_rows[-1]
    # the same probabilities as PyTorch in fp32 (predict --run may use bf16 on this CPU: close, not equal)
    from core.data.images import open_image, to_pixels

    classifier = Classifier.load(trained)
    inputs = torch.stack([torch.from_numpy(to_pixels(open_image(f))) for f in files[:-1]])
    expected = predict_logits(classifier.model, inputs, classifier.normalizer, classifier.device,
                              precision="fp32").softmax(1)
    for row, want, run_row in zip(onnx_rows, expected, run_rows):
        assert list(row["probabilities"]) == list(CLASSES)
        assert list(row["probabilities"].values()) == pytest.approx(want.tolist(), abs=1e-5)
        assert list(row["probabilities"].values()) == pytest.approx(list(run_row["probabilities"].values()), abs=0.05)
        assert [t["class"] for t in row["top"]] == sorted(row["probabilities"], key=row["probabilities"].get,
                                                          reverse=True)[:3]


def test_wrong_inputs_give_clear_errors(trained, tmp_path):
    not_onnx = tmp_path / "photo.onnx"
    not_onnx.write_bytes(b"\x89PNG not a model")
    foreign = tmp_path / "foreign.onnx"  # a valid ONNX model, not one of ours
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "identity",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8), foreign)
    cases = [
        (("export", str(trained.dir), str(tmp_path / "r2"), "--int8"), "--int8 is for --format onnx"),
        (("predict", "--onnx", str(not_onnx), "x.png"), "not a model onnxruntime can load"),
        (("predict", "--onnx", str(foreign), "x.png"), "not one exported by ResNet Studio"),
        (("predict", "--onnx", str(tmp_path / "missing.onnx"), "x.png"), "no such file"),
    ]
    for args, message in cases:
        done = core_cli(*args, check=False)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr, (args, done)
        assert "Traceback" not in done.stderr
    with pytest.raises(ExportError, match="name the file OUT.onnx"):
        export_onnx(trained, tmp_path / "model.bin")
    with pytest.raises(StudioError, match="no such run"):
        export_onnx(Run(tmp_path / "nothing"), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.onnx", "photo.onnx"]


def test_bench_export_times_pytorch_and_both_onnx_models_side_by_side(trained):
    from core.measure.latency import bench_export

    result = bench_export(trained, data="builtin", seconds=0.2)
    assert result["cpu"] and result["bytes"]["onnx_int8"] < result["bytes"]["onnx_fp32"]
    assert [row["batch"] for row in result["latency"]] == [1, 256]
    for row in result["latency"]:
        assert row["calls"] >= 5
        for name in ("pytorch", "onnx_fp32", "onnx_int8"):
            assert row[f"{name}_ms"] > 0
            assert row[f"{name}_ms_per_image"] == pytest.approx(row[f"{name}_ms"] / row["batch"])
        assert row["onnx_int8_speedup"] == pytest.approx(row["pytorch_ms"] / row["onnx_int8_ms"])


def test_an_exported_model_carries_the_runs_thresholds_and_flags_odd_images_without_torch(trained, exported,
                                                                                           tmp_path):
    known = Classifier.load(trained).familiarity()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "noise32.png")
    Image.new("RGB", (1, 1), (200, 30, 40)).save(tmp_path / "one-pixel.png")
    files = [str(tmp_path / "noise32.png"), str(tmp_path / "one-pixel.png")]
    for precision in ("fp32", "int8"):
        model = OnnxModel.load(exported[precision])
        assert json.loads(model.meta["familiarity"]) == known.to_json()
        script = ("import sys; sys.modules['torch'] = None; from core.cli import main; "
                  f"sys.exit(main(['predict', '--onnx', {str(exported[precision])!r}, *{files!r}]))")
        device = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert device.returncode == 0, device.stderr
        rows = json.loads(device.stdout)
        assert [row["ood"] for row in rows] == [True, True], rows
        assert rows[0]["ood_score"]["threshold"] == pytest.approx(known.threshold, abs=1e-4)
        assert rows[0]["pixels"]["roughness"] > rows[0]["pixels"]["roughness_high"]  # noise: rougher than any photo
        assert rows[1]["pixels"]["contrast"] == 0  # one pixel, enlarged: flat


def test_a_whitened_stem_max_pooling_gelu_and_scaled_logits_export_with_pytorchs_logits(tmp_path):
    run = random_run(SPEEDRUN_ARCH, tmp_path, "speedrun")
    out = tmp_path / "speedrun.onnx"
    report = export_onnx(run, out, data="builtin")
    assert report["max_logit_diff"] < 1e-4 and report["agreement"] >= 0.995
    images = load_dataset("builtin").test.images[:7]
    classifier = Classifier.load(run)
    expected = predict_logits(classifier.model, images, classifier.normalizer, classifier.device, precision="fp32")
    np.testing.assert_allclose(OnnxModel.load(out).logits(images.numpy()), expected.numpy(), atol=1e-4)
