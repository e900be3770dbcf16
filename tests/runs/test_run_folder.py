"""The run folder has one owner: no module of core/ but core/runs/run.py builds a path inside a run folder or writes
one of its files (core.nn.checkpoint writes the checkpoint format into the folder Run.checkpoints names: it needs
torch, which core.runs never imports). And no function of core/ is over 80 lines: each reads top to bottom."""
from __future__ import annotations

import ast

from tests.helpers import ROOT

CORE = ROOT / "core"
OWNER = CORE / "runs" / "run.py"
RUN_PATHS = {"dir", "config_path", "status_path", "metrics_path", "log_path", "heartbeat_path", "checkpoints",
             "results_path", "familiarity_path", "exports", "record_path", "reproduction_path"}
WRITERS = {"write_json", "update_json", "append_line", "write_atomic", "write_start", "write_import", "write_origin",
           "copy", "copy2", "copyfile", "move", "rmtree"}
PATH_WRITES = {"unlink", "write_text", "write_bytes", "mkdir", "rename", "replace", "touch"}
LONGEST = 80


def run_path(node: ast.AST) -> bool:
    """`something.config_path`, `run.checkpoints`, ...: a path Run gives."""
    return isinstance(node, ast.Attribute) and node.attr in RUN_PATHS


def called(node: ast.Call) -> str:
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


def folder_writes(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and run_path(node.left):
            found.append((node.lineno, f"builds a path in the run folder ({ast.unparse(node)})"))
        elif isinstance(node, ast.Call):
            name, args = called(node), node.args
            mode = args[1].value if len(args) > 1 and isinstance(args[1], ast.Constant) else ""
            if (name in WRITERS and args and run_path(args[0])) or \
                    (name == "open" and args and run_path(args[0]) and any(c in str(mode) for c in "wax+")) or \
                    (name in PATH_WRITES and isinstance(node.func, ast.Attribute) and run_path(node.func.value)):
                found.append((node.lineno, f"writes a file of the run folder ({ast.unparse(node)[:80]})"))
    return found


def test_only_run_builds_paths_in_a_run_folder_or_writes_its_files():
    offenders = [f"{path.relative_to(CORE.parent)}:{line}: {what}" for path in sorted(CORE.rglob("*.py"))
                 if path != OWNER for line, what in folder_writes(ast.parse(path.read_text()))]
    assert not offenders, "use (or add) a method of core.runs.run.Run instead:\n" + "\n".join(offenders)


def test_the_check_finds_what_the_engine_used_to_write_by_hand():
    before = ast.parse('write_json(run.config_path, cfg)\nopen(run.log_path, "a")\nrun.checkpoints / "last.json"\n'
                       'run.familiarity_path.unlink()\nappend_line(run.metrics_path, line)\nopen(run.log_path)\n')
    assert [line for line, _ in folder_writes(before)] == [1, 2, 3, 4, 5]  # reading the log is no write


def test_no_function_of_core_or_of_a_page_is_over_80_lines():
    files = sorted(CORE.rglob("*.py")) + sorted((ROOT / "pages").glob("*.py"))
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for path in files for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= LONGEST]
    assert not long, f"over {LONGEST} lines: cut them into named steps:\n" + "\n".join(long)
