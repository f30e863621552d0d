"""Writes inference results: objects to S3, the row to PostgreSQL, then the job event.

Idempotent by construction: object keys derive from content, and every row transition is guarded by
state (a late ``started`` after ``completed`` changes nothing). A redelivered result for a job that is
already terminal re-publishes that job's terminal event (stats deduplicate it), so an event lost after
the commit is recovered by the redelivery.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from concurrent.futures import Executor
from datetime import UTC, datetime

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
from shared.db.models import JobRecord
from shared.exceptions import ContractError, Deferred, StorageError
from shared.imaging import CUTOUT_CONTENT_TYPES, make_cutout
from shared.messaging import DeadLetters
from shared.storage import ObjectKeys, ObjectStore
from shared.telemetry import PipelineMetrics
from shared.worker import Record, RecordFailure

log = logging.getLogger(__name__)


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
            by_job: dict[str, list[tuple[Record, ResultEvent]]] = defaultdict(list)
            for record in records:
                try:
                    result = self._topics.results.deserialize(record.value)
                except ContractError as exc:
                    failures.append(RecordFailure(record, exc))  # permanent: the loop dead-letters it
                    continue
                by_job[str(result.job_id)].append((record, result))
            # One job's results in order (they share a partition); different jobs concurrently.
            for job_failures in await asyncio.gather(*(self._job_results(items) for items in by_job.values())):
                failures.extend(job_failures)
        return failures

    async def _job_results(self, items: list[tuple[Record, ResultEvent]]) -> list[RecordFailure]:
        async with self._limit:
            for i, (record, result) in enumerate(items):
                try:
                    await self._apply(result)
                except Exception as exc:
                    # The job's later results wait for this one, so they apply in order on the retry.
                    waiting = Deferred(f"waits for result {record.offset} of job {result.job_id}")
                    return [RecordFailure(record, exc)] + [RecordFailure(r, waiting) for r, _ in items[i + 1 :]]
        return []

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
        await self._failed(job, f"result not usable: {reason}")
        if result.mask_key is not None:
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

    async def _apply(self, result: ResultEvent) -> None:
        async with self._db.pool.acquire() as conn:
            record = await self._db.jobs.get_job(conn, job_id=result.job_id)
        if record is None:
            # Jobs are inserted before they are queued, so this is a result for a job removed by retention.
            log.warning("result for unknown job %s ignored", result.job_id)
            return
        if record.is_terminal:
            await self._announcer.announce(record, moved=False)
            return
        if result.kind is ResultKind.STARTED:
            await self._started(record, result)
        elif result.kind is ResultKind.FAILED:
            await self._failed(record, result.error or "inference failed")
        else:
            with self._metrics.stage_seconds.labels(stage="persist").time():
                await self._completed(record, result)

    async def _started(self, record: JobRecord, result: ResultEvent) -> None:
        async with self._db.pool.acquire() as conn:
            updated = await self._db.jobs.mark_processing(
                conn, job_id=record.job_id, started_at=result.occurred_at, attempt=result.attempt
            )
        if updated is not None:
            await self._announcer.announce(updated)

    async def _failed(self, record: JobRecord, reason: str) -> None:
        async with self._db.pool.acquire() as conn:
            updated = await self._db.jobs.mark_failed(
                conn, job_id=record.job_id, error_message=reason, completed_at=datetime.now(UTC)
            )
        if updated is not None:
            await self._announcer.announce(updated)

    async def _completed(self, record: JobRecord, result: ResultEvent) -> None:
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
        # Permanent errors (a cut-out that cannot be encoded) propagate to the consume loop, which ends
        # the job through give_up; transient ones (S3 down) retry the record.
        mask_bytes, processed_bytes = await self._store_results(
            record,
            mask_png,
            mask_key=mask_key,
            processed_key=processed_key,
            fmt=fmt,
            quality=params.webp_quality or self._options.webp_quality,
            content_type=content_type,
        )
        completed_at = datetime.now(UTC)
        async with self._db.pool.acquire() as conn:
            updated = await self._db.jobs.mark_completed(
                conn,
                job_id=record.job_id,
                mask_path=mask_key,
                processed_path=processed_key,
                mask_bytes=mask_bytes,
                processed_bytes=processed_bytes,
                model_name=model_name,
                model_revision=result.model_revision,
                # End to end, from acceptance to durable results: what a user waiting on the job sees.
                processing_time_ms=max(0, int((completed_at - record.created_at).total_seconds() * 1000)),
                completed_at=completed_at,
                reused=result.reused,
            )
        if updated is not None:
            self._metrics.stage_seconds.labels(stage="end_to_end").observe(
                max(0.0, (completed_at - record.created_at).total_seconds())
            )
            await self._announcer.announce(updated)

    async def _store_results(
        self,
        record: JobRecord,
        mask_png: bytes,
        *,
        mask_key: str,
        processed_key: str,
        fmt: CutoutFormat,
        quality: int,
        content_type: str,
    ) -> tuple[int, int]:
        existing = await self._store.head(processed_key)
        if existing is not None and existing.size > 0:
            # The same cut-out was made for an earlier job.
            await self._store.put_if_absent(mask_key, mask_png, content_type="image/png")
            return len(mask_png), existing.size
        original = await self._store.get(record.original_path, max_bytes=self._images.max_bytes)
        loop = asyncio.get_running_loop()
        # Encode before writing anything: a cut-out that cannot be made leaves no object behind.
        with self._metrics.stage_seconds.labels(stage="encode_cutout").time():
            cutout = await loop.run_in_executor(self._executor, make_cutout, original, mask_png, fmt, quality)
        await asyncio.gather(
            self._store.put_if_absent(mask_key, mask_png, content_type="image/png"),
            self._store.put(processed_key, cutout, content_type=content_type),
        )
        return len(mask_png), len(cutout)

__all__ = ["PersistHandler", "StorageError"]
