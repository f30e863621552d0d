"""The whole pipeline in-process over real servers: PostgreSQL, Redis, Tansu (Kafka API), SeaweedFS (S3).

Each service runs as it does in production (its own settings, consumer group and loop), as asyncio tasks
of the test process; the ingest API is served by uvicorn on a free port and spoken to over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from rmbg.access import create_key
from rmbg.stack import StackEndpoints
from services.inference.main import run_inference
from services.inference.settings import InferenceOptions, InferenceSettings
from services.ingest.api import create_app
from services.ingest.settings import IngestOptions, IngestSettings, LiveOptions
from services.persister.main import run_persister
from services.persister.settings import PersisterOptions, PersisterSettings, WebhookOptions
from services.stats.main import run_stats
from services.stats.settings import StatsOptions, StatsSettings
from shared.config import (
    BaseServiceSettings,
    OutboundSettings,
    PostgresSettings,
    RedisSettings,
    S3Settings,
    TelemetrySettings,
    TopicSettings,
)
from shared.db.migrate import upgrade
from shared.messaging import ensure_topics
from shared.models import ModelEntry, ModelSettings
from shared.storage import open_object_store
from tests.support.tiny_rmbg import build_tiny_rmbg

TINY_MODEL = "tiny-rmbg-test"
# The tiny test model joins the catalogue through settings only (it is no product model), and is the one
# model these tests' deployment serves.
TINY_MODELS = ModelSettings(
    served=(TINY_MODEL,),
    extra={TINY_MODEL: ModelEntry(licence="test weights", commercial_use=False, note="tests/support/tiny_rmbg.py")},
)


@dataclass(frozen=True)
class Pipeline:
    api_url: str
    settings: BaseServiceSettings
    model_dir: Path
    # Each service's /metrics (ingest: on the API; the others: their telemetry port, beside /readyz).
    metrics_urls: dict[str, str] = field(default_factory=dict)

    async def key(self, user_id: str, *, admin: bool = False) -> str:
        """A new API key for ``user_id`` (the user is created if new), as `rmbg keys create` makes it."""
        return (await create_key(self.settings, user_id=user_id, admin=admin, name="test", email=None)).key

    @contextlib.asynccontextmanager
    async def client(
        self, user_id: str, *, admin: bool = False, timeout: float = 60  # noqa: ASYNC109 - the HTTP client's
    ) -> AsyncIterator[httpx.AsyncClient]:
        """An HTTP client of the API that authenticates as ``user_id`` with a fresh key."""
        headers = {"Authorization": f"Bearer {await self.key(user_id, admin=admin)}"}
        async with httpx.AsyncClient(base_url=self.api_url, timeout=timeout, headers=headers) as client:
            yield client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_settings(stack: StackEndpoints) -> dict[str, object]:
    run = secrets.token_hex(4)
    return {
        "environment": "test",
        "postgres": PostgresSettings(dsn=stack.postgres_dsn, max_pool=5),
        "redis": RedisSettings(url=stack.redis_url),
        # The embedded broker holds a fetch over several partitions for the whole wait: the stack's
        # shorter wait takes each hop from up to 500 ms to up to 100 (rmbg/stack/stack.py).
        "kafka": stack.kafka_settings(session_timeout_ms=6000, heartbeat_interval_ms=1000),
        # Topics and bucket unique per run, so reruns against long-lived servers never see old records.
        "topics": TopicSettings(
            uploads=f"t{run}.uploads",
            jobs=f"t{run}.jobs",
            results=f"t{run}.results",
            job_events=f"t{run}.job-events",
            dead_letter=f"t{run}.dead-letter",
            partitions=3,
        ),
        # Tests fetch images from, and send webhooks to, servers on loopback at random ports; the
        # refusal of private targets is tested with the default policy (tests/shared/test_outbound.py).
        "outbound": OutboundSettings(allow_private_targets=True, allowed_ports=()),
        "models": TINY_MODELS,
        "s3": S3Settings(
            endpoint_url=stack.s3_endpoint,
            access_key=stack.s3_access_key,
            secret_key=stack.s3_secret_key,
            bucket=f"rmbg-test-{run}",
        ),
    }


async def _until_ready(urls: dict[str, str], tasks: Sequence[asyncio.Task[Any]], *, timeout_s: float) -> None:
    """Every service's /readyz answers 200 (model warmed, dependencies up, consumer groups joined), as
    `rmbg up` waits, so no test's first job waits for a group to form."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        while asyncio.get_running_loop().time() < deadline:
            for t in tasks:
                if t.done():
                    t.result()  # a service that died while starting: its error, now
            for name, url in urls.items():
                try:
                    resp = await client.get(url)
                except httpx.HTTPError as exc:
                    last[name] = f"no answer ({exc!r})"
                    continue
                last[name] = "ready" if resp.status_code == 200 else resp.text
            if all(v == "ready" for v in last.values()) and len(last) == len(urls):
                return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"pipeline not ready within {timeout_s:.0f} s: {last}")


@pytest.fixture(scope="session")
async def pipeline(stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pipeline]:
    common = base_settings(stack)
    model_dir = build_tiny_rmbg(tmp_path_factory.mktemp("model") / "tiny-rmbg")
    base = BaseServiceSettings(**common)  # type: ignore[arg-type]
    await asyncio.to_thread(upgrade, stack.postgres_dsn)
    await ensure_topics(base.kafka, base.topics)
    async with open_object_store(base.s3) as store:
        await store.ensure_bucket()

    port = _free_port()
    telemetry = {name: TelemetrySettings(metrics_port=_free_port()) for name in ("inference", "persister", "stats")}
    # Streams check their key every second here (60 s by default), so a revoked key's stream ends in a test's time.
    live = LiveOptions(reauth_s=1.0)
    ingest = IngestSettings(**common, ingest=IngestOptions(port=port, model=TINY_MODEL), live=live)  # type: ignore[arg-type]
    inference = InferenceSettings(
        **common,  # type: ignore[arg-type]
        telemetry=telemetry["inference"],
        inference=InferenceOptions(
            backend="rmbg", model_source=str(model_dir), model_name=TINY_MODEL, batch_size=4, batch_wait_ms=50
        ),
    )
    # Webhooks on a test schedule (waits of 0.2, 0.5 and 1 s, 1 s per attempt) instead of 5 s, 30 s, 2 min...
    hooks = WebhookOptions(poll_interval_s=0.1, timeout_s=1.0, lease_s=10, retry_delays_s=(0.2, 0.5, 1.0), jitter=0)
    persister = PersisterSettings(
        **common,  # type: ignore[arg-type]
        persister=PersisterOptions(sweep_interval_s=3600),
        webhooks=hooks,
        telemetry=telemetry["persister"],
    )
    stats = StatsSettings(**common, stats=StatsOptions(batch_wait_ms=100), telemetry=telemetry["stats"])  # type: ignore[arg-type]
    api_url = f"http://127.0.0.1:{port}"
    telemetry_urls = {name: f"http://127.0.0.1:{t.metrics_port}" for name, t in telemetry.items()}
    ready_urls = {"ingest": f"{api_url}/readyz", **{n: f"{u}/readyz" for n, u in telemetry_urls.items()}}

    stop = asyncio.Event()
    server = uvicorn.Server(uvicorn.Config(create_app(ingest), host="127.0.0.1", port=port, log_config=None))
    tasks = [
        asyncio.create_task(run_stats(stats, stop), name="stats"),
        asyncio.create_task(run_persister(persister, stop), name="persister"),
        asyncio.create_task(run_inference(inference, stop), name="inference"),
        asyncio.create_task(server.serve(), name="ingest"),
    ]
    try:
        await _until_ready(ready_urls, tasks, timeout_s=120)
        yield Pipeline(
            api_url=api_url,
            settings=base,
            model_dir=model_dir,
            metrics_urls={"ingest": f"{api_url}/metrics", **{n: f"{u}/metrics" for n, u in telemetry_urls.items()}},
        )
    finally:
        stop.set()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 90)
