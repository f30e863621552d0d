"""A record that a later stage cannot process fails its own job and holds up no other job.

The image is put straight into the jobs topic, past intake (which now refuses sides over 16,383 px), as a
job from before that check, or from an upstream system that skips intake, would arrive: the cut-out's
WebP encoder refuses it in the persister. Before the failure taxonomy this failed the persister's whole
batch, which was rewound and retried forever while every job behind it waited.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from rmbg.demo import sample_bytes
from shared.contracts import JobEvent, JobEventKind, JobRequested, ProcessingParams, Topics
from shared.ids import uuid7_time
from shared.messaging import open_producer, publish
from shared.storage import ObjectKeys, open_object_store
from tests.e2e.conftest import TINY_MODEL, Pipeline
from tests.e2e.test_pipeline import _submit, _wait
from tests.e2e.test_recovery import _insert_unqueued_job


def _too_wide_png() -> bytes:
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (2, 17_000, 3), dtype=np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


async def _queue_past_intake(pipeline: Pipeline, data: bytes, user: str) -> tuple[uuid.UUID, str]:
    settings = pipeline.settings
    sha = hashlib.sha256(data).hexdigest()
    key = ObjectKeys.original(sha, "png")
    job_id = await _insert_unqueued_job(pipeline, data, user, width=17_000, height=2)
    request = JobRequested(
        job_id=job_id,
        created_at=uuid7_time(job_id),
        user_id=user,
        original_key=key,
        content_sha256=sha,
        width=17_000,
        height=2,
        params=ProcessingParams(),
        model=TINY_MODEL,
    )
    accepted = JobEvent(
        job_id=job_id,
        created_at=request.created_at,
        kind=JobEventKind.ACCEPTED,
        occurred_at=datetime.now(UTC),
        user_id=user,
        model_name=TINY_MODEL,
        params=request.params,
    )
    topics = Topics.from_settings(settings.topics, settings.kafka)
    async with open_producer(settings.kafka, client_id="test-poison") as producer:
        await publish(producer, topics.jobs, request, key=str(job_id))
        await publish(producer, topics.job_events, accepted, key=str(job_id))  # as intake does
    return job_id, sha


async def test_an_unencodable_result_fails_its_job_and_the_jobs_behind_it_complete(pipeline: Pipeline) -> None:
    user = f"poison-{uuid.uuid4().hex[:6]}"
    bad_id, sha = await _queue_past_intake(pipeline, _too_wide_png(), user)
    async with pipeline.client(user, timeout=30) as client:
        good = [
            (await _submit(client, sample_bytes(name))).json()["job_id"]
            for name in ("astronaut.png", "coffee.png", "rocket.jpg")
        ]
        jobs = await _wait(client, [str(bad_id), *good], timeout_s=120)
    assert [jobs[j]["status"] for j in good] == ["completed"] * 3
    bad = jobs[str(bad_id)]
    assert bad["status"] == "failed"
    assert "cut-out cannot be encoded as webp" in bad["error_message"]
    assert "16383" in bad["error_message"]
    # The failed job left no object behind but its original.
    async with open_object_store(pipeline.settings.s3) as store:
        leftovers = [o.key async for o in store.iter_keys(f"mask/{sha[:2]}/{sha}/")]
        leftovers += [o.key async for o in store.iter_keys(f"processed/{sha[:2]}/{sha}/")]
    assert leftovers == []
    assert datetime.fromisoformat(bad["completed_at"]) <= datetime.now(UTC)
