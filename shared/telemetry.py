"""Logging and Prometheus metrics.

Each service builds its metrics on its own ``CollectorRegistry`` (made in the service factory, not at
import time), so two services in one process (``rmbg up``) or in one test session never collide.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from shared.config import TelemetrySettings
from shared.worker import LoopMetrics

# Inference on a CPU takes seconds; on a GPU tens of milliseconds: buckets span both.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


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
    """The metrics every Kafka-driven service exposes; services add their own on the same registry."""

    registry: CollectorRegistry
    records: Counter
    dead_letters: Counter
    records_failed: Counter
    transitions: Counter
    batch_seconds: Histogram
    batches_failed: Counter
    model_seconds: Histogram
    batch_images: Histogram

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
                "Records sent to the dead-letter topic, by source topic and failure class",
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
                "rmbg_job_transitions_total", "Job state transitions written", ["status"], registry=registry
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
        )


    def loop_metrics(self) -> LoopMetrics:
        return LoopMetrics(batches_failed=self.batches_failed, records_failed=self.records_failed)


def serve_metrics(registry: CollectorRegistry, port: int, *, addr: str = "127.0.0.1") -> int:
    """Expose /metrics on its own port (0 picks a free one); returns the bound port."""
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return int(server.server_port)
