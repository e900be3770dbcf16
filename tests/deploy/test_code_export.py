"""`export --format code`: model.py + weights.pt give the run's logits in a process that cannot import `core`;
train.py trains the recipe with torch and torchvision alone (the speed-run settings with the studio's math), prints
both lines, and its run.zip comes back as a run with its curves (`import run.zip`); the notebook runs end to end under
nbclient."""
import dataclasses
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
from core.data.datasets import CLASSES, Split, load_class_folders, load_dataset
from core.deploy.code_export import notebook, tta_phrase
from core.deploy.predict import Classifier
from core.deploy.run_zip import RunZipError, import_run_zip
from core.design.budget import count
from core.design.config import RunConfig
from core.nn.checkpoint import load_model
from core.nn.infer import evaluate, predict_logits
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
# every speed-run setting (laptop's, an EMA on the ramp, airbench's Lookahead pull and ending), for a whitened-stem,
# max-pool design; trained for a time, so train.py stretches the schedule over the epochs it trains
SPEEDRUN_RECIPE = {"epochs": 2, "time_limit": 60, "batch_size": 64, "lr": 0.4, "nesterov": True, "weight_decay": 5e-4,
                   "schedule": "linear", "warmup_epochs": 1, "lookahead": True, "averaging_ramp": True,
                   "lookahead_alpha": 0.23, "lookahead_ends_slow": True, "ema_decay": 0.9, "freeze_bn_scale": True,
                   "bn_bias_lr_scale": 64, "label_smoothing": 0.2,
                   "augment": ["crop", "alternating_flip"], "crop_padding": 2, "tta_flip": True, "tta_shift": True}


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


def exported_code(tmp_path_factory, name: str, arch: dict, recipe: dict) -> Path:
    tmp = tmp_path_factory.mktemp(name)
    export(random_run(arch, tmp, name, recipe), tmp / "code")
    return tmp / "code"


@pytest.fixture(scope="module")
def quick_export(tmp_path_factory) -> Path:
    """The code of a tiny design with a recipe that uses every path of train.py a CPU takes."""
    return exported_code(tmp_path_factory, "quick", QUICK_ARCH, RECIPE)


@pytest.fixture(scope="module")
def speedrun_export(tmp_path_factory) -> Path:
    """The code of a whitened-stem, max-pool design with every speed-run setting."""
    return exported_code(tmp_path_factory, "speedrun", SPEEDRUN_ARCH, SPEEDRUN_RECIPE)


# (the exported code, its design, and the recipe its run.zip records: the epochs trained, no time limit, and the
# warm-up of a time limit's schedule as stretched over them)
TRAINED = {"quick": ("quick_export", QUICK_ARCH, RECIPE),
           "speedrun": ("speedrun_export", SPEEDRUN_ARCH,
                        SPEEDRUN_RECIPE | {"epochs": 1, "time_limit": 0, "warmup_epochs": 0.5, "step_epochs": 15})}


@pytest.mark.parametrize("design", TRAINED)
def test_train_py_trains_an_epoch_prints_both_lines_and_its_run_zip_imports_with_its_curves(
        design, request, class_folders, tmp_path):
    exported, arch, recipe = TRAINED[design]
    code = request.getfixturevalue(exported)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("train.py", "model.py"):
        (work / name).write_bytes((code / name).read_bytes())
    proc = isolated(f"import runpy\nsys.argv = ['train.py', '--data', {str(class_folders)!r}, '--epochs', '1']\n"
                    f"runpy.run_path('train.py', run_name='__main__')", cwd=work, timeout=300)
    lines = proc.stdout.strip().splitlines()
    params = count(RunConfig.from_dict({"arch": arch}).arch).params
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
    assert run.config().train.to_dict() == RunConfig.from_dict({"arch": arch, "train": recipe}).train.to_dict()
    assert run.config().data == str(class_folders) and run.summary()["data"] == str(class_folders)
    # the checkpoint is the EMA's weights, as the studio's runs keep it; the studio, testing as the run did (its TTA),
    # measures the accuracy train.py printed
    assert json.loads(run.results_path.read_text())["accuracy"] * 100 == pytest.approx(accuracy, abs=0.005)
    trained = torch.load(work / "trained.pt", weights_only=True)
    classifier = Classifier.load(run)
    assert all(torch.equal(trained[k].float(), v.float()) for k, v in classifier.model.state_dict().items())
    assert (classifier.own_tta_flip, classifier.own_tta_shift) == (recipe["tta_flip"], recipe.get("tta_shift", False))
    test, _ = load_class_folders(class_folders / "test", CLASSES)
    ours = evaluate(classifier.model, test.images, test.labels, classifier.normalizer, torch.device("cpu"),
                    len(CLASSES), classifier.own_tta_flip, "fp32", tta_shift=classifier.own_tta_shift)
    assert round(ours.accuracy * 100, 2) == accuracy
    if design == "speedrun":  # the studio's whitening filters from the same images; BatchNorm scales never trained
        train, _ = load_class_folders(class_folders / "train", CLASSES)
        studio = build_model(RunConfig.from_dict({"arch": arch}).arch)
        studio.whiten_stem(Normalizer(MEAN, STD)(train.images))
        torch.testing.assert_close(trained["stem.0.weight"], studio.stem[0].weight, atol=1e-5, rtol=1e-5)
        scales = [v for k, v in trained.items() if k.endswith(".weight") and f"{k[:-6]}running_var" in trained]
        assert scales and all(torch.equal(v, torch.ones_like(v)) for v in scales)


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

    for schedule in ("cosine", "onecycle", "step", "constant", "linear"):
        for warmup in (0.0, 1.5):
            settings = {"schedule": schedule, "warmup_epochs": warmup, "step_epochs": 2, "lr": 0.3}
            train["T"].update(settings)
            t = TrainConfig.from_dict(settings)
            assert [train["lr_at"](s, 500, 50) for s in range(500)] == [lr_at(t, s, 500, 50) for s in range(500)]
    # the same images as the studio reads from class folders
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


def test_train_py_has_the_studios_time_limit_schedule_averaging_ramp_and_alternating_flips(speedrun_export,
                                                                                           monkeypatch):
    from core.design.config import TrainConfig
    from core.engine import optim
    from core.engine.distributed import World
    from core.engine.loop import Batches, learning_rate

    readme = " ".join((speedrun_export / "README.md").read_text().split())
    assert "2 epochs, with the schedule stretched over them as the run stretched it over its time" in readme
    assert "the whitened stem's frozen filters are computed from the first training images" in readme
    assert tta_phrase({"tta_flip": True, "tta_shift": True}) == " (with flip and 1-pixel shift test-time augmentation)"
    train = train_py_functions(speedrun_export, monkeypatch)
    t = TrainConfig.from_dict(SPEEDRUN_RECIPE)
    # a time limit's schedule: the studio's over the share of the time, here over the share of the epochs trained
    for epochs in (1, 3):
        total = epochs * 50
        assert [train["scheduled_lr"](s, total, 50) for s in range(total)] == pytest.approx(
            [learning_rate(t, s, s / total * t.time_limit, t.epochs * 50, 50) for s in range(total)], rel=1e-12)
    # the (t/T)^3 ramp of the EMA's decay and Lookahead's pull, and without it
    for ramp in (True, False):
        train["T"]["averaging_ramp"] = ramp
        ramped = dataclasses.replace(t, averaging_ramp=ramp)
        for progress in (0.0, 0.1, 0.37, 0.5, 0.99, 1.0):
            assert train["ema_decay_at"](progress) == optim.ema_decay_at(ramped, progress)
            assert train["lookahead_pull_at"](progress, 0.5) == optim.lookahead_pull_at(ramped, progress, 0.5)
    train["T"]["averaging_ramp"] = True
    # Lookahead as the studio builds it: its pull, and BatchNorm's statistics among what it averages
    model, cpu = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)), torch.device("cpu")
    ours, theirs = optim.build_optimizer(model, t, cpu), train["build_optimizer"](model, cpu)
    assert (theirs.alpha, len(theirs.slow)) == (ours.alpha, len(ours.slow)) == (0.23, 4 + 2)
    # the data order and alternating flips of the studio's epochs: the same images mirrored, epoch by epoch
    split = load_dataset("builtin").train
    split = Split(split.images[:700], split.labels[:700])
    for seed, epoch in ((0, 0), (0, 1), (3, 2), (3, 5)):
        train["T"]["seed"] = seed
        studio, _ = Batches(split, 64, World(), flip_alternately=True).epoch(epoch, seed, torch.device("cpu"))
        order = train["epoch_order"](epoch, len(split), 10 * 64)
        even_flips = train["flipped_in_even_epochs"](len(split))
        assert torch.equal(train["alternating_flip"](split.images[order], even_flips[order], epoch), studio)
        assert 0.4 < even_flips.float().mean() < 0.6


def test_train_py_starts_trains_and_tests_the_speedrun_network_as_the_studio_does(speedrun_export, monkeypatch):
    from core.design.config import TrainConfig
    from core.engine import optim
    from core.engine.trainer import Trainer

    train = train_py_functions(speedrun_export, monkeypatch)
    t = TrainConfig.from_dict(SPEEDRUN_RECIPE)
    split = load_dataset("builtin").train
    split = Split(split.images[:700], split.labels[:700])
    # the network as the studio starts it (whitening filters from the same images, frozen BatchNorm scales) and the
    # optimizer's groups: BatchNorm biases at lr x 64 and weight decay / 64
    torch.manual_seed(0)  # fp32, as train.py trains on a CPU
    ours = Trainer(RunConfig.from_dict({"arch": SPEEDRUN_ARCH, "train": SPEEDRUN_RECIPE | {"precision": "fp32"}}),
                   torch.device("cpu"), train_images=split.images)
    model = train["new_model"](split.images)
    train["freeze_bn_scale"](model)
    assert torch.equal(model.stem[0].weight, ours.model.stem[0].weight)
    assert {k for k, p in model.named_parameters() if p.requires_grad} == \
        {k for k, p in ours.model.named_parameters() if p.requires_grad}

    def groups(optimizer, network):
        names = {id(p): k for k, p in network.named_parameters()}
        return [(sorted(names[id(p)] for p in g["params"]), g.get("lr_scale", 1.0), g["weight_decay"], g["momentum"],
                 g["nesterov"]) for g in optimizer.param_groups]

    exported = groups(train["build_optimizer"](model, torch.device("cpu")), model)
    assert exported == groups(ours.optimizer, ours.model) and [g[1] for g in exported] == [1.0, 64]
    # training steps from the same weights and batches: the same weights after them, Lookahead's pulls (every 5th
    # step) and the EMA's decays on the ramp, BatchNorm biases at their lr
    model.load_state_dict(ours.model.state_dict())
    optimizer, ema = train["build_optimizer"](model, torch.device("cpu")), train["WeightEMA"](model)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for step, progress in enumerate((0.2, 0.3, 0.4, 0.5, 0.6, 0.7)):
        images, labels = split.images[step * 64:(step + 1) * 64], split.labels[step * 64:(step + 1) * 64]
        torch.manual_seed(step)
        ours.step(images, labels, 0.01, progress)
        torch.manual_seed(step)
        x = train["augment"](images, None, model.mean)
        train["train_step"](model, optimizer, scaler, ema, x, labels, 0.01, progress, torch.device("cpu"),
                            torch.float32)
    assert optimizer.steps == 6 and optimizer.pull == optim.lookahead_pull_at(t, 0.7, t.lookahead_alpha) < 1
    # (the studio's channels_last convolutions add up in another order; BatchNorm biases' 64x lr magnifies that)
    torch.testing.assert_close(model.state_dict(), ours.model.state_dict(), atol=5e-4, rtol=1e-3)
    torch.testing.assert_close(ema.module.state_dict(), ours.ema.module.state_dict(), atol=5e-4, rtol=1e-3)
    # test-time views: flip, shift, both (6 views)
    model.eval()
    images = load_dataset("builtin").test.images[:32]
    for flip, shift in ((True, True), (False, True), (True, False)):
        train["T"].update({"tta_flip": flip, "tta_shift": shift})
        with torch.no_grad():
            got = train["views"](model, images.float() / 255)
        want = predict_logits(ours.model, images, Normalizer(MEAN, STD), torch.device("cpu"), tta_flip=flip,
                              precision="fp32", tta_shift=shift)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
