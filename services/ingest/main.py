"""``rmbg serve ingest``: the HTTP API and the upload-topic consumer in one process."""

from __future__ import annotations

import uvicorn

from services.ingest.api import create_app
from services.ingest.settings import IngestSettings
from shared.telemetry import configure_logging


def main() -> None:
    settings = IngestSettings()
    configure_logging(settings.telemetry)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.ingest.host,
        port=settings.ingest.port,
        log_config=None,
        lifespan="on",
        # uvicorn drains open requests on SIGTERM for up to this long, then runs the lifespan shutdown.
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
