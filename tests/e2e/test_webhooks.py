"""Webhooks end to end: a job submitted with a callback URL is POSTed, signed, to a receiver on loopback
that fails twice (HTTP 500, then no answer in time) and accepts the third; every attempt is visible to the
job's owner, and to nobody else. The e2e settings allow private targets and shorten the schedule
(tests/e2e/conftest.py); the refusal of private targets is tested with the default policy in
tests/services/persister/test_webhooks.py."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from rmbg.demo import sample_bytes
from shared.ids import uuid7
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.slow


@dataclass
class Receiver:
    """Answers 500, then stays silent past the sender's 1 s timeout, then 204; verifies every request with
    the secret it is given, as a real receiver would."""

    secret: str = ""
    url: str = ""
    script: list[int | float] = field(default_factory=lambda: [500, 2.5, 204])
    verified: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self.verified.append(Webhook(self.secret).verify(body, dict(request.headers)))
            self.ids.append(request.headers["webhook-id"])
        except WebhookVerificationError as exc:
            self.refused.append(str(exc))
            return web.Response(status=400)
        step = self.script.pop(0) if self.script else 204
        if isinstance(step, float):
            await asyncio.sleep(step)
            return web.Response(status=204)
        return web.Response(status=step)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/rmbg", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rec.url = f"http://127.0.0.1:{port}/hooks/rmbg"
    try:
        yield rec
    finally:
        await runner.cleanup()


async def _webhook_when(client: httpx.AsyncClient, job_id: str, state: str, timeout_s: float = 90) -> dict[str, Any]:
    hook: dict[str, Any] = {}
    for _ in range(int(timeout_s / 0.2)):
        resp = await client.get(f"/v1/jobs/{job_id}/webhooks")
        assert resp.status_code == 200, resp.text
        hook = resp.json()
        if hook["state"] == state:
            return hook
        await asyncio.sleep(0.2)
    raise AssertionError(f"webhook not {state} in {timeout_s} s: {hook}")


async def test_a_webhook_is_retried_until_delivered_and_every_attempt_is_shown(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    user = f"hook-{uuid.uuid4().hex[:6]}"
    async with pipeline.client(user) as client:
        resp = await client.get("/v1/webhooks/secret")
        assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
        receiver.secret = resp.json()["secret"]
        assert receiver.secret.startswith("whsec_")
        assert (await client.get("/v1/webhooks/secret")).json()["secret"] == receiver.secret  # stable

        resp = await client.post(
            "/v1/jobs",
            files={"image": ("coffee.png", sample_bytes("coffee.png"), "image/png")},
            data={"tags": "hooked", "callback_url": receiver.url},
        )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]

        hook = await _webhook_when(client, job_id, "delivered")
        assert hook["url"] == receiver.url and hook["event_type"] == "job.completed"
        attempts = hook["items"]
        assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 500), (2, None), (3, 204)]
        assert attempts[0]["error"] == "HTTP 500"
        assert attempts[1]["error"] == "no answer within 1 s" and attempts[1]["latency_ms"] >= 950
        assert attempts[2]["error"] is None and attempts[2]["latency_ms"] < 1000
        assert hook["delivered_at"] == attempts[2]["at"] and hook["next_attempt_at"] is None

        # Every request carried a valid signature and one message id; the third is the one that landed.
        assert receiver.refused == [] and len(receiver.verified) == 3
        assert set(receiver.ids) == {f"msg_{job_id}"}
        event = receiver.verified[-1]
        assert event["type"] == "job.completed"
        data = event["data"]
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        assert data["job_id"] == job_id and data["status"] == "completed" and data["tags"] == ["hooked"]
        assert data["processing_time_ms"] == job["processing_time_ms"] and data["model_name"] == job["model_name"]
        assert data["error_message"] is None and data["completed_at"] is not None
        # Short-lived presigned URLs of the three objects; the cut-out one really serves it.
        assert set(data["urls"]) == {"original", "mask", "cutout"}
        async with httpx.AsyncClient(timeout=30) as plain:
            cutout = await plain.get(data["urls"]["cutout"])
        assert cutout.status_code == 200 and len(cutout.content) == job["processed_bytes"]

        # A job without a callback has no webhook.
        resp = await client.post("/v1/jobs", files={"image": ("a.png", sample_bytes("astronaut.png"), "image/png")})
        plain_job = resp.json()["job_id"]
        resp = await client.get(f"/v1/jobs/{plain_job}/webhooks")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"

    # Another user sees the job's webhooks exactly as a job that does not exist: 404, same shape.
    async with pipeline.client(f"other-{uuid.uuid4().hex[:6]}") as other:
        theirs = await other.get(f"/v1/jobs/{job_id}/webhooks")
        missing_id = str(uuid7())
        missing = await other.get(f"/v1/jobs/{missing_id}/webhooks")
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["message"].replace(job_id, "ID") == missing.json()["error"]["message"].replace(
            missing_id, "ID"
        )
        # Their secret is their own.
        assert (await other.get("/v1/webhooks/secret")).json()["secret"] != receiver.secret


async def test_rotating_the_secret_keeps_the_old_one_signing_for_a_day(pipeline: Pipeline, receiver: Receiver) -> None:
    user = f"rot-{uuid.uuid4().hex[:6]}"
    async with pipeline.client(user) as client:
        old = (await client.get("/v1/webhooks/secret")).json()
        resp = await client.post("/v1/webhooks/secret/rotate")
        assert resp.status_code == 200, resp.text
        new = resp.json()
        assert new["secret"] != old["secret"] and new["rotated_at"] and new["previous_valid_until"]
        assert (await client.get("/v1/webhooks/secret")).json()["secret"] == new["secret"]

        receiver.secret = old["secret"]  # a receiver that has not switched yet still verifies
        receiver.script = [204]
        resp = await client.post(
            "/v1/jobs",
            files={"image": ("r.jpg", sample_bytes("rocket.jpg"), "image/jpeg")},
            data={"callback_url": receiver.url},
        )
        assert resp.status_code == 202, resp.text
        hook = await _webhook_when(client, resp.json()["job_id"], "delivered")
        assert [a["status_code"] for a in hook["items"]] == [204]
        assert receiver.refused == [] and len(receiver.verified) == 1
        assert json.dumps(receiver.verified[0]["data"]["params"])  # the job's params, as a JSON object
