"""ObjectsRepository and RetentionRepository: typed rows for fsck and retention (end to end in
tests/rmbg/maintenance, with real objects)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from shared.contracts.events import CutoutFormat
from shared.db.models import ContentObjects, JobStatus, ShardJob
from shared.db.partitions import ensure_partitions, month_start
from shared.db.repositories import Repositories
from shared.ids import uuid7, uuid7_time
from shared.storage.keys import ObjectKeys
from tests.shared.db.conftest import JobFactory, sha_of, unique_user


def _raw_job_keys(content: str) -> tuple[str, str, str]:
    """The keys a completed raw_job row derives (conftest: png original, webp cut-out, params_hash p0)."""
    sha, model = sha_of(content), "briaai/RMBG-2.0"
    return (
        ObjectKeys.original(sha, "png"),
        ObjectKeys.job_mask(sha, model_name=model, model_revision=None, threshold=None),
        ObjectKeys.cutout(sha, model_name=model, model_revision=None, params_hash="p0", fmt=CutoutFormat.WEBP),
    )


async def test_jobs_in_shard_and_references(conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory) -> None:
    content = f"objects-{unique_user()}"
    sha = bytes.fromhex(sha_of(content))
    job_id = await raw_job(conn, at=datetime.now(UTC), user_id=unique_user(), content=content)
    rows = [r for r in await repos.objects.jobs_in_shard(conn, shard=sha[0]) if r.job_id == job_id]
    assert len(rows) == 1 and isinstance(rows[0], ShardJob)
    assert rows[0].status is JobStatus.COMPLETED and rows[0].content_sha256 == sha
    keys = _raw_job_keys(content)
    assert (rows[0].original_path, rows[0].mask_path, rows[0].processed_path) == keys
    if sha[0] < 255:  # the next shard starts above this hash
        assert job_id not in {r.job_id for r in await repos.objects.jobs_in_shard(conn, shard=sha[0] + 1)}
    assert await repos.objects.referenced_contents(conn, shas=[sha, b"\x00" * 32]) == {sha}
    assert await repos.objects.paths_for_contents(conn, shas=[sha]) == set(keys)
    with pytest.raises(ValueError):
        await repos.objects.jobs_in_shard(conn, shard=256)


async def test_delete_before_returns_content_objects(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    # A month of its own far ahead, so no other test's rows are in range; rolled back at the end.
    at = datetime(2044, 3, 10, tzinfo=UTC)
    tx = conn.transaction()
    await tx.start()
    try:
        content = f"retention-{unique_user()}"
        await raw_job(conn, at=at, user_id=unique_user(), content=content)
        month_from = datetime.combine(month_start(at), datetime.min.time(), UTC)
        cutoff = at + timedelta(days=1)
        assert await repos.retention.count_before(conn, cutoff=cutoff, month_from=month_from) == 1
        gone = await repos.retention.delete_before(conn, cutoff=cutoff, month_from=month_from, limit=10)
        assert gone == [ContentObjects(bytes.fromhex(sha_of(content)), _raw_job_keys(content))]
        assert "image_process_jobs_y2044m03" in await repos.retention.job_partitions(conn)
    finally:
        await tx.rollback()


async def test_retired_unreferenced_checks_a_detached_month_against_the_remaining_jobs(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    # Months of their own far ahead, so no other test's rows are in them; rolled back at the end.
    retired, later = datetime(2043, 5, 10, tzinfo=UTC), datetime(2043, 7, 10, tzinfo=UTC)
    tag = unique_user("ret")
    tx = conn.transaction()
    await tx.start()
    try:

        async def job(content: str, at: datetime, *, failed: bool = False, original: str | None = None) -> bytes:
            sha = sha_of(f"{tag}-{content}")
            job_id = uuid7(at)
            await ensure_partitions(conn, start=month_start(at), months=1)
            await conn.execute(
                """
                INSERT INTO image_process_jobs (
                    job_id, created_at, user_id, original_path, mask_path, processed_path, status, completed_at,
                    processing_time_ms, params, params_hash, error_message, content_sha256, model_name,
                    original_bytes, source)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $2, $8, '{}', 'p0', $9, $10, 'm', 1000, 'http')
                """,
                job_id, uuid7_time(job_id), tag, original or f"original/{sha}", None if failed else f"mask/{sha}",
                None if failed else f"processed/{sha}", "failed" if failed else "completed",
                None if failed else 100, "boom" if failed else None, bytes.fromhex(sha),
            )
            return bytes.fromhex(sha)

        only = await job("only", retired)
        await job("only", retired + timedelta(hours=1))  # two retired jobs of one content: its keys once
        shared = await job("shared", retired)
        await job("shared", later)  # a remaining job has the content: its keys stay
        upstream = await job("upstream", retired, failed=True, original="s3://their-bucket/a.png")
        failed = await job("failed", retired, failed=True)  # our original only, no mask or cut-out
        await conn.execute("SELECT rmbg_retire_month($1)", retired.date().replace(day=1))
        month = retired.date().replace(day=1)

        async def walk(limit: int) -> tuple[list[bytes], int, list[str]]:
            after, lasts, kept, doomed = b"", [], 0, []
            while True:
                batch = await repos.retention.retired_unreferenced(conn, month=month, after_sha=after, limit=limit)
                if batch.last_sha is None:
                    return lasts, kept, doomed
                assert batch.last_sha > after
                lasts.append(batch.last_sha)
                kept += batch.kept
                doomed.extend(batch.doomed)
                after = batch.last_sha

        expected = {f"{k}/{only.hex()}" for k in ("original", "mask", "processed")} | {f"original/{failed.hex()}"}
        for limit in (1, 2, 100):
            lasts, kept, doomed = await walk(limit)
            assert sorted(doomed) == sorted(expected), limit  # each key once, even across batches
            assert kept == 3, limit  # the shared content's three keys
            if limit == 1:  # one content per batch: the two jobs of `only` are never split
                assert lasts == sorted([only, shared, upstream, failed])
            else:
                assert lasts[-1] == max(only, shared, upstream, failed)
    finally:
        await tx.rollback()
