"""Submitting as clients need: an image by URL, Idempotency-Key retries, per-key rate limits and quotas."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from rmbg.access import create_key
from rmbg.demo import sample_bytes
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.slow


@pytest.fixture
async def image_server() -> AsyncIterator[str]:
    """Serves a sample photo on loopback (the e2e settings allow private targets; the default refuses)."""

    async def photo(_: web.Request) -> web.Response:
        return web.Response(body=sample_bytes("rocket.jpg"), content_type="image/jpeg")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(body=b"")

    app = web.Application()
    app.add_routes([web.get("/rocket.jpg", photo), web.get("/slow", slow)])
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_an_image_by_url_is_fetched_and_processed(pipeline: Pipeline, image_server: str) -> None:
    async with pipeline.client(f"url-{uuid.uuid4().hex[:6]}") as client:
        resp = await client.post("/v1/jobs", data={"image_url": f"{image_server}/rocket.jpg", "tags": "by-url"})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        for _ in range(300):
            job = (await client.get(f"/v1/jobs/{job_id}")).json()
            if job["status"] == "completed":
                break
            await asyncio.sleep(0.2)
        assert job["status"] == "completed", job
        assert job["original_bytes"] == len(sample_bytes("rocket.jpg"))

        refused = {
            "ftp://example.com/a.png": "url_refused",
            f"{image_server}/missing.png": "fetch_failed",
            "http://user:pw@example.com/a.png": "url_refused",
        }
        for url, code in refused.items():
            resp = await client.post("/v1/jobs", data={"image_url": url})
            assert resp.status_code == 422 and resp.json()["error"]["code"] == code, (url, resp.text)
        both = await client.post(
            "/v1/jobs", data={"image_url": f"{image_server}/rocket.jpg"}, files={"image": ("a.png", b"x", "image/png")}
        )
        assert both.status_code == 422 and "exactly one" in both.json()["error"]["message"]
        resp = await client.post("/v1/jobs", data={"image": "x", "callback_url": "gopher://example.com/"})
        assert resp.status_code == 422


async def test_a_slow_url_is_cut_off(pipeline: Pipeline, image_server: str) -> None:
    async with pipeline.client(f"slow-{uuid.uuid4().hex[:6]}", timeout=60) as client:
        started = asyncio.get_running_loop().time()
        resp = await client.post("/v1/jobs", data={"image_url": f"{image_server}/slow"})
        took = asyncio.get_running_loop().time() - started
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "fetch_failed", resp.text
    assert took < pipeline_fetch_timeout(pipeline) + 5


def pipeline_fetch_timeout(pipeline: Pipeline) -> float:
    from services.ingest.settings import IngestOptions

    return IngestOptions().fetch_timeout_s


async def test_an_idempotency_key_never_makes_a_second_job(pipeline: Pipeline) -> None:
    async with pipeline.client(f"idem-{uuid.uuid4().hex[:6]}") as client:
        photo = sample_bytes("coffee.png")

        async def submit(key: str, data: bytes = photo, tags: str = "a,b") -> httpx.Response:
            return await client.post(
                "/v1/jobs",
                files={"image": ("coffee.png", data, "image/png")},
                data={"tags": tags},
                headers={"Idempotency-Key": key},
            )

        first = await submit("order-1")
        assert first.status_code == 202 and first.json()["created"] is True
        again = await submit("order-1", tags="b,a")  # same request (tag order does not matter)
        assert again.status_code == 200 and again.json()["job_id"] == first.json()["job_id"]
        assert again.json()["created"] is False
        other = await submit("order-1", data=sample_bytes("astronaut.png"))
        assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"

        # Ten concurrent retries of a new key: one job, and every answer names it.
        answers = await asyncio.gather(*(submit("order-2") for _ in range(10)))
        assert {a.status_code for a in answers} <= {200, 202}, [a.text for a in answers]
        assert len({a.json()["job_id"] for a in answers}) == 1
        assert sum(a.json()["created"] for a in answers) == 1
        listed = (await client.get("/v1/jobs", params={"limit": 100})).json()["items"]
        assert len(listed) == 2


async def test_rate_limit_and_quota_answer_429_with_retry_after(pipeline: Pipeline) -> None:
    user = f"lim-{uuid.uuid4().hex[:6]}"
    slow = await create_key(pipeline.settings, user_id=user, admin=False, name="t", email=None, rate_per_s=1.0)
    async with httpx.AsyncClient(
        base_url=pipeline.api_url, timeout=30, headers={"Authorization": f"Bearer {slow.key}"}
    ) as client:
        codes = [(await client.get("/v1/me")).status_code for _ in range(60)]
        assert 429 in codes and codes[0] == 200, codes
        limited = await client.get("/v1/me")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"

    capped = await create_key(pipeline.settings, user_id=user, admin=False, name="t", email=None, daily_quota=1)
    async with httpx.AsyncClient(
        base_url=pipeline.api_url, timeout=30, headers={"Authorization": f"Bearer {capped.key}"}
    ) as client:
        coffee = {"image": ("c.png", sample_bytes("coffee.png"), "image/png")}
        retry_safe = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
        ok = await client.post("/v1/jobs", files=coffee, headers=retry_safe)
        assert ok.status_code == 202, ok.text
        over = await client.post("/v1/jobs", files={"image": ("c.png", sample_bytes("rocket.jpg"), "image/jpeg")})
        assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded", over.text
        assert 1 <= int(over.headers["Retry-After"]) <= 86400
        # The retry of the accepted job (its 202 lost) still learns its job: a replay makes no new job.
        again = await client.post("/v1/jobs", files=coffee, headers=retry_safe)
        assert again.status_code == 200 and again.json()["job_id"] == ok.json()["job_id"], again.text
