"""Recovery paths: lost messages, redelivery, dead workers. Every job still ends completed or failed, once."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from rmbg.demo import sample_bytes
from services.persister.settings import PersisterOptions
from services.persister.sweeper import Sweeper
from shared.cache import open_cache
from shared.contracts import ProcessingParams, ResultEvent, ResultKind, Topics
from shared.db import open_database
from shared.ids import uuid7
from shared.messaging import open_producer, publish
from shared.storage import ObjectKeys, open_object_store
from shared.telemetry import PipelineMetrics
from shared.views import job_request
from tests.e2e.conftest import TINY_MODEL, Pipeline
from tests.e2e.test_pipeline import _submit, _wait
from tests.support.kafka import next_offsets, wait_committed


async def _insert_unqueued_job(
    pipeline: Pipeline, data: bytes, user: str, *, width: int = 512, height: int = 512
) -> uuid.UUID:
    """A job whose row and original exist but whose message was lost (ingest died after the insert)."""
    sha = hashlib.sha256(data).hexdigest()
    key = ObjectKeys.original(sha, "png")
    async with open_object_store(pipeline.settings.s3) as store:
        await store.put(key, data, content_type="image/png")
    job_id = uuid7()
    async with open_database(pipeline.settings.postgres) as db, db.pool.acquire() as conn:
        await db.jobs.insert_job(
            conn,
            job_id=job_id,
            user_id=user,
            original_path=key,
            content_sha256=sha,
            original_bytes=len(data),
            image_width=width,
            image_height=height,
            params={},
            params_hash=ProcessingParams().digest(),
            model_name=TINY_MODEL,
            source="http",
            tags=[],
        )
    return job_id


def _without_urls(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k != "urls"}


async def _sweep(pipeline: Pipeline, *, max_attempts: int, now: datetime) -> tuple[int, int]:
    settings = pipeline.settings
    async with (
        open_database(settings.postgres) as db,
        open_producer(settings.kafka, client_id="test-sweeper") as producer,
        open_cache(settings.redis) as cache,
    ):
        sweeper = Sweeper(
            options=PersisterOptions(stuck_after_s=60, unqueued_after_s=60, max_attempts=max_attempts),
            kafka=settings.kafka,
            db=db,
            producer=producer,
            topics=Topics.from_settings(settings.topics, settings.kafka),
            cache=cache,
            metrics=PipelineMetrics.create(),
        )
        return await sweeper.sweep_once(now=now)


async def test_lost_job_message_is_requeued_and_completes(pipeline: Pipeline) -> None:
    user = f"lost-{uuid.uuid4().hex[:6]}"
    job_id = await _insert_unqueued_job(pipeline, sample_bytes("astronaut.png"), user)
    requeued, failed = await _sweep(pipeline, max_attempts=3, now=datetime.now(UTC) + timedelta(minutes=5))
    assert requeued >= 1 and failed == 0
    async with pipeline.client(user, timeout=30) as client:
        job = (await _wait(client, [str(job_id)]))[str(job_id)]
    assert job["status"] == "completed" and job["attempts"] == 2


async def test_job_that_never_moves_is_failed_with_its_reason(pipeline: Pipeline) -> None:
    user = f"stuck-{uuid.uuid4().hex[:6]}"
    job_id = await _insert_unqueued_job(pipeline, b"\x89PNG" + uuid.uuid4().bytes * 10, user)
    # attempts (1) already reached max_attempts=1: no re-queue, the job is failed with the reason.
    await _sweep(pipeline, max_attempts=1, now=datetime.now(UTC) + timedelta(minutes=5))
    async with pipeline.client(user, timeout=30) as client:
        job = (await _wait(client, [str(job_id)]))[str(job_id)]
    assert job["status"] == "failed" and "lost 1 times" in job["error_message"]


async def test_job_waiting_in_the_queue_is_never_taken_for_lost(pipeline: Pipeline) -> None:
    """However long a request waits in the topic, the sweeper leaves it alone: only position counts."""
    user = f"queued-{uuid.uuid4().hex[:6]}"
    job_id = await _insert_unqueued_job(pipeline, b"\x89PNG" + uuid.uuid4().bytes * 10, user)
    async with open_database(pipeline.settings.postgres) as db, db.pool.acquire() as conn:
        # A position far beyond anything inference has committed: the request is still waiting.
        await db.jobs.mark_queued(conn, job_id=job_id, partition=0, offset=10**12)
    assert await _sweep(pipeline, max_attempts=1, now=datetime.now(UTC) + timedelta(hours=23)) == (0, 0)
    async with pipeline.client(user, timeout=30) as client:
        assert (await client.get(f"/v1/jobs/{job_id}")).json()["status"] == "pending"
    # A day without any progress is the last resort (a queue that was itself lost): then it is taken.
    _, failed = await _sweep(pipeline, max_attempts=1, now=datetime.now(UTC) + timedelta(hours=25))
    assert failed >= 1
    async with pipeline.client(user, timeout=30) as client:
        assert (await _wait(client, [str(job_id)]))[str(job_id)]["status"] == "failed"


async def test_redelivered_and_late_results_change_nothing(pipeline: Pipeline) -> None:
    user = f"redeliver-{uuid.uuid4().hex[:6]}"
    async with pipeline.client(user, timeout=30) as client:
        job_id = (await _submit(client, sample_bytes("coffee.png"))).json()["job_id"]
        before = (await _wait(client, [job_id]))[job_id]
        assert before["status"] == "completed"
        settings = pipeline.settings
        topics = Topics.from_settings(settings.topics, settings.kafka)
        now = datetime.now(UTC)
        created = datetime.fromisoformat(before["created_at"])
        late = [
            ResultEvent(kind=ResultKind.STARTED, job_id=uuid.UUID(job_id), created_at=created, occurred_at=now),
            ResultEvent(
                kind=ResultKind.FAILED,
                job_id=uuid.UUID(job_id),
                created_at=created,
                occurred_at=now,
                error="a late failure from a worker that was presumed dead",
            ),
            ResultEvent(
                kind=ResultKind.COMPLETED,
                job_id=uuid.UUID(job_id),
                created_at=created,
                occurred_at=now,
                model_name=TINY_MODEL,
                model_revision="other",
                mask_png=b"not a png",
            ),
        ]
        async with open_producer(settings.kafka, client_id="test") as producer:
            landed = [await publish(producer, topics.results, event, key=job_id) for event in late]
        # The persister committed past them: it has handled them (it commits only after their effects).
        await wait_committed(settings.kafka, PersisterOptions().group_id, topics.results.name, next_offsets(landed))
        after = (await client.get(f"/v1/jobs/{job_id}")).json()
    # The result URLs are signed per request (they expire); the job itself must not have changed.
    assert _without_urls(after) == _without_urls(before)


async def test_a_job_whose_accepted_event_was_lost_is_still_counted(pipeline: Pipeline) -> None:
    """Intake's `accepted` can be lost (a publish that timed out but landed, ingest killed right after the
    request): the persister announces it again with the job's end, and stats count it once."""
    user = f"unannounced-{uuid.uuid4().hex[:6]}"
    job_id = await _insert_unqueued_job(pipeline, sample_bytes("chelsea.png"), user)
    settings = pipeline.settings
    async with open_database(settings.postgres) as db:
        async with db.pool.acquire() as conn:
            record = await db.jobs.get_job(conn, job_id=job_id)
        assert record is not None
        async with open_producer(settings.kafka, client_id="test-unannounced") as producer:
            topics = Topics.from_settings(settings.topics, settings.kafka)
            await publish(producer, topics.jobs, job_request(record), key=str(job_id))  # no `accepted` event
        async with pipeline.client(user, timeout=30) as client:
            assert (await _wait(client, [str(job_id)]))[str(job_id)]["status"] == "completed"
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            async with db.pool.acquire() as conn:
                kinds = await conn.fetchval(
                    "SELECT array_agg(kind::text ORDER BY kind) FROM stats_ledger WHERE job_id = $1", job_id
                )
                counted = await conn.fetchval("SELECT jobs FROM user_job_counts WHERE user_id = $1", user)
            # Both events, not just `accepted`: the two are consumed independently and may land apart.
            done = sorted(kinds or []) == ["accepted", "completed"] and counted == 1
            if done or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.3)
    assert sorted(kinds) == ["accepted", "completed"] and counted == 1
