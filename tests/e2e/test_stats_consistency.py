"""Runs after the other end-to-end modules (pytest orders files by name): whatever they did, every
aggregate the stats service keeps equals a count over the jobs table."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from rmbg.demo import sample_bytes
from shared.db import open_database
from tests.e2e.conftest import Pipeline
from tests.e2e.test_pipeline import _submit, _wait


@pytest.fixture(scope="module", autouse=True)
async def own_job(pipeline: Pipeline) -> None:
    """A job of this module's own (with parameters counted below), so each check stands alone and never
    compares two empty results when the file runs by itself."""
    async with pipeline.client("consistency", timeout=30) as client:
        own = (await _submit(client, sample_bytes("coffee.png"), params={"threshold": 0.5})).json()
        await _wait(client, [own["job_id"]])


async def test_processing_stats_equal_a_count_over_jobs(pipeline: Pipeline) -> None:
    """Runs after the others: every day's stats row equals a GROUP BY over the jobs table."""
    dsn = pipeline.settings.postgres.dsn.get_secret_value()
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        conn = await asyncpg.connect(dsn)
        try:
            truth = await conn.fetch(
                """SELECT (created_at AT TIME ZONE 'UTC')::date AS d, count(*) AS total,
                          count(*) FILTER (WHERE status = 'completed') AS completed,
                          count(*) FILTER (WHERE status = 'failed') AS failed
                   FROM image_process_jobs GROUP BY 1 ORDER BY 1"""
            )
            stats = await conn.fetch(
                "SELECT stat_date AS d, total_jobs AS total, completed_jobs AS completed, failed_jobs AS failed "
                "FROM processing_stats ORDER BY 1"
            )
        finally:
            await conn.close()
        if [tuple(r) for r in truth] == [tuple(r) for r in stats] or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert truth, "the earlier tests made jobs"
    assert [tuple(r) for r in stats] == [tuple(r) for r in truth]


async def test_params_counts_equal_a_count_over_jobs(pipeline: Pipeline) -> None:
    """COUNT of a params containment served from per-day counts equals a scan of the jobs."""
    today = datetime.now(UTC).date()
    deadline = asyncio.get_running_loop().time() + 60
    async with open_database(pipeline.settings.postgres) as db, db.pool.acquire() as conn:
        for contains in ({"threshold": 0.5}, {"cutout_format": "png"}, {}):
            while True:  # the stats service applies the accepted event a moment after the job completes
                expected = await db.stats.params_counts_from_jobs(
                    conn, contains=contains, date_from=today, date_to=today
                )
                served = await db.stats.params_job_count(conn, contains=contains, date_from=today, date_to=today)
                if served == expected or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert served == expected, contains
        assert await db.stats.params_job_count(conn, contains={"threshold": 0.5}, date_from=today, date_to=today) >= 1


async def test_user_counts_equal_a_count_over_jobs(pipeline: Pipeline) -> None:
    """user_job_counts, kept by the stats service from accepted events, equals a GROUP BY over jobs."""
    dsn = pipeline.settings.postgres.dsn.get_secret_value()
    conn = await asyncpg.connect(dsn)
    try:
        truth = await conn.fetch("SELECT user_id, count(*) FROM image_process_jobs GROUP BY 1 ORDER BY 1")
        kept = await conn.fetch("SELECT user_id, jobs FROM user_job_counts WHERE jobs > 0 ORDER BY 1")
    finally:
        await conn.close()
    assert [tuple(r) for r in kept] == [tuple(r) for r in truth]
