"""Process entry plumbing: signals set a stop flag; the service drains and closes in reverse order."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def run_service(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` until it returns; SIGTERM/SIGINT only set ``stop``."""

    async def _runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, stop, sig)
        await main(stop)

    asyncio.run(_runner())


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if stop.is_set():
        return
    log.info("received %s: draining in-flight work", sig.name)
    stop.set()


async def every(interval_s: float, stop: asyncio.Event, task: Callable[[], Awaitable[object]], *, name: str) -> None:
    """Run ``task`` now and then every ``interval_s`` until ``stop``.

    Housekeeping must never take its service down: a failing run is logged and retried next interval.
    """
    while not stop.is_set():
        try:
            await task()
        except Exception:
            log.exception("%s failed; retrying in %.0f s", name, interval_s)
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass
