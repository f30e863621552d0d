"""Telling everyone a job moved, after PostgreSQL holds it: the cache, then the job-events topic.

One place for the rule both the result handler and the sweeper follow: a job that ends is announced with
``accepted`` first. Intake's own ``accepted`` may be lost (a publish that timed out but landed, ingest
killed between the request and the event, a redelivered upload whose job had already finished); stats
count each (job, transition) once, so the repeat costs one ledger probe, and without it those jobs were
missing from the day's total (seen in `make chaos`).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from shared.cache import JobCache
from shared.contracts import JobEventKind, Topics
from shared.db.models import JobRecord
from shared.messaging import publish
from shared.telemetry import PipelineMetrics
from shared.views import job_event, job_view


@dataclass(frozen=True)
class Announcer:
    producer: AIOKafkaProducer
    topics: Topics
    cache: JobCache
    metrics: PipelineMetrics

    async def announce(self, record: JobRecord, *, moved: bool = True) -> None:
        """The row's transition: counted, cached, and published (a terminal one with `accepted` before it).

        ``moved=False`` re-announces a row that did not change now (a redelivered result for a job already
        ended): published again, not counted again."""
        if moved:
            self.metrics.count_transition(status=record.status, model=record.model_name, source=record.source)
        await self.cache.put_job(job_view(record))
        await self.cache.invalidate_user(record.user_id)
        if record.is_terminal:
            await self.emit(record, JobEventKind.ACCEPTED)
        await self.emit(record)

    async def emit(self, record: JobRecord, kind: JobEventKind | None = None) -> None:
        """Publish one transition event for ``record`` (its status's unless ``kind`` names another)."""
        await publish(self.producer, self.topics.job_events, job_event(record, kind), key=str(record.job_id))
