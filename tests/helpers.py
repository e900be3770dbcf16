"""What the tests share, imported by name (`from tests.helpers import core_cli`): the repository root and app.py,
small designs, the `python -m core` command, waiting, free ports, a device holder, a hostile pickle, the Runs page
under AppTest, a PostgreSQL server, the app in a real browser, and code patched into the processes a test starts.
The fixtures built on them are in conftest.py; nothing else is shared between test files."""
import contextlib
import io
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL_ARCH = {"stages": [{"blocks": 1, "channels": 16}, {"blocks": 1, "channels": 32}], "pool_size": 16}
# a seventeenth of SMALL_ARCH's work (532,560 MACs, 1,586 parameters): an epoch of the built-in slice in a second or
# two, for runs whose accuracy does not matter
QUICK_ARCH = {"stem": {"channels": 8}, "stages": [{"blocks": 1, "channels": 8, "stride": 2}], "pool_size": 16}
# the speed-run parts of a design: a 2x2 whitened stem (31x31), max-pool downsampling that floors (15, 7; with a 3x3
# shortcut after the pool)
SPEEDRUN_ARCH = {"stem": {"channels": 16, "kernel_size": 2, "whiten": True},
                 "stages": [{"blocks": 1, "channels": 16, "stride": 2, "downsample": "maxpool"},
                            {"blocks": 2, "channels": 32, "shortcut_kernel_size": 3, "downsample": "maxpool"}],
                 "pool_size": 7, "activation": "gelu", "pooling": "max", "logit_scale": 0.1111}  # laptop's parts, small
SMALL = {"arch": SMALL_ARCH, "train": {"epochs": 1, "batch_size": 128, "log_every": 10, "lr": 0.05},
         "data": "builtin"}  # a run config that trains an epoch of the built-in slice in seconds


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


class Payload:
    """A hostile pickle's content: unpickling it runs a shell command that creates `marker` (so a reader that
    refused it leaves no marker)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---- the app under Streamlit's AppTest --------------------------------------------------------------------------

APP = ROOT / "app.py"


def runs_page(monkeypatch, runs_dir: Path):
    """The Runs page under AppTest, `runs_dir` its runs folder, drawn without an exception."""
    from streamlit.testing.v1 import AppTest  # imported by the page tests alone

    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(runs_dir))
    app = AppTest.from_file(APP, default_timeout=300).run()
    app.switch_page("pages/runs.py").run()
    assert_clean(app)
    return app


def assert_clean(app) -> None:
    """The AppTest script ran without an exception; if not, their messages are the failure's."""
    assert not app.exception, [e.value for e in app.exception]


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


# ---- code patched into the processes a test starts, as a sitecustomize.py ------------------------------------------

# The start of every such sitecustomize.py: patch_on_import({"core.engine.trainer": patch}) makes the process run
# patch(module) right after it imports that module, before anything uses it.
PATCH_ON_IMPORT = textwrap.dedent('''
    import importlib.abc, importlib.util, os, sys

    def patch_on_import(patches):
        class Patch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                patch = patches.pop(name, None)
                if patch is None:
                    return None
                sys.meta_path.remove(self)
                try:
                    spec = importlib.util.find_spec(name)
                finally:
                    sys.meta_path.insert(0, self)
                load = spec.loader.exec_module

                def exec_module(module):
                    load(module)
                    patch(module)
                spec.loader.exec_module = exec_module
                return spec

        sys.meta_path.insert(0, Patch())
''')


def sitecustomize(folder: Path, monkeypatch, code: str) -> None:
    """Every Python process the test starts from now on runs `code` at its start, after PATCH_ON_IMPORT: Python
    runs the sitecustomize.py it finds on its path, and `folder` goes first on PYTHONPATH, then this checkout."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(PATCH_ON_IMPORT + textwrap.dedent(code))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), str(ROOT)]))


# For sitecustomize: in the training process of the run named in HANG_RUN (the one the watcher starts, with
# --watched), every training step after the HANG_AFTER-th never returns, and it is deaf to SIGTERM there, as a
# process inside a hung C kernel is.
HANG = '''
    if os.environ.get("HANG_RUN") and "--watched" in sys.argv and sys.argv[sys.argv.index("--resume") + 1] \\
            .endswith(os.environ["HANG_RUN"]):
        import time

        def hanging_steps(module):
            step, done = module.Trainer.step, [0]

            def hanging(self, *args):
                done[0] += 1
                while done[0] > int(os.environ["HANG_AFTER"]):
                    time.sleep(3600)
                return step(self, *args)
            module.Trainer.step = hanging

        patch_on_import({"core.engine.trainer": hanging_steps})
'''


def random_run(arch: dict, tmp_path: Path, name: str, train: dict | None = None):
    """A finished run of `arch` with random weights (and batch norm statistics that are not the identity)."""
    import torch

    from core.data.augment import MEAN, STD
    from core.data.datasets import CLASSES
    from core.deploy.importer import import_tensors
    from core.design.config import RunConfig
    from core.nn.model import build_model

    cfg = RunConfig.from_dict({"arch": arch, "train": train or {}})
    torch.manual_seed(1)
    weights = build_model(cfg.arch).state_dict()
    for key, value in weights.items():
        if key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
        elif key.endswith("running_mean"):
            value.normal_(0, 0.2)
    return import_tensors(weights, "0" * 64, "random", cfg, tmp_path / "runs" / name, MEAN, STD, CLASSES)
