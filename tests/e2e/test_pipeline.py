"""End to end: images in over HTTP and over the upload topic, results out in PostgreSQL and S3."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from PIL import Image

from rmbg.demo import sample_bytes
from shared.contracts import DeadLetter, Topics, UploadEvent
from shared.ids import upload_job_id
from shared.messaging import open_producer, publish
from shared.storage import open_object_store
from tests.e2e.conftest import TINY_MODEL, Pipeline
from tests.support.images import bomb_png

pytestmark = pytest.mark.slow

TERMINAL = {"completed", "failed"}


async def _wait(
    client: httpx.AsyncClient,
    job_ids: list[str],
    timeout_s: float = 180,
    *,
    not_yet_accepted: frozenset[str] = frozenset(),
) -> dict[str, dict[str, Any]]:
    """Poll until every job is terminal. Jobs from upload events exist once ingest consumed the event;
    an HTTP-accepted job must be readable at every poll."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    jobs: dict[str, dict[str, Any]] = {}
    while asyncio.get_running_loop().time() < deadline:
        for job_id in job_ids:
            resp = await client.get(f"/v1/jobs/{job_id}")
            if resp.status_code == 429:  # polled faster than the key's rate limit: wait as told
                await asyncio.sleep(min(5.0, float(resp.headers.get("Retry-After", "1"))))
                continue
            if resp.status_code == 404 and job_id in not_yet_accepted and job_id not in jobs:
                continue
            assert resp.status_code == 200, f"accepted job {job_id} answered {resp.status_code}"
            jobs[job_id] = resp.json()
        if len(jobs) == len(job_ids) and all(j["status"] in TERMINAL for j in jobs.values()):
            return jobs
        await asyncio.sleep(0.3)
    raise AssertionError(f"jobs not terminal in {timeout_s} s: {[(k, v['status']) for k, v in jobs.items()]}")


async def _submit(
    client: httpx.AsyncClient,
    data: bytes,
    *,
    tags: str = "",
    params: dict[str, Any] | None = None,
    name: str = "image.png",
    extra: dict[str, str] | None = None,
) -> httpx.Response:
    """Submit as the user of the client's key (the API takes the user from the key, never the form)."""
    return await client.post(
        "/v1/jobs",
        files={"image": (name, data, "application/octet-stream")},
        data={"tags": tags, "params": json.dumps(params or {}), **(extra or {})},
    )


def _error(resp: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = resp.json()["error"]
    return error


async def _publish_upload(pipeline: Pipeline, raw: bytes, *, user: str, key: str | None = None) -> str:
    settings = pipeline.settings
    key = key or f"uploads/{uuid.uuid4()}.png"
    async with open_object_store(settings.s3) as store:
        await store.put(key, raw, content_type="image/png")
    event = UploadEvent(
        event_id=str(uuid.uuid4()), user_id=user, key=key, tags=["upstream"], occurred_at=datetime.now(UTC)
    )
    topics = Topics.from_settings(settings.topics, settings.kafka)
    async with open_producer(settings.kafka, client_id="test") as producer:
        await publish(producer, topics.uploads, event, key=event.event_id)
    return str(upload_job_id(event.event_id, event.occurred_at))


async def test_images_flow_end_to_end(pipeline: Pipeline) -> None:
    user = f"e2e-{uuid.uuid4().hex[:8]}"
    photos = {name: sample_bytes(name) for name in ("astronaut.png", "coffee.png", "rocket.jpg")}
    async with pipeline.client(user) as client:
        submitted: dict[str, bytes] = {}
        for i, (name, data) in enumerate(photos.items()):
            params = {"threshold": 0.5, "cutout_format": "png"} if i == 0 else {}
            # A user_id field (the API before keys) is ignored: the job is the key's user's.
            extra = {"user_id": "someone-else"} if i == 1 else None
            resp = await _submit(client, data, tags="catalogue,Shoes", params=params, name=name, extra=extra)
            assert resp.status_code == 202, resp.text
            body = resp.json()
            submitted[body["job_id"]] = data
            # Accepted means readable at once, never "not found".
            assert (await client.get(body["status_url"])).status_code == 200
        upload_raw = sample_bytes("chelsea.png")
        upload_id = await _publish_upload(pipeline, upload_raw, user=user)
        submitted[upload_id] = upload_raw

        jobs = await _wait(client, list(submitted), not_yet_accepted=frozenset({upload_id}))

    async with open_object_store(pipeline.settings.s3) as store:
        for job_id, raw in submitted.items():
            job = jobs[job_id]
            assert job["status"] == "completed", job
            assert job["model_name"] == TINY_MODEL and job["model_revision"]
            original = Image.open(io.BytesIO(raw))
            assert (job["image_width"], job["image_height"]) == original.size
            assert job["processing_time_ms"] is not None and job["processing_time_ms"] >= 0
            assert job["original_bytes"] == len(raw) and job["mask_bytes"] > 0 and job["processed_bytes"] > 0
            assert await store.get(job["original_path"]) == raw, "stored original must be byte-identical"
            mask = Image.open(io.BytesIO(await store.get(job["mask_path"])))
            assert mask.mode == "L" and mask.size == original.size
            cutout = Image.open(io.BytesIO(await store.get(job["processed_path"])))
            assert cutout.mode == "RGBA" and cutout.size == original.size
            assert np.array_equal(np.asarray(cutout.getchannel("A")), np.asarray(mask)), "cut-out alpha == mask"
        thresholded = next(j for j in jobs.values() if j["params"].get("threshold") == 0.5)
        values = set(np.unique(np.asarray(Image.open(io.BytesIO(await store.get(thresholded["mask_path"]))))))
        assert values <= {0, 255}
        assert thresholded["processed_path"].endswith(".png")
    assert sorted(jobs[next(iter(submitted))]["tags"]) == ["catalogue", "shoes"]
    assert {j["user_id"] for j in jobs.values()} == {user}


async def test_same_image_twice_is_stored_once_and_reused(pipeline: Pipeline) -> None:
    user = f"dup-{uuid.uuid4().hex[:8]}"
    data = sample_bytes("coffee.png")
    async with pipeline.client(user) as client:
        first = (await _submit(client, data)).json()["job_id"]
        await _wait(client, [first])
        second = (await _submit(client, data)).json()["job_id"]
        jobs = await _wait(client, [first, second])
    a, b = jobs[first], jobs[second]
    assert first != second and b["status"] == "completed"
    assert a["original_path"] == b["original_path"]
    assert a["mask_path"] == b["mask_path"] and a["processed_path"] == b["processed_path"]
    assert b["reused_result"] is True


async def test_bad_input_ends_in_clear_errors_and_services_keep_running(pipeline: Pipeline) -> None:
    user = f"bad-{uuid.uuid4().hex[:8]}"
    good = sample_bytes("astronaut.png")
    corrupt = good[:2000]  # a truncated PNG: valid header, broken data
    async with pipeline.client(user) as client:
        resp = await _submit(client, corrupt)
        assert resp.status_code == 422 and _error(resp)["code"] == "corrupt", resp.text
        assert "corrupt" in _error(resp)["message"]
        resp = await _submit(client, b"not an image at all")
        assert resp.status_code == 422
        resp = await _submit(client, good, params={"threshold": 7})
        assert resp.status_code == 422 and "threshold" in _error(resp)["message"], resp.text
        # A decompression bomb: a 100-byte PNG declaring 100k x 100k pixels.
        resp = await _submit(client, bomb_png(100_000))
        assert resp.status_code == 422 and "pixels" in _error(resp)["message"], resp.text
        assert _error(resp)["code"] == "too_many_pixels"

        failed_id = await _publish_upload(pipeline, corrupt, user=user)
        settings = pipeline.settings
        topics = Topics.from_settings(settings.topics, settings.kafka)
        async with open_producer(settings.kafka, client_id="test") as producer:
            await producer.send_and_wait(topics.uploads.name, b'{"schema_version": 1, "user_id": "x"}', key=b"junk")
            await producer.send_and_wait(topics.uploads.name, b"\xff\xfe not json", key=b"junk2")
            foreign = UploadEvent(
                event_id="e-foreign",
                user_id=user,
                bucket="someone-elses-bucket",
                key="x.png",
                occurred_at=datetime.now(UTC),
            )
            await producer.send_and_wait(topics.uploads.name, topics.uploads.serialize(foreign), key=b"foreign")

        jobs = await _wait(client, [failed_id], not_yet_accepted=frozenset({failed_id}))
        assert jobs[failed_id]["status"] == "failed"
        assert "corrupt" in jobs[failed_id]["error_message"]

        letters = await _read_dead_letters(pipeline, keys={"junk", "junk2", "foreign"})
        assert {letter.key for letter in letters} >= {"junk", "junk2", "foreign"}
        assert any("not an upload bucket" in letter.reason for letter in letters if letter.key == "foreign")
        assert all("malformed UploadEvent" in letter.reason for letter in letters if letter.key in {"junk", "junk2"})

        # Still serving: a good image goes through after all of that.
        ok = (await _submit(client, good, tags="after-bad")).json()["job_id"]
        assert (await _wait(client, [ok]))[ok]["status"] == "completed"


async def _read_dead_letters(pipeline: Pipeline, *, keys: set[str], timeout_s: float = 60) -> list[DeadLetter]:
    """The dead letters with these keys (the shared topic holds other tests' letters too)."""
    settings = pipeline.settings
    topics = Topics.from_settings(settings.topics, settings.kafka)
    consumer = AIOKafkaConsumer(
        topics.dead_letter.name,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=2 * 1024 * 1024,  # a dead letter holds its record whole, up to 737,712 bytes
    )
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while {letter.key for letter in letters} < keys and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            read = [topics.dead_letter.deserialize(r.value) for recs in batch.values() for r in recs]
            letters += [letter for letter in read if letter.key in keys]
    finally:
        await consumer.stop()
    return letters


async def test_jobs_name_a_served_model_or_are_refused_at_once(pipeline: Pipeline) -> None:
    """GET /v1/models lists what is served; a job naming the default completes; a job naming a model no
    pool serves (a catalogue model or an unknown name) is refused with 422 model_not_served, listing the
    served ones, and nothing is queued for it."""
    user = f"models-{uuid.uuid4().hex[:8]}"
    data = sample_bytes("rocket.jpg")
    async with pipeline.client(user) as client:
        listing = (await client.get("/v1/models")).json()
        assert listing["default"] == TINY_MODEL
        assert [m["name"] for m in listing["items"]] == [TINY_MODEL]
        assert listing["items"][0]["default"] is True and listing["items"][0]["commercial_use"] is False
        assert set(listing["items"][0]) == {"name", "default", "hub_id", "licence", "commercial_use", "note"}

        for model in ("birefnet", "rmbg-2.0", "briaai/RMBG-2.0", "no-such-model"):
            resp = await _submit(client, data, extra={"model": model})
            assert resp.status_code == 422, resp.text
            error = _error(resp)
            assert error["code"] == "model_not_served" and TINY_MODEL in error["message"]
            assert error["details"][0]["served"] == [TINY_MODEL]
        assert (await client.get("/v1/jobs")).json()["items"] == [], "a refused job leaves no row"

        resp = await _submit(client, data, extra={"model": TINY_MODEL})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        job = (await _wait(client, [job_id]))[job_id]
    assert job["status"] == "completed" and job["model_name"] == TINY_MODEL
    # The weights load from a temporary folder; its path is stored nowhere.
    assert str(pipeline.model_dir) not in json.dumps(job)
