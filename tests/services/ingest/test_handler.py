"""UploadHandler (the upload-event consumer) fed records read back from the real broker, with ingest's
real resources (PostgreSQL, S3, Redis, the producer): no consume loop, no HTTP server, no other service.
Each test uses users and objects of its own in the module's own database, bucket and topics."""

from __future__ import annotations

import hashlib
import io
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from services.ingest.handler import UploadHandler
from services.ingest.intake import Intake
from services.ingest.resources import IngestResources, open_ingest
from services.ingest.settings import IngestOptions, IngestSettings
from shared.config import KafkaSettings
from shared.contracts import JobEventKind, ProcessingParams, UploadEvent
from shared.db import Database
from shared.db.models import JobRecord, JobStatus
from shared.exceptions import ContractError, StorageUnavailable
from shared.failures import FailureClass, classify, describe
from shared.ids import upload_job_id
from shared.models import ModelEntry, ModelSettings
from shared.storage import ObjectKeys, ObjectStore
from shared.telemetry import PipelineMetrics
from shared.worker import Record
from tests.support.images import bomb_png
from tests.support.kafka import publish_records, read_topic

MODEL = "tiny-ingest-test"


@dataclass(frozen=True)
class Ingest:
    res: IngestResources
    handler: UploadHandler

    @property
    def kafka(self) -> KafkaSettings:
        return self.res.settings.kafka

    async def upload(
        self, data: bytes, *, tags: list[str] | None = None, params: ProcessingParams | None = None
    ) -> UploadEvent:
        """An upstream system's upload by a user of its own: the object in the bucket, then the event."""
        key = f"incoming/{secrets.token_hex(6)}.png"
        await self.res.store.put(key, data, content_type="application/octet-stream")
        return UploadEvent(
            event_id=f"ev-{secrets.token_hex(6)}",
            user_id=f"up-{secrets.token_hex(4)}",
            key=key,
            tags=tags or [],
            params=params or ProcessingParams(),
            occurred_at=datetime.now(UTC),
        )

    async def records(self, *events: UploadEvent) -> list[Record]:
        topic = self.res.topics.uploads
        return await publish_records(self.res.producer, self.kafka, topic, [(e.event_id, e) for e in events])

    async def job(self, job_id: uuid.UUID) -> JobRecord | None:
        async with self.res.db.pool.acquire() as conn:
            return await self.res.db.jobs.get_job(conn, job_id=job_id)

    async def jobs_of(self, user: str) -> int:
        async with self.res.db.pool.acquire() as conn:
            count: int = await conn.fetchval("SELECT count(*) FROM image_process_jobs WHERE user_id = $1", user)
        return count

    async def event_kinds(self, job_id: uuid.UUID, *, until: int) -> list[JobEventKind]:
        topic = self.res.topics.job_events

        def kinds(records: list[Record]) -> list[JobEventKind]:
            return [e.kind for e in (topic.deserialize(r.value) for r in records) if e.job_id == job_id]

        return kinds(await read_topic(self.kafka, topic.name, lambda rs: len(kinds(rs)) >= until))

    async def requests_for(self, job_id: uuid.UUID, *, until: int) -> int:
        topic = self.res.topics.jobs

        def count(records: list[Record]) -> int:
            return sum(1 for r in records if topic.deserialize(r.value).job_id == job_id)

        return count(await read_topic(self.kafka, topic.name, lambda rs: count(rs) >= until))


@pytest.fixture(scope="module")
async def ingest(service_common: dict[str, object]) -> AsyncIterator[Ingest]:
    # This module's model joins the catalogue through settings; RMBG_INGEST__MODEL makes it the one served.
    extra = {MODEL: ModelEntry(licence="test weights", commercial_use=False)}
    common = {**service_common, "models": ModelSettings(served=(MODEL,), extra=extra)}
    settings = IngestSettings(**common, ingest=IngestOptions(model=MODEL, port=0))  # type: ignore[arg-type]
    async with open_ingest(settings, PipelineMetrics.create()) as res:
        yield Ingest(res=res, handler=UploadHandler(res))


def _photo() -> bytes:
    pixels = np.random.default_rng(secrets.randbits(64)).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


async def test_a_valid_upload_event_makes_a_pending_job(ingest: Ingest) -> None:
    data = _photo()
    event = await ingest.upload(data, tags=["Shop", "summer"], params=ProcessingParams(threshold=0.5))
    records = await ingest.records(event)

    assert await ingest.handler(records) == []

    job_id = upload_job_id(event.event_id, event.occurred_at)
    job = await ingest.job(job_id)
    assert job is not None
    sha = hashlib.sha256(data).hexdigest()
    assert (job.status, job.source, job.user_id, job.model_name) == (JobStatus.PENDING, "upload", event.user_id, MODEL)
    assert (job.image_width, job.image_height, job.content_sha256) == (60, 40, sha)
    assert job.original_path == ObjectKeys.original(sha, "png"), "the image is stored under its content key"
    assert await ingest.res.store.get(job.original_path) == data
    assert job.params == {"threshold": 0.5} and set(job.tags) == {"shop", "summer"}
    assert job.queue_partition is not None and job.queue_offset is not None, "queued, and where is recorded"
    assert await ingest.requests_for(job_id, until=1) == 1
    assert await ingest.event_kinds(job_id, until=1) == [JobEventKind.ACCEPTED]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"this is not an image at all", "not a recognised image file", id="not-an-image"),
        pytest.param(bomb_png(7000), "49000000 pixels exceeds the limit of 40000000", id="too-many-pixels"),
    ],
)
async def test_a_bad_image_makes_a_failed_job_with_the_reason(ingest: Ingest, data: bytes, reason: str) -> None:
    event = await ingest.upload(data)

    assert await ingest.handler(await ingest.records(event)) == []

    job_id = upload_job_id(event.event_id, event.occurred_at)
    job = await ingest.job(job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert job.error_message is not None and reason in job.error_message, job.error_message
    assert job.original_path == f"s3://{ingest.res.store.bucket}/{event.key}", "upstream's object, not copied"
    assert job.completed_at is not None
    # Upstream systems poll by job id; stats count the job as accepted and failed.
    assert await ingest.event_kinds(job_id, until=2) == [JobEventKind.ACCEPTED, JobEventKind.FAILED]


async def test_a_duplicate_upload_event_is_the_same_job(ingest: Ingest) -> None:
    event = await ingest.upload(_photo())
    first = await ingest.records(event)
    assert await ingest.handler(first) == []
    job_id = upload_job_id(event.event_id, event.occurred_at)
    before = await ingest.job(job_id)

    assert await ingest.handler(first) == [], "the same record again"
    assert await ingest.handler(await ingest.records(event)) == [], "the event sent twice upstream"

    assert await ingest.jobs_of(event.user_id) == 1
    after = await ingest.job(job_id)
    assert after is not None and before is not None
    assert (after.status, after.created_at, after.original_path) == (
        before.status,
        before.created_at,
        before.original_path,
    )


async def test_a_duplicate_bad_upload_is_still_one_failed_job(ingest: Ingest) -> None:
    event = await ingest.upload(b"still not an image")
    records = await ingest.records(event)
    assert await ingest.handler(records) == []
    assert await ingest.handler(records) == []
    assert await ingest.jobs_of(event.user_id) == 1
    job = await ingest.job(upload_job_id(event.event_id, event.occurred_at))
    assert job is not None and job.status is JobStatus.FAILED


async def test_events_that_can_never_be_accepted_are_permanent_and_dead_lettered(ingest: Ingest) -> None:
    missing = (await ingest.upload(_photo())).model_copy(update={"key": "incoming/never-uploaded.png"})
    foreign = (await ingest.upload(_photo())).model_copy(update={"bucket": "someone-elses-bucket"})
    future = (await ingest.upload(_photo())).model_copy(update={"occurred_at": datetime.now(UTC) + timedelta(hours=1)})
    # An unset clock (Go's zero time.Time) and one a year off: made a job of year 8920, or one no id could hold.
    zero = (await ingest.upload(_photo())).model_copy(update={"occurred_at": datetime(1, 1, 1, tzinfo=UTC)})
    stale = (await ingest.upload(_photo())).model_copy(update={"occurred_at": datetime.now(UTC) - timedelta(days=365)})
    good = await ingest.upload(_photo())
    records = await ingest.records(missing, foreign, future, zero, stale, good)

    failures = await ingest.handler(records)

    by_event = {ingest.res.topics.uploads.deserialize(f.record.value).event_id: f for f in failures}
    refused = {missing.event_id, foreign.event_id, future.event_id, zero.event_id, stale.event_id}
    assert set(by_event) == refused, "the good one is accepted"
    assert "not found" in str(by_event[missing.event_id].error)
    assert "is not an upload bucket" in str(by_event[foreign.event_id].error)
    assert "in the future" in str(by_event[future.event_id].error)
    assert "RMBG_INGEST__MAX_EVENT_AGE_S" in str(by_event[zero.event_id].error)
    assert "RMBG_INGEST__MAX_EVENT_AGE_S" in str(by_event[stale.event_id].error)
    for failure in failures:
        assert isinstance(failure.error, ContractError) and classify(failure.error) is FailureClass.PERMANENT
    for event in (missing, foreign, future, zero, stale):
        assert await ingest.jobs_of(event.user_id) == 0, "no job for an event that names no image"
    assert await ingest.jobs_of(good.user_id) == 1

    # The consume loop gives up on them: each becomes a dead letter with its reason, to fix and replay.
    for failure in failures:
        await ingest.handler.give_up(failure.record, failure.error, describe(failure.error))
    topic = ingest.res.topics.dead_letter
    keys = {e.event_id for e in (missing, foreign, future)}

    def letters(rs: list[Record]) -> dict[str | None, str]:
        return {d.key: d.reason for d in (topic.deserialize(r.value) for r in rs) if d.key in keys}

    got = letters(await read_topic(ingest.kafka, topic.name, lambda rs: len(letters(rs)) == len(keys)))
    assert "is not an upload bucket" in got[foreign.event_id]


class _DeletedMeanwhile(ObjectStore):
    """The real store, but right after the upload a deletion lands, as retention's or fsck's would between
    the upload and intake's lock: the object goes and the deletion epoch moves. ``fail_put``: the store is
    down for the upload that follows."""

    def __init__(self, inner: ObjectStore, db: Database, *, fail_put: bool) -> None:
        super().__init__(inner._client, inner.bucket)
        self._db, self._fail_put, self._deleted = db, fail_put, False

    async def put_if_absent(
        self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> bool:
        stored = await super().put_if_absent(key, data, content_type=content_type, metadata=metadata)
        async with self._db.pool.acquire() as conn, conn.transaction():
            await self._db.jobs.lock_objects_exclusive(conn)
            await self.delete_many([key])
            await self._db.jobs.bump_object_deletion_epoch(conn)
        self._deleted = True
        return stored

    async def put(self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None) -> None:
        if self._fail_put and self._deleted:  # the upload after the deletion (put_if_absent puts too)
            raise StorageUnavailable("the object store is down")
        await super().put(key, data, content_type=content_type, metadata=metadata)


async def test_an_original_deleted_before_the_lock_is_stored_again_or_nothing_is_accepted(ingest: Ingest) -> None:
    res = ingest.res

    def intake(store: ObjectStore) -> Intake:
        return Intake(
            options=res.settings.ingest, images=res.settings.images, db=res.db, store=store, producer=res.producer,
            topics=res.topics, cache=res.cache, metrics=res.metrics, executor=res.intake._executor,
            models=res.settings.models,
        )

    data = _photo()
    accepted = await intake(_DeletedMeanwhile(res.store, res.db, fail_put=False)).accept(
        data=data, user_id="u-epoch", tags=[], params=ProcessingParams(), source="http"
    )
    job = await ingest.job(accepted.job_id)
    assert job is not None and await res.store.get(job.original_path) == data, "stored again"

    # The same race with the store down for that upload: the row is rolled back with it, so the 503 the
    # client gets ("nothing was accepted, retry") is true, and its retry starts afresh.
    with pytest.raises(StorageUnavailable):
        await intake(_DeletedMeanwhile(res.store, res.db, fail_put=True)).accept(
            data=_photo(), user_id="u-epoch-down", tags=[], params=ProcessingParams(), source="http"
        )
    assert await ingest.jobs_of("u-epoch-down") == 0
