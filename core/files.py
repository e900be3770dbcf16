"""Files that are never seen half-written: atomic replace for whole files and folders, whole-line appends; and the
one lock across processes (FileLock), which every read-change-write, run folder, device queue and probe takes.

Every JSON file of a run folder and every checkpoint file goes through here.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
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


@contextlib.contextmanager
def whole_folder(out: Path) -> Iterator[Path]:
    """A hidden folder beside `out` to write into, renamed to `out` when the block ends and removed if it raises:
    `out` appears whole or not at all."""
    staging = out.with_name(f".{out.name}.export")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.replace(staging, out)


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


class FileLock:
    """An exclusive lock across processes on the lock file `path` (an OS file lock, flock): the OS drops it when its
    holder dies, however it dies, so a killed holder never blocks the others. Not reentrant: a second FileLock of
    the same file waits for the first, in the same process too. The file is made when missing and is never emptied
    or removed here, so a holder may leave a note in it (`note`) that others read while it holds the lock."""

    POLL_S = 0.05  # how often a wait with a time limit tries again

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait: float | None = None) -> bool:
        """Take the lock; True once held. `wait`: None waits as long as it takes, 0 takes it only if it is free now,
        else up to `wait` seconds; False when it was not free in time. FileNotFoundError: the file's folder is gone."""
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if deadline is None else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    return False
                time.sleep(self.POLL_S)
                continue
            except BaseException:
                os.close(fd)
                raise
            if os.fstat(fd).st_nlink == 0:  # removed (with its folder) by the holder we waited for: lock the path anew
                os.close(fd)
                continue
            self._fd = fd
            return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None

    def note(self, text: str) -> None:
        """Leave `text` (who holds it) in the held lock file, for others to read from the file."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode(), 0)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *_) -> None:
        self.release()


def is_locked(path: Path) -> bool:
    """Whether some process holds the lock file `path` now (False when there is no such file). Takes the lock for
    an instant to see, and makes no file."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` for a read-change-write: one writer at a time, across processes.

    The lock is a FileLock beside it (.NAME.lock), not on `path`, which atomic writes replace.
    """
    with FileLock(path.with_name(f".{path.name}.lock")):
        yield


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
