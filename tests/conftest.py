"""What the tests share: a run really trained by the engine, caches and device locks of the tests' own, the
`python -m core` command, waiting, free ports, a device holder, and the app in a real browser."""
import contextlib
import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import textwrap
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from core.design.last import last_design_path
from core.runs.run import Run

ROOT = Path(__file__).resolve().parent.parent
# One thread per process, for this process and every one the tests start (set before torch is imported): the
# suite runs training processes beside pytest, the app and each other on machines of two cores, and torch's
# threads waiting for each other at every operation made small nets there up to 14 times slower (torchrun sets
# the same for its processes). A value set outside wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
SMALL_ARCH = {"stages": [{"blocks": 1, "channels": 16}, {"blocks": 1, "channels": 32}], "pool_size": 16}
# a seventeenth of SMALL_ARCH's work (532,560 MACs, 1,586 parameters): an epoch of the built-in slice in a second or
# two, for runs whose accuracy does not matter
QUICK_ARCH = {"stem": {"channels": 8}, "stages": [{"blocks": 1, "channels": 8, "stride": 2}], "pool_size": 16}
SMALL = {"arch": SMALL_ARCH, "train": {"epochs": 1, "batch_size": 128, "log_every": 10, "lr": 0.05},
         "data": "builtin"}  # a run config that trains an epoch of the built-in slice in seconds


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


def core_cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m core ARGS` in a real process; with `check`, its stderr is the failure's message."""
    proc = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def core_main(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m core ARGS` in this process (core.cli.main, as __main__ calls it): the command's parsing, work,
    JSON and error handling, without a process's start-up and torch import. For what is not about the process
    boundary; each command also runs somewhere as a real process (core_cli). Not for commands that set signal
    handlers (train, search workers)."""
    from core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    proc = subprocess.CompletedProcess(["python", "-m", "core", *args], code, out.getvalue(), err.getvalue())
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HOLDER = """
import sys, time
from core.runs.queue import DeviceRequest, hold
request = DeviceRequest.parse("auto", sys.argv[2])
with hold(request, sys.argv[1], lambda: False, lambda message: print("waiting:", message, flush=True)) as ids:
    print("holding:", ",".join(ids), flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def holder(name: str, gpus: str) -> subprocess.Popen:
    """A process that waits for its GPUs in the queue, then holds them until its stdin closes."""
    return subprocess.Popen([sys.executable, "-c", HOLDER, name, gpus], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


# ---- a real PostgreSQL server, for shared studies ---------------------------------------------------------------

class Postgres:
    """A PostgreSQL server of the tests' own (Debian's `postgresql` package; `make test` installs it): initdb in a
    temporary folder, on 127.0.0.1, as the `postgres` user when this runs as root (PostgreSQL refuses root).
    `stop()` and `start()` it to play an outage; `url` is its database `studio`."""

    def __init__(self, bin_dir: Path, folder: Path, owner_is_postgres: bool):
        self.bin_dir, self.folder, self.port = bin_dir, folder, free_port()
        self.as_owner = ["runuser", "-u", "postgres", "--"] if owner_is_postgres else []
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/studio"

    def pg(self, tool: str, *args: str) -> None:
        subprocess.run(self.as_owner + [str(self.bin_dir / tool), *args], check=True, capture_output=True,
                       timeout=120)

    def start(self) -> None:
        self.pg("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "server.log"), "-w",
                "-o", f"-p {self.port} -h 127.0.0.1 -k {self.folder}", "start")

    def stop(self) -> None:
        self.pg("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.folder / "data" / "postmaster.pid").exists()


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


# ---- the app in a real browser: `streamlit run app.py` and Debian's Chromium through Playwright ----------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
EXCEPTION = '[data-testid="stException"]'
CHART = '[data-testid="stVegaLiteChart"]'


def wait_until_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"streamlit did not answer {url}/_stcore/health within {timeout:.0f} s")


@contextlib.contextmanager
def serve_app(runs_dir: Path):
    """The app served from this checkout on a free port, with `runs_dir` as its runs folder; yields its URL. Its
    output goes to a file beside the runs folder: a pipe nobody reads fills up, and the server then blocks on
    its next log line (every page load timed out once a session-long server had logged 64 KB)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = runs_dir.parent / f"streamlit-{port}.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=os.environ | {"RESNET_STUDIO_RUNS": str(runs_dir)})
    try:
        wait_until_healthy(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


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


def wait_until_settled(page) -> None:
    """Until the script has run and every element has drawn (widgets load their code lazily)."""
    from playwright.sync_api import expect

    page.locator('[data-testid="stApp"][data-test-connection-state="CONNECTED"]').wait_for()
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()
    expect(page.locator('[data-testid^="stSkeleton"]')).to_have_count(0, timeout=60_000)  # a busy machine draws slowly


def open_app_page(page, path: str) -> None:
    page.goto(f"/{path}")
    wait_until_settled(page)
    page.locator("h1").first.wait_for()


def assert_no_exception(page) -> None:
    shown = page.locator(EXCEPTION)
    assert shown.count() == 0, f"the page shows an exception:\n{shown.first.inner_text()}"


def screenshot(page, name: str) -> None:
    """The whole page in test-output/screenshots/NAME.png: Streamlit scrolls an inner element, so grow the
    viewport to its height first."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    height = page.evaluate("Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))")
    page.set_viewport_size({"width": viewport["width"], "height": max(height, viewport["height"])})
    wait_until_settled(page)
    page.screenshot(path=SCREENSHOTS / f"{name}.png")
    page.set_viewport_size(viewport)


# Loaded by every Python process started with its folder on PYTHONPATH: in the training process of the run named
# in HANG_RUN (the one the watcher starts, with --watched), every training step after the HANG_AFTER-th never
# returns, and it is deaf to SIGTERM there, as a process inside a hung C kernel is.
HANG = textwrap.dedent('''
    import os, sys
    if os.environ.get("HANG_RUN") and "--watched" in sys.argv and sys.argv[sys.argv.index("--resume") + 1] \\
            .endswith(os.environ["HANG_RUN"]):
        import importlib.abc, importlib.util, time

        class Patch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name != "core.engine.trainer":
                    return None
                sys.meta_path.remove(self)
                spec = importlib.util.find_spec(name)
                load = spec.loader.exec_module

                def exec_module(module):
                    load(module)
                    step, done = module.Trainer.step, [0]

                    def hanging(self, *args):
                        done[0] += 1
                        while done[0] > int(os.environ["HANG_AFTER"]):
                            time.sleep(3600)
                        return step(self, *args)
                    module.Trainer.step = hanging
                spec.loader.exec_module = exec_module
                return spec

        sys.meta_path.insert(0, Patch())
''')


@pytest.fixture
def hang(tmp_path, monkeypatch):
    """Make the training process of the run named NAME hang after `after` steps: hang(NAME, after)."""
    (tmp_path / "hang").mkdir()
    (tmp_path / "hang" / "sitecustomize.py").write_text(HANG)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "hang"), str(ROOT)]))

    def set_up(name: str, after: int) -> None:
        monkeypatch.setenv("HANG_RUN", name)
        monkeypatch.setenv("HANG_AFTER", str(after))
    return set_up
