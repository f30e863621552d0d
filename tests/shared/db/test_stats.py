"""StatsRepository: each (day, job, kind) counts once; processing_stats agrees with the jobs table."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from shared.contracts.events import CutoutFormat
from shared.db.migrate import upgrade
from shared.db.models import StatKind
from shared.db.partitions import partition_name
from shared.db.pool import create_pool
from shared.db.repositories import ReconcileRefused, Repositories
from shared.ids import uuid7
from tests.shared.db.conftest import sha_of, unique_user


def _job(day: date, i: int, user: str) -> dict[str, Any]:
    at = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(seconds=i * 37 % 86_400)
    return {
        "job_id": uuid7(at),
        "user_id": user,
        "original_path": f"original/{i}",
        "content_sha256": sha_of(str(i)),
        "original_bytes": 2048,
        "image_width": 10,
        "image_height": 10,
        "params": {},
        "params_hash": "p",
        "model_name": "m",
        "source": "http",
        "tags": [],
    }


async def test_apply_event_counts_once(conn: asyncpg.Connection, repos: Repositories) -> None:
    day = date(2033, 1, 5)
    job_id = uuid7(datetime(2033, 1, 5, 12, tzinfo=UTC))
    assert await repos.stats.apply_event(conn, stat_date=day, job_id=job_id, kind="accepted") is True
    for _ in range(3):
        assert await repos.stats.apply_event(conn, stat_date=day, job_id=job_id, kind="accepted") is False
    assert (
        await repos.stats.apply_event(conn, stat_date=day, job_id=job_id, kind="completed", processing_time_ms=250)
        is True
    )
    assert (
        await repos.stats.apply_event(conn, stat_date=day, job_id=job_id, kind="completed", processing_time_ms=999)
        is False
    )
    [row] = await repos.stats.daily_totals(conn, days=1, today=day)
    assert (row.total_jobs, row.completed_jobs, row.failed_jobs, row.sum_processing_time_ms) == (1, 1, 0, 250)
    assert row.avg_processing_time_ms == 250 and row.error_rate == 0
    with pytest.raises(ValueError):
        await repos.stats.apply_event(conn, stat_date=day, job_id=job_id, kind="processing")  # type: ignore[arg-type]


async def test_daily_totals_fills_missing_days(conn: asyncpg.Connection, repos: Repositories) -> None:
    rows = await repos.stats.daily_totals(conn, days=3, today=date(1990, 1, 2))
    assert [r.stat_date for r in rows] == [date(1989, 12, 31), date(1990, 1, 1), date(1990, 1, 2)]
    assert all(r.total_jobs == 0 and r.avg_processing_time_ms is None and r.error_rate is None for r in rows)
    with pytest.raises(ValueError):
        await repos.stats.daily_totals(conn, days=0)


async def test_mixed_run_matches_jobs_table(pool: asyncpg.Pool, repos: Repositories) -> None:
    """Jobs end in every state; their events arrive duplicated, shuffled and from several consumers at
    once; processing_stats then equals the same figures computed from the jobs table."""
    day = date(2033, 2, 14)
    rng = random.Random(11)
    user = unique_user("stats")
    events: list[tuple[Any, StatKind, int | None]] = []
    async with pool.acquire() as conn:
        for i in range(60):
            args = _job(day, i, user)
            await repos.jobs.insert_job(conn, **args)
            job_id = args["job_id"]
            events.append((job_id, "accepted", None))
            fate = rng.choice(["pending", "processing", "completed", "completed", "failed"])
            if fate != "pending":
                await repos.jobs.mark_processing(conn, job_id=job_id, started_at=datetime.now(UTC), attempt=1)
            if fate == "completed":
                ms = rng.randrange(10, 3000)
                await repos.jobs.mark_completed(
                    conn,
                    job_id=job_id,
                    cutout_format=CutoutFormat.WEBP,
                    mask_bytes=1,
                    processed_bytes=1,
                    model_name="m",
                    model_revision=None,
                    processing_time_ms=ms,
                    completed_at=datetime.now(UTC),
                    reused=False,
                )
                events.append((job_id, "completed", ms))
            elif fate == "failed":
                await repos.jobs.mark_failed(conn, job_id=job_id, error_message="x", completed_at=datetime.now(UTC))
                events.append((job_id, "failed", None))

    deliveries = [e for e in events for _ in range(rng.randrange(1, 4))]
    rng.shuffle(deliveries)
    shards = [deliveries[i::4] for i in range(4)]

    async def consume(batch: list[tuple[Any, StatKind, int | None]]) -> int:
        counted = 0
        async with pool.acquire() as conn:
            for start in range(0, len(batch), 10):
                # Like the stats service: one transaction per batch of events.
                async with conn.transaction():
                    for job_id, kind, ms in batch[start : start + 10]:
                        counted += await repos.stats.apply_event(
                            conn, stat_date=day, job_id=job_id, kind=kind, processing_time_ms=ms
                        )
        return counted

    counted = await asyncio.gather(*(consume(s) for s in shards))
    assert sum(counted) == len(events)

    async with pool.acquire() as conn:
        [stored] = await repos.stats.daily_totals(conn, days=1, today=day)
        computed = await repos.stats.totals_from_jobs(conn, stat_date=day)
        assert stored == computed
        assert stored.total_jobs == 60


async def test_reconcile_rewrites_day_and_ledger(conn: asyncpg.Connection, repos: Repositories) -> None:
    day = date(2033, 3, 3)
    user = unique_user("rec")
    ids = []
    for i in range(10):
        args = _job(day, i, user)
        await repos.jobs.insert_job(conn, **args)
        ids.append(args["job_id"])
    for job_id in ids[:4]:
        await repos.jobs.mark_completed(
            conn,
            job_id=job_id,
            cutout_format=CutoutFormat.WEBP,
            mask_bytes=1,
            processed_bytes=1,
            model_name="m",
            model_revision=None,
            processing_time_ms=100,
            completed_at=datetime.now(UTC),
            reused=False,
        )
    await repos.jobs.mark_failed(conn, job_id=ids[4], error_message="x", completed_at=datetime.now(UTC))

    # Only some events arrived (each counting its user, as the stats handler does), and a bogus one for a
    # job not of this day.
    for job_id in ids[:3]:
        assert await repos.stats.apply_event(conn, stat_date=day, job_id=job_id, kind="accepted")
        await repos.stats.count_user(conn, user_id=user)
    await repos.stats.apply_event(conn, stat_date=day, job_id=uuid7(), kind="failed")
    assert await repos.stats.daily_totals(conn, days=1, today=day) != [
        await repos.stats.totals_from_jobs(conn, stat_date=day)
    ]

    async with conn.transaction():  # as `rmbg stats-reconcile` calls it
        row = await repos.stats.reconcile(conn, stat_date=day)
    expected = await repos.stats.totals_from_jobs(conn, stat_date=day)
    assert row == expected
    assert (row.total_jobs, row.completed_jobs, row.failed_jobs, row.sum_processing_time_ms) == (10, 4, 1, 400)
    assert await repos.stats.daily_totals(conn, days=1, today=day) == [expected]
    ledger = await conn.fetchval("SELECT count(*) FROM stats_ledger WHERE stat_date = $1", day)
    assert ledger == 10 + 4 + 1
    # The seven accepted events never counted: reconcile counts their user, since when they arrive now they
    # find their ledger rows and count nothing.
    user_jobs = "SELECT jobs FROM user_job_counts WHERE user_id = $1"
    assert await conn.fetchval(user_jobs, user) == 10

    # Events still in flight for those jobs count nothing now; a later transition counts once.
    for job_id in ids:
        assert await repos.stats.apply_event(conn, stat_date=day, job_id=job_id, kind="accepted") is False
    await repos.jobs.mark_failed(conn, job_id=ids[9], error_message="late", completed_at=datetime.now(UTC))
    assert await repos.stats.apply_event(conn, stat_date=day, job_id=ids[9], kind="failed") is True
    assert await repos.stats.daily_totals(conn, days=1, today=day) == [
        await repos.stats.totals_from_jobs(conn, stat_date=day)
    ]
    assert await conn.fetchval(user_jobs, user) == 10, "the late events counted the user no more"
    # Once pruned, the ledger no longer says which of a day's events were counted: reconciling that day
    # again leaves the user's count as it is instead of counting every job once more.
    await conn.execute("DELETE FROM stats_ledger WHERE stat_date <= $1", day)
    assert await repos.stats.reconcile(conn, stat_date=day) == await repos.stats.totals_from_jobs(conn, stat_date=day)
    assert await conn.fetchval(user_jobs, user) == 10
    # Reconciling again is a no-op.
    assert await repos.stats.reconcile(conn, stat_date=day) == await repos.stats.totals_from_jobs(conn, stat_date=day)
    assert await conn.fetchval(user_jobs, user) == 10


async def test_reconcile_refuses_a_day_whose_month_is_gone(conn: asyncpg.Connection, repos: Repositories) -> None:
    with pytest.raises(ReconcileRefused):
        await repos.stats.reconcile(conn, stat_date=date(1999, 1, 1))


async def test_reconcile_refuses_days_whose_jobs_retention_may_have_removed(
    scratch_database: Callable[[], Awaitable[str]], repos: Repositories
) -> None:
    """Besides a dropped month: a month a retention run detached and has not finished (its table is still
    there), and in the oldest month kept, which retention trims row by row, a day before its oldest job."""
    dsn = await scratch_database()
    await asyncio.to_thread(upgrade, dsn)
    pool = await create_pool(dsn, min_size=1, max_size=1, command_timeout=60)
    try:
        async with pool.acquire() as conn:
            await _refusals(conn, repos)
    finally:
        await pool.close()


async def _refusals(conn: asyncpg.Connection, repos: Repositories) -> None:
    oldest = await conn.fetchval(
        "SELECT min(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'image_process_jobs'::regclass"
    )
    month = date(int(oldest[-7:-3]), int(oldest[-2:]), 1)
    args = _job(month.replace(day=10), 0, unique_user("trim"))
    await repos.jobs.insert_job(conn, **args)
    # Before the oldest job's day, and that day itself (a cutoff is a time of day: its day is half trimmed).
    for day in (5, 10):
        with pytest.raises(ReconcileRefused, match="not after the day of its oldest remaining job"):
            await repos.stats.reconcile(conn, stat_date=month.replace(day=day))
    assert (await repos.stats.reconcile(conn, stat_date=month.replace(day=12))).total_jobs == 0  # after it: rebuilt

    later = date(month.year + (month.month == 12), month.month % 12 + 1, 1)
    detached = partition_name("image_process_jobs", later)
    await conn.execute(f'ALTER TABLE image_process_jobs DETACH PARTITION "{detached}"')
    with pytest.raises(ReconcileRefused, match="jobs are gone"):
        await repos.stats.reconcile(conn, stat_date=later.replace(day=3))
