"""Batched transitions (transitions.sql): the single transitions' guards, many jobs per statement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from shared.contracts.events import CutoutFormat
from shared.db.repositories import Repositories
from shared.db.repositories.jobs import Completion, Failure, Started
from shared.ids import uuid7
from tests.shared.db.conftest import JobFactory, unique_user

NOW = datetime.now(UTC)


def done(job_id, **over) -> Completion:  # type: ignore[no-untyped-def]
    values = dict(
        job_id=job_id, cutout_format=CutoutFormat.WEBP, mask_bytes=10,
        processed_bytes=None, model_name="briaai/RMBG-2.0", model_revision=None, processing_time_ms=120,
        completed_at=NOW, reused=False,
    )
    values.update(over)
    return Completion(**values)  # type: ignore[arg-type]


async def test_processing_many_moves_pending_only_once(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    user = unique_user("tm")
    pending = [await raw_job(conn, at=NOW - timedelta(minutes=i), user_id=user, status="pending") for i in range(3)]
    finished = await raw_job(conn, at=NOW, user_id=user, status="completed")
    ghost = uuid7(NOW)
    items = [Started(j, NOW, 2) for j in [*pending, finished, ghost]]
    assert (await repos.jobs.mark_processing_many(conn, items)).keys() == set(pending)
    for job_id in pending:
        job = await repos.jobs.get_job(conn, job_id=job_id)
        assert job is not None and job.status == "processing" and job.attempts == 2
    # A repeat changes nothing and reports nothing moved.
    assert (await repos.jobs.mark_processing_many(conn, items)).keys() == set()
    assert (await repos.jobs.mark_processing_many(conn, [])).keys() == set()


async def test_completed_many_matches_the_single_statement(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    user = unique_user("tm")
    # Two months apart: one statement, two partitions.
    a = await raw_job(conn, at=NOW, user_id=user, status="processing")
    b = await raw_job(conn, at=NOW - timedelta(days=40), user_id=user, status="pending")
    c = await raw_job(conn, at=NOW, user_id=user, status="failed")
    single = await raw_job(conn, at=NOW, user_id=user, status="processing")
    moved = await repos.jobs.mark_completed_many(
        conn, [done(a, model_revision="r1"), done(b, reused=True, mask_bytes=None), done(c)]
    )
    assert moved.keys() == {a, b}
    assert moved[a].status == "completed" and moved[a].model_revision == "r1" and moved[b].reused_result
    one = done(single, model_revision="r1")
    expected = await repos.jobs.mark_completed(conn, **one._asdict())
    got = await repos.jobs.get_job(conn, job_id=a)
    assert expected is not None and got is not None
    skip = {"job_id", "created_at", "updated_at", "mask_path", "processed_path"}
    assert {k: v for k, v in got.model_dump().items() if k not in skip} == {
        k: v for k, v in expected.model_dump().items() if k not in skip
    }
    assert got.status == "completed" and got.cutout_format == CutoutFormat.WEBP
    assert got.processed_path is not None and got.processed_path.endswith("-webp.webp")
    job_b = await repos.jobs.get_job(conn, job_id=b)
    assert job_b is not None and job_b.reused_result and job_b.mask_bytes is None
    failed = await repos.jobs.get_job(conn, job_id=c)
    assert failed is not None and failed.status == "failed"
    # Late and repeated: nothing moves, nothing is rewritten.
    late = [done(a, cutout_format=CutoutFormat.PNG), done(b)]
    assert (await repos.jobs.mark_completed_many(conn, late)).keys() == set()
    again = await repos.jobs.get_job(conn, job_id=a)
    assert again is not None and again.cutout_format == CutoutFormat.WEBP


async def test_duplicates_in_a_batch_first_wins(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    job_id = await raw_job(conn, at=NOW, user_id=unique_user("tm"), status="processing")
    moved = await repos.jobs.mark_completed_many(conn, [done(job_id, cutout_format=CutoutFormat.PNG), done(job_id)])
    assert moved.keys() == {job_id}
    job = await repos.jobs.get_job(conn, job_id=job_id)
    assert job is not None and job.cutout_format == CutoutFormat.PNG


async def test_get_jobs_reads_many_ids_across_partitions(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    user = unique_user("tm")
    a = await raw_job(conn, at=NOW, user_id=user, status="pending")
    b = await raw_job(conn, at=NOW - timedelta(days=40), user_id=user, status="completed")
    found = await repos.jobs.get_jobs(conn, job_ids=[b, a, a, uuid7(NOW)])
    assert found.keys() == {a, b}
    single = await repos.jobs.get_job(conn, job_id=b)
    assert found[b] == single and found[a].status == "pending"
    assert await repos.jobs.get_jobs(conn, job_ids=[]) == {}


async def test_failed_many(conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory) -> None:
    user = unique_user("tm")
    a = await raw_job(conn, at=NOW, user_id=user, status="pending")
    b = await raw_job(conn, at=NOW, user_id=user, status="completed")
    moved = await repos.jobs.mark_failed_many(conn, [Failure(a, "bad\x00input", NOW), Failure(b, "late", NOW)])
    assert moved.keys() == {a} and moved[a].status == "failed"
    job = await repos.jobs.get_job(conn, job_id=a)
    assert job is not None and job.status == "failed" and job.error_message is not None
    assert "\x00" not in job.error_message
    assert (await repos.jobs.mark_failed_many(conn, [Failure(a, "again", NOW)])).keys() == set()
    done_b = await repos.jobs.get_job(conn, job_id=b)
    assert done_b is not None and done_b.status == "completed"
    try:
        await repos.jobs.mark_failed_many(conn, [Failure(a, "", NOW)])
    except ValueError:
        pass
    else:
        raise AssertionError("an empty reason must be refused")
