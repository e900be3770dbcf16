"""The tests' fixtures: a run really trained by the engine, runs folders, caches and device locks of the tests'
own, a PostgreSQL server, the app in a real browser, a hanging training step. What the tests share besides
fixtures is in tests/helpers.py."""
import json
import os
import pwd
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from core.data.sources import BUILTIN_ARCHIVE
from core.design.last import last_design_path
from core.runs.run import Run
from scripts.make_builtin_slice import read_class_folders
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, HANG, SMALL_ARCH, Postgres, core_cli, serve_app, sitecustomize

# One thread per process, for this process and every one the tests start (set before torch is imported): the
# suite runs training processes beside pytest, the app and each other on machines of two cores, and torch's
# threads waiting for each other at every operation made small nets there up to 14 times slower (torchrun sets
# the same for its processes). A value set outside wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory) -> Path:
    """Decoded data and measured speeds go to a folder of the session's own, never the user's cache:
    the speed of a test's tiny net must not become what this machine's Train page estimates from. The
    device queue's locks too, for session fixtures (each test then gets a lock folder of its own): runs
    elsewhere on this machine must not make the session's runs wait."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["RESNET_STUDIO_CACHE"] = str(path)  # this process and every process the tests start
    os.environ["RESNET_STUDIO_LOCKS"] = str(tmp_path_factory.mktemp("session-locks"))
    return path


@pytest.fixture(autouse=True)
def no_last_design(own_cache) -> None:
    """Each test's app opens as on a machine where nothing was designed yet: the design and settings an earlier
    test left on disk (core.design.last, for reloads and new tabs) are gone."""
    last_design_path().unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def own_device_locks(tmp_path_factory, monkeypatch) -> Path:
    """A lock folder of the test's own: the device queue is machine-wide, and other test sessions
    on this machine (or other tests' runs) must not make this test's runs wait."""
    folder = tmp_path_factory.mktemp("locks")
    monkeypatch.setenv("RESNET_STUDIO_LOCKS", str(folder))
    return folder


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    """An empty runs folder of the test's own, for this process and the ones it starts."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(root))
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of the test's own: what the studio knows of this machine (devices, speeds) starts empty."""
    monkeypatch.setenv("RESNET_STUDIO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> Path:
    """A runs folder holding `small`: a small net trained for two epochs on the built-in slice by
    `python -m core train`, in a real process. Tests must not change it; copy it to change it."""
    root = tmp_path_factory.mktemp("trained") / "runs"
    cfg = root.parent / "small.json"
    cfg.write_text(json.dumps({"arch": SMALL_ARCH, "train": {"epochs": 2, "batch_size": 128, "lr": 0.05},
                               "data": "builtin"}))
    out = core_cli("train", "--config", str(cfg), "--run-dir", str(root / "small"), "--device", "cpu")
    assert json.loads(out.stdout)["state"] == "finished", out.stdout  # what the command says is how it ended
    return root


@pytest.fixture(scope="session")
def trained(trained_runs) -> Run:
    return Run(trained_runs / "small")


@pytest.fixture(scope="session")
def test_slice(tmp_path_factory) -> str:
    """The built-in slice cut to 20 test and 2 training images a class, as class folders (the JPEG bytes unchanged):
    for tests that evaluate a shipped run again and again (runs/laptop's 2M-parameter net, each image in 6 TTA
    views) and need real images, not a thousand of them."""
    root = tmp_path_factory.mktemp("test-slice")
    for (split, name), files in read_class_folders(str(BUILTIN_ARCHIVE)).items():
        (root / split / name).mkdir(parents=True)
        for file in sorted(files)[:{"test": 20, "train": 2}[split]]:  # the first by name, as the slice was made
            (root / split / name / file).write_bytes(files[file][1])
    return str(root)


@pytest.fixture
def offline() -> None:
    """Skip where CIFAR-10's host resolves: a download test there would fetch 170 MB."""
    try:
        socket.getaddrinfo("www.cs.toronto.edu", 443)
    except OSError:
        return
    pytest.skip("this machine is online: the test would download 170 MB")


@pytest.fixture(scope="module")
def postgres():
    """A running Postgres, stopped and removed after the module's tests (skipped where none is installed)."""
    initdbs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    as_root = os.getuid() == 0
    try:
        owner = pwd.getpwnam("postgres") if as_root else pwd.getpwuid(os.getuid())
    except KeyError:
        owner = None
    if not initdbs or owner is None:
        reason = "PostgreSQL is not installed (Debian's postgresql package; `make test` installs it)"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="studio-pg-"))
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    server = Postgres(initdbs[-1].parent, folder, as_root)
    server.pg("initdb", "-D", str(folder / "data"), "-A", "trust", "-U", "postgres")
    server.start()
    try:
        server.pg("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "studio")
        yield server
    finally:
        if server.running():
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    """One Chromium for the session (each test opens a context of its own)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing; `make browser` installs it"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def app_url(trained_runs):
    """The app, its runs folder holding the trained `small` run: one server for the session, so that torch is
    imported there once. A test that adds a run to that folder deletes it at its end."""
    with serve_app(trained_runs) as url:
        yield url


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(base_url=app_url, viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def hang(tmp_path, monkeypatch):
    """Make the training process of the run named NAME hang after `after` steps: hang(NAME, after)."""
    sitecustomize(tmp_path / "hang", monkeypatch, HANG)

    def set_up(name: str, after: int) -> None:
        monkeypatch.setenv("HANG_RUN", name)
        monkeypatch.setenv("HANG_AFTER", str(after))
    return set_up


def pytest_collection_modifyitems(items) -> None:
    """Tests marked `long` first: pytest-xdist hands tests out in this order, and a half-minute test handed out
    last keeps one worker busy while the other has nothing left (stable: the rest keep their order)."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
