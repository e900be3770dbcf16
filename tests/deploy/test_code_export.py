"""`export --format code`: model.py + weights.pt give the run's logits in a process that cannot import `core`;
train.py trains the recipe with torch and torchvision alone, prints both lines, and its run.zip comes back as a run
with its curves (`import run.zip`); the notebook runs end to end under nbclient."""
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from PIL import Image

from tests.helpers import QUICK_ARCH, ROOT, SPEEDRUN_ARCH, core_cli, core_main, random_run
from core.data.augment import MEAN, STD, Normalizer
from core.data.datasets import CLASSES, load_dataset
from core.deploy.code_export import notebook
from core.deploy.predict import Classifier
from core.deploy.run_zip import RunZipError, import_run_zip
from core.design.budget import count
from core.design.config import RunConfig
from core.nn.checkpoint import load_model
from core.nn.infer import predict_logits
from core.nn.model import SubsampledConv2d, build_model
from core.runs.run import Run

EXAMPLE = Run(ROOT / "runs" / "example")
SITE_PACKAGES = str(Path(torch.__file__).resolve().parent.parent)
# every feature of a design: odd stem and stage kernels, a 3x3 shortcut, strides, SE, dropout, 2x2 pooling, and the
# strided 1x1 convolutions on few channels that the studio computes as SubsampledConv2d
ODD = {"stem": {"channels": 8, "kernel_size": 5},
       "stages": [{"blocks": 2, "channels": 12, "kernel_size": 7, "shortcut_kernel_size": 1, "stride": 2},
                  {"blocks": 1, "channels": 24, "kernel_size": 1, "shortcut_kernel_size": 3, "stride": 2}],
       "se_ratio": 4, "dropout": 0.2, "pool_size": 4}
NO_BATCH_NORM = {"stem": {"channels": 16, "kernel_size": 7},
                 "stages": [{"blocks": 1, "channels": 16, "kernel_size": 5, "stride": 1},
                            {"blocks": 1, "channels": 32, "kernel_size": 3, "shortcut_kernel_size": 3}],
                 "batch_norm": False, "pool_size": 16}
# a recipe that takes every path of train.py a CPU can take
RECIPE = {"epochs": 1, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "nesterov": True, "lookahead": True,
          "schedule": "cosine", "warmup_epochs": 0.5, "grad_clip": 1.0, "label_smoothing": 0.1, "ema_decay": 0.9,
          "augment": ["trivialaugment", "crop", "flip", "cutout"], "tta_flip": True}


def isolated(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Python code in a fresh process that cannot import `core`: -I drops PYTHONPATH and the working folder from
    sys.path, -S the site-packages' .pth files (the studio's editable install); only torch's folder is added back."""
    prelude = (f"import sys; sys.path[:0] = ['.', {SITE_PACKAGES!r}]\n"
               "try:\n    import core\nexcept ModuleNotFoundError:\n    pass\n"
               "else:\n    sys.exit('core is importable here')\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def export(run: Run, out: Path) -> dict:
    return json.loads(core_main("export", str(run.dir), str(out), "--format", "code").stdout)


@pytest.mark.parametrize("design", ["example", "odd", "no-batch-norm", "speedrun"])
def test_model_py_gives_the_runs_logits_in_a_process_without_core(design, tmp_path):
    run = EXAMPLE if design == "example" else \
        random_run({"odd": ODD, "no-batch-norm": NO_BATCH_NORM, "speedrun": SPEEDRUN_ARCH}[design], tmp_path, design)
    out = tmp_path / "code"
    made = export(run, out)
    assert made["files"] == ["README.md", "model.py", "notebook.ipynb", "train.py", "weights.pt"]
    if design == "odd":
        assert any(isinstance(m, SubsampledConv2d) for m in build_model(run.config().arch).modules())
    test = load_dataset("builtin").test
    torch.save(test.images, tmp_path / "images.pt")
    isolated(f"""
import os
import torch
from model import count_parameters, load_model
os.chdir({str(tmp_path)!r})  # a relative path is found beside model.py too
model = load_model("weights.pt")
assert not model.training
with torch.no_grad():
    torch.save(model(torch.load({str(tmp_path / 'images.pt')!r}, weights_only=True).float() / 255),
               {str(tmp_path / 'logits.pt')!r})
print(count_parameters(model))
""", cwd=out)
    exported = torch.load(tmp_path / "logits.pt", weights_only=True)
    model, meta = load_model(run.checkpoints)
    ours = predict_logits(model, test.images, Normalizer(meta["mean"], meta["std"]), torch.device("cpu"),
                          precision="fp32")
    assert torch.equal(exported.argmax(1), ours.argmax(1))
    torch.testing.assert_close(exported, ours, atol=1e-4, rtol=1e-4)
    assert torch.load(out / "weights.pt", weights_only=True).keys() == model.state_dict().keys()
    # no unused or doubly imported names, nothing undefined: the code reads as written by hand
    ruff = subprocess.run([Path(sys.executable).with_name("ruff"), "check", "--no-cache", "--isolated", "--select",
                           "F,E9", str(out)], capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory) -> Path:
    """A few hundred images of the built-in slice, every class, as train/ and test/ class folders of PNGs."""
    root = tmp_path_factory.mktemp("folders")
    data = load_dataset("builtin")
    for part, split, n in (("train", data.train, 320), ("test", data.test, 100)):
        for i in range(0, len(split) // n * n, len(split) // n):
            folder = root / part / data.classes[split.labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(split.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    # and a photo that is not 32x32, which is cropped to its centre and shrunk
    Image.fromarray(data.train.images[0].permute(1, 2, 0).numpy()).resize((61, 45)).save(
        root / "train" / data.classes[data.train.labels[0]] / "photo.jpg")
    return root


@pytest.fixture(scope="module")
def quick_export(tmp_path_factory) -> Path:
    """The code of a tiny design with a recipe that uses every path of train.py a CPU takes."""
    tmp = tmp_path_factory.mktemp("quick")
    out = tmp / "code"
    export(random_run(QUICK_ARCH, tmp, "quick", RECIPE), out)
    return out


def test_train_py_trains_an_epoch_prints_both_lines_and_its_run_zip_imports_with_its_curves(
        quick_export, class_folders, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("train.py", "model.py"):
        (work / name).write_bytes((quick_export / name).read_bytes())
    proc = isolated(f"import runpy\nsys.argv = ['train.py', '--data', {str(class_folders)!r}, '--epochs', '1']\n"
                    f"runpy.run_path('train.py', run_name='__main__')", cwd=work, timeout=300)
    lines = proc.stdout.strip().splitlines()
    params = count(RunConfig.from_dict({"arch": QUICK_ARCH}).arch).params
    assert lines[0] == f"parameters: {params}"
    assert "(321 train / 100 test images), epochs: 1" in lines[1]
    accuracy = float(re.fullmatch(r"test accuracy: (\d+\.\d\d)%", lines[-1]).group(1))

    run = Run(tmp_path / "runs" / "colab")
    imported = json.loads(core_cli("import", str(work / "run.zip"), "--run-dir", str(run.dir)).stdout)
    assert imported["epochs"] == 1 and imported["params"] == params
    (epoch,) = [m for m in run.metrics() if m["kind"] == "epoch"]
    assert round(epoch["eval_acc"] * 100, 2) == accuracy and epoch["train_loss"] > 0
    status, record = run.status(), json.loads(run.record_path.read_text())
    assert status["state"] == "finished" and status["imported_from"].endswith("run.zip")
    assert record["trained_elsewhere"]["precision"] == "float32"
    assert run.config().train.to_dict() == RunConfig.from_dict({"arch": QUICK_ARCH, "train": RECIPE}).train.to_dict()
    assert run.config().data == str(class_folders) and run.summary()["data"] == str(class_folders)
    # the checkpoint is the EMA's weights, as the studio's runs keep it; it predicts with the run's flip TTA
    assert json.loads(run.results_path.read_text())["accuracy"] * 100 == pytest.approx(accuracy, abs=0.005)
    trained = torch.load(work / "trained.pt", weights_only=True)
    assert all(torch.equal(trained[k].float(), v.float()) for k, v in Classifier.load(run).model.state_dict().items())


def test_the_notebook_has_train_py_s_cells_and_runs_end_to_end_under_nbclient(quick_export, class_folders,
                                                                              tmp_path, monkeypatch):
    script = (quick_export / "train.py").read_text()
    nb = nbformat.read(quick_export / "notebook.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb == nbformat.from_dict(notebook(script))
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert all(cell in script for cell in code) and "import core" not in script
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# quick: train it again")

    for name, value in (("TRAIN_DATA", str(class_folders)), ("TRAIN_EPOCHS", "1"), ("TRAIN_DEVICE", "cpu")):
        monkeypatch.setenv(name, value)  # the kernel inherits them
    monkeypatch.delenv("PYTHONPATH", raising=False)
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert printed.startswith("parameters: ") and re.search(r"test accuracy: \d+\.\d\d%\n$", printed), printed
    with zipfile.ZipFile(tmp_path / "run.zip") as z:
        assert {"config.json", "metrics.jsonl", "checkpoints/best.json", "checkpoints/best.safetensors"} <= \
            set(z.namelist())


def test_a_taken_folder_and_a_bad_zip_are_messages(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    assert "already exists" in core_main("export", str(EXAMPLE.dir), str(taken), "--format", "code",
                                         check=False).stderr
    not_a_zip = tmp_path / "run.zip"
    not_a_zip.write_bytes(b"not a zip")
    with pytest.raises(RunZipError, match="not a zip file"):
        import_run_zip(not_a_zip, "run.zip", tmp_path / "runs" / "a")
    with zipfile.ZipFile(not_a_zip, "w") as z:
        z.writestr("config.json", json.dumps(EXAMPLE.config().to_dict()))
    with pytest.raises(RunZipError, match="has no metrics.jsonl"):
        import_run_zip(not_a_zip, "run.zip", tmp_path / "runs" / "b")
    with zipfile.ZipFile(not_a_zip, "a") as z:
        z.writestr("metrics.jsonl", '{"kind": "epoch", "epoch": 1, "step": 1, "train_loss": 2.3}\n')
        z.write(EXAMPLE.checkpoints / "best.json", "checkpoints/best.json")
        z.write(EXAMPLE.checkpoints / "best.safetensors", "checkpoints/best.safetensors")
    with pytest.raises(RunZipError, match="line 1 of its metrics.jsonl has no number 'eval_loss'"):
        import_run_zip(not_a_zip, "run.zip", tmp_path / "runs" / "c")
    assert not (tmp_path / "runs").exists()


def train_py_functions(folder: Path, monkeypatch) -> dict:
    """train.py's definitions, every cell run but the last (which trains)."""
    source = (folder / "train.py").read_text()
    monkeypatch.setattr(sys, "argv", ["train.py"])
    namespace = {"__name__": "train"}
    exec(compile(source[:source.rindex("# %%")], str(folder / "train.py"), "exec"), namespace)
    return namespace


def test_train_py_picks_the_precision_the_device_allows_and_has_the_studios_data_schedules_and_augmentation(
        quick_export, class_folders, monkeypatch):
    train = train_py_functions(quick_export, monkeypatch)
    for capability, precision in (((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((7, 5), torch.float16),
                                  ((7, 0), torch.float16), ((6, 0), torch.float32)):  # H100, A100, T4, V100, P100
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert train["pick_precision"](torch.device("cuda")) == precision, capability
    assert train["pick_precision"](torch.device("mps")) == train["pick_precision"](torch.device("cpu")) == torch.float32
    train["T"]["precision"] = "fp32"
    assert train["pick_precision"](torch.device("cuda")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train["pick_device"]() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert train["pick_device"]() == torch.device("mps")

    from core.design.config import TrainConfig
    from core.engine.optim import lr_at

    for schedule in ("cosine", "onecycle", "step", "constant"):
        for warmup in (0.0, 1.5):
            settings = {"schedule": schedule, "warmup_epochs": warmup, "step_epochs": 2, "lr": 0.3}
            train["T"].update(settings)
            t = TrainConfig.from_dict(settings)
            assert [train["lr_at"](s, 500, 50) for s in range(500)] == [lr_at(t, s, 500, 50) for s in range(500)]
    # the same images as the studio reads from class folders
    from core.data.datasets import load_class_folders

    def by_image(images, labels):
        return sorted(zip(images.reshape(len(images), -1).tolist(), labels.tolist()))

    ours, _ = load_class_folders(class_folders / "train", CLASSES)
    assert by_image(*train["class_folders"](class_folders / "train")) == by_image(ours.images, ours.labels)
    # the same augmentation as the studio's, draw for draw (the cutout square: the mean colour, 0 once normalised)
    from core.data.augment import Augment

    train["T"].update({"augment": ["crop", "flip", "cutout"], "crop_padding": 4, "cutout_size": 8})
    images = load_dataset("builtin").test.images[:64]
    torch.manual_seed(5)
    ours = Augment(("crop", "flip", "cutout"), 4, 8, True, torch.device("cpu"))(images)
    torch.manual_seed(5)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    exported = (train["augment"](images, None, mean) - mean) / std
    torch.testing.assert_close(exported, ours, atol=1e-5, rtol=1e-5)
