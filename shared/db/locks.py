"""Every PostgreSQL advisory lock rmbg takes, in one registry.

Advisory locks share one key space per database with every other application on it, so rmbg keeps its
keys under one class (7270, the two-int form ``pg_advisory_lock(class, objid)``). SQL files and the
migrations cannot import Python, so they spell the numbers out; tests/shared/db/test_locks.py reads every
.sql file and migration and fails when a lock there is not one of these (or one of these is unused).
"""

from __future__ import annotations

from enum import IntEnum

LOCK_CLASS = 7270


class AdvisoryLock(IntEnum):
    """objid within LOCK_CLASS; each comment says who takes it, in which mode, and why."""

    # Session lock of shared.db.migrate.upgrade: services starting together migrate one at a time.
    MIGRATIONS = 0
    # Transaction lock of rmbg_ensure_partitions (migration 0001): creating a month's partitions twice at
    # once would fail on the second CREATE.
    PARTITIONS = 1
    # Transaction lock of stats writers (stats.sql apply_event): fixes the order in which batches touch
    # days, so two batches wait for each other instead of deadlocking. Retention takes it too before it
    # reduces user_job_counts, and reconcile first of all (stats.sql lock_stats_writers, rmbg_retire_month
    # since 0019).
    STATS = 2
    # Transaction lock on stored objects (retention.sql): exclusive while retention checks references
    # and deletes objects, shared while intake stores an original and inserts its row.
    OBJECTS = 3

