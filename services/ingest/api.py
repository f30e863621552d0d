"""HTTP API of the ingest service, built by ``create_app`` (never at import time).

Routes live in ``services/ingest/routes/``, one module per resource; every route but health, metrics
and the gallery's static page needs an API key (services/ingest/auth.py). Errors have one shape
(services/ingest/errors.py). The OpenAPI document is at /openapi.json, browsable at /docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from services.ingest.bodylimit import FORM_OVERHEAD_BYTES, BodyLimit
from services.ingest.errors import install_error_handlers
from services.ingest.handler import run_upload_consumer
from services.ingest.resources import IngestResources, open_ingest
from services.ingest.routes import account, admin, events, gallery, health, jobs, models, results, webhooks
from services.ingest.settings import IngestSettings
from shared.runtime import every
from shared.telemetry import PipelineMetrics, render_metrics

log = logging.getLogger(__name__)

DESCRIPTION = """Background removal (RMBG-2.0) as a service: submit an image, follow the job, fetch the
cut-out. Authenticate with `Authorization: Bearer <key>` (keys come from `rmbg keys create`). Every error
answers `{"error": {"code": ..., "message": ...}}`."""


async def prune_idempotency_keys(res: IngestResources, stop: asyncio.Event) -> None:
    """Hourly: forget Idempotency-Keys older than their TTL (a retry after that makes a new job)."""

    async def prune() -> None:
        before = datetime.now(UTC) - timedelta(seconds=res.settings.ingest.idempotency_ttl_s)
        async with res.db.pool.acquire() as conn:
            removed = await res.db.keys.prune_idempotency_keys(conn, before=before)
        if removed:
            log.info("pruned %d idempotency keys older than %s", removed, before)

    await every(3600, stop, prune, name="idempotency key pruning")


def create_app(settings: IngestSettings, *, consume_uploads: bool = True) -> FastAPI:
    metrics = PipelineMetrics.create()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_ingest(settings, metrics) as res:
            app.state.resources = res
            stop = asyncio.Event()
            tasks = [asyncio.create_task(prune_idempotency_keys(res, stop), name="idempotency-pruning")]
            if consume_uploads:
                # Registered before the app answers, so /readyz waits for the uploads group's assignment.
                watch = res.health.consumer(group=settings.ingest.group_id, topic=res.topics.uploads.name)
                tasks.append(asyncio.create_task(run_upload_consumer(res, stop, watch), name="uploads-consumer"))
            try:
                yield
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(title="rmbg-pipeline", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.images.max_bytes + FORM_OVERHEAD_BYTES)

    @app.get("/metrics", include_in_schema=False)
    @app.get("/metrics/", include_in_schema=False)
    async def metrics_route(request: Request) -> Response:
        """Prometheus exposition; the readiness checks run first, so rmbg_dependency_up is current."""
        res: IngestResources = request.app.state.resources
        return Response(await render_metrics(metrics.registry, res.health), media_type=CONTENT_TYPE_LATEST)
    install_error_handlers(app)
    for module in (health, jobs, models, events, webhooks, results, account, admin, gallery):
        app.include_router(module.router)
    return app
