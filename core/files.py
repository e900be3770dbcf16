"""Files that are never seen half-written: atomic replace for whole files, whole-line appends.

Every JSON file of a run folder and every checkpoint file goes through here.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path
from collections.abc import Callable, Iterator

from core.errors import StudioError


class FileError(StudioError):
    pass


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, flush it to disk, then rename over: readers see old or new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.errno == errno.ENOSPC:
            raise FileError(f"{path}: the disk is full; free some space, then resume the run "
                            f"(the previous version of this file is intact)") from None
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:
        raise FileError(f"{path}: unreadable ({e}); the run folder is damaged") from None


JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "true/false",
              type(None): "null"}


def json_problem(data: bytes, kind: type = dict) -> str | None:
    """What is wrong with `data` as a JSON file holding a `kind` (an object by default), in words; None if nothing.
    Tells apart the ways a file gets damaged: empty, not text, cut short or not JSON, JSON of another type."""
    if not data.strip():
        return "empty"
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return "not text (binary garbage)"
    try:
        value = json.loads(text)
    except ValueError as e:
        return f"not valid JSON, cut short or garbled ({e})"
    if not isinstance(value, kind):
        return f"holds a JSON {JSON_TYPES.get(type(value), 'value')}, not a JSON {JSON_TYPES[kind]}"
    return None


def read_object(path: Path, default=None) -> dict:
    """The JSON object at `path` (`default` when there is no file); a FileError saying what is wrong when the
    file is damaged or holds something else than an object."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return default
    except OSError as e:
        raise FileError(f"{path}: unreadable ({e.strerror})") from None
    if problem := json_problem(data):
        raise FileError(f"{path}: damaged: {problem}")
    return json.loads(data)


def append_line(path: Path, obj) -> None:
    """One write() of a whole line with O_APPEND: a crash leaves at most a torn last line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(obj) + "\n").encode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` for a read-change-write: one writer at a time, across processes.

    The lock is a flock on a file beside it (.NAME.lock), not on `path`, which atomic writes replace.
    The kernel drops it when its process dies, so a killed writer never blocks the others.
    """
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def update_json(path: Path, change: Callable[[dict], dict]) -> dict:
    """Read the JSON object at `path` (or {}), change it and write it back, all under its lock. A damaged file
    raises FileError: it is not overwritten by a change made to nothing."""
    with locked(path):
        obj = change(read_object(path, default={}))
        write_json(path, obj)
        return obj


PROJECT_DIR = Path(__file__).resolve().parent.parent  # the checkout: runs/ lives here, processes start here


def cache_dir() -> Path:
    """Where this machine keeps what it can compute again: $RESNET_STUDIO_CACHE, else ~/.cache/resnet-studio."""
    return Path(os.environ.get("RESNET_STUDIO_CACHE") or Path.home() / ".cache" / "resnet-studio")
