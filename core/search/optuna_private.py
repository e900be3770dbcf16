"""What search needs of Optuna beyond its documented API, in one place: RDBStorage's SQLAlchemy engine, which
tells how long a PostgreSQL server has been up (core.search.study.database_up_for).

Everything else goes through Optuna's public API: trial ids from `get_trial_id_from_study_id_trial_number`, retries
through `RetryHeartbeatStaleTrialCallback.retried_trial_number`, dead trials through
`optuna.storages.fail_stale_trials`. tests/search/test_search_optuna.py fails loudly on an Optuna where this module, or
a public behaviour search leans on, has changed.
"""
from __future__ import annotations

import optuna
import sqlalchemy


def engine(storage: optuna.storages.RDBStorage) -> sqlalchemy.engine.Engine:
    """The SQLAlchemy engine RDBStorage talks to its database through (its `engine` attribute, undocumented)."""
    return storage.engine
