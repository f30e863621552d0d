"""HTTP API of the ingest service, built by ``create_app`` (never at import time).

Routes live in ``services/ingest/routes/``, one module per resource; every route but health, metrics
and the gallery's static page needs an API key (services/ingest/auth.py). Errors have one shape
(services/ingest/errors.py). The OpenAPI document is at /openapi.json, browsable at /docs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from prometheus_client import make_asgi_app

from services.ingest.errors import install_error_handlers
from services.ingest.resources import open_ingest
from services.ingest.routes import account, admin, events, gallery, health, jobs, results, webhooks
from services.ingest.settings import IngestSettings
from services.ingest.uploads import run_upload_consumer
from shared.telemetry import PipelineMetrics

DESCRIPTION = """Background removal (RMBG-2.0) as a service: submit an image, follow the job, fetch the
cut-out. Authenticate with `Authorization: Bearer <key>` (keys come from `rmbg keys create`). Every error
answers `{"error": {"code": ..., "message": ...}}`."""


def create_app(settings: IngestSettings, *, consume_uploads: bool = True) -> FastAPI:
    metrics = PipelineMetrics.create()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_ingest(settings, metrics) as res:
            app.state.resources = res
            stop = asyncio.Event()
            consumer = (
                asyncio.create_task(run_upload_consumer(res, stop), name="uploads-consumer")
                if consume_uploads
                else None
            )
            try:
                yield
            finally:
                stop.set()
                if consumer is not None:
                    await asyncio.gather(consumer, return_exceptions=True)

    app = FastAPI(title="rmbg-pipeline", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.mount("/metrics", make_asgi_app(registry=metrics.registry))
    install_error_handlers(app)
    for module in (health, jobs, events, webhooks, results, account, admin, gallery):
        app.include_router(module.router)
    return app
