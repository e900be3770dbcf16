"""Shared fixtures: a run really trained by the engine, in a runs folder of the test's own."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runs.run import Run

ROOT = Path(__file__).resolve().parent.parent
SMALL_ARCH = {"stages": [{"blocks": 1, "channels": 16}, {"blocks": 1, "channels": 32}], "pool_size": 16}


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory) -> Path:
    """Decoded data and measured speeds go to a folder of the session's own, never the user's cache:
    the speed of a test's tiny net must not become what this machine's Train page estimates from."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["RESNET_STUDIO_CACHE"] = str(path)  # this process and every process the tests start
    return path


@pytest.fixture(autouse=True)
def own_device_locks(tmp_path_factory, monkeypatch) -> Path:
    """A lock folder of the test's own: the device queue is machine-wide, and other test sessions
    on this machine (or other tests' runs) must not make this test's runs wait."""
    folder = tmp_path_factory.mktemp("locks")
    monkeypatch.setenv("RESNET_STUDIO_LOCKS", str(folder))
    return folder


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> Path:
    """A runs folder holding `small`: a small net trained for two epochs on the built-in slice by
    `python -m core train`, in a real process. Tests must not change it; copy it to change it."""
    root = tmp_path_factory.mktemp("trained") / "runs"
    cfg = root.parent / "small.json"
    cfg.write_text(json.dumps({"arch": SMALL_ARCH, "train": {"epochs": 2, "batch_size": 128, "lr": 0.05},
                               "data": "builtin"}))
    subprocess.run([sys.executable, "-m", "core", "train", "--config", str(cfg), "--run-dir", str(root / "small"),
                    "--device", "cpu"], cwd=ROOT, check=True, capture_output=True, timeout=600)
    return root


@pytest.fixture(scope="session")
def trained(trained_runs) -> Run:
    return Run(trained_runs / "small")


@pytest.fixture
def offline() -> None:
    """Skip where CIFAR-10's host resolves: a download test there would fetch 170 MB."""
    try:
        socket.getaddrinfo("www.cs.toronto.edu", 443)
    except OSError:
        return
    pytest.skip("this machine is online: the test would download 170 MB")


def wait_for(predicate, timeout=120.0, what="condition"):
    """The first true value predicate() returns, asked every 0.2 s for at most `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
