"""Every run's reproducibility record: what the training process writes at its start, what an import writes,
what `core runs` prints, and the facts behind it (the oneDNN ISA, the data's fingerprint), on real runs."""
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, core_cli
from core.data.sources import BUILTIN_ARCHIVE
from core.nn.platform import onednn_isa
from core.runs.record import data_fingerprint, differences, read_record, summary_lines, write_start

CPU_FLAGS = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
avx2 = pytest.mark.skipif("avx2" not in CPU_FLAGS, reason="needs an x86 CPU with AVX2")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_a_trained_run_records_what_made_it(trained):
    record = read_record(trained.record_path)
    assert "core train --config" in record["origin"] and "--run-dir" in record["origin"]
    assert f"core train --resume {trained.dir}" in record["command"]  # the process its watcher started
    if (ROOT / ".git").exists():
        assert record["git"]["commit"] == git("rev-parse", "HEAD")
        assert record["git"]["dirty"] == bool(git("status", "--porcelain", "--untracked-files=no"))
    torch_facts = record["torch"]
    import torch

    assert torch_facts["version"] == torch.__version__ and torch_facts["device"] == "cpu"
    assert torch_facts["threads"] == torch.get_num_threads()
    assert record["packages"]["torchvision"] and record["packages"]["onnxruntime"]
    assert record["cpu"] and record["cores"] == os.cpu_count() and record["vector_isa"] and record["int8_kernels"]
    assert record["world_size"] == 1 and record["seeds"]["seed"] == 0
    assert record["data"]["data"] == "builtin"
    assert record["data"]["sha256"] == hashlib.sha256(BUILTIN_ARCHIVE.read_bytes()).hexdigest()
    if torch.backends.mkldnn.is_available():
        assert torch_facts["onednn_isa"] == onednn_isa()


def test_core_runs_prints_each_runs_record(trained, trained_runs, monkeypatch):
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(trained_runs))
    listed = json.loads(core_cli("runs").stdout)
    (small,) = [row for row in listed if row["name"] == "small"]
    assert small["record"] == read_record(trained.record_path)


@avx2
def test_the_onednn_isa_is_what_onednn_says_and_follows_its_cap():
    isa = onednn_isa()  # this process's oneDNN, in its words
    assert isa and ("AVX2" not in isa or "avx512f" not in CPU_FLAGS)  # an AVX-512 CPU: more than AVX2
    start = time.perf_counter()
    assert onednn_isa() == isa and time.perf_counter() - start < 0.01  # asked once per process
    capped = subprocess.run([sys.executable, "-c", "from core.nn.platform import onednn_isa; print(onednn_isa())"],
                            cwd=ROOT, capture_output=True, text=True, check=True,
                            env=os.environ | {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert capped.stdout.strip() == "Intel AVX2"  # a process started with a cap reports the capped ISA


def test_a_data_fingerprint_names_the_copy(tmp_path):
    archive = tmp_path / "copy.tar.gz"
    archive.write_bytes(b"not really an archive, but bytes to hash" * 1000)
    found = data_fingerprint(str(archive))
    assert found["kind"] == "archive sha256" and found["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    folder = tmp_path / "folder"
    (folder / "train" / "cat").mkdir(parents=True)
    (folder / "train" / "cat" / "1.png").write_bytes(b"x" * 10)
    before = data_fingerprint(str(folder))
    assert before["kind"] == "file list sha256" and before["files"] == 1
    (folder / "train" / "cat" / "2.png").write_bytes(b"y")
    assert data_fingerprint(str(folder))["sha256"] != before["sha256"]
    assert data_fingerprint(str(tmp_path / "gone"))["kind"] == "missing on this machine"


def test_a_resumed_session_adds_only_what_changed(tmp_path):
    path = tmp_path / "record.json"
    path.write_text(json.dumps({"origin": "a test"}))
    torch_facts = {"version": "2.14.1", "device": "cpu", "threads": 2}
    first = write_start(path, torch_facts, 1, 0, "builtin")
    assert first["origin"] == "a test" and first["torch"] == torch_facts and "resumes" not in first
    again = write_start(path, torch_facts, 1, 0, "builtin")
    assert again["resumes"][0]["changed"] == {}  # the same machine: nothing but the moment
    elsewhere = write_start(path, torch_facts | {"threads": 8}, 2, 0, "builtin")
    assert elsewhere["resumes"][1]["changed"] == {"torch": torch_facts | {"threads": 8}, "world_size": 2}
    assert elsewhere["started"] == first["started"]  # the record stays the first session's
    assert differences(first, first | {"started": time.time(), "command": "other"}) == {}
    assert differences(first, first | {"world_size": 4}) == {"world_size": (1, 4)}


def test_a_run_made_before_records_has_none_and_says_so(tmp_path):
    assert read_record(tmp_path / "record.json") is None
    assert summary_lines(None)[0][1].startswith("none")
    (tmp_path / "record.json").write_text("{torn")
    assert read_record(tmp_path / "record.json") is None
