"""ObjectsRepository and RetentionRepository: typed rows for fsck and retention (end to end in
tests/rmbg/maintenance, with real objects)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from shared.db.models import ContentObjects, JobStatus, ShardJob
from shared.db.partitions import month_start
from shared.db.repositories import Repositories
from tests.shared.db.conftest import JobFactory, sha_of, unique_user


async def test_jobs_in_shard_and_references(conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory) -> None:
    content = f"objects-{unique_user()}"
    sha = bytes.fromhex(sha_of(content))
    job_id = await raw_job(conn, at=datetime.now(UTC), user_id=unique_user(), content=content)
    rows = [r for r in await repos.objects.jobs_in_shard(conn, shard=sha[0]) if r.job_id == job_id]
    assert len(rows) == 1 and isinstance(rows[0], ShardJob)
    assert rows[0].status is JobStatus.COMPLETED and rows[0].content_sha256 == sha
    assert (rows[0].original_path, rows[0].mask_path, rows[0].processed_path) == ("original/x", "mask/x", "processed/x")
    if sha[0] < 255:  # the next shard starts above this hash
        assert job_id not in {r.job_id for r in await repos.objects.jobs_in_shard(conn, shard=sha[0] + 1)}
    assert await repos.objects.referenced_contents(conn, shas=[sha, b"\x00" * 32]) == {sha}
    assert await repos.objects.paths_for_contents(conn, shas=[sha]) == {"original/x", "mask/x", "processed/x"}
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
        assert gone == [ContentObjects(bytes.fromhex(sha_of(content)), ("original/x", "mask/x", "processed/x"))]
        assert "image_process_jobs_y2044m03" in await repos.retention.job_partitions(conn)
    finally:
        await tx.rollback()
