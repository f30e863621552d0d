"""Every aggregate the stats service keeps equals a count over the jobs table.

The module makes jobs of its own first (two users; completed jobs with different parameters over HTTP,
and a failed one from a bad upload event), so every check has something to count when the file runs by
itself, and checks that its own jobs are among what was counted. Run after the other end-to-end modules
(pytest orders files by name), the same checks also cover whatever they did.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import pytest

from rmbg.demo import sample_bytes
from shared.db import open_database
from tests.e2e.conftest import Pipeline
from tests.e2e.test_pipeline import _publish_upload, _submit, _wait

pytestmark = pytest.mark.slow

T = TypeVar("T")


@dataclass(frozen=True)
class OwnJobs:
    statuses: dict[str, str]  # job id -> final status
    users: dict[str, int]  # user -> jobs made


@pytest.fixture(scope="module")
async def own(pipeline: Pipeline) -> OwnJobs:
    """Four completed HTTP jobs and one failed upload-topic job of two users of this module."""
    alice, bob = f"consistency-a-{secrets.token_hex(3)}", f"consistency-b-{secrets.token_hex(3)}"
    statuses: dict[str, str] = {}
    async with pipeline.client(alice, timeout=30) as client:
        ids = []
        for name, params in (
            ("coffee.png", {"threshold": 0.5}),
            ("astronaut.png", {"cutout_format": "png"}),
            ("rocket.jpg", {"threshold": 0.5, "cutout_format": "png"}),
        ):
            resp = await _submit(client, sample_bytes(name), params=params, name=name)
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["job_id"])
        statuses |= {job_id: job["status"] for job_id, job in (await _wait(client, ids)).items()}
    async with pipeline.client(bob, timeout=30) as client:
        resp = await _submit(client, sample_bytes("chelsea.png"), name="chelsea.png")
        assert resp.status_code == 202, resp.text
        good = resp.json()["job_id"]
        bad = await _publish_upload(pipeline, b"not an image at all", user=bob)
        jobs = await _wait(client, [good, bad], not_yet_accepted=frozenset({bad}))
        statuses |= {job_id: job["status"] for job_id, job in jobs.items()}
    assert sorted(statuses.values()) == ["completed"] * 4 + ["failed"], statuses
    return OwnJobs(statuses=statuses, users={alice: 3, bob: 2})


async def _settled(fetch: Callable[[], Awaitable[tuple[T, T]]], timeout_s: float = 60) -> tuple[T, T]:
    """(counted, truth) once they agree, or as they are at the deadline: the stats service applies an event
    a moment after the job's row changes, so a check waits for it to catch up rather than for a time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        counted, truth = await fetch()
        if counted == truth or loop.time() > deadline:
            return counted, truth
        await asyncio.sleep(0.3)


def _rows(records: list[asyncpg.Record]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in records]


async def test_processing_stats_equal_a_count_over_jobs(pipeline: Pipeline, own: OwnJobs) -> None:
    """Every day's stats row equals a GROUP BY over the jobs table."""
    dsn = pipeline.settings.postgres.dsn.get_secret_value()

    async def fetch() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
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
        return _rows(stats), _rows(truth)

    stats, truth = await _settled(fetch)
    assert stats == truth
    today = datetime.now(UTC).date()
    (_, total, completed, failed) = next(row for row in stats if row[0] == today)
    assert total >= 5 and completed >= 4 and failed >= 1, "this module's own jobs are counted"


async def test_params_counts_equal_a_count_over_jobs(pipeline: Pipeline, own: OwnJobs) -> None:
    """COUNT of a params containment served from per-day counts equals a scan of the jobs."""
    today = datetime.now(UTC).date()
    async with open_database(pipeline.settings.postgres) as db, db.pool.acquire() as conn:
        # This module's jobs: threshold 0.5 twice, png twice, both once, and five in all.
        for contains, ours in (
            ({"threshold": 0.5}, 2),
            ({"cutout_format": "png"}, 2),
            ({"threshold": 0.5, "cutout_format": "png"}, 1),
            ({}, 5),
        ):

            async def fetch(contains: dict[str, Any] = contains) -> tuple[int, int]:
                served = await db.stats.params_job_count(conn, contains=contains, date_from=today, date_to=today)
                expected = await db.stats.params_counts_from_jobs(
                    conn, contains=contains, date_from=today, date_to=today
                )
                return served, expected

            served, expected = await _settled(fetch)
            assert served == expected, contains
            assert served >= ours, contains


async def test_user_counts_equal_a_count_over_jobs(pipeline: Pipeline, own: OwnJobs) -> None:
    """user_job_counts, kept by the stats service from accepted events, equals a GROUP BY over jobs."""
    dsn = pipeline.settings.postgres.dsn.get_secret_value()

    async def fetch() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        conn = await asyncpg.connect(dsn)
        try:
            truth = await conn.fetch("SELECT user_id, count(*) FROM image_process_jobs GROUP BY 1 ORDER BY 1")
            kept = await conn.fetch("SELECT user_id, jobs FROM user_job_counts WHERE jobs > 0 ORDER BY 1")
        finally:
            await conn.close()
        return _rows(kept), _rows(truth)

    kept, truth = await _settled(fetch)
    assert kept == truth
    counts = dict(kept)
    assert {user: counts.get(user) for user in own.users} == own.users
