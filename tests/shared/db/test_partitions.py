"""Monthly partitions: created idempotently, safely under concurrency, bounded at UTC month starts."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta, timezone

import asyncpg
import pytest

from shared.db.partitions import ensure_partitions, list_partitions, month_start, partition_name
from shared.db.repositories import Repositories
from shared.ids import uuid7
from tests.shared.db.conftest import sha_of, unique_user


async def test_ensure_partitions_is_idempotent(conn: asyncpg.Connection) -> None:
    created = await ensure_partitions(conn, start=date(2040, 1, 17), months=2)
    assert sorted(created) == [
        "image_process_jobs_y2040m01",
        "image_process_jobs_y2040m02",
        "image_tags_y2040m01",
        "image_tags_y2040m02",
    ]
    assert await ensure_partitions(conn, start=date(2040, 1, 1), months=2) == []
    assert await ensure_partitions(conn, start=date(2039, 12, 1), months=3) == [
        "image_process_jobs_y2039m12",
        "image_tags_y2039m12",
    ]
    bound = await conn.fetchval(
        "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'image_process_jobs_y2040m02'"
    )
    assert bound == "FOR VALUES FROM ('2040-02-01 00:00:00+00') TO ('2040-03-01 00:00:00+00')"
    with pytest.raises(ValueError):
        await ensure_partitions(conn, start=date(2040, 1, 1), months=0)


async def test_concurrent_callers_create_each_month_once(pool: asyncpg.Pool) -> None:
    async def call() -> list[str]:
        async with pool.acquire() as conn:
            return await ensure_partitions(conn, start=date(2041, 5, 1), months=3)

    results = await asyncio.gather(*(call() for _ in range(5)))
    created = [name for result in results for name in result]
    assert sorted(created) == sorted(
        partition_name(t, date(2041, m, 1)) for t in ("image_process_jobs", "image_tags") for m in (5, 6, 7)
    )


async def test_rows_land_in_their_utc_month(conn: asyncpg.Connection, repos: Repositories) -> None:
    await ensure_partitions(conn, start=date(2042, 1, 1), months=2)
    end_of_january = datetime(2042, 1, 31, 23, 59, 59, 999000, tzinfo=UTC)
    for at, expected in [
        (end_of_january, "image_process_jobs_y2042m01"),
        (end_of_january + timedelta(milliseconds=1), "image_process_jobs_y2042m02"),
    ]:
        job_id = uuid7(at)
        await repos.jobs.insert_job(
            conn,
            job_id=job_id,
            user_id=unique_user(),
            original_path="o",
            content_sha256=sha_of("p"),
            original_bytes=1,
            image_width=1,
            image_height=1,
            params={},
            params_hash="h",
            model_name="m",
            source="http",
            tags=["edge"],
        )
        assert (
            await conn.fetchval("SELECT tableoid::regclass::text FROM image_process_jobs WHERE job_id = $1", job_id)
            == expected
        )
    assert "image_tags_y2042m02" in await list_partitions(conn, table="image_tags")


def test_month_helpers() -> None:
    assert month_start(date(2026, 11, 27)) == date(2026, 11, 1)
    # 23:30 on Nov 30 at UTC-5 is already December in UTC.
    late = datetime(2026, 11, 30, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert month_start(late) == date(2026, 12, 1)
    with pytest.raises(ValueError):
        month_start(datetime(2026, 1, 1))  # naive on purpose
    assert partition_name("image_tags", date(2026, 3, 1)) == "image_tags_y2026m03"



@pytest.mark.parametrize(
    ("zone", "datestyle", "year"),
    [("Asia/Shanghai", "SQL, DMY", 2043), ("Asia/Kolkata", "Postgres, MDY", 2044), ("UTC", "ISO, MDY", 2045)],
)
async def test_bounds_are_utc_month_starts_in_any_session_datestyle(
    pool: asyncpg.Pool, zone: str, datestyle: str, year: int
) -> None:
    # 0001 spelled the bounds as the session does: under 'SQL, DMY' in Asia/Shanghai a month began at
    # 14:00 UTC (CST read back as US Central), and its first 14 hours had no partition.
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL TimeZone = '{zone}'")
            await conn.execute(f"SET LOCAL DateStyle = '{datestyle}'")
            await ensure_partitions(conn, start=date(year, 4, 1), months=1)
        # Read back in the pool's own session (ISO, UTC): the bounds as they are stored.
        bound = await conn.fetchval(
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = $1", f"image_process_jobs_y{year}m04"
        )
    assert bound == f"FOR VALUES FROM ('{year}-04-01 00:00:00+00') TO ('{year}-05-01 00:00:00+00')"
