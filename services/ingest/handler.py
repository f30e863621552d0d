"""Consumer of upload events from upstream systems (images already in object storage)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from services.ingest.resources import IngestResources
from shared.contracts import UploadEvent
from shared.exceptions import ContractError, ImageRejected, Overloaded, PermanentError
from shared.health import ConsumerWatch
from shared.ids import upload_job_id
from shared.messaging import DeadLetters
from shared.worker import LoopOptions, Record, RecordFailure, consume_topic, each_record

log = logging.getLogger(__name__)


class UploadHandler:
    def __init__(self, res: IngestResources) -> None:
        self._res = res
        self._limit = asyncio.Semaphore(res.settings.ingest.concurrency)
        self._dead_letters = DeadLetters(res.producer, res.topics.dead_letter, "ingest", res.metrics.dead_letters)

    async def __call__(self, records: list[Record]) -> list[RecordFailure]:
        try:
            await self._res.backpressure.check()
        except Overloaded as exc:
            # Transient: the loop rewinds and backs off (up to 30 s), so the topic waits instead of the jobs.
            return [RecordFailure(record, exc) for record in records]
        with self._res.metrics.batch_seconds.time():
            failed = await each_record(records, self._one, limit=self._limit)
        return [RecordFailure(record, exc) for record, exc in failed]

    async def give_up(self, record: Record, error: BaseException, reason: str) -> None:
        self._res.metrics.records.labels(topic=record.topic, outcome="dead_letter").inc()
        await self._dead_letters.send(record, reason, error=error)

    async def _one(self, record: Record) -> None:
        """Accept one upload event. Permanent errors (a malformed event, a missing or oversized object)
        propagate to the consume loop, which dead-letters the event; outages propagate and are retried."""
        res = self._res
        topic = res.topics.uploads
        event = topic.deserialize(record.value)
        self._check_clock(event)
        self._check_bucket(event)
        bucket = event.bucket or res.store.bucket
        try:
            data = await res.store.get(event.key, bucket=bucket, max_bytes=res.settings.images.max_bytes)
        except PermanentError as exc:
            raise ContractError(f"upload {bucket}/{event.key}: {exc}") from exc
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
            # Upstream systems poll by job id: a bad image becomes a failed job with its reason.
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
        opts = self._res.settings.ingest
        now = datetime.now(UTC)
        if event.occurred_at > now + timedelta(seconds=opts.max_clock_skew_s):
            raise ContractError(f"occurred_at {event.occurred_at.isoformat()} is in the future")
        if event.occurred_at < now - timedelta(seconds=opts.max_event_age_s):
            raise ContractError(
                f"occurred_at {event.occurred_at.isoformat()} is more than {opts.max_event_age_s} s ago "
                "(RMBG_INGEST__MAX_EVENT_AGE_S): a clock that is wrong or unset"
            )


async def run_upload_consumer(res: IngestResources, stop: asyncio.Event, watch: ConsumerWatch | None = None) -> None:
    opts = res.settings.ingest
    await consume_topic(
        res.settings.kafka,
        topic=res.topics.uploads.name,
        group_id=opts.group_id,
        client_id="ingest-uploads",
        handler=UploadHandler(res),
        options=LoopOptions(max_records=opts.concurrency * 4, grace_s=30.0),
        metrics=res.metrics.loop_metrics(),
        stop=stop,
        watch=watch,
    )
