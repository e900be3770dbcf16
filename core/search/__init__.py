"""Search: find the most accurate design within the budget automatically, with Optuna.

A search space is plain JSON (`Space`): what to search (ranges or choices), the budget, and the fixed
settings of every trial. A study lives in an Optuna storage: by default a SQLite file under
runs/.search/, or any database URL (PostgreSQL) that workers on several machines share.

    worker (`python -m core search`)          trial (`python -m core train --resume`, one per run)
    asks Optuna for a trial, builds its   ->  trains like any run; after each epoch reports the
    design, rejects it if over budget,        validation accuracy and asks whether to prune; at the
    else makes a run folder and launches      end tells Optuna complete / pruned / failed; records
    it (same launch and device queue as       a heartbeat every few seconds while it lives
    any run), one trial per device

Faults. A trial's run folder is tagged with its study and trial (status.json `search`). A worker
relaunches the local run of a trial whose process died while Optuna still has it RUNNING (it
resumes from its last checkpoint: nothing is run twice or lost). Where no worker can see the run
(its machine is gone), Optuna's heartbeat marks the trial failed after GRACE_S and
RetryHeartbeatStaleTrialCallback queues it again, so another worker runs it. A database outage is none of
these: trials keep training and their reports wait, workers wait too, and no trial is failed for it (the
retry constants and the reasons are in study.py and trial.py).

Modules: space.py (the space), study.py (a study's handle, `Study`, its storage and the rules workers and trials
share), worker.py, trial.py, report.py (a study as JSON, and whether it is live), best.py (the best trial trained
in full), optuna_private.py (the one use of Optuna beyond its public API).

The default storage is SQLite through Optuna's RDBStorage, not the JournalFileBackend: it is the
same storage class as PostgreSQL, so one code path serves both, and only RDBStorage has the
heartbeat that finds trials whose process died. Its writes are a few per epoch and per heartbeat,
which SQLite's file lock handles for the few processes of one machine.
"""
