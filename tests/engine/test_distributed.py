"""One run as several processes (torchrun, gloo on the CPU), and the machine's device queue.

Several processes are real processes, on a tiny net and the built-in slice; the one-process reference run trains
in this process. GPUs are faked through CUDA_VISIBLE_DEVICES for the queue's bookkeeping, which needs no CUDA.
"""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from core.design.config import RunConfig
from core.design.spec import ArchSpec
from core.errors import StudioError
from core.nn.model import build_model
from core.runs.queue import DeviceRequest, plan, queue_state
from core.processes import process_alive
from core.runs.run import Run, create_run, launch, stop
from core.runs.watch import read_heartbeat
from tests.helpers import ROOT, core_cli, free_port, holder, wait_for

TINY_ARCH = {"stages": [{"blocks": 1, "channels": 8}, {"blocks": 1, "channels": 16}], "pool_size": 16,
             "batch_norm": False}  # no BatchNorm: its statistics are per process, so 2x250 != 1x500 with it
TINY = {"arch": TINY_ARCH, "data": "builtin",
        "train": {"epochs": 1, "batch_size": 500, "log_every": 2, "lr": 0.05, "augment": [], "seed": 3}}


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def config_file(tmp_path, name, **train) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg["train"].update(train)
    path = tmp_path / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


def create(tmp_path, name, **train) -> Run:
    """The run folder of TINY (with `train` changed), as `train --create-only` writes it."""
    cfg = json.loads(config_file(tmp_path, name, **train).read_text())
    return create_run(RunConfig.from_dict(cfg), name, tmp_path / "runs")


def ended(run: Run) -> dict | None:
    status = run.status()
    return status if status["state"] not in ("queued", "running") else None


def worker_pid(launcher_pid: int, rank: int) -> int | None:
    """The training process of a global rank among the launcher's descendants (torchrun sets RANK)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    todo = list(children.get(launcher_pid, []))
    while todo:
        pid = todo.pop()
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
        todo += children.get(pid, [])
    return None


def step_lines(run: Run) -> list[int]:
    return [m["step"] for m in run.metrics() if m["kind"] == "step"]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """The same tiny run trained by one process (this test process: the loop as `train` runs it) and by two
    (gloo), each with a global batch of 500. The two are two "machines" on localhost: `python -m core train
    --nnodes 2` twice, one process each, joined by a c10d rendezvous, each machine with its own device queue."""
    from core.engine.loop import train

    tmp = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CUDA_VISIBLE_DEVICES", "")
        env.setenv("RESNET_STUDIO_LOCKS", str(tmp_path_factory.mktemp("locks")))
        one = create(tmp, "one")
        one_status = train(one, "cpu", stop=lambda: False)
        two = create(tmp, "two")
        rdzv = f"127.0.0.1:{free_port()}"
        nodes = [subprocess.Popen([sys.executable, "-m", "core", "train", "--resume", str(two.dir), "--device", "cpu",
                                   "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1", "--rdzv", rdzv],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=os.environ | {"RESNET_STUDIO_LOCKS": str(tmp / f"locks{rank}")})
                 for rank in (0, 1)]
        outputs = [node.communicate(timeout=300) for node in nodes]
    return {"one": (one, one_status), "two": (two, [node.returncode for node in nodes], outputs)}


def test_two_machines_train_one_run_with_one_set_of_files(one_and_two):
    run, codes, outputs = one_and_two["two"]
    assert codes == [0, 0], outputs
    printed = json.loads(outputs[0][0])  # what machine 0's command says: how the run ended
    assert printed["state"] == "finished" and printed["world_size"] == 2, printed
    status = run.status()
    assert status["state"] == "finished" and status["world_size"] == 2 and status["nnodes"] == 2
    assert status["epoch"] == 1
    epochs = [m for m in run.metrics() if m["kind"] == "epoch"]
    assert len(epochs) == 1 and step_lines(run) == [2, 4, 6, 8, 10]  # rank 0 alone writes: no line twice
    log = run.log_path.read_text()
    assert log.count("epoch 1/1") == 1 and "2 processes" in log and "250 of each batch of 500 per process" in log
    files = sorted(str(p.relative_to(run.dir)) for p in run.dir.rglob("*") if p.is_file()
                   and not p.name.endswith(".lock"))  # the lock for read-change-write of status.json
    assert files == ["checkpoints/best.json", "checkpoints/best.safetensors", "checkpoints/best.state.safetensors",
                     "checkpoints/last.json", "checkpoints/last.safetensors", "checkpoints/last.state.safetensors",
                     "config.json", "heartbeat-node1.json", "heartbeat.json", "metrics.jsonl", "record.json",
                     "results.json", "status.json", "train.log"]  # each machine's heartbeat
    assert sum(map(sum, json.loads(run.results_path.read_text())["confusion"])) == 1000


def test_two_processes_average_gradients_like_one_process_with_the_same_global_batch(one_and_two):
    assert one_and_two["one"][1]["state"] == "finished"
    one, two = (load_file(one_and_two[k][0].checkpoints / "last.safetensors") for k in ("one", "two"))
    torch.manual_seed(TINY["train"]["seed"])
    start = build_model(ArchSpec.from_dict(TINY_ARCH)).state_dict()
    assert set(one) == set(two) == set(start)
    for name in one:  # equal up to float rounding: far closer to each other than to where they started
        moved = (one[name] - start[name]).norm()
        assert moved > 1e-3 and (one[name] - two[name]).norm() < 0.01 * moved, name
    # the metrics, summed over the processes, agree too
    loss = [[m["train_loss"] for m in one_and_two[k][0].metrics() if m["kind"] == "epoch"] for k in ("one", "two")]
    assert loss[0] == pytest.approx(loss[1], rel=1e-4)


def two_machines(tmp_path, run: Run) -> list[subprocess.Popen]:
    """`core train --nnodes 2 --node-rank K` for K = 0 and 1 on localhost, one process each, each in a session of its
    own (as on two machines) with a device queue of its own."""
    rdzv = f"127.0.0.1:{free_port()}"
    return [subprocess.Popen([sys.executable, "-m", "core", "train", "--resume", str(run.dir), "--device", "cpu",
                              "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1", "--rdzv", rdzv],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             env=os.environ | {"RESNET_STUDIO_LOCKS": str(tmp_path / f"locks{rank}")})
            for rank in (0, 1)]


def training(run: Run, node: int) -> dict | None:
    beat = read_heartbeat(run, node)
    return beat if (beat or {}).get("phase") == "training" else None


def left_running(run: Run) -> list[psutil.Process]:
    """Every live process of this machine, but this one, whose command line names the run's folder."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and str(run.dir) in " ".join(proc.info["cmdline"] or []) and \
                    proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def end_all(nodes: list[subprocess.Popen], family: list[psutil.Process]) -> None:
    """A failed test leaves no process behind, frozen or not."""
    for proc in family + [psutil.Process(node.pid) for node in nodes if node.poll() is None]:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGCONT)
            proc.kill()


@pytest.mark.long
def test_each_machine_watches_its_own_processes_and_ends_a_stall_there_naming_the_machine(tmp_path):
    """Two "machines" on localhost, each `core train --nnodes 2 --node-rank K` with its own watcher and heartbeat.
    Machine 1's training process frozen with SIGSTOP: machine 1's watcher ends the run as stalled on node 1 (machine
    0's, whose process only waits for its partner, leaves it to machine 1's), and no process of either is left."""
    run = create(tmp_path, "nodes", epochs=100, stall_limit=12)  # training, not warming up, when it is frozen
    nodes, family = two_machines(tmp_path, run), []
    try:
        beat = wait_for(lambda: training(run, 1), timeout=180, what="machine 1 to train")
        assert read_heartbeat(run, 0)["pid"] != beat["pid"]  # each machine's own process beats into its own file
        family = [p for node in nodes for p in psutil.Process(node.pid).children(recursive=True)]
        assert beat["pid"] in [p.pid for p in family]
        os.kill(beat["pid"], signal.SIGSTOP)  # alive, doing nothing: machine 0's process soon waits for it
        frozen = time.monotonic()
        codes = [node.wait(timeout=90) for node in nodes]
        print(f"both machines ended {time.monotonic() - frozen:.1f} s after the freeze")
        assert codes == [1, 1]
        status = run.status()
        assert status["state"] == "failed" and status["stalled"]["node"] == 1, status
        assert re.match(r"stalled: no progress for \d+ s on node 1 \(.+\) while (training|evaluating|saving) at "
                        r"epoch \d+ step \d+ \(limit 12 s\)", status["error"]), status["error"]
        log = run.log_path.read_text()
        assert re.search(r"failed: stalled: no progress for \d+ s on node 1 ", log), log
        assert "on node 0" not in log, log  # machine 0's watcher did not take its waiting process for a stalled one
        assert psutil.wait_procs(family, timeout=30)[1] == [] and left_running(run) == []
    finally:
        end_all(nodes, family)


def test_a_machine_whose_watcher_dies_stops_the_run_which_saves_and_leaves_no_process(tmp_path):
    """kill -9 of machine 1's watcher: machine 1's processes learn it, and every process of the run stops after the
    same step; rank 0 saves, and the run reads `stopped`, to resume."""
    run = create(tmp_path, "orphan", epochs=100)
    nodes, family = two_machines(tmp_path, run), []
    try:
        wait_for(lambda: training(run, 1), timeout=180, what="machine 1 to train")
        family = [p for node in nodes for p in psutil.Process(node.pid).children(recursive=True)]
        nodes[1].kill()
        assert nodes[0].wait(timeout=90) == 0  # machine 0's command says how the run ended: stopped
        assert psutil.wait_procs(family, timeout=30)[1] == [] and left_running(run) == []
        status = run.status()
        assert status["state"] == "stopped", status
        log = run.log_path.read_text()
        assert re.search(rf"its watcher \(pid {nodes[1].pid} on node 1 \(.+\)\) is gone", log), log
        assert log.count("stopped on request") == 1 and (run.checkpoints / "last.json").exists()  # saved, once
    finally:
        end_all(nodes, family)


def test_the_run_s_heartbeat_is_its_most_stalled_machine_s_of_this_session(tmp_path):
    """What the Train page shows: on a run across machines, the machine that made progress longest ago; a machine's
    file from an earlier session on more machines is not read."""
    run = create(tmp_path, "beats")
    assert run.heartbeat_file(0) == run.heartbeat_path and run.heartbeat_file(2).name == "heartbeat-node2.json"
    now = time.time()
    for node, (step, silent) in enumerate([(40, 1), (38, 30), (12, 900)]):
        run.heartbeat_file(node).write_text(json.dumps({"phase": "training", "epoch": 0, "step": step, "node": node,
                                                        "time": now - silent, "written": now}))
    assert read_heartbeat(run)["node"] == 0  # a one-machine session: node 1's and 2's files are an earlier session's
    run.update_status(nnodes=2)
    assert read_heartbeat(run)["node"] == 1 and read_heartbeat(run, 0)["step"] == 40
    run.heartbeat_file(1).write_text("[1, 2]")  # damaged: no beat, the run's others still read
    assert read_heartbeat(run)["node"] == 0 and read_heartbeat(run, 1) is None


def test_stop_reaches_every_process_a_killed_rank_fails_the_run_and_it_resumes_on_any_number(tmp_path):
    """One run of two processes on this machine, launched as the app launches it. Stop: every process stops
    after the same step and rank 0 saves once, mid-epoch. Resumed on two processes, it continues at the saved
    step, no step logged twice and none lost. kill -9 of rank 1: the run fails within seconds naming it.
    Resumed on one process, it trains to its end."""
    run = create(tmp_path, "life", epochs=20)  # 10 steps an epoch: long enough to stop it and kill a rank in it
    launch(run, "cpu", processes=["--nproc-per-node=2"])
    wait_for(lambda: step_lines(run), what="the first steps")
    stop(run)
    status = wait_for(lambda: ended(run), timeout=60, what="the run to stop")
    assert status["state"] == "stopped", status
    saved = json.loads((run.checkpoints / "last.json").read_text())
    assert saved["step"] > 0  # mid-epoch
    assert run.log_path.read_text().count("stopped on request") == 1  # one save, by rank 0

    launcher = launch(run, "cpu", processes=["--nproc-per-node=2"])
    wait_for(lambda: f"resumed at epoch {saved['epoch']} step {saved['step']}" in run.log_path.read_text(),
             what="the run to resume")
    at = saved["epoch"] * 10 + saved["step"]
    wait_for(lambda: step_lines(run)[-1] > at + 2, what="steps after the resume")
    steps = step_lines(run)
    assert steps == list(range(2, steps[-1] + 1, 2))  # no step logged twice, none lost
    os.kill(wait_for(lambda: worker_pid(launcher, 1), timeout=10, what="rank 1"), signal.SIGKILL)
    killed = time.time()
    # rank 0 may first say it lost its partner; the launcher then names the rank that died
    status = wait_for(lambda: "rank 1" in (run.status().get("error") or "") and run.status(), timeout=60,
                      what="the run to fail naming rank 1")
    assert status["state"] == "failed" and "killed by SIGKILL" in status["error"], status
    print(f"failed {time.time() - killed:.1f} s after the kill")
    wait_for(lambda: not process_alive(launcher), timeout=30, what="the launcher to exit")

    saved = json.loads((run.checkpoints / "last.json").read_text())
    launch(run, "cpu", epochs=saved["epoch"] + 1)  # resume with another world size: one process
    status = wait_for(lambda: ended(run), what="the resumed run")
    assert status["state"] == "finished" and status["world_size"] == 1, status
    assert f"resumed at epoch {saved['epoch']} step {saved['step']}" in run.log_path.read_text()
    assert step_lines(run)[-1] == 10 * (saved["epoch"] + 1)  # trained to the end of its new last epoch


# ---- the queue ---------------------------------------------------------------------------------

def test_the_queue_gives_each_gpu_to_one_run_and_starts_a_run_when_all_its_gpus_are_free(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    a = holder("run-a", "0,1")
    assert a.stdout.readline() == "holding: 0,1\n"
    b = holder("run-b", "1,2")  # overlaps a on GPU 1: waits, holding nothing
    assert b.stdout.readline().startswith("waiting: gpu1 is busy with run-a")
    c = holder("run-c", "2,")  # disjoint from a: starts at once, next to it
    assert c.stdout.readline() == "holding: 2\n"
    assert {r["device"]: r["held_by"] for r in queue_state()} == {"cpu": None, "gpu0": "run-a", "gpu1": "run-a",
                                                                   "gpu2": "run-c"}
    a.stdin.close()
    a.wait(timeout=30)
    assert b.poll() is None  # GPU 1 is free now, GPU 2 is not: b still waits
    c.stdin.close()
    c.wait(timeout=30)
    assert b.stdout.readline() == "holding: 1,2\n"
    d = holder("run-d", "2")  # any two GPUs: only GPU 0 is free
    assert d.stdout.readline().startswith("waiting:")
    b.stdin.close()
    assert d.stdout.readline() == "holding: 0,1\n"  # the lowest free ones
    d.stdin.close()
    for p in (b, d):
        p.wait(timeout=30)


def test_gpu_requests_are_checked_against_the_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    request, processes = plan("auto", "0,1")
    assert request == DeviceRequest("cuda", 2, ("0", "1")) and processes.nproc_per_node == 2  # one per GPU
    assert plan("auto", "2")[0] == DeviceRequest("cuda", 2)  # a count: any two
    assert plan("cuda:1")[0] == DeviceRequest("cuda", 1, ("1",))
    assert plan("auto", None, 2)[0] == DeviceRequest("cuda", 2)
    request, processes = plan("cpu", None, 2)
    assert request == DeviceRequest("cpu") and processes.world_size == 2
    for device, gpus, nproc, message in [("auto", "3", None, "2 GPU(s) visible"), ("auto", "0,5", None, "no GPU 5"),
                                         ("cpu", "1", None, "GPUs are CUDA devices"),
                                         ("auto", "0,1", 3, "each process takes one GPU")]:
        with pytest.raises(StudioError, match=re.escape(message)):
            plan(device, gpus, nproc)
    with pytest.raises(StudioError, match="--rdzv HOST:PORT"):
        plan("cpu", None, 1, nnodes=2)


def test_a_config_that_cannot_train_on_these_processes_fails_before_starting_them(tmp_path):
    run = create(tmp_path, "syncbn", sync_batchnorm=True)
    out = core_cli("train", "--resume", str(run.dir), "--device", "cpu", "--nproc-per-node", "2", check=False)
    assert out.returncode == 1 and "SyncBatchNorm runs on GPUs only" in run.status()["error"]
    run = create(tmp_path, "odd")
    out = core_cli("train", "--resume", str(run.dir), "--device", "cpu", "--nproc-per-node", "3", check=False)
    assert out.returncode == 1 and "batch_size 500 is the global batch" in run.status()["error"]
    assert not run.log_path.exists()  # no process trained
