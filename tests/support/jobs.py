"""Job rows made straight in PostgreSQL, for tests that need a backlog or a count and no pipeline."""

from __future__ import annotations

import hashlib
import secrets
from uuid import UUID

from shared.contracts import ProcessingParams
from shared.db import Database
from shared.db.models import JobStatus
from shared.ids import uuid7


async def insert_pending(db: Database, *, user_id: str, count: int, model_name: str = "m") -> list[UUID]:
    """``count`` pending jobs of ``user_id``, each of distinct (random) content, created now; their ids."""
    ids: list[UUID] = []
    async with db.pool.acquire() as conn:
        for _ in range(count):
            data = secrets.token_bytes(32)
            ids.append(uuid7())
            await db.jobs.insert_job(
                conn,
                job_id=ids[-1],
                user_id=user_id,
                original_path="original/00/x.png",
                content_sha256=hashlib.sha256(data).hexdigest(),
                original_bytes=len(data),
                image_width=1,
                image_height=1,
                params={},
                params_hash=ProcessingParams().digest(),
                model_name=model_name,
                source="http",
                tags=[],
            )
    return ids


async def insert_rejected_upload(db: Database, *, model_name: str = "m") -> UUID:
    """A failed upload-topic job: its original_path names the upstream's object (s3://...), not one of ours."""
    job_id = uuid7()
    data = b"not an image"
    async with db.pool.acquire() as conn:
        assert await db.jobs.insert_job(
            conn, job_id=job_id, user_id="u1", original_path="s3://upstream/incoming/bad.png",
            content_sha256=hashlib.sha256(data).hexdigest(), original_bytes=len(data), image_width=None,
            image_height=None, params={}, params_hash=ProcessingParams().digest(), model_name=model_name,
            source="upload", tags=[], status=JobStatus.FAILED, error_message="not a recognised image file",
        )
    return job_id
