"""`python -m core submit RUN TEST_SET --out submission.csv`: the course's unlabelled test set in either pickle
layout, with shuffled IDs, gives a CSV whose accuracy against the true labels is evaluate's on the same images;
a hostile pickle never runs; bad inputs get one line each."""
import csv
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, core_cli, core_main, Payload
from core.data.datasets import CLASSES, load_dataset

EXAMPLE = ROOT / "runs" / "example"   # tested without TTA
LAPTOP = ROOT / "runs" / "laptop"     # tested with 6-view TTA (flip and 1-pixel shifts)


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory, test_slice):
    """The test slice's 200 images in both course layouts, shuffled, each ID standing for its image's index
    (+ 5,000, so IDs are not row numbers); and the true label of every ID."""
    test = load_dataset(test_slice).test
    images, labels = test.images.numpy(), test.labels.numpy()
    order = np.random.default_rng(28).permutation(len(images))
    ids = order + 5000
    folder = tmp_path_factory.mktemp("course")
    files = {"2024": folder / "cifar_test_nolabels.pkl", "2025": folder / "cifar_test_nolabel.pkl"}
    files["2024"].write_bytes(pickle.dumps({b"data": images[order].reshape(len(order), -1), b"ids": ids}))
    files["2025"].write_bytes(pickle.dumps({b"data": images[order].transpose(0, 2, 3, 1), b"ids": list(ids)}))
    return files, {str(i): int(labels[i - 5000]) for i in ids}, [str(i) for i in ids]


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text())))


def csv_accuracy(rows: list[list[str]], truth: dict[str, int]) -> float:
    return sum(int(label) == truth[image_id] for image_id, label in rows[1:]) / (len(rows) - 1)


@pytest.mark.parametrize("run", [EXAMPLE, LAPTOP], ids=["example", "laptop"])
def test_both_layouts_give_evaluates_accuracy_with_the_runs_own_tta(shuffled, run, tmp_path, test_slice):
    files, truth, ids = shuffled
    evaluated = json.loads(core_main("evaluate", "--run", str(run), "--data", test_slice, "--mistakes", "0").stdout)
    for layout, file in files.items():
        out = tmp_path / f"{layout}.csv"
        summary = json.loads(core_main("submit", str(run), str(file), "--out", str(out)).stdout)
        rows = read_csv(out)
        assert rows[0] == ["ID", "Labels"] and [r[0] for r in rows[1:]] == ids  # the file's order
        assert {r[1] for r in rows[1:]} <= {str(i) for i in range(10)}
        assert csv_accuracy(rows, truth) == pytest.approx(evaluated["accuracy"], abs=1e-6)  # evaluate: float32
        assert summary["tta_flip"] == evaluated["tta_flip"] == (run == LAPTOP)
        assert summary["count"] == 200 and sum(summary["histogram"].values()) == 200
        assert list(summary["histogram"]) == list(CLASSES)
        assert summary["histogram"]["cat"] == sum(r[1] == "3" for r in rows[1:])
        assert summary["checkpoint"]["tag"] == "best" and summary["sha256"] and "own" in summary["tta"]
        assert 0 < summary["ood"] <= 100  # real test images: about 5% look unlike the training images (issue 27)


def test_noise_in_a_test_set_is_counted_as_unlike_the_training_images(tmp_path):
    noise = np.random.default_rng(27).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    file = tmp_path / "noise.npy"
    np.save(file, noise)
    summary = json.loads(core_main("submit", str(LAPTOP), str(file), "--out", str(tmp_path / "noise.csv")).stdout)
    assert summary["count"] == 20 and summary["ood"] == 20


def test_submit_through_a_real_process_without_tta(shuffled, tmp_path, test_slice):
    files, truth, ids = shuffled
    out = tmp_path / "submission.csv"
    proc = core_cli("submit", str(LAPTOP), str(files["2025"]), "--out", str(out), "--no-tta")
    summary = json.loads(proc.stdout)
    assert summary["tta_flip"] is False
    assert summary["tta"] == "none: asked for; the run's own is flip and 1-pixel shifts (6 views)"
    plain = json.loads(core_main("evaluate", "--run", str(LAPTOP), "--data", test_slice, "--mistakes", "0",
                                 "--no-tta").stdout)
    assert csv_accuracy(read_csv(out), truth) == pytest.approx(plain["accuracy"], abs=1e-6)  # evaluate: float32
    assert not [p for p in tmp_path.iterdir() if p.name != "submission.csv"]  # no temporary file left beside it


def test_a_hostile_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    hostile = tmp_path / "cifar_test_nolabel.pkl"
    hostile.write_bytes(pickle.dumps({b"data": Payload(marker), b"ids": [0]}))
    out = tmp_path / "submission.csv"
    proc = core_cli("submit", str(EXAMPLE), str(hostile), "--out", str(out), check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {hostile}: it asks to load posix.system")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("content, message", [
    ({b"data": np.zeros((4, 32, 32, 3), np.int64), b"ids": [1, 2, 3, 4]}, "its images are int64, not uint8"),
    ({b"data": np.zeros((4, 3, 32), np.uint8), b"ids": [1, 2, 3, 4]}, "its images have shape (4, 3, 32)"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"ids": [1, 2, 3]}, "it has 3 IDs for 4 images"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"ids": [1, 2, 2, 3]}, "1 duplicate IDs (e.g. 2)"),
    ({b"data": np.zeros((0, 32, 32, 3), np.uint8), b"ids": []}, "it holds 0 images"),
])
def test_each_bad_test_set_gets_one_line(tmp_path, content, message):
    file = tmp_path / "test.pkl"
    file.write_bytes(pickle.dumps(content))
    proc = core_main("submit", str(EXAMPLE), str(file), "--out", str(tmp_path / "s.csv"), check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {file}: {message}")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "s.csv").exists()


def test_an_out_path_that_cannot_be_written_says_so(shuffled, tmp_path):
    files, _, _ = shuffled
    proc = core_main("submit", str(EXAMPLE), str(files["2024"]), "--out", str(tmp_path / "no" / "s.csv"),
                     check=False)
    assert proc.returncode == 2 and "does not exist; create it or give another --out" in proc.stderr
