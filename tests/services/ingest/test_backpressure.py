"""Backpressure on real servers: ingest refuses work it cannot finish in time, with 503 and Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from rmbg.access import create_key
from rmbg.demo import sample_bytes
from rmbg.stack import StackEndpoints
from rmbg.stack.postgres import LOCAL_ADMIN_DSN, drop_database, ensure_database, with_database
from services.ingest.api import create_app
from services.ingest.backpressure import Backpressure
from services.ingest.settings import IngestOptions, IngestSettings
from shared.config import PostgresSettings
from shared.db import Database, open_database
from shared.db.migrate import upgrade
from shared.exceptions import Overloaded
from shared.messaging import ensure_topics
from shared.storage import open_object_store
from tests.e2e.conftest import _free_port, base_settings
from tests.support.jobs import insert_pending


@pytest.fixture
async def settings(stack: StackEndpoints) -> AsyncIterator[IngestSettings]:
    """Ingest settings on a database of its own (so its backlog is only what the test puts there)."""
    name = f"rmbg_bp_{secrets.token_hex(5)}"
    await ensure_database(LOCAL_ADMIN_DSN, name)
    dsn = with_database(LOCAL_ADMIN_DSN, name)
    try:
        await asyncio.to_thread(upgrade, dsn)
        common = {**base_settings(stack), "postgres": PostgresSettings(dsn=dsn, max_pool=4)}
        opts = IngestOptions(
            port=_free_port(), max_backlog_jobs=2, max_queue_wait_s=60, backlog_wait_rank=2, backlog_check_interval_s=0
        )
        yield IngestSettings(**common, ingest=opts)  # type: ignore[arg-type]
    finally:
        await drop_database(LOCAL_ADMIN_DSN, name)


async def _pending(db: Database, count: int) -> None:
    await insert_pending(db, user_id="waiting", count=count)


async def test_backlog_over_either_limit_is_overloaded(settings: IngestSettings) -> None:
    async with open_database(settings.postgres) as db:
        gate = Backpressure(options=settings.ingest, db=db)
        await gate.check()  # empty: fine
        await _pending(db, 1)
        async with db.pool.acquire() as conn:
            await conn.execute("UPDATE image_process_jobs SET updated_at = now() - interval '1 hour'")
        await gate.check()  # one stuck job (the sweeper's business) does not close intake
        await _pending(db, 1)
        await gate.check()  # at the count limit, not over it; the second job has not waited
        async with db.pool.acquire() as conn:
            await conn.execute("UPDATE image_process_jobs SET updated_at = now() - interval '90 seconds'")
        with pytest.raises(Overloaded) as waited:
            await gate.check()
        assert "have waited 90 s" in waited.value.reason and 30 <= waited.value.retry_after_s <= 31
        await _pending(db, 1)
        with pytest.raises(Overloaded) as many:
            await gate.check()
        assert "3 jobs are waiting (limit 2)" in many.value.reason


@contextlib.asynccontextmanager
async def _serve(settings: IngestSettings) -> AsyncIterator[str]:
    await ensure_topics(settings.kafka, settings.topics)
    async with open_object_store(settings.s3) as store:
        await store.ensure_bucket()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, consume_uploads=False), host="127.0.0.1", port=settings.ingest.port, log_config=None
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{settings.ingest.port}"
    finally:
        server.should_exit = True
        await task


async def test_submit_answers_503_with_retry_after_when_overloaded(settings: IngestSettings) -> None:
    async with open_database(settings.postgres) as db:
        await _pending(db, 3)
    key = (await create_key(settings, user_id="u1", admin=False, name="test", email=None)).key
    headers = {"Authorization": f"Bearer {key}"}
    async with _serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as client:
        resp = await client.post("/v1/jobs", files={"image": ("a.png", sample_bytes("coffee.png"), "image/png")})
        assert resp.status_code == 503
        assert int(resp.headers["Retry-After"]) >= 5
        error = resp.json()["error"]
        assert error["code"] == "overloaded" and "3 jobs are waiting (limit 2)" in error["message"]
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok", "s3": "ok", "kafka": "ok"}
