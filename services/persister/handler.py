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

from aiokafka import AIOKafkaProducer, ConsumerRecord

from services.persister.settings import PersisterOptions
from shared.cache import JobCache
from shared.contracts import (
    CutoutFormat,
    JobEvent,
    JobEventKind,
    ProcessingParams,
    ResultEvent,
    ResultKind,
    Topics,
)
from shared.database import Database
from shared.db.models import JobRecord
from shared.exceptions import ContractError, ImageRejected, StorageError
from shared.imaging import CUTOUT_CONTENT_TYPES, make_cutout
from shared.messaging import dead_letter, publish
from shared.storage import ObjectKeys, ObjectStore
from shared.telemetry import PipelineMetrics
from shared.views import job_view

log = logging.getLogger(__name__)

TERMINAL = frozenset({"completed", "failed"})


class PersistHandler:
    def __init__(
        self,
        *,
        options: PersisterOptions,
        db: Database,
        store: ObjectStore,
        producer: AIOKafkaProducer,
        topics: Topics,
        cache: JobCache,
        metrics: PipelineMetrics,
        executor: Executor,
    ) -> None:
        self._options = options
        self._db = db
        self._store = store
        self._producer = producer
        self._topics = topics
        self._cache = cache
        self._metrics = metrics
        self._executor = executor
        self._limit = asyncio.Semaphore(options.concurrency)

    async def __call__(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        with self._metrics.batch_seconds.time():
            by_job: dict[str, list[ResultEvent]] = defaultdict(list)
            for record in records:
                try:
                    result = self._topics.results.deserialize(record.value)
                except ContractError as exc:
                    await dead_letter(
                        self._producer, self._topics.dead_letter, record, reason=str(exc), service="persister"
                    )
                    self._metrics.dead_letters.labels(topic=record.topic).inc()
                    continue
                by_job[str(result.job_id)].append(result)
            # One job's results in order (they share a partition); different jobs concurrently.
            await asyncio.gather(*(self._job_results(results) for results in by_job.values()))

    async def _job_results(self, results: list[ResultEvent]) -> None:
        async with self._limit:
            for result in results:
                await self._apply(result)

    async def _apply(self, result: ResultEvent) -> None:
        async with self._db.pool.acquire() as conn:
            record = await self._db.jobs.get_job(conn, job_id=result.job_id)
        if record is None:
            # Jobs are inserted before they are queued, so this is a result for a job removed by retention.
            log.warning("result for unknown job %s ignored", result.job_id)
            return
        if record.status in TERMINAL:
            await self._announce(record)
            return
        if result.kind is ResultKind.STARTED:
            await self._started(record, result)
        elif result.kind is ResultKind.FAILED:
            await self._failed(record, result.error or "inference failed")
        else:
            await self._completed(record, result)

    async def _started(self, record: JobRecord, result: ResultEvent) -> None:
        async with self._db.pool.acquire() as conn:
            updated = await self._db.jobs.mark_processing(
                conn, job_id=record.job_id, started_at=result.occurred_at, attempt=result.attempt
            )
        if updated is not None:
            await self._announce(updated)

    async def _failed(self, record: JobRecord, reason: str) -> None:
        async with self._db.pool.acquire() as conn:
            updated = await self._db.jobs.mark_failed(
                conn, job_id=record.job_id, error_message=reason, completed_at=datetime.now(UTC)
            )
        if updated is not None:
            await self._announce(updated)

    async def _completed(self, record: JobRecord, result: ResultEvent) -> None:
        params = ProcessingParams.model_validate(record.params)
        model_name = result.model_name or record.model_name
        mask_key = ObjectKeys.mask(
            record.content_sha256,
            model_name=model_name,
            model_revision=result.model_revision,
            threshold_tag=ObjectKeys.threshold_tag(params.threshold),
        )
        fmt = params.cutout_format or self._options.cutout_format
        extension, content_type = CUTOUT_CONTENT_TYPES[fmt]
        processed_key = ObjectKeys.processed(
            record.content_sha256,
            model_name=model_name,
            model_revision=result.model_revision,
            params_hash=f"{record.params_hash}-{fmt.value}",
            extension=extension,
        )
        try:
            mask_png = (
                result.mask_png if result.mask_png is not None else await self._store.get(result.mask_key or mask_key)
            )
            mask_bytes, processed_bytes = await self._store_results(
                record,
                mask_png,
                mask_key=mask_key,
                processed_key=processed_key,
                fmt=fmt,
                quality=params.webp_quality or self._options.webp_quality,
                content_type=content_type,
            )
        except ImageRejected as exc:
            await self._failed(record, f"result not usable: {exc.reason}")
            return
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
            await self._announce(updated)

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
        await self._store.put_if_absent(mask_key, mask_png, content_type="image/png")
        existing = await self._store.head(processed_key)
        if existing is not None and existing.size > 0:
            return len(mask_png), existing.size  # the same cut-out was made for an earlier job
        original = await self._store.get(record.original_path, max_bytes=self._options.max_image_bytes)
        loop = asyncio.get_running_loop()
        cutout = await loop.run_in_executor(self._executor, make_cutout, original, mask_png, fmt, quality)
        await self._store.put(processed_key, cutout, content_type=content_type)
        return len(mask_png), len(cutout)

    async def _announce(self, record: JobRecord) -> None:
        """After the commit: refresh the cache, then publish the transition for stats and dashboards."""
        self._metrics.transitions.labels(status=record.status).inc()
        await self._cache.put_job(job_view(record))
        await self._cache.invalidate_user(record.user_id)
        event = JobEvent(
            job_id=record.job_id,
            created_at=record.created_at,
            kind=JobEventKind(record.status),
            occurred_at=datetime.now(UTC),
            user_id=record.user_id,
            processing_time_ms=record.processing_time_ms,
            model_name=record.model_name,
            error=(record.error_message or "")[:2000] or None,
        )
        await publish(self._producer, self._topics.job_events, event, key=str(record.job_id))


__all__ = ["PersistHandler", "StorageError"]
