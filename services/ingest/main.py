"""``rmbg serve ingest``: the HTTP API and the upload-topic consumer in one process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from services.ingest.api import create_app
from services.ingest.settings import IngestSettings
from shared.runtime import prepare_process, run_service

# uvicorn drains open requests on a stop for up to this long, then runs the lifespan shutdown (the upload
# consumer's grace follows). deploy/k8s gives the pod this plus a margin.
GRACEFUL_SHUTDOWN_S = 30


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service's stop flag (shared/runtime.py) stops it.

    uvicorn 0.29+ installs handlers with signal.signal and, after a graceful shutdown, raises the caught
    signal again, so the process would end killed by SIGTERM (exit -15 / 143) even when it drained
    cleanly; every other service exits 0 after draining, and so does this one.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_ingest(settings: IngestSettings, stop: asyncio.Event) -> None:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.ingest.host,
        port=settings.ingest.port,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = _Server(config)

    async def stop_on_signal() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_on_signal(), name="ingest-stop")
    try:
        await server.serve()
    finally:
        watcher.cancel()
    if not server.started:
        raise SystemExit(1)  # it never came up (port taken, a dependency down at start): not a clean stop


def main() -> None:
    settings = IngestSettings()
    prepare_process(settings)
    run_service(lambda stop: serve_ingest(settings, stop))


if __name__ == "__main__":
    main()
