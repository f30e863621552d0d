"""Finds jobs that are really lost and drives them to an end.

A job is lost only when (docs/failures.md):
- its request was never acknowledged by the broker (no queue position) for ``unqueued_after_s``: the
  publish failed after the row was written, or ingest died in between; or
- inference consumed and committed its request (the group's committed offset on that partition is past
  the job's queue offset) and no result has moved the job for ``stuck_after_s``; or
- nothing has moved it for ``max_idle_s`` (a day), wherever its request is: the last resort for a topic
  that was lost or re-created, whose reset offsets would make every stored position look "waiting".
- or, with several models served, its model is no longer among them (no pool reads its topic) and it has
  not moved for ``unqueued_after_s``: it is failed at once with that reason, never re-queued.
A job whose request still waits in the topic is never touched, however long the queue: Kafka keeps it, and
a dead inference worker's uncommitted requests go to the group's next member. A lost job is re-queued
with its attempt count raised; after ``max_attempts`` it is failed with the reason. Every step is
idempotent and the re-queue is compare-and-set, so two persister replicas sweeping at once spend one
attempt between them. The sweeper
also keeps monthly partitions created ahead of time, so inserts never meet a missing partition.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.persister.announce import Announcer
from services.persister.settings import PersisterOptions
from shared.cache import JobCache
from shared.config import KafkaSettings
from shared.contracts import JobEventKind, Topics
from shared.db import Database
from shared.db.models import JobRecord
from shared.db.partitions import ensure_partitions
from shared.messaging import committed_offsets, publish
from shared.queueing import record_queue_position
from shared.runtime import every
from shared.telemetry import PipelineMetrics
from shared.views import job_request

log = logging.getLogger(__name__)

# Partitions kept ready ahead of today; three months survive a long outage of the sweeper itself.
_MONTHS_AHEAD = 3


class Sweeper:
    def __init__(
        self,
        *,
        options: PersisterOptions,
        kafka: KafkaSettings,
        db: Database,
        producer: AIOKafkaProducer,
        topics: Topics,
        cache: JobCache,
        metrics: PipelineMetrics,
    ) -> None:
        self._kafka = kafka
        self._options = options
        self._db = db
        self._producer = producer
        self._topics = topics
        self._metrics = metrics
        self._announcer = Announcer(producer, topics, cache, metrics)

    async def run(self, stop: asyncio.Event) -> None:
        await every(self._options.sweep_interval_s, stop, self.sweep_once, name="stuck-job sweep")

    async def measure(self) -> None:
        """At scrape time: how many jobs are unfinished, and how long the least recently moved has not moved
        (rmbg_unfinished_jobs, rmbg_unfinished_job_idle_seconds). One probe of the small partial index
        ix_jobs_active_updated, the same query as ingest's backpressure."""
        async with self._db.pool.acquire() as conn:
            jobs, since = await self._db.jobs.backlog(conn, rank=1)
        self._metrics.unfinished_jobs.set(jobs)
        idle = (datetime.now(UTC) - since).total_seconds() if since is not None else 0.0
        self._metrics.unfinished_idle_seconds.set(max(0.0, idle))

    async def sweep_once(self, *, now: datetime | None = None) -> tuple[int, int]:
        """Returns (re-queued, failed)."""
        now = now or datetime.now(UTC)
        today = now.date()
        opts = self._options
        async with self._db.pool.acquire() as conn:
            await ensure_partitions(conn, start=date(today.year, today.month, 1), months=_MONTHS_AHEAD + 1)
            candidates = await self._db.jobs.find_stuck(
                conn, updated_before=now - timedelta(seconds=min(opts.unqueued_after_s, opts.stuck_after_s)), limit=500
            )
        if not candidates:
            return 0, 0
        models = self._topics.models
        # A model no pool serves any more (taken out of RMBG_MODELS__SERVED): nothing will ever read its
        # jobs' requests, so such a job is failed once it has not moved for unqueued_after_s, instead of
        # waiting out max_idle_s (a day) for a consumer that does not exist.
        unserved = {job.job_id for job in candidates if models.routed and models.served_name(job.model_name) is None}
        # Each job's request waits on the topic of its model's pool, read by that pool's group.
        consumed: dict[str, dict[int, int]] = {}
        for model in {job.model_name for job in candidates if job.job_id not in unserved}:
            consumed[model] = await committed_offsets(
                self._kafka,
                group_id=models.inference_group(opts.inference_group_id, model),
                topic=self._topics.jobs_for(model).name,
            )
        stuck = [
            job
            for job in candidates
            if (job.job_id in unserved and (now - job.updated_at).total_seconds() >= opts.unqueued_after_s)
            or (job.job_id not in unserved and self._lost(job, consumed[job.model_name], now))
        ]
        requeued = failed = 0
        for job in stuck:
            if job.job_id in unserved or job.attempts >= self._options.max_attempts:
                async with self._db.pool.acquire() as conn:
                    updated = await self._db.jobs.mark_failed(
                        conn,
                        job_id=job.job_id,
                        completed_at=now,
                        error_message=(
                            f"model {job.model_name!r} is no longer served (served: "
                            f"{', '.join(models.served)}); no pool would take it"
                            if job.job_id in unserved
                            else f"lost {job.attempts} times (no result after its request was consumed, or never "
                            f"queued); last state {job.status}"
                        ),
                    )
                if updated is not None:
                    failed += 1
                    self._metrics.sweeper_jobs.labels(action="failed").inc()
                    await self._announcer.announce(updated)
                continue
            async with self._db.pool.acquire() as conn:
                attempt = await self._db.jobs.record_retry(conn, job_id=job.job_id, seen_updated_at=job.updated_at)
            if not attempt:
                continue
            try:
                landed = await publish(
                    self._producer,
                    self._topics.jobs_for(job.model_name),
                    job_request(job, attempt=attempt),
                    key=str(job.job_id),
                )
                await record_queue_position(self._db, job.job_id, landed)
                # The first `accepted` may have been lost with the first publish; stats count it once.
                await self._announcer.emit(job, JobEventKind.ACCEPTED)
                requeued += 1
                self._metrics.sweeper_jobs.labels(action="requeued").inc()
            except KafkaError as exc:
                log.warning("re-queue of %s failed: %s", job.job_id, exc)
        if requeued or failed:
            log.info("sweeper re-queued %d and failed %d stuck jobs", requeued, failed)
        return requeued, failed

    def _lost(self, job: JobRecord, consumed: dict[int, int], now: datetime) -> bool:
        idle_s = (now - job.updated_at).total_seconds()
        if idle_s >= self._options.max_idle_s:
            return True
        if job.queue_partition is None or job.queue_offset is None:
            return idle_s >= self._options.unqueued_after_s
        request_consumed = consumed.get(job.queue_partition, -1) > job.queue_offset
        return request_consumed and idle_s >= self._options.stuck_after_s
