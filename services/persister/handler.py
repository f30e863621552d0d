"""Writes inference results: objects to S3, the rows to PostgreSQL, then the job events.

A polled batch is applied in four round trips to PostgreSQL whatever its size (docs/life-of-a-job.md):
read every job it names (``get_jobs``), move the started ones (``mark_processing_many``), store each
completion's objects concurrently, then move the ended ones (``mark_completed_many``, ``mark_failed_many``).
One UPDATE per job, as the seed design does, cost 550 transitions/s against 10,169/s at 100 per statement
(BENCHMARKS.md "Transitions into PostgreSQL").

Idempotent by construction: object keys derive from content, and every row transition is guarded by
state (a late ``started`` after ``completed`` changes nothing). A redelivered result for a job that is
already terminal re-publishes that job's terminal event (stats deduplicate it), so an event lost after
the commit is recovered by the redelivery. One job's failure (its cut-out, its objects, its event)
fails only that job's records from there on; a batched statement that fails fails the batch, which the
consume loop then retries (transient) or handles record by record (anything else).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from aiokafka import AIOKafkaProducer

from services.persister.announce import Announcer
from services.persister.settings import PersisterOptions
from shared.cache import JobCache
from shared.config import ImageLimits
from shared.contracts import (
    CutoutFormat,
    ProcessingParams,
    ResultEvent,
    ResultKind,
    Topics,
)
from shared.db import Database
from shared.db.models import JobRecord, JobStatus
from shared.db.repositories.jobs import Completion, Failure, Started
from shared.exceptions import ContractError, Deferred, StorageError
from shared.imaging import CUTOUT_CONTENT_TYPES, make_cutout
from shared.messaging import DeadLetters
from shared.storage import ObjectKeys, ObjectStore
from shared.telemetry import PipelineMetrics
from shared.worker import Record, RecordFailure, each_record

log = logging.getLogger(__name__)

Item = tuple[Record, ResultEvent]
Fail = Callable[["JobPlan", Item, BaseException], None]


@dataclass(frozen=True)
class JobPlan:
    """What one job's results in a batch do, given the row as the batch found it.

    ``started`` is the first STARTED result while the job is pending; ``end`` the first COMPLETED or
    FAILED one. Results after ``end`` change nothing (the guards would refuse them) and ride on its
    outcome; ``replay`` marks a job already terminal, whose event is published again (moved=False).
    ``restated`` is a STARTED result that already moved the row (its started_at is this result's time):
    its processing event is published again too, so one lost after the commit comes back with the
    redelivery, as a terminal job's does."""

    job: JobRecord
    items: list[Item]
    started: Item | None = None
    end: Item | None = None
    replay: bool = False
    restated: Item | None = None

    def from_item(self, item: Item, error: BaseException) -> list[RecordFailure]:
        """``item`` failed with ``error``: it and every later result of the job are to be retried."""
        i = next(n for n, (record, _) in enumerate(self.items) if record is item[0])
        waiting = Deferred(f"waits for result {item[0].offset} of job {self.job.job_id}")
        return [RecordFailure(item[0], error)] + [RecordFailure(r, waiting) for r, _ in self.items[i + 1 :]]


def plan_job(job: JobRecord, items: list[Item]) -> JobPlan:
    """One job's results (in partition order) against its row: see :class:`JobPlan`."""
    if job.is_terminal:
        return JobPlan(job, items, replay=True)
    started: Item | None = None
    restated: Item | None = None
    for item in items:
        result = item[1]
        if result.kind is ResultKind.STARTED:
            if started is None and job.status is JobStatus.PENDING:
                started = item
            elif restated is None and job.status is JobStatus.PROCESSING and job.started_at == result.occurred_at:
                restated = item
            continue
        return JobPlan(job, items, started=started, end=item, restated=restated)
    return JobPlan(job, items, started=started, restated=restated)


class PersistHandler:
    def __init__(
        self,
        *,
        options: PersisterOptions,
        images: ImageLimits,
        db: Database,
        store: ObjectStore,
        producer: AIOKafkaProducer,
        topics: Topics,
        cache: JobCache,
        metrics: PipelineMetrics,
        executor: Executor,
    ) -> None:
        self._options = options
        self._images = images
        self._db = db
        self._store = store
        self._producer = producer
        self._topics = topics
        self._cache = cache
        self._metrics = metrics
        self._executor = executor
        self._limit = asyncio.Semaphore(options.concurrency)
        self._dead_letters = DeadLetters(producer, topics.dead_letter, "persister", metrics.dead_letters)
        self._announcer = Announcer(producer, topics, cache, metrics)

    async def __call__(self, records: list[Record]) -> list[RecordFailure]:
        failures: list[RecordFailure] = []
        with self._metrics.batch_seconds.time():
            by_job: dict[UUID, list[Item]] = defaultdict(list)
            for record in records:
                try:
                    result = self._topics.results.deserialize(record.value)
                except ContractError as exc:
                    failures.append(RecordFailure(record, exc))  # permanent: the loop dead-letters it
                    continue
                by_job[result.job_id].append((record, result))
            if by_job:
                failures.extend(await self._apply(by_job))
        return failures

    async def _apply(self, by_job: dict[UUID, list[Item]]) -> list[RecordFailure]:
        async with self._db.pool.acquire() as conn:
            jobs = await self._db.jobs.get_jobs(conn, job_ids=list(by_job))
        plans: list[JobPlan] = []
        for job_id, items in by_job.items():
            job = jobs.get(job_id)
            if job is None:
                # Jobs are inserted before they are queued, so this is a result for a job removed by retention.
                log.warning("result for unknown job %s ignored", job_id)
                continue
            plans.append(plan_job(job, items))
        failures: list[RecordFailure] = []
        failed_jobs: set[UUID] = set()

        def fail(plan: JobPlan, item: Item, error: BaseException) -> None:
            failures.extend(plan.from_item(item, error))
            failed_jobs.add(plan.job.job_id)

        for plan, error in await each_record([p for p in plans if p.replay], self._replay):
            fail(plan, plan.items[0], error)
        await self._apply_started([(p, p.started) for p in plans if p.started is not None], fail)
        restated = [(p, p.restated) for p in plans if p.restated is not None]
        for (plan, item), error in await each_record(
            restated, lambda pair: self._announcer.announce(pair[0].job, moved=False)
        ):
            fail(plan, item, error)
        # A job whose started event could not be published waits: its end would overtake it.
        await self._apply_ends(
            [(p, p.end) for p in plans if p.end is not None and p.job.job_id not in failed_jobs], fail
        )
        return failures

    async def _replay(self, plan: JobPlan) -> None:
        """A job already ended: its event again, and for a failed one the masks its results stored dropped.

        Such a mask is stored by inference for a job that had failed meanwhile (a late result, the sweeper
        failing it first) or whose give_up could not finish its clean-up (the record then comes back here):
        no row will ever name it, so neither retention nor the job would delete it."""
        await self._announcer.announce(plan.job, moved=False)
        if plan.job.status is JobStatus.FAILED:
            for mask_key in sorted({r.mask_key for _, r in plan.items if r.mask_key is not None}):
                await self._discard_unwanted_mask(plan.job, mask_key)

    async def _apply_started(self, started: list[tuple[JobPlan, Item]], fail: Fail) -> None:
        if not started:
            return
        async with self._db.pool.acquire() as conn:
            moved = await self._db.jobs.mark_processing_many(
                conn, [Started(r.job_id, r.occurred_at, r.attempt) for _, (_, r) in started]
            )
        for (plan, item), error in await each_record(
            [(p, i) for p, i in started if p.job.job_id in moved],
            lambda pair: self._announcer.announce(moved[pair[0].job.job_id]),
        ):
            fail(plan, item, error)

    async def _apply_ends(self, ends: list[tuple[JobPlan, Item]], fail: Fail) -> None:
        if not ends:
            return
        began = time.perf_counter()
        ended_at = datetime.now(UTC)
        failures = [
            Failure(plan.job.job_id, result.error or "inference failed", ended_at)
            for plan, (_, result) in ends
            if result.kind is ResultKind.FAILED
        ]
        completions: dict[UUID, Completion] = {}

        async def complete(end: tuple[JobPlan, Item]) -> None:
            plan, (_, result) = end
            completions[plan.job.job_id] = await self._completion(plan.job, result)

        # Permanent errors (a cut-out that cannot be encoded) go back to the consume loop, which ends the
        # job through give_up; transient ones (S3 down) retry the record. The other jobs go on.
        completing = [end for end in ends if end[1][1].kind is ResultKind.COMPLETED]
        for (plan, item), error in await each_record(completing, complete, limit=self._limit):
            fail(plan, item, error)
        async with self._db.pool.acquire() as conn:
            moved = await self._db.jobs.mark_completed_many(conn, list(completions.values()))
            moved |= await self._db.jobs.mark_failed_many(conn, failures)
        persisted_s = time.perf_counter() - began
        for (plan, item), error in await each_record(
            [end for end in ends if end[0].job.job_id in moved],
            lambda end: self._announce_end(moved[end[0].job.job_id], persisted_s),
        ):
            fail(plan, item, error)

    async def _announce_end(self, updated: JobRecord, persisted_s: float) -> None:
        if updated.status is JobStatus.COMPLETED and updated.completed_at is not None:
            self._metrics.stage_seconds.labels(stage="persist").observe(persisted_s)
            self._metrics.stage_seconds.labels(stage="end_to_end").observe(
                max(0.0, (updated.completed_at - updated.created_at).total_seconds())
            )
        await self._announcer.announce(updated)

    async def give_up(self, record: Record, error: BaseException, reason: str) -> None:
        """A result that can never be applied ends its job as failed (or is dead-lettered if unreadable)."""
        try:
            result = self._topics.results.deserialize(record.value)
        except ContractError:
            await self._dead_letters.send(record, reason, error=error)
            return
        async with self._db.pool.acquire() as conn:
            job = await self._db.jobs.get_job(conn, job_id=result.job_id)
        if job is None:
            await self._dead_letters.send(record, f"no job {result.job_id}: {reason}", error=error)
            return
        log.warning("job %s failed permanently in the persister: %s", job.job_id, reason)
        await self._dead_letters.or_send(record, reason, error, self._end_failed(job, result, reason))

    async def _end_failed(self, job: JobRecord, result: ResultEvent, reason: str) -> None:
        ended = await self._failed(job, f"result not usable: {reason}")
        if result.mask_key is None:
            return
        if ended is None:
            # Not moved: already ended. Only a failed job's mask is unwanted (a completed one uses it).
            async with self._db.pool.acquire() as conn:
                now = await self._db.jobs.get_job(conn, job_id=job.job_id)
            if now is None or now.status is not JobStatus.FAILED:
                return
        await self._discard_unwanted_mask(job, result.mask_key)

    async def _discard_unwanted_mask(self, job: JobRecord, mask_key: str) -> None:
        """Inference stored a large mask for a job that then failed: delete it unless another job may use it.

        Masks are content-addressed, so another job of the same image may reuse it: one that completed with
        it, or one still under way. Checked and deleted under the objects lock (retention's), so an intake
        of the same content waits and then finds the mask gone (and inference makes it again)."""
        async with self._db.pool.acquire() as conn, conn.transaction():
            await self._db.jobs.lock_objects_exclusive(conn)
            wanted = await self._db.jobs.mask_wanted(
                conn, content_sha256=job.content_sha256, mask_path=mask_key, except_job_id=job.job_id
            )
            if not wanted:
                await self._store.delete_many([mask_key])

    async def _failed(self, record: JobRecord, reason: str) -> JobRecord | None:
        """Fail the job and announce it; the moved row, or None when it had already ended."""
        async with self._db.pool.acquire() as conn:
            updated = await self._db.jobs.mark_failed(
                conn, job_id=record.job_id, error_message=reason, completed_at=datetime.now(UTC)
            )
        if updated is not None:
            await self._announcer.announce(updated)
        return updated

    async def _completion(self, record: JobRecord, result: ResultEvent) -> Completion:
        """Store a completed result's mask and cut-out; the transition that records them."""
        params = ProcessingParams.model_validate(record.params)
        model_name = result.model_name or record.model_name
        mask_key = ObjectKeys.job_mask(
            record.content_sha256,
            model_name=model_name,
            model_revision=result.model_revision,
            threshold=params.threshold,
        )
        fmt = params.cutout_format or self._options.cutout_format
        content_type = CUTOUT_CONTENT_TYPES[fmt][1]
        processed_key = ObjectKeys.cutout(
            record.content_sha256,
            model_name=model_name,
            model_revision=result.model_revision,
            params_hash=record.params_hash,
            fmt=fmt,
        )
        mask_png = (
            result.mask_png if result.mask_png is not None else await self._store.get(result.mask_key or mask_key)
        )
        mask_bytes, processed_bytes = await self._store_results(
            record,
            mask_png,
            result,
            mask_key=mask_key,
            processed_key=processed_key,
            fmt=fmt,
            quality=params.webp_quality or self._options.webp_quality,
            content_type=content_type,
        )
        completed_at = datetime.now(UTC)
        # The row derives mask_key and processed_key again from model_name, model_revision and fmt.
        return Completion(
            job_id=record.job_id,
            cutout_format=fmt,
            mask_bytes=mask_bytes,
            processed_bytes=processed_bytes,
            model_name=model_name,
            model_revision=result.model_revision,
            # End to end, from acceptance to durable results: what a user waiting on the job sees.
            processing_time_ms=max(0, int((completed_at - record.created_at).total_seconds() * 1000)),
            completed_at=completed_at,
            reused=result.reused,
        )

    async def _store_results(
        self,
        record: JobRecord,
        mask_png: bytes,
        result: ResultEvent,
        *,
        mask_key: str,
        processed_key: str,
        fmt: CutoutFormat,
        quality: int,
        content_type: str,
    ) -> tuple[int, int]:
        """Write what is not stored yet, with as few S3 requests as the result allows.

        A fresh result (not ``reused``) was segmented just now, so no earlier job made its cut-out: no HEAD
        for it (a concurrent duplicate would only write the same bytes again). Its mask is written with one
        PUT when it came inline, and not at all when it came by key (inference stored it). On the embedded
        S3 server every request costs about 20-30 ms of its CPU (BENCHMARKS.md, "End to end"): this takes a
        fresh job from four requests here to two (GET original, PUT cut-out) plus the mask's PUT.
        """
        if result.reused:
            existing = await self._store.head(processed_key)
            if existing is not None and existing.size > 0:
                # The same cut-out was made for an earlier job.
                await self._store.put_if_absent(mask_key, mask_png, content_type="image/png")
                return len(mask_png), existing.size
        original = await self._store.get(record.original_path, max_bytes=self._images.max_bytes)
        loop = asyncio.get_running_loop()
        # Encode before writing anything: a cut-out that cannot be made leaves no object behind.
        with self._metrics.stage_seconds.labels(stage="encode_cutout").time():
            cutout = await loop.run_in_executor(
                self._executor, make_cutout, original, mask_png, fmt, quality, self._options.cutout_webp_method
            )
        writes: list[Awaitable[object]] = [self._store.put(processed_key, cutout, content_type=content_type)]
        if result.mask_png is not None and not result.reused:
            writes.append(self._store.put(mask_key, mask_png, content_type="image/png"))
        elif result.reused or result.mask_key != mask_key:
            writes.append(self._store.put_if_absent(mask_key, mask_png, content_type="image/png"))
        await asyncio.gather(*writes)
        return len(mask_png), len(cutout)

__all__ = ["PersistHandler", "StorageError"]
