"""Two models served side by side: one inference pool per model, each job routed to its model's pool.

Its own stack of services (ingest, one inference process per model, the persister) on its own database,
topics and bucket, so its routed sweeper never sees the other tests' jobs. Both pools load the tiny test
model's folder under two names: what is checked is the routing, not the weights.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from rmbg.access import create_key
from rmbg.demo import sample_bytes
from rmbg.stack import StackEndpoints
from services.inference.main import run_inference
from services.inference.settings import InferenceOptions, InferenceSettings
from services.ingest.api import create_app
from services.ingest.settings import IngestOptions, IngestSettings
from services.persister.main import run_persister
from services.persister.settings import PersisterOptions, PersisterSettings
from shared.config import BaseServiceSettings, PostgresSettings, TelemetrySettings
from shared.messaging import ensure_topics
from shared.models import ModelEntry, ModelSettings
from shared.storage import open_object_store
from tests.e2e.conftest import _free_port, _until_ready, base_settings
from tests.support.databases import migrated_database
from tests.support.tiny_rmbg import build_tiny_rmbg

pytestmark = pytest.mark.slow

POOLS = ("tiny-a", "tiny-b")
MODELS = ModelSettings(
    served=POOLS,
    default="tiny-a",
    extra={name: ModelEntry(licence="test weights", commercial_use=False) for name in POOLS},
)


@pytest.fixture(scope="module")
async def two_pools(stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, str]]:
    """(API URL, an API key) of a deployment serving tiny-a and tiny-b, each from its own inference process."""
    model_dir = build_tiny_rmbg(tmp_path_factory.mktemp("model") / "tiny-rmbg")
    async with migrated_database("rmbg_pools") as dsn:
        common: dict[str, Any] = {
            **base_settings(stack),
            "postgres": PostgresSettings(dsn=SecretStr(dsn), max_pool=4),
            "models": MODELS,
        }
        base = BaseServiceSettings(**common)
        await ensure_topics(base.kafka, base.topics, base.models)
        async with open_object_store(base.s3) as store:
            await store.ensure_bucket()
        port = _free_port()
        ingest = IngestSettings(**common, ingest=IngestOptions(port=port))
        ports = {name: _free_port() for name in POOLS}
        pools = [
            InferenceSettings(
                **common,
                telemetry=TelemetrySettings(metrics_port=ports[name]),
                inference=InferenceOptions(model_source=str(model_dir), model_name=name, batch_wait_ms=20),
            )
            for name in POOLS
        ]
        persister = PersisterSettings(
            **common, persister=PersisterOptions(sweep_interval_s=3600), telemetry=TelemetrySettings()
        )
        stop = asyncio.Event()
        server = uvicorn.Server(uvicorn.Config(create_app(ingest), host="127.0.0.1", port=port, log_config=None))
        tasks = [
            asyncio.create_task(run_persister(persister, stop), name="persister"),
            *(asyncio.create_task(run_inference(p, stop), name=f"inference-{p.model_name}") for p in pools),
            asyncio.create_task(server.serve(), name="ingest"),
        ]
        api_url = f"http://127.0.0.1:{port}"
        urls = {"ingest": f"{api_url}/readyz", **{n: f"http://127.0.0.1:{p}/readyz" for n, p in ports.items()}}
        try:
            await _until_ready(urls, tasks, timeout_s=120)
            key = (await create_key(base, user_id="pools", admin=False, name="test", email=None)).key
            yield api_url, key
        finally:
            stop.set()
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 90)


async def test_each_model_is_served_by_its_own_pool(two_pools: tuple[str, str]) -> None:
    api_url, key = two_pools
    async with httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        listing = (await client.get("/v1/models")).json()
        assert listing["default"] == "tiny-a" and [m["name"] for m in listing["items"]] == list(POOLS)
        wanted: dict[str, str] = {}
        for name, model in (("coffee.png", "tiny-a"), ("rocket.jpg", "tiny-b"), ("astronaut.png", None)):
            form = {"model": model} if model else {}
            resp = await client.post("/v1/jobs", files={"image": (name, sample_bytes(name), "image/png")}, data=form)
            assert resp.status_code == 202, resp.text
            wanted[resp.json()["job_id"]] = model or "tiny-a"
        refused = await client.post(
            "/v1/jobs", files={"image": ("x.png", sample_bytes("coffee.png"), "image/png")}, data={"model": "birefnet"}
        )
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "model_not_served"
        done: dict[str, dict[str, Any]] = {}
        for _ in range(600):
            for job_id in set(wanted) - set(done):
                job = (await client.get(f"/v1/jobs/{job_id}")).json()
                if job["status"] in ("completed", "failed"):
                    done[job_id] = job
            if len(done) == len(wanted):
                break
            await asyncio.sleep(0.2)
    assert len(done) == len(wanted), f"unfinished: {set(wanted) - set(done)}"
    for job_id, model in wanted.items():
        assert done[job_id]["status"] == "completed", done[job_id]
        # The pool of that model made it: a pool fails any job for another model at once.
        assert done[job_id]["model_name"] == model
