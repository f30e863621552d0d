"""JobsRepository: idempotent intake, forward-only transitions, the trigger behind them, lookups."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from shared.contracts.events import CutoutFormat
from shared.db.partitions import list_partitions, partition_name
from shared.db.repositories import InvalidCursor, Repositories, decode_cursor, encode_cursor
from shared.ids import uuid7, uuid7_time
from shared.storage.keys import ObjectKeys
from tests.shared.db.conftest import JobFactory, sha_of, unique_user


def job_args(user_id: str, **over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "job_id": uuid7(),
        "user_id": user_id,
        "original_ext": "png",
        "content_sha256": sha_of("abc"),
        "original_bytes": 5000,
        "image_width": 640,
        "image_height": 480,
        "params": {"threshold": 0.5},
        "params_hash": "0123456789abcdef",
        "model_name": "briaai/RMBG-2.0",
        "source": "http",
        "tags": ["Product", " cat ", "product"],
    }
    args.update(over)
    return args


def completion(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "cutout_format": CutoutFormat.WEBP,
        "mask_bytes": 1000,
        "processed_bytes": 2000,
        "model_name": "briaai/RMBG-2.0",
        "model_revision": "rev1",
        "processing_time_ms": 321,
        "completed_at": datetime.now(UTC),
        "reused": False,
    }
    args.update(over)
    return args


async def test_insert_is_idempotent_and_creates_user_and_tags(conn: asyncpg.Connection, repos: Repositories) -> None:
    user = unique_user()
    args = job_args(user)
    assert await repos.jobs.insert_job(conn, **args) is True
    # Same id again (a redelivered upload event), even with other content: nothing changes.
    assert await repos.jobs.insert_job(conn, **{**args, "original_ext": "jpg", "tags": ["x"]}) is False

    record = await repos.jobs.get_job(conn, job_id=args["job_id"])
    assert record is not None
    assert record.status == "pending"
    assert record.created_at == uuid7_time(args["job_id"])
    assert record.original_path == ObjectKeys.original(sha_of("abc"), "png")
    assert record.tags == ("cat", "product")
    assert record.content_sha256 == sha_of("abc")
    assert record.file_size_kb == 5  # ceil(5000 / 1024)
    assert record.params == {"threshold": 0.5}
    assert record.attempts == 1 and record.reused_result is False
    assert await conn.fetchval("SELECT count(*) FROM image_process_jobs WHERE job_id = $1", args["job_id"]) == 1
    assert await conn.fetchval("SELECT username FROM users WHERE user_id = $1", user) == user


async def test_file_size_rounds_up(conn: asyncpg.Connection, repos: Repositories) -> None:
    args = job_args(unique_user(), original_bytes=1025, tags=[])
    await repos.jobs.insert_job(conn, **args)
    record = await repos.jobs.get_job(conn, job_id=args["job_id"])
    assert record is not None and record.file_size_kb == 2 and record.tags == ()


async def test_insert_failed_job(conn: asyncpg.Connection, repos: Repositories) -> None:
    args = job_args(unique_user(), status="failed", error_message="not an image", source="upload")
    assert await repos.jobs.insert_job(conn, **args)
    record = await repos.jobs.get_job(conn, job_id=args["job_id"])
    assert record is not None
    assert record.status == "failed" and record.error_message == "not an image"
    assert record.completed_at is not None and record.is_terminal
    with pytest.raises(ValueError, match="error_message"):
        await repos.jobs.insert_job(conn, **job_args(unique_user(), status="failed"))
    with pytest.raises(ValueError):
        await repos.jobs.insert_job(conn, **job_args(unique_user(), status="completed"))


async def test_insert_validates_ids_and_digests(conn: asyncpg.Connection, repos: Repositories) -> None:
    with pytest.raises(ValueError):
        await repos.jobs.insert_job(conn, **job_args(unique_user(), job_id=uuid.uuid4()))
    with pytest.raises(ValueError):
        await repos.jobs.insert_job(conn, **job_args(unique_user(), content_sha256="abc"))
    with pytest.raises(ValueError):
        await repos.jobs.insert_job(conn, **job_args(unique_user(), tags=["x" * 65]))


async def test_insert_inside_caller_transaction(conn: asyncpg.Connection, repos: Repositories) -> None:
    args = job_args(unique_user())
    async with conn.transaction():
        assert await repos.jobs.insert_job(conn, **args)
        assert await repos.jobs.insert_job(conn, **args) is False
    assert await repos.jobs.get_job(conn, job_id=args["job_id"]) is not None


async def test_get_job_unknown_or_not_v7(conn: asyncpg.Connection, repos: Repositories) -> None:
    assert await repos.jobs.get_job(conn, job_id=uuid7()) is None
    assert await repos.jobs.get_job(conn, job_id=uuid.uuid4()) is None


async def test_transitions_move_forward_once(conn: asyncpg.Connection, repos: Repositories) -> None:
    args = job_args(unique_user())
    job_id = args["job_id"]
    await repos.jobs.insert_job(conn, **args)

    started = datetime.now(UTC)
    processing = await repos.jobs.mark_processing(conn, job_id=job_id, started_at=started, attempt=2)
    assert processing is not None and processing.status == "processing"
    assert processing.started_at == started and processing.attempts == 2
    assert processing.tags == ("cat", "product")
    # Repeated "started" event: no transition.
    assert await repos.jobs.mark_processing(conn, job_id=job_id, started_at=started, attempt=3) is None

    done = await repos.jobs.mark_completed(conn, job_id=job_id, **completion())
    assert done is not None and done.status == "completed"
    assert done.mask_path == ObjectKeys.job_mask(
        sha_of("abc"), model_name="briaai/RMBG-2.0", model_revision="rev1", threshold=0.5
    )
    assert done.processed_path == ObjectKeys.cutout(
        sha_of("abc"), model_name="briaai/RMBG-2.0", model_revision="rev1", params_hash="0123456789abcdef",
        fmt=CutoutFormat.WEBP,
    )
    assert done.model_revision == "rev1" and done.processing_time_ms == 321

    # Late or repeated events change nothing and say so.
    assert await repos.jobs.mark_completed(conn, job_id=job_id, **completion(cutout_format=CutoutFormat.PNG)) is None
    assert (
        await repos.jobs.mark_failed(conn, job_id=job_id, error_message="late", completed_at=datetime.now(UTC)) is None
    )
    assert await repos.jobs.mark_processing(conn, job_id=job_id, started_at=started, attempt=9) is None
    assert await repos.jobs.record_retry(conn, job_id=job_id, seen_updated_at=done.updated_at) is None
    assert await repos.jobs.get_job(conn, job_id=job_id) == done


async def test_pending_can_complete_or_fail_directly(conn: asyncpg.Connection, repos: Repositories) -> None:
    a, b = job_args(unique_user()), job_args(unique_user())
    await repos.jobs.insert_job(conn, **a)
    await repos.jobs.insert_job(conn, **b)
    reused = await repos.jobs.mark_completed(conn, job_id=a["job_id"], **completion(reused=True))
    assert reused is not None and reused.reused_result
    failed = await repos.jobs.mark_failed(conn, job_id=b["job_id"], error_message="x", completed_at=datetime.now(UTC))
    assert failed is not None and failed.status == "failed" and failed.error_message == "x"
    assert await repos.jobs.mark_completed(conn, job_id=b["job_id"], **completion()) is None
    with pytest.raises(ValueError):
        await repos.jobs.mark_failed(conn, job_id=b["job_id"], error_message="", completed_at=datetime.now(UTC))


async def test_unknown_job_transitions_return_none(conn: asyncpg.Connection, repos: Repositories) -> None:
    ghost = uuid7()
    assert await repos.jobs.mark_processing(conn, job_id=ghost, started_at=datetime.now(UTC), attempt=1) is None
    assert await repos.jobs.mark_completed(conn, job_id=ghost, **completion()) is None
    assert await repos.jobs.record_retry(conn, job_id=ghost, seen_updated_at=datetime.now(UTC)) is None


async def test_trigger_refuses_backwards_and_sideways(conn: asyncpg.Connection, repos: Repositories) -> None:
    done, failed, pending = job_args(unique_user()), job_args(unique_user()), job_args(unique_user())
    for args in (done, failed, pending):
        await repos.jobs.insert_job(conn, **args)
    await repos.jobs.mark_completed(conn, job_id=done["job_id"], **completion())
    await repos.jobs.mark_failed(conn, job_id=failed["job_id"], error_message="e", completed_at=datetime.now(UTC))

    async def set_status(job_id: uuid.UUID, status: str) -> None:
        await conn.execute("UPDATE image_process_jobs SET status = $2 WHERE job_id = $1", job_id, status)

    for job_id, status in [
        (done["job_id"], "processing"),
        (done["job_id"], "pending"),
        (done["job_id"], "failed"),
        (failed["job_id"], "completed"),
        (failed["job_id"], "processing"),
    ]:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError) as info:
            await set_status(job_id, status)
        assert info.value.constraint_name == "image_process_jobs_status_forward_only"
        assert "may not move" in str(info.value)

    # A terminal row is immutable, even without a status change...
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="terminal"):
        await conn.execute("UPDATE image_process_jobs SET mask_path = 'x' WHERE job_id = $1", done["job_id"])
    # ...unless an operator says so for one transaction; the status still cannot move.
    async with conn.transaction():
        await conn.execute("SET LOCAL rmbg.allow_terminal_update = on")
        await conn.execute("UPDATE image_process_jobs SET model_revision = 'fixed' WHERE job_id = $1", done["job_id"])
        with pytest.raises(asyncpg.IntegrityConstraintViolationError):
            async with conn.transaction():
                await set_status(done["job_id"], "processing")

    # processing -> pending is backwards too; same -> same on a live row is fine.
    await repos.jobs.mark_processing(conn, job_id=pending["job_id"], started_at=datetime.now(UTC), attempt=1)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError):
        await set_status(pending["job_id"], "pending")
    await set_status(pending["job_id"], "processing")


async def test_state_checks(conn: asyncpg.Connection, repos: Repositories) -> None:
    args = job_args(unique_user())
    await repos.jobs.insert_job(conn, **args)
    with pytest.raises(asyncpg.CheckViolationError) as info:
        await conn.execute(
            "UPDATE image_process_jobs SET status = 'completed', completed_at = now() WHERE job_id = $1",
            args["job_id"],
        )
    assert info.value.constraint_name == "ck_jobs_completed_fields"
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "UPDATE image_process_jobs SET status = 'failed', completed_at = now() WHERE job_id = $1",
            args["job_id"],
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE image_process_jobs SET completed_at = now() WHERE job_id = $1", args["job_id"])


async def test_record_retry_and_find_stuck(clean_conn: asyncpg.Connection, repos: Repositories) -> None:
    conn = clean_conn
    user = unique_user()
    pending, processing, done = job_args(user), job_args(user), job_args(user)
    for args in (pending, processing, done):
        await repos.jobs.insert_job(conn, **args)
    await repos.jobs.mark_processing(conn, job_id=processing["job_id"], started_at=datetime.now(UTC), attempt=1)
    await repos.jobs.mark_completed(conn, job_id=done["job_id"], **completion())
    # Inside the test transaction now() is frozen, so age the rows by hand.
    await conn.execute(
        "UPDATE image_process_jobs SET updated_at = updated_at - interval '1 hour' WHERE job_id = ANY($1)",
        [pending["job_id"], processing["job_id"]],
    )
    cutoff = datetime.now(UTC) - timedelta(minutes=30)
    stuck = await repos.jobs.find_stuck(conn, updated_before=cutoff, limit=10)
    assert {j.job_id for j in stuck} == {pending["job_id"], processing["job_id"]}

    seen = {j.job_id: j.updated_at for j in stuck}
    assert await repos.jobs.record_retry(conn, job_id=pending["job_id"], seen_updated_at=seen[pending["job_id"]]) == 2
    assert (
        await repos.jobs.record_retry(conn, job_id=processing["job_id"], seen_updated_at=seen[processing["job_id"]])
        == 2
    )
    # A second sweeper acting on the same, now stale, view spends no attempt (compare-and-set).
    assert (
        await repos.jobs.record_retry(conn, job_id=pending["job_id"], seen_updated_at=seen[pending["job_id"]]) is None
    )
    # The retry restarted their clocks.
    assert await repos.jobs.find_stuck(conn, updated_before=cutoff, limit=10) == []
    assert len(await repos.jobs.find_stuck(conn, updated_before=datetime.now(UTC) + timedelta(hours=1), limit=1)) == 1


async def test_find_reusable_result(conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory) -> None:
    user = unique_user()
    content = f"reuse-{user}"
    now = datetime.now(UTC)
    await raw_job(conn, at=now - timedelta(minutes=5), user_id=user, content=content, params_hash="ph")
    newest = await raw_job(conn, at=now - timedelta(minutes=1), user_id=user, content=content, params_hash="ph")
    await raw_job(conn, at=now, user_id=user, content=content, params_hash="ph", status="pending")
    found = await repos.jobs.find_reusable_result(
        conn, content_sha256=sha_of(content), model_name="briaai/RMBG-2.0", params_hash="ph"
    )
    assert found is not None and found.job_id == newest
    assert (
        await repos.jobs.find_reusable_result(
            conn, content_sha256=sha_of(content), model_name="briaai/RMBG-2.0", params_hash="other"
        )
        is None
    )
    assert (
        await repos.jobs.find_reusable_result(
            conn, content_sha256=sha_of(content), model_name="other-model", params_hash="ph"
        )
        is None
    )


async def test_insert_creates_missing_month(conn: asyncpg.Connection, repos: Repositories) -> None:
    at = datetime(2037, 7, 31, 23, 59, 59, 999000, tzinfo=UTC)
    name = partition_name("image_process_jobs", at.date())
    assert name not in await list_partitions(conn, table="image_process_jobs")
    args = job_args(unique_user(), job_id=uuid7(at))
    assert await repos.jobs.insert_job(conn, **args)
    assert name in await list_partitions(conn, table="image_process_jobs")
    assert partition_name("image_tags", at.date()) in await list_partitions(conn, table="image_tags")
    where = await conn.fetchval(
        "SELECT tableoid::regclass::text FROM image_process_jobs WHERE job_id = $1", args["job_id"]
    )
    assert where == name
    record = await repos.jobs.get_job(conn, job_id=args["job_id"])
    assert record is not None and record.tags == ("cat", "product")


async def test_real_check_violation_is_not_mistaken_for_missing_partition(
    conn: asyncpg.Connection, repos: Repositories
) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as info:
        await repos.jobs.insert_job(conn, **job_args(unique_user(), source="ftp"))
    assert info.value.constraint_name == "ck_jobs_source"


def test_cursor_round_trip_and_rejects_garbage() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    job_id = uuid7(at)
    token = encode_cursor(at, job_id)
    assert token.isascii() and "=" not in token
    assert decode_cursor(token) == (at, job_id)
    for bad in ["", "abc", "!!!!", encode_cursor(at, job_id)[:-2], "A" * 34]:
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)
    assert issubclass(InvalidCursor, ValueError)


async def test_tags_function_is_inlined(conn: asyncpg.Connection) -> None:
    # Migration 0010 measured the inlined function at the inline subquery's cost; run as a function of its own
    # it took 6-8 times as long on a one-row get_job (PostgreSQL 15), 20 times on a page of 1,000 (18).
    plan = "\n".join(
        r[0]
        for r in await conn.fetch(
            "EXPLAIN (VERBOSE) SELECT (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) "
            "FROM image_process_jobs j LIMIT 1"
        )
    )
    assert "rmbg_job_tags" not in plan and "Function Scan" not in plan
    assert "array_agg(t.name ORDER BY t.name)" in plan
