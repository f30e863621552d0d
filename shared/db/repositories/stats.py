"""processing_stats: counted from job events exactly once, read per day, repairable from the jobs."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple, get_args
from uuid import UUID

import asyncpg

from shared.db.models import DailyStats, StatKind, UserJobCount, UserSummary
from shared.db.partitions import month_start, partition_name
from shared.db.queryset import Queries, default_queries
from shared.exceptions import RmbgError

MAX_DAYS = 3660  # ten years of rows; daily_totals is a primary-key range, this only bounds a typo


class ReconcileRefused(RmbgError):
    """The jobs of that day are gone (retention dropped the month), so the counted stats are kept."""


class QuartileBound(NamedTuple):
    """One non-empty quartile of design query 6 over all time (1 = fewest jobs): its users and job counts.

    ``first_user`` is the quartile's first row in (jobs, user_id) order, which top_users needs.
    """

    quartile: int
    users: int
    min_jobs: int
    max_jobs: int
    first_user: str


class UserQuartiles(NamedTuple):
    total_users: int
    bounds: list[QuartileBound]
    # When these were computed: a snapshot's time (user_quartile_snapshot), or None when computed just now.
    as_of: datetime | None = None


class StatsRepository:
    """SQL in shared/db/queries/stats.sql. Construct once per process and share."""

    def __init__(self, queries: Queries | None = None) -> None:
        self._q = queries or default_queries()

    async def apply_event(
        self,
        conn: asyncpg.Connection,
        *,
        stat_date: date,
        job_id: UUID,
        kind: StatKind,
        processing_time_ms: int | None = None,
    ) -> bool:
        """Count one job event on ``stat_date`` (the UTC date of the job's created_at) once.

        True when counted now, False when this (day, job, kind) was already counted. accepted adds
        to total_jobs; completed to completed_jobs and sum_processing_time_ms; failed to failed_jobs.
        """
        if kind not in get_args(StatKind):
            raise ValueError(f"unknown stats event kind {kind!r}")
        counted = await self._q.apply_event(
            conn,
            stat_date=stat_date,
            job_id=job_id,
            kind=kind,
            processing_time_ms=processing_time_ms,
        )
        return counted is True

    async def user_summary(self, conn: asyncpg.Connection, *, user_id: str, since: datetime) -> UserSummary:
        row = await self._q.user_summary(conn, user_id=user_id, since=since)
        if row is None:  # pragma: no cover - an aggregate always returns one row
            raise RuntimeError("user_summary returned no row")
        return UserSummary.model_validate(dict(row))

    async def daily_totals(
        self, conn: asyncpg.Connection, *, days: int = 30, today: date | None = None
    ) -> list[DailyStats]:
        """Design query 2: one row per day for the ``days`` days ending ``today`` (UTC), oldest first.

        Days nothing was counted on come back as zeros (averages None).
        """
        if not 1 <= days <= MAX_DAYS:
            raise ValueError(f"days must be 1..{MAX_DAYS}, got {days}")
        day = today if today is not None else datetime.now(UTC).date()
        rows = await self._q.daily_totals(conn, today=day, days=days)
        return [DailyStats.from_row(row) for row in rows]

    async def totals_from_jobs(self, conn: asyncpg.Connection, *, stat_date: date) -> DailyStats:
        """The day's figures computed from the jobs table (what processing_stats should hold)."""
        row = await self._q.totals_from_jobs(conn, stat_date=stat_date)
        if row is None:  # pragma: no cover - an aggregate always returns a row
            raise RuntimeError("totals_from_jobs returned no row")
        return DailyStats.from_row(row)

    async def reconcile(self, conn: asyncpg.Connection, *, stat_date: date) -> DailyStats:
        """Rewrite the day's processing_stats row and ledger from the jobs table; returns the new row.

        Runs in a transaction (a savepoint of the caller's) holding a lock that makes stats events
        wait, so none is lost or double-counted across the rewrite. Refuses a day whose jobs retention
        may have removed (stats.sql reconcile_refusal): recomputing would erase history that
        processing_stats alone still holds.
        """
        relation = partition_name("image_process_jobs", month_start(stat_date))
        async with conn.transaction():
            # First, before any other lock: the order every writer of user_job_counts follows (retention's
            # rmbg_retire_month too), so reconcile and a retirement wait for each other, never deadlock.
            await self._q.lock_stats_writers(conn)
            refusal = await self._q.reconcile_refusal(conn, stat_date=stat_date, relation=relation)
            if refusal is not None:
                raise ReconcileRefused(
                    f"{stat_date} is not rebuilt from the jobs: {refusal}; processing_stats keeps it as counted"
                )
            await self._q.lock_stats_ledger(conn)
            row = await self._q.reconcile_day(conn, stat_date=stat_date)
            await self._q.clear_params_day(conn, stat_date=stat_date)
            await self._q.reconcile_params_day(conn, stat_date=stat_date)
        if row is None:  # pragma: no cover - INSERT .. ON CONFLICT DO UPDATE always returns the row
            raise RuntimeError("reconcile_day returned no row")
        return DailyStats.from_row(row)

    async def count_params(
        self, conn: asyncpg.Connection, *, stat_date: date, params_hash: str, params: dict[str, Any]
    ) -> None:
        """Count one accepted job under its parameters; call only when apply_event counted it."""
        await self._q.count_params(conn, stat_date=stat_date, params_hash=params_hash, params=params)

    async def params_job_count(
        self, conn: asyncpg.Connection, *, contains: dict[str, Any], date_from: date, date_to: date
    ) -> int:
        """How many jobs were accepted between the two days (inclusive) whose params contain ``contains``."""
        return int(
            await self._q.params_job_count(conn, contains=contains, date_from=date_from, date_to=date_to)
        )

    async def params_counts_from_jobs(
        self, conn: asyncpg.Connection, *, contains: dict[str, Any], date_from: date, date_to: date
    ) -> int:
        """The same count by scanning the jobs (tests and checks only)."""
        return int(
            await self._q.params_counts_from_jobs(conn, contains=contains, date_from=date_from, date_to=date_to)
        )

    async def prune_ledger(self, conn: asyncpg.Connection, *, before: date) -> int:
        """Forget the dedup entries of days before ``before``; returns the rows removed."""
        return int(await self._q.prune_ledger(conn, before=before))

    async def prune_params_counts(self, conn: asyncpg.Connection, *, before: date) -> None:
        """Forget the per-parameter counts of days before ``before`` (retention: they follow the jobs)."""
        await self._q.prune_params_counts(conn, before=before)

    async def count_user(self, conn: asyncpg.Connection, *, user_id: str) -> None:
        """Count one accepted job for its user; call only when apply_event counted it."""
        await self._q.count_user(conn, user_id=user_id)

    async def rebuild_user_counts(self, conn: asyncpg.Connection) -> None:
        """Recompute user_job_counts from the jobs table (a repair; scans every job)."""
        await self._q.rebuild_user_counts(conn)

    # -- design query 6 over all time, from ix_user_job_counts_rank (migration 0011) ------------------------

    async def user_quartiles(self, conn: asyncpg.Connection) -> UserQuartiles:
        """How many users have jobs, and each non-empty quartile's size and bounds (NTILE(4)'s buckets)."""
        rows = await self._q.user_quartile_bounds(conn)
        bounds = [
            QuartileBound(int(r["quartile"]), int(r["users"]), int(r["min_jobs"]), int(r["max_jobs"]),
                          str(r["first_user"]))
            for r in rows
        ]
        return UserQuartiles(int(rows[0]["total_users"]) if rows else 0, bounds)

    async def refresh_user_quartiles(self, conn: asyncpg.Connection) -> UserQuartiles:
        """Compute the bounds now and store them as the snapshot (the stats service, every minute)."""
        live = await self.user_quartiles(conn)
        as_of = await self._q.save_user_quartiles(
            conn, total_users=live.total_users, bounds=[b._asdict() for b in live.bounds]
        )
        return live._replace(as_of=as_of)

    async def user_quartiles_snapshot(self, conn: asyncpg.Connection, *, max_age: timedelta) -> UserQuartiles | None:
        """The stored bounds if computed within ``max_age``; None: no snapshot, an older one, or an empty one."""
        row = await self._q.user_quartile_snapshot(conn)
        # No users at the time (a new deployment's first minute) says nothing about now: computed live then.
        if row is None or row["age_s"] > max_age.total_seconds() or not row["total_users"]:
            return None
        try:
            bounds = [QuartileBound(**b) for b in row["bounds"]]
        except (TypeError, KeyError):  # written by a version with other fields: computed live until replaced
            return None
        return UserQuartiles(int(row["total_users"]), bounds, row["computed_at"])

    async def user_quartile(
        self, conn: asyncpg.Connection, *, user_id: str, bounds: list[QuartileBound]
    ) -> UserJobCount | None:
        """One user's all-time job count and quartile given ``bounds`` from :meth:`user_quartiles` (read in
        the same snapshot for an exact answer); None when they have no jobs."""
        row = await self._q.user_quartile(
            conn, user_id=user_id, first_jobs=[b.min_jobs for b in bounds], first_users=[b.first_user for b in bounds]
        )
        return UserJobCount(str(row["user_id"]), int(row["job_count"]), int(row["quartile"])) if row else None

    async def top_users(
        self, conn: asyncpg.Connection, *, limit: int, bounds: list[QuartileBound]
    ) -> list[UserJobCount]:
        """The ``limit`` busiest users (most jobs first, then user_id) with their quartiles, given ``bounds``
        from :meth:`user_quartiles` read in the same snapshot (a REPEATABLE READ transaction) or just before."""
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        rows = await self._q.top_users(
            conn, limit=limit, first_jobs=[b.min_jobs for b in bounds], first_users=[b.first_user for b in bounds]
        )
        return [UserJobCount(str(r["user_id"]), int(r["job_count"]), int(r["quartile"])) for r in rows]
