"""Logging, Prometheus metrics and the telemetry HTTP server.

Each service builds its metrics on its own ``CollectorRegistry`` (made in the service factory, not at
import time), so two services in one process (``rmbg up``) or in one test session never collide. Names
follow Prometheus conventions: base units (``_seconds``, ``_bytes``), ``_total`` on counters, and label
sets bounded by configuration (topics, partitions, stages, models), never by jobs or users. The list of
every metric and what it means is in README ("Monitoring").

inference, persister and stats serve ``/metrics``, ``/healthz`` and ``/readyz`` on
``RMBG_TELEMETRY__METRICS_PORT`` (:func:`open_telemetry_server`, opened through ``ServiceRuntime`` so it
closes with the rest); ingest serves the same three on its HTTP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.config import TelemetrySettings
from shared.health import Health
from shared.storage import S3Counters
from shared.worker import LoopMetrics

log = logging.getLogger(__name__)

# Inference on a CPU takes seconds; on a GPU tens of milliseconds: buckets span both.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Stages include queue waits and whole jobs, which under backpressure reach minutes.
STAGE_BUCKETS = (*LATENCY_BUCKETS, 300, 600)
# rmbg_stage_seconds{stage}: where a job's time goes, in the order a job meets them. queue_wait (inference:
# from the request's publish to its consumption), fetch and decode (inference: the original from S3, to
# RGB), preprocess (a batch resized and normalised, on the model's device), inference (one forward pass
# over a batch), postprocess (a batch's mattes back at full size), encode_mask (inference: the matte as PNG),
# encode_cutout (persister: the cut-out), persist (persister: a completed result to S3 and PostgreSQL),
# end_to_end (persister: acceptance to completed, what the user waits).
STAGES = (
    "queue_wait",
    "fetch",
    "decode",
    "preprocess",
    "inference",
    "postprocess",
    "encode_mask",
    "encode_cutout",
    "persist",
    "end_to_end",
)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(settings: TelemetrySettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # aiokafka logs every rebalance step at INFO; keep operators' logs readable.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


@dataclass(frozen=True)
class PipelineMetrics:
    """The metrics every service exposes (each observes the ones its work touches; the rest stay empty)."""

    registry: CollectorRegistry
    records: Counter
    dead_letters: Counter
    records_failed: Counter
    transitions: Counter
    batch_seconds: Histogram
    batches_failed: Counter
    model_seconds: Histogram
    batch_images: Histogram
    batch_records: Histogram
    stage_seconds: Histogram
    consumer_lag: Gauge
    consumer_partitions: Gauge
    model_load_seconds: Gauge
    model_warmup_seconds: Gauge
    model_info: Gauge
    s3_requests: Counter
    s3_errors: Counter
    s3_retries: Counter
    dependency_up: Gauge
    ready: Gauge
    unfinished_jobs: Gauge
    unfinished_idle_seconds: Gauge
    sweeper_jobs: Counter

    @classmethod
    def create(cls) -> PipelineMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            records=Counter(
                "rmbg_records_total",
                "Records consumed, by topic and outcome",
                ["topic", "outcome"],
                registry=registry,
            ),
            dead_letters=Counter(
                "rmbg_dead_letters_total",
                "Records sent to the dead-letter topic, by source topic and failure class (permanent or unknown)",
                ["topic", "failure_class"],
                registry=registry,
            ),
            records_failed=Counter(
                "rmbg_record_failures_total",
                "Record failures seen by the consume loop, by topic and failure class (a retried record counts "
                "once per try)",
                ["topic", "failure_class"],
                registry=registry,
            ),
            transitions=Counter(
                "rmbg_job_transitions_total",
                "Job state transitions written to PostgreSQL (ingest: pending, and failed at intake; persister: "
                "processing, completed, failed), by new status, model and source (http or upload)",
                ["status", "model", "source"],
                registry=registry,
            ),
            batch_seconds=Histogram(
                "rmbg_batch_seconds", "Time to handle one batch", buckets=LATENCY_BUCKETS, registry=registry
            ),
            batches_failed=Counter(
                "rmbg_batches_failed_total", "Batches left uncommitted for redelivery", registry=registry
            ),
            # Only inference observes these two; other services expose them empty.
            model_seconds=Histogram(
                "rmbg_model_seconds",
                "One forward pass over a batch, pre- and post-processing included",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            batch_images=Histogram(
                "rmbg_batch_images", "Images per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64), registry=registry
            ),
            batch_records=Histogram(
                "rmbg_batch_records",
                "Records per batch handed to a service's handler by the consume loop, by topic",
                ["topic"],
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                registry=registry,
            ),
            stage_seconds=Histogram(
                "rmbg_stage_seconds",
                "Time a job spends in each stage: " + ", ".join(STAGES) + " (README, Monitoring)",
                ["stage"],
                buckets=STAGE_BUCKETS,
                registry=registry,
            ),
            consumer_lag=Gauge(
                "rmbg_consumer_lag",
                "Records after the group's committed offset (end offset minus committed offset) per partition "
                "this consumer holds, read every 15 s. The Tansu broker of the tests and `rmbg up` misreports "
                "end offsets (start of the last batch + 1, stale after a restart: docs/test-servers.md), so "
                "there this reads low; on Kafka it is right",
                ["group", "topic", "partition"],
                registry=registry,
            ),
            consumer_partitions=Gauge(
                "rmbg_consumer_assigned_partitions",
                "Partitions the group has assigned to this consumer",
                ["group", "topic"],
                registry=registry,
            ),
            model_load_seconds=Gauge(
                "rmbg_model_load_seconds", "Time the model took to load (inference)", registry=registry
            ),
            model_warmup_seconds=Gauge(
                "rmbg_model_warmup_seconds",
                "Time of the warm-up forward pass run after loading, before the worker says it is ready",
                registry=registry,
            ),
            model_info=Gauge(
                "rmbg_model_info",
                "The model this inference worker serves (value 1)",
                ["model", "revision", "backend", "device"],
                registry=registry,
            ),
            s3_requests=Counter(
                "rmbg_s3_requests_total",
                "S3 API calls, by operation (each call once, however many attempts it took)",
                ["operation"],
                registry=registry,
            ),
            s3_errors=Counter(
                "rmbg_s3_request_errors_total",
                "S3 API calls that failed, after the client's retries, by operation and class: not_found (404, "
                "often expected: a HEAD before a write), client (other 4xx), throttled (429, SlowDown), server "
                "(5xx), connection (no answer: refused, timed out)",
                ["operation", "error_class"],
                registry=registry,
            ),
            s3_retries=Counter(
                "rmbg_s3_retries_total",
                "Attempts the S3 client retried (standard mode, up to 3 retries per call), by operation",
                ["operation"],
                registry=registry,
            ),
            dependency_up=Gauge(
                "rmbg_dependency_up",
                "1 when the dependency answered the last readiness check in time (run at every scrape and "
                "every /readyz, at most once a second): postgres, s3, kafka",
                ["dependency"],
                registry=registry,
            ),
            ready=Gauge("rmbg_ready", "1 when the last readiness check passed (/readyz)", registry=registry),
            unfinished_jobs=Gauge(
                "rmbg_unfinished_jobs",
                "Jobs pending or processing, read from PostgreSQL at scrape time (persister)",
                registry=registry,
            ),
            unfinished_idle_seconds=Gauge(
                "rmbg_unfinished_job_idle_seconds",
                "How long the unfinished job that moved least recently has not moved (0 when none), read "
                "from PostgreSQL at scrape time (persister)",
                registry=registry,
            ),
            sweeper_jobs=Counter(
                "rmbg_sweeper_jobs_total",
                "Jobs the sweeper judged lost, by what it did: requeued or failed (after max attempts)",
                ["action"],
                registry=registry,
            ),
        )

    def loop_metrics(self) -> LoopMetrics:
        return LoopMetrics(
            batches_failed=self.batches_failed,
            records_failed=self.records_failed,
            batch_records=self.batch_records,
            lag=self.consumer_lag,
            partitions=self.consumer_partitions,
        )

    def s3(self) -> S3Counters:
        return S3Counters(requests=self.s3_requests, errors=self.s3_errors, retries=self.s3_retries)

    def count_transition(self, *, status: str, model: str, source: str) -> None:
        self.transitions.labels(status=str(status), model=model, source=str(source)).inc()


class PoolCollector(Collector):
    """asyncpg pool use, read at scrape time: connections in use and idle, and the pool's limit."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def describe(self) -> Iterable[Metric]:
        return self._families(with_values=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_values=True)

    def _families(self, *, with_values: bool) -> list[Metric]:
        conns = GaugeMetricFamily(
            "rmbg_db_pool_connections", "PostgreSQL pool connections, by state: in_use or idle", labels=["state"]
        )
        limit = GaugeMetricFamily("rmbg_db_pool_max_connections", "The pool's maximum size (RMBG_POSTGRES__MAX_POOL)")
        if with_values:
            size, idle = self._pool.get_size(), self._pool.get_idle_size()
            conns.add_metric(["in_use"], size - idle)
            conns.add_metric(["idle"], idle)
            limit.add_metric([], self._pool.get_max_size())
        return [conns, limit]


class GpuMemoryCollector(Collector):
    """CUDA memory of this process, per device, read at scrape time; registered only where CUDA is available."""

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        import torch

        families = self._families()
        allocated, reserved, total = families
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            allocated.add_metric([device], torch.cuda.memory_allocated(index))
            reserved.add_metric([device], torch.cuda.memory_reserved(index))
            total.add_metric([device], torch.cuda.get_device_properties(index).total_memory)
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "rmbg_gpu_memory_allocated_bytes", "GPU memory held by tensors (torch.cuda.memory_allocated)",
                labels=["device"],
            ),
            GaugeMetricFamily(
                "rmbg_gpu_memory_reserved_bytes", "GPU memory held by torch's caching allocator (memory_reserved)",
                labels=["device"],
            ),
            GaugeMetricFamily("rmbg_gpu_memory_total_bytes", "The device's memory", labels=["device"]),
        ]


def register_gpu_memory(registry: CollectorRegistry) -> bool:
    """Export GPU memory when torch sees CUDA; returns whether it does (CPU-only hosts export nothing)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of inference
        return False
    if not torch.cuda.is_available():
        return False
    registry.register(GpuMemoryCollector())
    return True


ScrapeHook = Callable[[], Awaitable[object]]


async def render_metrics(
    registry: CollectorRegistry, health: Health | None, hooks: Sequence[ScrapeHook] = (), *, timeout_s: float = 2.0
) -> bytes:
    """The exposition of ``registry`` after refreshing what is read at scrape time.

    The readiness checks run first (they set rmbg_dependency_up and rmbg_ready), then each hook, each
    within ``timeout_s``; a hook that fails leaves its gauges as they were and is logged.
    """
    if health is not None:
        await health.readiness()
    for hook in hooks:
        try:
            await asyncio.wait_for(hook(), timeout_s)
        except Exception as exc:
            log.debug("scrape hook %s failed: %s", getattr(hook, "__qualname__", hook), exc)
    return generate_latest(registry)


@contextlib.asynccontextmanager
async def open_telemetry_server(
    registry: CollectorRegistry,
    health: Health,
    *,
    port: int,
    host: str = "127.0.0.1",
    hooks: Sequence[ScrapeHook] = (),
) -> AsyncIterator[int]:
    """Serve /metrics, /healthz and /readyz on ``host:port`` (0 picks a free port) until closed; yields the port.

    Runs on the service's event loop (aiohttp), so a readiness check sees the same state the service does.
    """

    async def metrics(_: web.Request) -> web.Response:
        body = await render_metrics(registry, health, hooks, timeout_s=health.timeout_s)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        report = health.liveness()
        return web.json_response(report.as_json("live"), status=200 if report.ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        report = await health.readiness()
        return web.json_response(report.as_json("ready"), status=200 if report.ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/metrics/", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = int(runner.addresses[0][1])
        log.info("telemetry on http://%s:%d (/metrics, /healthz, /readyz)", host, bound)
        yield bound
    finally:
        await runner.cleanup()

