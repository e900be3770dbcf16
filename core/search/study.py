"""The study: where it is stored (SQLite here, or a PostgreSQL that several machines share), its name, this
machine's note of it, and the few facts workers and trials read from it.

`Study` is a study's handle: its name and storage URL in one object, the storage opened once per process. Reading
a study changes nothing in it; `Study.fail_dead_trials` (workers, Stop, `search --status`) is the one place dead
trials are failed. Optuna is used through its public API; what is not public is in optuna_private.py."""
from __future__ import annotations

import contextlib
import math
import re
import socket
import threading
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

from core.errors import StudioError
from core.files import FileError, read_object, update_json
from core.processes import process_alive, process_start_time
from core.runs.run import Run, runs_root
from core.search import optuna_private
from core.search.space import Space

# -- how workers and trials talk to the study: one visible place --
HEARTBEAT_S = 5       # a live trial records a heartbeat this often
GRACE_S = 30          # ... and is taken for dead (failed, then queued again) after this long without one
MAX_RELAUNCHES = 3    # a trial whose process keeps dying is failed after this many relaunches

# -- when the database is away (down, restarting, out of reach): nobody fails, everybody waits --
RETRY_FIRST_S = 1.0   # the first retry comes after this long, each next one after twice as long ...
RETRY_MAX_S = 15.0    # ... up to this; below GRACE_S, so a live trial beats again before it could be taken for dead
END_WAIT_S = 30 * 60  # a trial that has ended waits this long to tell the study, then leaves it to the heartbeat
CONNECT_TIMEOUT_S = 10  # a database that does not answer a connection within this long counts as away


STUDY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,55}$")  # + "-NNN" stays a valid run name


# the heartbeat that finds dead trials is "experimental" in Optuna, and meant for Study.optimize; we use it on
# purpose with ask-and-tell, beating from each trial's own process
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


class SearchError(StudioError):
    pass


class StorageAway(SearchError):
    """The study's database cannot be reached now (down, restarting, out of reach): later it may be."""


def away_reason(error: BaseException) -> str | None:
    """What keeps the database away, in one line, when `error` says it cannot be reached (SQLAlchemy's
    OperationalError or InterfaceError, also inside the StorageInternalError Optuna makes of them); None when
    `error` is anything else."""
    if isinstance(error, StorageAway):
        return str(error)
    if isinstance(error, optuna.exceptions.StorageInternalError):
        error = error.__cause__
    if isinstance(error, sqlalchemy.exc.PendingRollbackError):  # a query the server cut off midway (it stopped):
        error = error.__context__  # Optuna's fallback query then meets the session's rollback; the cut is the context
    if not isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return None
    lines = str(error.orig if error.orig is not None else error).splitlines()
    return "; ".join(" ".join(line.split()) for line in lines if line.strip())  # the driver's words, one line


@contextlib.contextmanager
def reaching(url: str):
    """Errors that say the database is away, raised as StorageAway naming it; any other error as it is."""
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        reason = away_reason(e)
        if reason is None:
            raise
        raise StorageAway(f"database unreachable at {display_url(url)}: {reason}") from None


def search_dir() -> Path:
    return runs_root() / ".search"


def check_study_name(name: str) -> str:
    if not isinstance(name, str) or not STUDY_PATTERN.match(name):
        raise SearchError(f"study name {name!r}: use 1-56 letters, digits, '.', '_' or '-', starting with a letter "
                          f"or digit (its trials' runs are named NAME-000, NAME-001, ...)")
    return name


def record_path(name: str) -> Path:
    """This machine's note of a study: its storage, and the worker working on it here."""
    return search_dir() / f"{check_study_name(name)}.json"


def storage_url(name: str, url: str | None = None) -> str:
    """The study's storage: the one given, else the one this machine noted for it, else a SQLite file."""
    return url or read_object(record_path(name), default={}).get("storage") or \
        f"sqlite:///{search_dir() / (name + '.db')}"


def database_up_for(storage: optuna.storages.RDBStorage) -> float:
    """Seconds since the database server started (PostgreSQL); a file (SQLite) is never away."""
    engine = optuna_private.engine(storage)
    if engine.dialect.name != "postgresql":
        return math.inf
    with engine.connect() as connection:
        return connection.execute(sqlalchemy.text(
            "SELECT extract(epoch FROM now() - pg_postmaster_start_time())")).scalar()


def alive_here(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial's run trains (or is telling the study how it ended) in a process of this machine."""
    run = trial_run(trial)
    try:
        status = run.status() if run is not None else {}
    except FileError:
        status = {}  # its status is damaged: whether it lives is not known here; its heartbeat in the study says
    return status.get("host") in (None, socket.gethostname()) and \
        process_alive(status.get("pid"), status.get("pid_start"))


_storages: dict[str, tuple[optuna.storages.RDBStorage, tuple[int, int] | None]] = {}  # url -> storage, its file
_storages_lock = threading.Lock()


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The storage at `url`, opened once per process (its engine keeps its connections); a SQLite file that was
    moved away or replaced since is opened afresh."""
    with _storages_lock:
        held = _storages.get(url)
        if held is None or held[1] != sqlite_file(url):
            _storages[url] = (new_storage(url), sqlite_file(url))
        return _storages[url][0]


def sqlite_file(url: str) -> tuple[int, int] | None:
    """Which file a SQLite URL names now (device, inode); None for another database or a file not there."""
    try:
        found = Path(url.removeprefix("sqlite:///")).stat() if url.startswith("sqlite:///") else None
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if found else None


def new_storage(url: str) -> optuna.storages.RDBStorage:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else \
        {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    try:
        with reaching(url):
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RELAUNCHES, inherit_intermediate_values=True))
    except sqlalchemy.exc.DatabaseError as e:
        if not url.startswith("sqlite:///"):
            raise SearchError(f"storage {display_url(url)}: cannot open it ({e})") from None
        raise SearchError(f"{url.removeprefix('sqlite:///')}: the study's SQLite file is damaged "
                          f"({' '.join(str(e.orig or e).split())}); restore it from a copy, or move it away to "
                          f"start the study afresh") from None
    except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        raise SearchError(f"storage {display_url(url)}: cannot open it ({e}); give a URL like "
                          f"postgresql+psycopg://USER@HOST/DB (password from PGPASSWORD or ~/.pgpass)") from None


def display_url(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def pruner_for(space: Space) -> optuna.pruners.BasePruner:
    if space.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=space.startup_trials, n_warmup_steps=0)
    if space.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def load_study(name: str, storage: optuna.storages.RDBStorage) -> tuple[optuna.Study, Space]:
    """An existing study and its space (kept in the study, so every worker and trial reads the same)."""
    try:
        with reaching(storage.url):
            study = optuna.load_study(study_name=check_study_name(name), storage=storage)
    except KeyError:
        raise SearchError(f"no study named {name!r} in {display_url(storage.url)}; start it with "
                          f"`python -m core search --space SPACE.json --study {name} --trials N`") from None
    space = Space.from_dict(study.user_attrs["space"])
    study.pruner = pruner_for(space)
    return study, space


def create_study(name: str, space: Space, url: str | None = None) -> optuna.Study:
    """A new study holding `space`, or the existing one if it holds the same space."""
    storage = open_storage(storage_url(check_study_name(name), url))
    with reaching(storage.url):
        study = optuna.create_study(study_name=name, storage=storage, directions=space.directions,
                                    load_if_exists=True)
        stored = study.user_attrs.get("space")
        if stored is None:
            study.set_user_attr("space", space.to_dict())
    if stored is not None and stored != space.to_dict():
        raise SearchError(f"study {name!r} already exists with another space; pick another --study name, or leave "
                          f"out --space to continue it with its own")
    return study


class Study:
    """A study: its name and its storage's URL (together, its identity), its storage (opened once per process)
    and, once asked for, the Optuna study and its space. Opening one reads nothing but this machine's note of it."""

    def __init__(self, name: str, url: str | None = None):
        self.name = check_study_name(name)
        self.url = storage_url(self.name, url)
        self._loaded: tuple[optuna.Study, Space] | None = None
        self._ids: dict[int, int] = {}           # trial number -> Optuna's trial id, which never changes
        self._rescued: dict[int, float] = {}     # trial number -> when this process last beat for it

    def __eq__(self, other) -> bool:
        return isinstance(other, Study) and (self.name, self.url) == (other.name, other.url)

    def __hash__(self) -> int:
        return hash((self.name, self.url))

    def __repr__(self) -> str:
        return f"Study({self.name!r}, {self.shown_url!r})"

    @property
    def shown_url(self) -> str:
        return display_url(self.url)

    @property
    def storage(self) -> optuna.storages.RDBStorage:
        return open_storage(self.url)

    def reaching(self):
        return reaching(self.url)

    def load(self) -> tuple[optuna.Study, Space]:
        if self._loaded is None:
            self._loaded = load_study(self.name, self.storage)
        return self._loaded

    @property
    def optuna(self) -> optuna.Study:
        return self.load()[0]

    @property
    def space(self) -> Space:
        return self.load()[1]

    def trial_id(self, number: int) -> int:
        """Optuna's id of trial `number`: what its heartbeat and its storage calls take."""
        if number not in self._ids:
            study_id = self.storage.get_study_id_from_name(self.name)
            self._ids[number] = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        return self._ids[number]

    def trial(self, number: int) -> optuna.trial.FrozenTrial:
        """Trial `number` as the storage has it now."""
        return self.storage.get_trial(self.trial_id(number))

    def beat_for(self, number: int) -> None:
        """A heartbeat for trial `number`, from this process."""
        self.storage.record_heartbeat(self.trial_id(number))
        self._rescued[number] = time.monotonic()

    def stop_requested(self) -> bool:
        return stop_requested(self.optuna)

    def fail_dead_trials(self) -> None:
        """Optuna's search for dead trials (no heartbeat for GRACE_S: failed, and queued again by
        RetryHeartbeatStaleTrialCallback), allowing for a database outage: while the database is away no trial
        can beat, and one that lapsed only for that is not dead. Workers and explicit actions call this; reading
        a study does not."""
        with self.reaching():
            if database_up_for(self.storage) < GRACE_S:
                return  # every trial's heartbeat stopped with the database: give them time to beat again
            for trial in self.optuna.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if time.monotonic() - self._rescued.get(trial.number, -math.inf) > HEARTBEAT_S and alive_here(trial):
                    self.beat_for(trial.number)  # its beats may have been lost to an outage; it lives here
            optuna.storages.fail_stale_trials(self.optuna)


def trial_run(trial: optuna.trial.FrozenTrial) -> Run | None:
    name = trial.user_attrs.get("run")
    run = Run.named(name) if name else None
    return run if run is not None and run.exists() else None


def retry_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the failed trial that Optuna queued again as `trial` (the first one, for a retry's retry)."""
    return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def retried_numbers(trials: list) -> dict[int, int]:
    """The numbers of failed trials that Optuna queued again, and the numbers of their retries."""
    return {retry_of(t): t.number for t in trials if retry_of(t) is not None}


def is_counted(trial: optuna.trial.FrozenTrial, retried: dict[int, int]) -> bool:
    """Whether a trial counts toward --trials: not an over-budget rejection, not a failure a retry has replaced,
    not a surplus ask (a worker's ask that came when the study already had its trials)."""
    return not trial.user_attrs.get("rejected") and not trial.user_attrs.get("surplus") and \
        not (trial.state == TrialState.FAIL and trial.number in retried)


def counted(trials: list) -> int:
    """Trials toward --trials."""
    retried = retried_numbers(trials)
    return sum(is_counted(t, retried) for t in trials)


def stop_requested(study: optuna.Study) -> bool:
    return bool(study.user_attrs.get("stop"))


def continue_study(study: Study) -> None:
    """Searching again continues a stopped study. Cleared by whoever asks for a worker, not by the worker
    itself, so that a stop that comes while a detached worker is starting still stops it."""
    with study.reaching():
        study.optuna.set_user_attr("stop", False)


def note_worker(name: str, pid: int) -> None:
    update_record(name, pid=pid, pid_start=process_start_time(pid), started=time.time())


def update_record(name: str, **fields) -> None:
    search_dir().mkdir(parents=True, exist_ok=True)
    update_json(record_path(name), lambda record: record | fields)


def worker_alive(name: str) -> bool:
    try:
        record = read_object(record_path(name), default={})
    except FileError:
        return False  # its note is damaged (storage_url says so): no worker of it is known
    return process_alive(record.get("pid"), record.get("pid_start"))


def list_studies() -> list[str]:
    """The studies this machine has worked on or looked at, newest first."""
    if not search_dir().is_dir():
        return []
    records = sorted(search_dir().glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.stem for p in records if STUDY_PATTERN.match(p.stem)]


def start_study(space: Space, name: str, url: str | None, trials: int) -> Study:
    """Create (or reopen) the study, with its number of trials when given, and note it on this machine."""
    url = storage_url(check_study_name(name), url)
    study = create_study(name, space, url)
    if trials:  # before any worker starts: the page counts "0 of N" at once
        with reaching(url):
            study.set_user_attr("trials", trials)
    update_record(name, storage=url, trials=trials)
    return Study(name, url)
