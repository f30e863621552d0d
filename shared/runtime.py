"""Process plumbing every service shares: what it holds open, and how it stops.

- :class:`ServiceRuntime` opens what a service asks for (thread pools, the database, the object store,
  the Kafka producer, Redis, the outbound HTTP session) on one exit stack, in the order asked, and closes
  it in reverse when the service ends: no main wires its own teardown.
- :func:`run_service` runs a service's ``main(stop)``; SIGTERM and SIGINT only set ``stop``, so in-flight
  work drains within each loop's grace period and everything closes in order. The CLI uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

import aiohttp
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from shared.cache import JobCache, open_redis
from shared.config import BaseServiceSettings
from shared.contracts import Topics
from shared.db import Database, open_database
from shared.messaging import open_producer
from shared.outbound import open_outbound
from shared.storage import ObjectStore, open_object_store
from shared.telemetry import PipelineMetrics, serve_metrics

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class ServiceRuntime:
    """One per process: ``async with ServiceRuntime(settings, name="persister") as rt: db = await rt.database()``.

    Each resource is opened on first request and shared afterwards; all close in reverse order of opening.
    """

    def __init__(self, settings: BaseServiceSettings, *, name: str, metrics: PipelineMetrics | None = None) -> None:
        self.settings = settings
        self.name = name
        self.metrics = metrics or PipelineMetrics.create()
        self.topics = Topics.from_settings(settings.topics, settings.kafka)
        self._stack = contextlib.AsyncExitStack()
        self._opened: dict[str, object] = {}

    async def __aenter__(self) -> ServiceRuntime:
        await self._stack.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)

    def serve_metrics(self) -> None:
        """Expose /metrics on the telemetry port, if one is set (call when the service is ready to say so)."""
        if self.settings.telemetry.metrics_port:
            serve_metrics(self.metrics.registry, self.settings.telemetry.metrics_port)

    def executor(self, *, workers: int, prefix: str) -> ThreadPoolExecutor:
        """A thread pool for CPU work off the event loop, shut down (after its work) on exit."""
        return self._stack.enter_context(ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix))

    async def database(self) -> Database:
        return await self._once("database", lambda: open_database(self.settings.postgres))

    async def object_store(self) -> ObjectStore:
        return await self._once("store", lambda: open_object_store(self.settings.s3))

    async def producer(self) -> AIOKafkaProducer:
        return await self._once("producer", lambda: open_producer(self.settings.kafka, client_id=self.name))

    async def redis(self) -> Redis | None:
        """The process's one Redis client; None when Redis is not configured (it is optional)."""
        if "redis" not in self._opened:
            self._opened["redis"] = await self._stack.enter_async_context(open_redis(self.settings.redis))
        client = self._opened["redis"]
        return client if isinstance(client, Redis) else None

    async def cache(self) -> JobCache:
        if "cache" not in self._opened:
            self._opened["cache"] = JobCache(await self.redis(), ttl_s=self.settings.redis.job_ttl_s)
        cache = self._opened["cache"]
        assert isinstance(cache, JobCache)
        return cache

    async def outbound(self, *, limit: int = 32) -> aiohttp.ClientSession:
        """HTTP to users' URLs, refused where shared/outbound.py's policy forbids."""
        return await self._once("outbound", lambda: open_outbound(self.settings.outbound, limit=limit))

    async def enter(self, cm: contextlib.AbstractAsyncContextManager[_T]) -> _T:
        """Open a service-specific resource on the same stack (closed in the same reverse order)."""
        return await self._stack.enter_async_context(cm)

    async def _once(self, key: str, opener: Callable[[], contextlib.AbstractAsyncContextManager[_T]]) -> _T:
        if key not in self._opened:
            self._opened[key] = await self._stack.enter_async_context(opener())
        value: _T = self._opened[key]  # type: ignore[assignment]
        return value


def run_service(main: Callable[[asyncio.Event], Awaitable[_T]]) -> _T:
    """Run ``main(stop)`` until it returns; SIGTERM/SIGINT only set ``stop``."""

    async def _runner() -> _T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, stop, sig)
        return await main(stop)

    return asyncio.run(_runner())


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
