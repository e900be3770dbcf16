"""Fault injection: one damaged file never takes the studio down. Each file of a run folder is damaged in each way
a copy cut short, a sync tool, a hand edit or a full disk elsewhere leaves it, in a scratch runs folder of copies
of runs/example; the damaged run is listed as damaged, with the file and what is wrong, by `core runs` and on every
page (AppTest), the healthy runs work as before, and the damaged run can be repaired where it can be, or deleted."""
import json
import re
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.helpers import APP, ROOT, core_main
from core.errors import StudioError
from core.runs.run import Run, delete, find_damage, repair, scan_runs

EXAMPLE = ROOT / "runs" / "example"
PAGES = ("pages/runs.py", "pages/evaluate.py", "pages/classify.py", "pages/train.py")

# what a file holds before it is damaged, for the files runs/example does not have
BEAT = {"phase": "training", "epoch": 3, "step": 10, "step_time": 0.1, "pid": None, "time": 0.0}
MADE = {"heartbeat.json": BEAT, "heartbeat-node1.json": BEAT,  # the second machine's, of a run across two
        "exports/healthy-fp32.onnx.json": {"precision": "fp32", "agreement": 1.0, "max_logit_diff": 0.0}}
FILES = ("status.json", "config.json", "results.json", "record.json", "heartbeat.json", "heartbeat-node1.json",
         "metrics.jsonl", "exports/healthy-fp32.onnx.json", "checkpoints/best.json", "checkpoints/best.safetensors")
WAYS = ("cut short", "empty", "binary garbage", "wrong type")
REPAIRABLE = ("status.json", "results.json", "record.json", "heartbeat.json", "heartbeat-node1.json",
              "metrics.jsonl", "exports/healthy-fp32.onnx.json")


def damage(run: Run, file: str, way: str) -> None:
    path = run.dir / file
    path.parent.mkdir(exist_ok=True)
    if file in MADE:
        path.write_text(json.dumps(MADE[file]))
    data = path.read_bytes()
    if file == "metrics.jsonl":  # a damaged line in the middle: a torn last line is what a crash leaves, and is fine
        lines = data.splitlines(keepends=True)
        bad = {"cut short": lines[5][:len(lines[5]) // 2] + b"\n", "empty": b"\x00\x00\n",
               "binary garbage": b"\xff\xfe\x00garbage\x9c\n", "wrong type": b"[1, 2, 3]\n"}[way]
        path.write_bytes(b"".join(lines[:5]) + bad + b"".join(lines[6:]))
        return
    path.write_bytes({"cut short": data[:len(data) // 2], "empty": b"",
                      "binary garbage": bytes(range(256)) * 4, "wrong type": b"[1, 2, 3]\n"}[way])


def runs_folder(root: Path, damaged: dict[str, tuple[str, str]]) -> Path:
    """A runs folder with `healthy`, a copy of runs/example, and one copy per entry of `damaged`: name -> (file,
    way)."""
    root.mkdir()
    for name in ["healthy", *damaged]:
        shutil.copytree(EXAMPLE, root / name)
    for name, (file, way) in damaged.items():
        damage(Run(root / name), file, way)
    return root


def name_of(file: str, way: str) -> str:
    return f"{Path(file).stem.replace('.', '-')}-{way.replace(' ', '-')}"


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("file", FILES)
def test_a_damaged_file_lists_its_run_as_damaged_and_the_others_as_before(tmp_path, monkeypatch, file, way):
    root = runs_folder(tmp_path / "runs", {"broken": (file, way)})
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(root))
    usable, damaged = scan_runs()
    assert {run.name for run in usable} == {"healthy"} | ({"broken"} if file.endswith(".safetensors") else set())
    ((run, found),) = damaged
    assert run.name == "broken" and found.file == file and found.problem, found
    listed = {row["name"]: row for row in json.loads(core_main("runs").stdout)}
    assert listed["healthy"]["state"] == "finished" and listed["healthy"]["best_acc"] > 0.8
    assert listed["broken"]["state"] == "damaged" and listed["broken"]["damage"]["file"] == file

    if file in REPAIRABLE:
        assert repair(run) and find_damage(run) is None  # mended: it lists as a run again
        assert {r.name for r in scan_runs()[0]} == {"healthy", "broken"}
        assert run.status()["state"] == "finished"  # a rebuilt status: it has results
    else:
        out = core_main("repair", str(run.dir), check=False)
        assert out.returncode == 2 and file in out.stderr and "delete the run" in out.stderr
        delete(run)
        assert not run.dir.exists() and scan_runs()[1] == []


def test_a_metrics_file_cut_mid_line_is_no_damage(tmp_path):
    run = Run(tmp_path / "cut")
    shutil.copytree(EXAMPLE, run.dir)
    data = run.metrics_path.read_bytes()
    run.metrics_path.write_bytes(data[:len(data) - 40])  # what a crash mid-append leaves
    assert find_damage(run) is None and len([m for m in run.metrics() if m.get("kind") == "epoch"]) == 29
    assert run.summary()["epochs_done"] == 30  # epochs trained come from the status, which the cut did not touch


@pytest.mark.parametrize("way", WAYS)
def test_every_page_shows_damaged_runs_and_works_on_the_healthy_one(tmp_path, monkeypatch, way):
    """One runs folder per way, with every file of a run damaged that way in a run of its own."""
    damaged = {name_of(file, way): (file, way) for file in FILES}
    root = runs_folder(tmp_path / "runs", damaged)
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(root))
    app = AppTest.from_file(APP, default_timeout=300).run()
    for page in PAGES:
        app.switch_page(page).run()
        assert not app.exception, (page, [e.value for e in app.exception])
        shown = " ".join(m.value for m in app.markdown)
        for name, (file, _) in damaged.items():
            assert f"**{name}** is damaged: `{file}`" in shown, (page, name)
        boxes = [box for box in app.selectbox if box.label == "Run"]  # Evaluate has one per tab
        usable = {"healthy", name_of("checkpoints/best.safetensors", way)}  # damaged weights: the other checkpoint
        assert boxes and all({option.split(" · ")[0] for option in box.options} == usable  # is still of use
                             for box in boxes), (page, [box.options for box in boxes])
    # the damaged runs can be deleted (or repaired) from the page, and the page goes on
    app.switch_page("pages/runs.py").run()
    app.button(key=f"delete-damaged:{name_of('config.json', way)}").click().run()
    app.button(key=f"repair:{name_of('status.json', way)}").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert not (root / name_of("config.json", way)).exists()
    assert find_damage(Run(root / name_of("status.json", way))) is None


def test_commands_that_read_runs_work_on_the_healthy_run_and_name_the_damage(tmp_path, monkeypatch):
    """evaluate, report and export on the healthy run beside damaged ones; on each damaged run (each file, the ways
    taken in turn), a result or a clear error naming the file, never a traceback."""
    damaged = {name_of(file, way): (file, way) for file, way in zip(FILES, WAYS * 3)}
    root = runs_folder(tmp_path / "runs", damaged)
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(root))
    healthy = str(root / "healthy")
    evaluated = json.loads(core_main("evaluate", "--run", healthy, "--data", "builtin").stdout)
    assert evaluated["accuracy"] > 0.5
    core_main("report", healthy, "--out", str(tmp_path / "report.md"), "--data", "builtin", "--mistakes", "2")
    assert (tmp_path / "report.md").stat().st_size > 1000
    core_main("export", healthy, str(tmp_path / "shipped"))
    assert Run(tmp_path / "shipped").status()["state"] == "finished"
    refused = set()
    for name, (file, _) in damaged.items():
        run = str(root / name)
        for command in (["evaluate", "--run", run, "--data", "builtin"], ["export", run, str(tmp_path / name)],
                        ["report", run, "--out", str(tmp_path / f"{name}.md"), "--data", "builtin", "--mistakes", "2"]):
            out = core_main(*command, check=False)  # anything but a StudioError would raise here
            assert out.returncode in (0, 2), (command, out.stderr)
            if out.returncode == 2:
                assert Path(file).name in out.stderr or Path(file).stem in out.stderr, (command, out.stderr)
                refused.add(file)
    assert {"config.json", "status.json", "checkpoints/best.safetensors", "checkpoints/best.json"} <= refused


# ---- the app's own state files ------------------------------------------------------------------------------

def spoil(path: Path, way: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"cut short": data[:len(data) // 2], "empty": b"", "binary garbage": bytes(range(256)) * 4,
                      "wrong type": b"[1, 2, 3]\n"}[way])


@pytest.mark.parametrize("way", WAYS)
def test_damaged_state_files_of_the_app_give_a_clear_line_and_a_fallback(tmp_path, monkeypatch, way):
    """The last design, the machine's timings, a device's lock file, a study's note and a study's SQLite file, each
    damaged: the pages that read them open (Design, Train, Search), with defaults or a line that says what is
    damaged; nothing raises."""
    import sqlite3

    from core.design.last import LastDesign, last_design_path, read_last, save_last
    from core.design.presets import preset_spec
    from core.runs.queue import lock_dir, queue_state
    from core.runs.speeds import machine_path, read_machine
    from core.search.report import study_status
    from core.search.study import Study, record_path, search_dir

    monkeypatch.setenv("RESNET_STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(runs_folder(tmp_path / "runs", {})))
    save_last(LastDesign(preset_spec("resnet20"), "resnet20", None, None))
    machine_path().write_text(json.dumps({"devices": {"cpu": "CPU"}, "speeds": {"cpu": {
        "macs_per_s": 1e9, "images_per_s": 100.0, "macs": 1e7, "name": "CPU", "source": "test", "when": 0.0}}}))
    lock_dir().mkdir(parents=True, exist_ok=True)
    (lock_dir() / "cpu.lock").write_text(str(tmp_path / "runs" / "healthy"))
    search_dir().mkdir(parents=True)
    database = search_dir() / "spoilt-db.db"
    with sqlite3.connect(database) as db:
        db.execute("create table t (x text)")
        db.executemany("insert into t values (?)", [("x" * 500,)] * 100)
    db.close()
    record_path("spoilt-db").write_text(json.dumps({"storage": f"sqlite:///{database}"}))
    record_path("spoilt-note").write_text(json.dumps({"storage": f"sqlite:///{search_dir() / 'other.db'}"}))
    for path in (last_design_path(), machine_path(), lock_dir() / "cpu.lock", database, record_path("spoilt-note")):
        spoil(path, way)

    assert read_last() is None and read_machine().get("speeds", {}) == {}
    assert [row["device"] for row in queue_state()] == ["cpu"]
    for study in ("spoilt-db", "spoilt-note"):  # an empty SQLite file is a new database, without the study
        with pytest.raises(StudioError, match="damaged|no study named"):
            study_status(Study(study))
    app = AppTest.from_file(APP, default_timeout=300).run()
    for page in ("pages/design.py", "pages/train.py", "pages/search.py"):
        app.switch_page(page).run()
        assert not app.exception, (page, [e.value for e in app.exception])
    for study in ("spoilt-db", "spoilt-note"):
        app.selectbox(key="search_study").set_value(study).run()
        assert not app.exception and any(re.search("damaged|no study named", e.value) for e in app.error), \
            [e.value for e in app.error]


def test_the_damaged_status_of_a_live_run_is_rebuilt_from_its_process_and_it_stops_as_ever(tmp_path, monkeypatch):
    from tests.helpers import QUICK_ARCH, wait_for
    from core.design.config import RunConfig, TrainConfig
    from core.design.spec import ArchSpec
    from core.runs.run import create_run, launch, stop

    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(tmp_path / "runs"))
    run = create_run(RunConfig(ArchSpec.from_dict(QUICK_ARCH), TrainConfig(epochs=300, batch_size=64)), "live")
    launch(run, "cpu")
    wait_for(lambda: run.status()["state"] == "running" and run.metrics(), 120, "the run to train")
    trainer = run.status()["pid"]
    damage(run, "status.json", "cut short")  # its watcher finds it so within a second, and rebuilds it
    wait_for(lambda: find_damage(run) is None, 30, "the watcher to rebuild the status")
    status = run.status()
    assert "rebuilt" in status, status
    assert status["state"] == "running" and status["pid"] == trainer and status["watcher_pid"], status
    stop(run)
    assert wait_for(lambda: run.status()["state"] not in ("queued", "running") and run.status(), 120,
                    "the run to stop")["state"] == "stopped"
