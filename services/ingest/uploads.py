"""Consumer of upload events from upstream systems (images already in object storage)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from aiokafka import ConsumerRecord

from services.ingest.intake import upload_job_id
from services.ingest.resources import IngestResources
from shared.contracts import UploadEvent
from shared.exceptions import ContractError, ImageRejected, StorageError
from shared.messaging import dead_letter
from shared.worker import LoopOptions, consume_topic

log = logging.getLogger(__name__)


class UploadHandler:
    def __init__(self, res: IngestResources) -> None:
        self._res = res
        self._limit = asyncio.Semaphore(res.settings.ingest.concurrency)

    async def __call__(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        with self._res.metrics.batch_seconds.time():
            await asyncio.gather(*(self._one(r) for r in records))

    async def _one(self, record: ConsumerRecord[bytes, bytes]) -> None:
        res = self._res
        topic = res.topics.uploads
        async with self._limit:
            try:
                event = topic.deserialize(record.value)
                self._check_clock(event)
                self._check_bucket(event)
            except ContractError as exc:
                await self._dead_letter(record, str(exc))
                return
            bucket = event.bucket or res.store.bucket
            try:
                data = await res.store.get(event.key, bucket=bucket, max_bytes=res.settings.ingest.max_image_bytes)
            except StorageError as exc:
                if "not found" in str(exc) or "exceeds the limit" in str(exc):
                    await self._dead_letter(record, f"upload {bucket}/{event.key}: {exc}")
                    return
                raise  # storage outage: the batch is retried, nothing is lost
            job_id = upload_job_id(event.event_id, event.occurred_at)
            try:
                await res.intake.accept(
                    data=data,
                    user_id=event.user_id,
                    tags=event.tags,
                    params=event.params,
                    source="upload",
                    job_id=job_id,
                )
                res.metrics.records.labels(topic=topic.name, outcome="accepted").inc()
            except ImageRejected as exc:
                await res.intake.reject(
                    job_id=job_id,
                    data=data,
                    user_id=event.user_id,
                    tags=event.tags,
                    params=event.params,
                    reason=exc.reason,
                    original_path=f"s3://{bucket}/{event.key}",
                )
                res.metrics.records.labels(topic=topic.name, outcome=f"rejected_{exc.code}").inc()

    def _check_bucket(self, event: UploadEvent) -> None:
        allowed = {self._res.store.bucket, *self._res.settings.ingest.upload_buckets}
        if event.bucket is not None and event.bucket not in allowed:
            raise ContractError(f"bucket {event.bucket!r} is not an upload bucket (RMBG_INGEST__UPLOAD_BUCKETS)")

    def _check_clock(self, event: UploadEvent) -> None:
        skew = timedelta(seconds=self._res.settings.ingest.max_clock_skew_s)
        if event.occurred_at > datetime.now(UTC) + skew:
            raise ContractError(f"occurred_at {event.occurred_at.isoformat()} is in the future")

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        res = self._res
        await dead_letter(res.producer, res.topics.dead_letter, record, reason=reason, service="ingest")
        res.metrics.dead_letters.labels(topic=record.topic).inc()
        res.metrics.records.labels(topic=record.topic, outcome="dead_letter").inc()


async def run_upload_consumer(res: IngestResources, stop: asyncio.Event) -> None:
    opts = res.settings.ingest
    await consume_topic(
        res.settings.kafka,
        topic=res.topics.uploads.name,
        group_id=opts.group_id,
        client_id="ingest-uploads",
        handler=UploadHandler(res),
        options=LoopOptions(max_records=opts.concurrency * 4, grace_s=30.0),
        failed_batches=res.metrics.batches_failed,
        stop=stop,
    )
