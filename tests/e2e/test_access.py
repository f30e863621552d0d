"""Access control: every endpoint wants a key, a user reaches only their own jobs, results come back
through presigned URLs that expire and cannot be altered, a revoked key stops at once.

The isolation test walks the app's own OpenAPI document, so an endpoint added later is covered
without editing this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image

from rmbg.access import revoke_key
from rmbg.demo import sample_bytes
from services.ingest.api import create_app
from services.ingest.settings import IngestOptions, IngestSettings
from shared.auth.keys import parse_key
from shared.config import BaseServiceSettings, RedisSettings
from shared.storage import open_object_store
from tests.e2e.conftest import TINY_MODEL, Pipeline, _free_port

pytestmark = pytest.mark.slow

# What answers without a key: probes, metrics, the gallery's page and assets, the API's own description.
PUBLIC = {"/healthz", "/readyz", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


async def _completed_job(
    client: httpx.AsyncClient, name: str = "coffee.png", tags: str = "secret-tag", data: bytes | None = None
) -> dict[str, Any]:
    image = sample_bytes(name) if data is None else data
    resp = await client.post("/v1/jobs", files={"image": (name, image, "image/png")}, data={"tags": tags})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    for _ in range(600):
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("completed", "failed"):
            assert job["status"] == "completed", job
            return dict(job)
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


@contextlib.asynccontextmanager
async def _another_ingest(
    pipeline: Pipeline, *, redis: RedisSettings | None = None, result_delivery: str = "redirect"
) -> AsyncIterator[str]:
    """A second ingest API beside the pipeline's, on the same servers but with other settings; its URL."""
    base = pipeline.settings
    port = _free_port()
    settings = IngestSettings.model_validate(
        {
            **{name: getattr(base, name) for name in BaseServiceSettings.model_fields},
            **({"redis": redis} if redis is not None else {}),
            "ingest": IngestOptions(port=port, model=TINY_MODEL, result_delivery=result_delivery),
        }
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, consume_uploads=False), host="127.0.0.1", port=port, log_config=None)
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), serving
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


def _noise_png() -> bytes:
    """A PNG no other test uploads (its content, so its objects, are this test's own)."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (64, 64), secrets.token_bytes(64 * 64 * 3)).save(buf, format="PNG")
    return buf.getvalue()


def _operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


async def test_every_endpoint_wants_a_key(pipeline: Pipeline) -> None:
    async with httpx.AsyncClient(base_url=pipeline.api_url, timeout=30) as anonymous:
        spec = (await anonymous.get("/openapi.json")).json()
        ops = _operations(spec)
        assert len(ops) >= 10, ops
        for method, path in ops:
            if path in PUBLIC or path.startswith("/static"):
                continue
            url = re.sub(r"\{[^}]+\}", "0190d1c4-0000-7000-8000-000000000000", path)
            unknown = {"Authorization": "Bearer rk_0123456789ab_" + "x" * 43}
            for headers in ({}, unknown, {"Authorization": "Basic eDp5"}):
                resp = await anonymous.request(method, url, headers=headers)
                assert resp.status_code == 401, f"{method} {path} with {headers}: {resp.status_code} {resp.text[:200]}"
                body = resp.json()
                assert body["error"]["code"] == "unauthenticated" and "Traceback" not in resp.text
        assert (await anonymous.get("/healthz")).status_code == 200


async def test_a_user_never_reaches_another_users_jobs(pipeline: Pipeline) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    async with pipeline.client(alice) as a, pipeline.client(bob) as b:
        job = await _completed_job(a, tags=f"only-{alice}")
        await _completed_job(b, name="rocket.jpg", tags="bobs")
        job_id = job["job_id"]
        alice_keys = (await a.get("/v1/keys")).json()["items"]
        secrets_of_alice = {job_id, alice, f"only-{alice}", job["original_path"], alice_keys[0]["key_id"]}

        spec = (await b.get("/openapi.json")).json()
        checked = 0
        for method, path in _operations(spec):
            if path in PUBLIC or path.startswith("/static") or path.startswith("/v1/admin"):
                continue
            params: dict[str, str] = {"user_id": alice, "user": alice, "q": f"only-{alice}"}
            if "{kind}" in path:
                path = path.replace("{kind}", "cutout")
            url = path.replace("{job_id}", job_id).replace("{key_id}", alice_keys[0]["key_id"])
            if method == "POST" and path == "/v1/jobs":
                continue  # submitting makes Bob's own job; covered by the listing checks
            resp = await b.request(method, url, params=params)
            text = resp.text
            # A 404 may echo the id Bob sent himself; anything else of Alice's is a leak.
            echoed = {job_id, alice_keys[0]["key_id"]} if "{" in path else set()
            leaked = [s for s in secrets_of_alice - echoed if s in text]
            assert not leaked, f"{method} {path} showed Bob {leaked}: {text[:300]}"
            if "{" in path:
                assert resp.status_code == 404, f"{method} {path}: {resp.status_code} {text[:200]}"
            checked += 1
        assert checked >= 8
        # Alice's key survived Bob's attempt to revoke it, and Alice still sees her job.
        assert (await a.get(f"/v1/jobs/{job_id}")).status_code == 200
        # Filters cannot widen the scope: Bob asking for Alice's tag finds nothing.
        assert (await b.get("/v1/jobs", params={"tag": f"only-{alice}"})).json()["items"] == []


async def test_admin_views_need_an_admin_key(pipeline: Pipeline) -> None:
    user = f"plain-{uuid.uuid4().hex[:6]}"
    async with pipeline.client(user) as plain, pipeline.client(f"ops-{user}", admin=True) as admin:
        spec = (await plain.get("/openapi.json")).json()
        admin_paths = [(m, p) for m, p in _operations(spec) if p.startswith("/v1/admin")]
        assert admin_paths
        for method, path in admin_paths:
            params = {"contains": "{}"}
            assert (await plain.request(method, path, params=params)).status_code == 403, path
            resp = await admin.request(method, path, params=params)
            assert resp.status_code == 200, f"{path}: {resp.text[:200]}"
        await _completed_job(plain)
        users = (await admin.get("/v1/admin/stats/users", params={"user": user})).json()
        assert users["items"] == [{"user_id": user, "job_count": 1, "quartile": users["items"][0]["quartile"]}]
        assert sum(q["users"] for q in users["quartiles"]) == users["users"] >= 1
        assert "as_of" in users  # the stats service's snapshot time, or null when computed for this request


async def test_results_come_back_through_urls_that_expire(pipeline: Pipeline) -> None:
    user = f"dl-{uuid.uuid4().hex[:6]}"
    async with pipeline.client(user) as client, httpx.AsyncClient(timeout=30) as browser:
        job = await _completed_job(client)
        urls = job["urls"]
        assert set(urls) >= {"original", "mask", "cutout", "expires_at"}
        original = await browser.get(urls["original"])
        assert original.status_code == 200 and original.content == sample_bytes("coffee.png")
        cutout = await browser.get(urls["cutout"])
        assert cutout.status_code == 200 and len(cutout.content) == job["processed_bytes"]

        # The API's download path redirects to a presigned URL that names the file.
        resp = await client.get(f"/v1/jobs/{job['job_id']}/mask")
        assert resp.status_code == 307
        mask = await browser.get(resp.headers["location"])
        assert mask.status_code == 200 and mask.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"{job['job_id']}-mask.png" in mask.headers.get("content-disposition", "")

        # Tampered: another key in the same signature, or another signature.
        swapped = urls["original"].replace(job["original_path"], job["mask_path"])
        assert (await browser.get(swapped)).status_code == 403
        sig = re.search(r"X-Amz-Signature=([0-9a-f]+)", urls["original"])
        assert sig is not None
        flipped = sig.group(1)[:-1] + ("0" if sig.group(1)[-1] != "0" else "1")
        assert (await browser.get(urls["original"].replace(sig.group(1), flipped))).status_code == 403

    # Expired: a URL valid for 5 s (1 s was once spent before the first GET on a loaded machine), asked for
    # after 7 s.
    async with open_object_store(pipeline.settings.s3) as store:
        short = await store.presigned_get(job["original_path"], expires_s=5)
        async with httpx.AsyncClient(timeout=30) as browser:
            assert (await browser.get(short)).status_code == 200
            await asyncio.sleep(7)
            assert (await browser.get(short)).status_code == 403


async def test_a_revoked_key_stops_at_once(pipeline: Pipeline) -> None:
    user = f"rev-{uuid.uuid4().hex[:6]}"
    key = await pipeline.key(user)
    async with httpx.AsyncClient(
        base_url=pipeline.api_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        me = (await client.get("/v1/me")).json()
        assert me["user_id"] == user and not me["is_admin"]
        assert (await client.get("/v1/jobs")).status_code == 200  # now cached in Redis
        record, cleared = await revoke_key(pipeline.settings, key_id=me["key_id"])
        assert record is not None and cleared
        resp = await client.get("/v1/jobs")
        assert resp.status_code == 401, resp.text
        # Revoking through the API: a user revokes their own second key, and it stops too.
        other = await pipeline.key(user)
        async with httpx.AsyncClient(
            base_url=pipeline.api_url, timeout=30, headers={"Authorization": f"Bearer {other}"}
        ) as second:
            kid = (await second.get("/v1/me")).json()["key_id"]
            assert (await second.delete(f"/v1/keys/{kid}")).status_code == 200
            assert (await second.get("/v1/me")).status_code == 401


async def test_stream_delivery_relays_the_bytes_through_the_api(pipeline: Pipeline) -> None:
    """With result_delivery=stream (stores clients cannot reach), urls name the API's paths and the API
    streams the bytes, still only to the job's owner."""
    base = pipeline.settings
    user = f"stream-{uuid.uuid4().hex[:6]}"
    async with _another_ingest(pipeline, result_delivery="stream") as api_url:
        port = int(api_url.rsplit(":", 1)[1])
        async with pipeline.client(user) as owner:
            job = await _completed_job(owner)
        key = await pipeline.key(user)
        other = await pipeline.key(f"other-{user}")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            mine = {"Authorization": f"Bearer {key}"}
            detail = (await client.get(f"/v1/jobs/{job['job_id']}", headers=mine)).json()
            assert detail["urls"]["cutout"] == f"/v1/jobs/{job['job_id']}/cutout" and "expires_at" not in detail["urls"]
            original = await client.get(detail["urls"]["original"], headers=mine)
            assert original.status_code == 200 and original.content == sample_bytes("coffee.png")
            assert original.headers["content-length"] == str(len(original.content))
            cutout = await client.get(detail["urls"]["cutout"], headers=mine)
            assert cutout.status_code == 200 and len(cutout.content) == job["processed_bytes"]
            assert f"{job['job_id']}-cutout" in cutout.headers["content-disposition"]
            stranger = {"Authorization": f"Bearer {other}"}
            assert (await client.get(detail["urls"]["mask"], headers=stranger)).status_code == 404
            assert (await client.get(detail["urls"]["mask"])).status_code == 401
        # An object the store no longer has (retention, or a loss fsck will repair) is gone, not a bad request.
        async with pipeline.client(user) as owner:
            unique = await _completed_job(owner, "noise.png", data=_noise_png())
        async with open_object_store(base.s3) as store:
            assert await store.delete_many([unique["processed_path"]]) == 1
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            gone = await client.get(f"/v1/jobs/{unique['job_id']}/cutout", headers=mine)
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found", gone.text


async def test_a_body_over_the_upload_limit_is_refused_before_the_key_is_read(pipeline: Pipeline) -> None:
    limit = pipeline.settings.images.max_bytes
    async with httpx.AsyncClient(base_url=pipeline.api_url, timeout=60) as anonymous:
        resp = await anonymous.post("/v1/jobs", files={"image": ("big.png", b"x" * (limit + 2 * 1024 * 1024))})
    # 413, not the 401 a keyless request gets: the body was refused before anything read it.
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "too_large"


async def test_a_revocation_the_cache_did_not_hear_of_is_not_answered_as_done(pipeline: Pipeline) -> None:
    """Redis down: the key is revoked in PostgreSQL, but a replica may still hold its verification in Redis
    for the key cache's TTL, so the API says so (503) instead of "it stops at the next request"."""
    user = f"revdown-{uuid.uuid4().hex[:6]}"
    redis_down = RedisSettings(url="redis://127.0.0.1:1/0", socket_timeout_s=0.2)
    async with _another_ingest(pipeline, redis=redis_down) as api_url:
        port = int(api_url.rsplit(":", 1)[1])
        spare = await pipeline.key(user)
        spare_id, _ = parse_key(spare)
        key = await pipeline.key(user)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            resp = await client.delete(f"/v1/keys/{spare_id}")
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "unavailable" and "revoked" in resp.json()["error"]["message"]
            assert int(resp.headers["Retry-After"]) >= 1
        # The revocation itself holds: on the healthy replica the key is refused.
        async with httpx.AsyncClient(
            base_url=pipeline.api_url, timeout=30, headers={"Authorization": f"Bearer {spare}"}
        ) as client:
            assert (await client.get("/v1/me")).status_code == 401
