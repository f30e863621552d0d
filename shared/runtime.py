"""Process plumbing every service shares: what it holds open, and how it stops.

- :class:`ServiceRuntime` opens what a service asks for (thread pools, the database, the object store,
  the Kafka producer, Redis, the outbound HTTP session, the telemetry server) on one exit stack, in the
  order asked, and closes it in reverse when the service ends: no main wires its own teardown. Each
  dependency it opens joins the service's readiness checks (``rt.health``, shared/health.py) and its
  metrics (pool use, S3 calls).
- :func:`run_service` runs a service's ``main(stop)``; SIGTERM and SIGINT only set ``stop``, so in-flight
  work drains within each loop's grace period and everything closes in order. The CLI uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

import aiohttp
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from shared.allocator import reuse_freed_memory
from shared.cache import JobCache, open_redis
from shared.config import BaseServiceSettings
from shared.contracts import Topics
from shared.db import Database, open_database
from shared.health import Health
from shared.messaging import open_producer
from shared.outbound import open_outbound
from shared.storage import ObjectStore, open_object_store
from shared.telemetry import PipelineMetrics, PoolCollector, ScrapeHook, configure_logging, open_telemetry_server

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def cpu_cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (containers).

    CPU pools (image decode and encode) are sized from this, so a service uses the cores it is given and
    no more threads than that compete for them.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open(cpu_max, encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


class ServiceRuntime:
    """One per process: ``async with ServiceRuntime(settings, name="persister") as rt: db = await rt.database()``.

    Each resource is opened on first request and shared afterwards; all close in reverse order of opening.
    """

    def __init__(
        self,
        settings: BaseServiceSettings,
        *,
        name: str,
        metrics: PipelineMetrics | None = None,
        ready_timeout_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.metrics = metrics or PipelineMetrics.create()
        self.topics = Topics.from_settings(settings.topics, settings.kafka, settings.models)
        telemetry = settings.telemetry
        self.health = Health(
            timeout_s=ready_timeout_s or telemetry.ready_timeout_s,
            wedged_after_s=telemetry.wedged_after_s,
            dependency_up=self.metrics.dependency_up,
            ready=self.metrics.ready,
        )
        self.scrape_hooks: list[ScrapeHook] = []
        self.telemetry_port: int | None = None
        self._stack = contextlib.AsyncExitStack()
        self._opened: dict[str, object] = {}

    async def __aenter__(self) -> ServiceRuntime:
        await self._stack.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def serve_telemetry(self) -> int | None:
        """Serve /metrics, /healthz and /readyz on the telemetry port, if one is set; returns the bound port.

        Call it first: it answers (not ready) while the rest opens, and closes last. Scrape hooks added
        later (``scrape_hooks``) are seen too."""
        telemetry = self.settings.telemetry
        if not telemetry.metrics_port:
            return None
        self.telemetry_port = await self._stack.enter_async_context(
            open_telemetry_server(
                self.metrics.registry,
                self.health,
                port=telemetry.metrics_port,
                host=telemetry.metrics_host,
                hooks=self.scrape_hooks,
            )
        )
        return self.telemetry_port

    def executor(self, *, workers: int, prefix: str) -> ThreadPoolExecutor:
        """A thread pool for CPU work off the event loop, shut down (after its work) on exit."""
        return self._stack.enter_context(ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix))

    async def database(self) -> Database:
        def opened(db: Database) -> None:
            collector = PoolCollector(db.pool)
            self.metrics.registry.register(collector)
            self._stack.callback(self.metrics.registry.unregister, collector)
            self.health.add_dependency("postgres", db.ping)

        return await self._once("database", lambda: open_database(self.settings.postgres), opened)

    async def object_store(self) -> ObjectStore:
        def opened(store: ObjectStore) -> None:
            self.health.add_dependency("s3", store.ping)

        return await self._once(
            "store", lambda: open_object_store(self.settings.s3, counters=self.metrics.s3()), opened
        )

    async def producer(self) -> AIOKafkaProducer:
        def opened(producer: AIOKafkaProducer) -> None:
            # A metadata request to any broker: answers when the cluster is reachable.
            self.health.add_dependency("kafka", producer.client.fetch_all_metadata)

        return await self._once("producer", lambda: open_producer(self.settings.kafka, client_id=self.name), opened)

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

    async def _once(
        self,
        key: str,
        opener: Callable[[], contextlib.AbstractAsyncContextManager[_T]],
        opened: Callable[[_T], None] | None = None,
    ) -> _T:
        if key not in self._opened:
            value = await self._stack.enter_async_context(opener())
            self._opened[key] = value
            if opened is not None:
                opened(value)
        result: _T = self._opened[key]  # type: ignore[assignment]
        return result


def prepare_process(settings: BaseServiceSettings) -> None:
    """What a service process sets once before it starts: its logging, then the allocator's policy."""
    configure_logging(settings.telemetry)
    if reuse_freed_memory(settings.memory.reuse_below_mib):
        log.info("freed blocks under %d MiB are kept for reuse (shared/allocator.py)", settings.memory.reuse_below_mib)


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
