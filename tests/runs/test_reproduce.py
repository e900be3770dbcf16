"""`python -m core reproduce`: a 1-epoch run on the built-in slice trained again from its config, in real
processes, ends with its comparison. On the same CPU, with the same seed and threads, the loop is deterministic:
the test holds the two runs to a tolerance of zero (equal to the last bit)."""
import json
import shutil

from tests.helpers import QUICK_ARCH, SMALL, core_cli
from core.files import update_json
from core.runs.record import read_record
from core.runs.reproduce import compare
from core.runs.run import Run


def test_a_reproduced_slice_run_matches_to_the_last_bit_and_differences_are_named(tmp_path):
    config, runs = tmp_path / "small.json", tmp_path / "runs"
    config.write_text(json.dumps(SMALL | {"arch": QUICK_ARCH}))  # any net: the point is the bits
    core_cli("train", "--config", str(config), "--run-dir", str(runs / "first"), "--device", "cpu")
    ended = json.loads(core_cli("reproduce", str(runs / "first"), "--run-dir", str(runs / "again"),
                                "--device", "cpu").stdout)
    assert ended["state"] == "finished"
    comparison = ended["reproduction"]
    assert comparison["verdict"].startswith("identical") and comparison["matches"]
    assert comparison["max_eval_acc_diff"] == 0.0 and comparison["max_eval_loss_diff"] == 0.0
    assert comparison["final"]["difference"] == 0.0 and len(comparison["epochs"]) == 1
    assert comparison["epochs"][0]["train_loss_diff"] == 0.0
    assert comparison["same_machine"] and comparison["record_differences"] == {}
    again = Run(runs / "again")
    assert json.loads(again.reproduction_path.read_text()) == comparison
    assert again.config().to_dict() == Run(runs / "first").config().to_dict()
    assert read_record(again.record_path)["origin"] == f"reproduce {runs / 'first'}"

    # the same figures from another machine's record: within the tolerance for elsewhere, its facts named
    elsewhere = Run(shutil.copytree(again.dir, runs / "elsewhere"))
    update_json(elsewhere.record_path, lambda r: r | {"torch": r["torch"] | {"threads": 64}})
    lines = [json.loads(line) for line in elsewhere.metrics_path.read_text().splitlines()]
    elsewhere.metrics_path.write_text("".join(json.dumps(line | {"eval_acc": line["eval_acc"] + 0.01}) + "\n"
                                              if line["kind"] == "epoch" else json.dumps(line) + "\n"
                                              for line in lines))
    other = compare(Run(runs / "first"), elsewhere)
    assert other["matches"] and other["verdict"].startswith("matches within") and not other["same_machine"]
    assert list(other["record_differences"]) == ["torch.threads"]
    # the same machine and a difference: not deterministic, and said so
    update_json(elsewhere.record_path, lambda r: r | {"torch": read_record(again.record_path)["torch"]})
    same = compare(Run(runs / "first"), elsewhere)
    assert not same["matches"] and "not deterministic" in same["verdict"]
