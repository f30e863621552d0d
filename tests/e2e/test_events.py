"""Live status over HTTP: ``GET /v1/jobs/{id}/events`` streams a job's transitions as they happen."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from rmbg.access import revoke_key
from rmbg.demo import sample_bytes
from shared.db import open_database
from shared.ids import uuid7
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.slow

RANK = {"pending": 0, "processing": 1, "completed": 2, "failed": 2}


@dataclass(frozen=True)
class Sse:
    event: str
    id: str
    data: dict[str, Any]


async def _events(client: httpx.AsyncClient, job_id: str, timeout_s: float = 120) -> list[Sse]:
    """Every event of the job's stream, read until the server ends it (an assertion after timeout_s)."""

    async def read() -> list[Sse]:
        events: list[Sse] = []
        async with client.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
            assert resp.status_code == 200, await resp.aread()
            assert resp.headers["content-type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for line in resp.aiter_lines():
                if line.startswith(":"):
                    continue  # keep-alive comment
                if line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                    continue
                if "data" in fields:
                    events.append(Sse(fields["event"], fields["id"], json.loads(fields["data"])))
                fields = {}
        return events

    return await asyncio.wait_for(read(), timeout_s)


async def _submit(client: httpx.AsyncClient) -> str:
    resp = await client.post(
        "/v1/jobs", files={"image": ("astronaut.png", sample_bytes("astronaut.png"), "application/octet-stream")}
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["events_url"] == f"/v1/jobs/{body['job_id']}/events"
    return str(body["job_id"])


def _without_urls(job: dict[str, Any]) -> dict[str, Any]:
    # Presigned URLs are signed afresh for every answer: the same objects, other signatures.
    return {k: v for k, v in job.items() if k != "urls"}


async def test_a_stream_shows_each_transition_in_order_then_ends(pipeline: Pipeline) -> None:
    async with pipeline.client(f"sse-{uuid.uuid4().hex[:8]}") as client:
        job_id = await _submit(client)
        events = await _events(client, job_id)
        statuses = [e.event for e in events]
        # pending first unless the job was already further; processing may be passed over if it raced
        # the stream's read; completed always, last.
        assert statuses[-1] == "completed", statuses
        assert all(RANK[a] < RANK[b] for a, b in itertools.pairwise(statuses)), statuses
        assert set(statuses) <= {"pending", "processing", "completed"}, statuses
        for event in events:
            assert event.id == event.event == event.data["status"]
            assert event.data["job_id"] == job_id
        final = events[-1].data
        resource = (await client.get(f"/v1/jobs/{job_id}")).json()
        assert _without_urls(final) == _without_urls(resource)
        assert set(final) == set(resource)  # the same view as GET /v1/jobs/{id}, urls included when it has them


async def test_a_stream_opened_after_the_end_gives_the_final_state_at_once(pipeline: Pipeline) -> None:
    async with pipeline.client(f"sse-{uuid.uuid4().hex[:8]}") as client:
        job_id = await _submit(client)
        await _events(client, job_id)  # until it completes
        started = time.monotonic()
        events = await _events(client, job_id, timeout_s=10)
        assert [e.event for e in events] == ["completed"]
        assert time.monotonic() - started < 5  # no wait for a keep-alive or a quiet period
        assert events[0].data["mask_path"] and events[0].data["processed_path"]


async def test_another_users_job_is_not_found_and_no_key_is_unauthenticated(pipeline: Pipeline) -> None:
    async with pipeline.client(f"sse-owner-{uuid.uuid4().hex[:8]}") as owner:
        job_id = await _submit(owner)
    async with pipeline.client(f"sse-other-{uuid.uuid4().hex[:8]}") as other:
        resp = await other.get(f"/v1/jobs/{job_id}/events")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        missing = await other.get(f"/v1/jobs/{uuid.uuid4()}/events")
        assert missing.status_code == 404 and missing.json() == {
            "error": {"code": "not_found", "message": missing.json()["error"]["message"]}
        }
    async with httpx.AsyncClient(base_url=pipeline.api_url, timeout=30) as anonymous:
        resp = await anonymous.get(f"/v1/jobs/{job_id}/events")
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthenticated"


async def _until_blank(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The lines of one event, up to the blank line that ends it."""
    async for line in lines:
        if not line:
            return
        yield line


async def test_a_revoked_keys_stream_ends(pipeline: Pipeline) -> None:
    user = f"sse-rev-{uuid.uuid4().hex[:6]}"
    # A pending job whose request was never published: nothing moves it, so only the key can end its stream.
    job_id = uuid7()
    async with open_database(pipeline.settings.postgres) as db, db.pool.acquire() as conn:
        assert await db.jobs.insert_job(
            conn, job_id=job_id, user_id=user, original_ext="png", content_sha256="ab" * 32, original_bytes=1,
            image_width=1, image_height=1, params={}, params_hash="p0", model_name="tiny", source="http", tags=[],
        )
    async with pipeline.client(user) as client:
        key_id = (await client.get("/v1/me")).json()["key_id"]
        async with client.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
            assert resp.status_code == 200
            lines = resp.aiter_lines()

            async def first_event() -> list[str]:
                return [line async for line in _until_blank(lines)]

            assert "event: pending" in await asyncio.wait_for(first_event(), 10)
            record, _ = await revoke_key(pipeline.settings, key_id=key_id)
            assert record is not None
            revoked = time.monotonic()

            async def rest() -> list[str]:
                return [line async for line in lines]

            tail = await asyncio.wait_for(rest(), 15)  # the stream ends (the key is checked every 1 s here)
        assert time.monotonic() - revoked < 10
        assert not any(line.startswith("event:") for line in tail), tail  # and sends no further state
