"""rmbg_retire_month (migration 0020) takes its locks in the order every other path does: it waits for a
transaction that has written a job and is about to read tags, instead of deadlocking with it."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import asyncpg

from shared.db.partitions import ensure_partitions
from shared.db.repositories import Repositories
from shared.ids import uuid7, uuid7_time
from tests.shared.db.conftest import sha_of, unique_user

MONTH = date(2038, 7, 1)


async def _insert(conn: asyncpg.Connection, repos: Repositories, at: datetime) -> asyncpg.Record:
    job_id = uuid7(at)
    assert await repos.jobs.insert_job(
        conn, job_id=job_id, user_id=unique_user("ret"), original_ext="png", content_sha256=sha_of(str(job_id)),
        original_bytes=1, image_width=1, image_height=1, params={}, params_hash="h", model_name="m",
        source="http", tags=[],
    )
    return job_id


async def _waiting_on_a_lock(pool: asyncpg.Pool, pid: int) -> bool:
    async with pool.acquire() as conn:
        return bool(await conn.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid))


async def _until_waiting(pool: asyncpg.Pool, pid: int) -> bool:
    """Whether backend ``pid`` is waiting on a lock, polled for up to 4 s."""
    for _ in range(200):
        if await _waiting_on_a_lock(pool, pid):
            return True
        await asyncio.sleep(0.02)
    return await _waiting_on_a_lock(pool, pid)


async def test_retirement_waits_for_an_intake_between_its_job_and_its_tags(
    pool: asyncpg.Pool, repos: Repositories
) -> None:
    async with pool.acquire() as setup:
        await ensure_partitions(setup, start=MONTH, months=1)
        await _insert(setup, repos, datetime(2038, 7, 15, tzinfo=UTC))
    async with pool.acquire() as intake, pool.acquire() as retention:
        tx = intake.transaction()
        await tx.start()
        job_id = await _insert(intake, repos, datetime.now(UTC))  # the job written, its tags not yet read
        retiring = asyncio.create_task(retention.fetchval("SELECT rmbg_retire_month($1)", MONTH))
        pid = retention.get_server_pid()
        assert await _until_waiting(pool, pid), "retirement waits for the intake's transaction"
        # What intake does next (and every transition's RETURNING): read the job's tags. Before 0020 the
        # retirement held the tags table by now and waited for the jobs table: a deadlock, one aborted.
        tags = await intake.fetchval(
            "SELECT names FROM rmbg_job_tags($1, $2)", job_id, uuid7_time(job_id)
        )
        assert tags is None or list(tags) == []
        await tx.commit()
        assert await asyncio.wait_for(retiring, 30) == 1


async def test_retirement_and_a_listing_by_tag_wait_for_each_other_in_turn(
    pool: asyncpg.Pool, repos: Repositories
) -> None:
    month = date(2038, 9, 1)
    async with pool.acquire() as setup:
        await ensure_partitions(setup, start=month, months=1)
        await _insert(setup, repos, datetime(2038, 9, 15, tzinfo=UTC))
    async with pool.acquire() as reader, pool.acquire() as retention, pool.acquire() as lister:
        tx = reader.transaction()
        await tx.start()
        await reader.fetchval("SELECT count(*) FROM image_process_jobs WHERE created_at >= now()")  # holds jobs
        retiring = asyncio.create_task(retention.fetchval("SELECT rmbg_retire_month($1)", month))
        await _until_waiting(pool, retention.get_server_pid())
        # Queued behind the retirement's request for the jobs table. Named image_tags first (before 0020's
        # companion change in jobs.sql), the listing held the tags table while it queued: once the reader
        # let go, the retirement took jobs and waited for tags, and the two deadlocked.
        listing = asyncio.create_task(repos.jobs.list_jobs(lister, tag="no-such-tag-anywhere"))
        assert await _until_waiting(pool, lister.get_server_pid())
        await tx.commit()
        assert await asyncio.wait_for(retiring, 30) == 1
        assert (await asyncio.wait_for(listing, 30))[0] == []
