"""Finds jobs that stopped moving (a lost message, a dead worker) and drives them to an end.

A job untouched for ``stuck_after_s`` is re-queued with its attempt count raised; after
``max_attempts`` it is failed with the reason. Every step is idempotent, so two persister replicas
sweeping at once only duplicate harmless re-queues. The sweeper also keeps monthly partitions created
ahead of time, so inserts never meet a missing partition at a month boundary.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.persister.settings import PersisterOptions
from shared.cache import JobCache
from shared.contracts import JobEvent, JobEventKind, JobRequested, ProcessingParams, Topics
from shared.database import Database
from shared.db.models import JobRecord
from shared.db.partitions import ensure_partitions
from shared.messaging import publish
from shared.runtime import every
from shared.telemetry import PipelineMetrics
from shared.views import job_view

log = logging.getLogger(__name__)

# Partitions kept ready ahead of today; three months survive a long outage of the sweeper itself.
_MONTHS_AHEAD = 3


class Sweeper:
    def __init__(
        self,
        *,
        options: PersisterOptions,
        db: Database,
        producer: AIOKafkaProducer,
        topics: Topics,
        cache: JobCache,
        metrics: PipelineMetrics,
    ) -> None:
        self._options = options
        self._db = db
        self._producer = producer
        self._topics = topics
        self._cache = cache
        self._metrics = metrics

    async def run(self, stop: asyncio.Event) -> None:
        await every(self._options.sweep_interval_s, stop, self.sweep_once, name="stuck-job sweep")

    async def sweep_once(self, *, now: datetime | None = None) -> tuple[int, int]:
        """Returns (re-queued, failed)."""
        now = now or datetime.now(UTC)
        today = now.date()
        async with self._db.pool.acquire() as conn:
            await ensure_partitions(conn, start=date(today.year, today.month, 1), months=_MONTHS_AHEAD + 1)
            stuck = await self._db.jobs.find_stuck(
                conn, updated_before=now - timedelta(seconds=self._options.stuck_after_s), limit=500
            )
        requeued = failed = 0
        for job in stuck:
            if job.attempts >= self._options.max_attempts:
                async with self._db.pool.acquire() as conn:
                    updated = await self._db.jobs.mark_failed(
                        conn,
                        job_id=job.job_id,
                        completed_at=now,
                        error_message=(
                            f"no progress after {job.attempts} attempts "
                            f"({self._options.stuck_after_s} s each); last state {job.status}"
                        ),
                    )
                if updated is not None:
                    failed += 1
                    await self._cache.put_job(job_view(updated))
                    await self._cache.invalidate_user(updated.user_id)
                    # `accepted` too: if its first publish was lost, the job would be missing from the
                    # day's total (stats count each transition once, so a repeat costs nothing).
                    await self._emit(updated, JobEventKind.ACCEPTED)
                    await self._emit(updated, JobEventKind.FAILED)
                continue
            async with self._db.pool.acquire() as conn:
                attempt = await self._db.jobs.record_retry(conn, job_id=job.job_id)
            if not attempt:
                continue
            try:
                await publish(
                    self._producer,
                    self._topics.jobs,
                    JobRequested(
                        job_id=job.job_id,
                        created_at=job.created_at,
                        user_id=job.user_id,
                        original_key=job.original_path,
                        content_sha256=job.content_sha256,
                        width=job.image_width or 1,
                        height=job.image_height or 1,
                        params=ProcessingParams.model_validate(job.params),
                        model=job.model_name,
                        attempt=attempt,
                    ),
                    key=str(job.job_id),
                )
                # The first `accepted` may have been lost with the first publish; stats count it once.
                await self._emit(job, JobEventKind.ACCEPTED)
                requeued += 1
            except KafkaError as exc:
                log.warning("re-queue of %s failed: %s", job.job_id, exc)
        if requeued or failed:
            log.info("sweeper re-queued %d and failed %d stuck jobs", requeued, failed)
        return requeued, failed

    async def _emit(self, job: JobRecord, kind: JobEventKind) -> None:
        event = JobEvent(
            job_id=job.job_id,
            created_at=job.created_at,
            kind=kind,
            occurred_at=datetime.now(UTC),
            user_id=job.user_id,
            error=(job.error_message or "")[:2000] or None,
            model_name=job.model_name,
            params=ProcessingParams.model_validate(job.params) if kind is JobEventKind.ACCEPTED else None,
        )
        await publish(self._producer, self._topics.job_events, event, key=str(job.job_id))
