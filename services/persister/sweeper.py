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
attempt between them. An attempt counts only once the broker acknowledged its request: a publish that
fails for the broker's sake gives it back (see ``_requeue``), so a broker outage never fails a job. A
failed job's events that the broker did not take are owed and sent again by the next sweeps. The sweeper
also keeps monthly partitions created ahead of time, so inserts never meet a missing partition.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta
from uuid import UUID

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
from shared.failures import FailureClass, classify, describe
from shared.messaging import committed_offsets, publish
from shared.queueing import record_queue_position
from shared.runtime import every
from shared.telemetry import PipelineMetrics
from shared.views import job_request

log = logging.getLogger(__name__)

# Partitions kept ready ahead of today; three months survive a long outage of the sweeper itself.
_MONTHS_AHEAD = 3
# Jobs found stuck in one sweep (find_stuck's limit).
_SWEEP_LIMIT = 500
# Failed jobs whose events are still owed, at most: two full sweeps' worth. Past it the oldest is dropped
# with a warning (its row is failed in PostgreSQL; only its event is missing, as before owing existed).
_MAX_OWED = 2 * _SWEEP_LIMIT


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
        # Failed jobs whose announcement the broker refused, oldest first, each with whether its transition
        # is still to be counted (True when it was never tried: the broker was already down that sweep).
        # In memory: a persister that restarts before the broker is back loses what it owed (the rows are
        # failed either way; only live watchers and stats miss the event).
        self._owed: dict[UUID, tuple[JobRecord, bool]] = {}

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
        # Topics the broker failed a send to in this sweep: the rest of the sweep sends them nothing, as
        # each send would wait out its own timeouts (15 s for metadata, 15 s for the batch:
        # request_timeout_ms) for the same answer. What is not sent is not spent (re-queues are found
        # again, failed events owed); the next sweep tries again.
        down: set[str] = set()
        await self._announce_owed(down)
        async with self._db.pool.acquire() as conn:
            await ensure_partitions(conn, start=date(today.year, today.month, 1), months=_MONTHS_AHEAD + 1)
            candidates = await self._db.jobs.find_stuck(
                conn,
                updated_before=now - timedelta(seconds=min(opts.unqueued_after_s, opts.stuck_after_s)),
                limit=_SWEEP_LIMIT,
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
                    if self._topics.job_events.name in down:
                        self._owe(updated, moved=True)
                    else:
                        await self._announce(updated, moved=True, down=down)
                continue
            topic = self._topics.jobs_for(job.model_name).name
            if topic in down:
                continue  # nothing spent: the next sweep finds it again
            try:
                if await self._requeue(job, down=down):
                    requeued += 1
                    self._metrics.sweeper_jobs.labels(action="requeued").inc()
            except KafkaError as exc:
                down.add(topic)
                log.warning("re-queue of %s failed, its attempt given back: %s", job.job_id, exc)
        if requeued or failed:
            log.info("sweeper re-queued %d and failed %d stuck jobs", requeued, failed)
        return requeued, failed

    async def _requeue(self, job: JobRecord, *, down: set[str]) -> bool:
        """One more attempt for a lost job, counted only if the broker acknowledged its request; False when
        another sweeper (or a result) moved the job first, or the request can never be sent (the attempt
        counts then). Raises the transient error (KafkaError: the broker) with the attempt given back.

        The attempt is recorded first, compare-and-set, and the request published in the same transaction,
        which commits only after the broker's acknowledgement; a failed publish rolls the attempt back.
        Counted after the publish instead, two replicas that found the same job would both publish it (two
        inferences) before one of their counts won; given back by a second statement, that statement could
        itself fail and burn the attempt. Held this way, the row lock is the claim: a second replica's
        compare-and-set waits for this one, then finds updated_at moved (committed: it skips the job) or
        not (rolled back: it tries in turn). The lock is held over the publish, at most its timeouts (2 x
        request_timeout_ms, 30 s; idle_in_transaction_session_timeout is 60 s), on a row nothing moved for
        unqueued_after_s at least (docs/failures.md). If the commit fails after an acknowledgement, the
        request is out uncounted: the job may be queued twice, never lost.
        """
        async with self._db.pool.acquire() as conn, conn.transaction():
            attempt = await self._db.jobs.record_retry(conn, job_id=job.job_id, seen_updated_at=job.updated_at)
            if not attempt:
                return False
            try:
                landed = await publish(
                    self._producer,
                    self._topics.jobs_for(job.model_name),
                    job_request(job, attempt=attempt),
                    key=str(job.job_id),
                )
            except Exception as exc:
                kind = classify(exc)
                if kind is FailureClass.TRANSIENT:
                    raise  # rolls the attempt back
                # No retry sends this request (too large for the broker, a row whose request cannot be
                # built): the attempt counts, so after max_attempts the job is failed with the reason
                # instead of given back, and tried again, every sweep.
                log.error(
                    "re-queue of %s failed, attempt %d spent: %s",
                    job.job_id,
                    attempt,
                    describe(exc, limit=300),
                    exc_info=kind is FailureClass.UNKNOWN,
                )
                return False
        await record_queue_position(self._db, job.job_id, landed)
        # The first `accepted` may have been lost with the first publish; stats count it once. Not owed
        # when the broker does not take it: the job's terminal announcement repeats `accepted` anyway.
        events = self._topics.job_events.name
        if events not in down:
            try:
                await self._announcer.emit(job, JobEventKind.ACCEPTED)
            except Exception as exc:
                if classify(exc) is FailureClass.TRANSIENT:
                    down.add(events)
                log.warning("re-queued %s, its accepted event not published: %s", job.job_id, describe(exc))
        return True

    async def _announce(self, record: JobRecord, *, moved: bool, down: set[str]) -> bool:
        """Announce a job this sweeper failed; when the broker does not take it, it is owed to the next
        sweeps and the events topic is added to ``down``. Returns whether it is no longer owed."""
        try:
            await self._announcer.announce(record, moved=moved)
        except Exception as exc:
            kind = classify(exc)
            if kind is not FailureClass.TRANSIENT:
                # Refused by the broker (too large), or an event that cannot be built from the row: no
                # later sweep would send it either. The row is failed; only its event is missing.
                log.error(
                    "failed event of %s not published, nor owed: %s",
                    record.job_id,
                    describe(exc, limit=300),
                    exc_info=kind is FailureClass.UNKNOWN,
                )
                return True
            # Counted (when moved) before the send failed: sent again, it is not counted twice.
            self._owe(record, moved=False)
            down.add(self._topics.job_events.name)
            log.warning("failed event of %s not published, owed to the next sweep: %s", record.job_id, describe(exc))
            return False
        return True

    def _owe(self, record: JobRecord, *, moved: bool) -> None:
        self._owed[record.job_id] = (record, moved)  # a job owed already keeps its place
        while len(self._owed) > _MAX_OWED:
            dropped = next(iter(self._owed))
            del self._owed[dropped]
            log.warning("failed event of %s dropped: more than %d owed", dropped, _MAX_OWED)

    async def _announce_owed(self, down: set[str]) -> None:
        """Send what earlier sweeps owe, oldest first, until the broker fails again (the rest stays owed).

        Idempotent: an event may have landed before its send failed, and stats count each (job,
        transition) once (services/persister/announce.py)."""
        while self._owed:
            record, moved = next(iter(self._owed.values()))
            del self._owed[record.job_id]
            if not await self._announce(record, moved=moved, down=down):
                # Owed again, now last: move it back in front, so the oldest stays first.
                self._owed = {record.job_id: self._owed.pop(record.job_id), **self._owed}
                return

    def _lost(self, job: JobRecord, consumed: dict[int, int], now: datetime) -> bool:
        idle_s = (now - job.updated_at).total_seconds()
        if idle_s >= self._options.max_idle_s:
            return True
        if job.queue_partition is None or job.queue_offset is None:
            return idle_s >= self._options.unqueued_after_s
        request_consumed = consumed.get(job.queue_partition, -1) > job.queue_offset
        return request_consumed and idle_s >= self._options.stuck_after_s
