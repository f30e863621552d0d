"""PersistHandler fed result records read back from the real broker, on real PostgreSQL, S3 and Redis: no
consume loop, no inference. Each test makes its own pending jobs (in the module's own database) and reads
the job events it caused from the module's own job-events topic."""

from __future__ import annotations

import hashlib
import io
import secrets
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from PIL import Image

from services.persister.handler import JobPlan, PersistHandler, plan_job
from services.persister.settings import PersisterSettings
from shared.cache import JobCache
from shared.contracts import CutoutFormat, JobEvent, JobEventKind, ProcessingParams, ResultEvent, ResultKind
from shared.db.models import JobRecord, JobStatus
from shared.exceptions import ImageRejected
from shared.failures import FailureClass, classify, describe
from shared.ids import uuid7
from shared.imaging import encode_mask_png
from shared.runtime import ServiceRuntime
from shared.storage import ObjectKeys, ObjectStore
from shared.worker import Record
from tests.support.kafka import publish_records, read_topic

MODEL = "tiny-persist-test"
REVISION = "rev1"


@dataclass(frozen=True)
class Persister:
    settings: PersisterSettings
    handler: PersistHandler
    rt: ServiceRuntime
    store: ObjectStore
    cache: JobCache

    async def job(self, data: bytes, *, params: ProcessingParams | None = None, user: str = "u1") -> JobRecord:
        """A pending job as intake leaves it: the original stored, the row inserted."""
        params = params or ProcessingParams()
        sha = hashlib.sha256(data).hexdigest()
        key = ObjectKeys.original(sha, "png")
        await self.store.put(key, data, content_type="image/png")
        width, height = Image.open(io.BytesIO(data)).size
        job_id = uuid7()
        db = await self.rt.database()
        async with db.pool.acquire() as conn:
            assert await db.jobs.insert_job(
                conn,
                job_id=job_id,
                user_id=user,
                original_path=key,
                content_sha256=sha,
                original_bytes=len(data),
                image_width=width,
                image_height=height,
                params=params.canonical(),
                params_hash=params.digest(),
                model_name=MODEL,
                source="http",
                tags=[],
            )
        return await self.row(job_id)

    async def row(self, job_id: uuid.UUID) -> JobRecord:
        db = await self.rt.database()
        async with db.pool.acquire() as conn:
            record = await db.jobs.get_job(conn, job_id=job_id)
        assert record is not None
        return record

    async def records(self, *results: ResultEvent) -> list[Record]:
        """Results as the consume loop hands them over: published, then fetched from the broker."""
        producer = await self.rt.producer()
        topic = self.rt.topics.results
        return await publish_records(producer, self.settings.kafka, topic, [(str(r.job_id), r) for r in results])

    async def events(self, job_id: uuid.UUID, *, until: int) -> list[JobEventKind]:
        """The kinds of the job events published for ``job_id``, read until there are at least ``until``."""
        topics = self.rt.topics

        def kinds(records: list[Record]) -> list[JobEventKind]:
            events: list[JobEvent] = [topics.job_events.deserialize(r.value) for r in records]
            return [e.kind for e in events if e.job_id == job_id]

        return kinds(await read_topic(self.settings.kafka, topics.job_events.name, lambda rs: len(kinds(rs)) >= until))


@pytest.fixture(scope="module")
async def persister(service_common: dict[str, object]) -> AsyncIterator[Persister]:
    settings = PersisterSettings(**service_common)  # type: ignore[arg-type]
    async with ServiceRuntime(settings, name="persister-test") as rt:
        with ThreadPoolExecutor(2) as executor:
            db, store, cache = await rt.database(), await rt.object_store(), await rt.cache()
            handler = PersistHandler(
                options=settings.persister,
                images=settings.images,
                db=db,
                store=store,
                producer=await rt.producer(),
                topics=rt.topics,
                cache=cache,
                metrics=rt.metrics,
                executor=executor,
            )
            yield Persister(settings=settings, handler=handler, rt=rt, store=store, cache=cache)


def _photo() -> bytes:
    """An image of its own (objects are content-addressed: a shared photo would share them across tests)."""
    pixels = np.random.default_rng(secrets.randbits(64)).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _mask_for(job: JobRecord) -> bytes:
    assert job.image_width is not None and job.image_height is not None
    ramp = np.linspace(0, 255, job.image_width, dtype=np.uint8)
    return encode_mask_png(np.tile(ramp, (job.image_height, 1)))


def _result(job: JobRecord, kind: ResultKind, **fields: object) -> ResultEvent:
    return ResultEvent(
        kind=kind,
        job_id=job.job_id,
        created_at=job.created_at,
        occurred_at=datetime.now(UTC),
        model_name=MODEL,
        model_revision=REVISION,
        **fields,  # type: ignore[arg-type]
    )


def _expected_keys(job: JobRecord, fmt: str, extension: str) -> tuple[str, str]:
    mask = ObjectKeys.mask(job.content_sha256, model_name=MODEL, model_revision=REVISION, threshold_tag="soft")
    processed = ObjectKeys.processed(
        job.content_sha256,
        model_name=MODEL,
        model_revision=REVISION,
        params_hash=f"{job.params_hash}-{fmt}",
        extension=extension,
    )
    return mask, processed


async def test_a_completed_result_writes_mask_cutout_and_row(persister: Persister) -> None:
    job = await persister.job(_photo())
    mask_png = _mask_for(job)
    records = await persister.records(_result(job, ResultKind.COMPLETED, mask_png=mask_png, inference_ms=7))

    assert await persister.handler(records) == []

    row = await persister.row(job.job_id)
    mask_key, processed_key = _expected_keys(job, "webp", "webp")  # the default cut-out format
    assert row.status is JobStatus.COMPLETED and row.error_message is None
    assert (row.mask_path, row.processed_path) == (mask_key, processed_key)
    assert (row.model_name, row.model_revision, row.reused_result) == (MODEL, REVISION, False)
    assert await persister.store.get(mask_key) == mask_png and row.mask_bytes == len(mask_png)
    cutout = await persister.store.get(processed_key)
    assert row.processed_bytes == len(cutout)
    with Image.open(io.BytesIO(cutout)) as img:
        assert (img.format, img.mode, img.size) == ("WEBP", "RGBA", (job.image_width, job.image_height))
        alpha = np.asarray(img.getchannel("A"))
    assert alpha[:, 0].max() < 16 and alpha[:, -1].min() > 240, "the mask is the cut-out's alpha"
    assert row.completed_at is not None and row.processing_time_ms is not None
    # Announced after the row: the cache holds the new state, the topic the transition (accepted first).
    cached = await persister.cache.get_job(str(job.job_id))
    assert cached is not None and cached["status"] == "completed"
    assert await persister.events(job.job_id, until=2) == [JobEventKind.ACCEPTED, JobEventKind.COMPLETED]


async def test_a_redelivered_result_changes_nothing(persister: Persister) -> None:
    job = await persister.job(_photo(), params=ProcessingParams(cutout_format=CutoutFormat.PNG))
    records = await persister.records(_result(job, ResultKind.COMPLETED, mask_png=_mask_for(job)))
    assert await persister.handler(records) == []
    first = await persister.row(job.job_id)
    mask_key, processed_key = _expected_keys(job, "png", "png")
    assert (first.mask_path, first.processed_path) == (mask_key, processed_key)
    stored = {key: await persister.store.get(key) for key in (mask_key, processed_key)}
    prefix = f"processed/{job.content_sha256[:2]}/{job.content_sha256}/"
    listed = [(o.key, o.last_modified) async for o in persister.store.iter_keys(prefix)]

    assert await persister.handler(records) == [], "the same record again"
    # A retried send is another record with the same result; and a late `started` may arrive after the end.
    again = await persister.records(
        _result(job, ResultKind.COMPLETED, mask_png=_mask_for(job)), _result(job, ResultKind.STARTED)
    )
    assert await persister.handler(again) == []

    assert await persister.row(job.job_id) == first, "the row is untouched (updated_at included)"
    assert {key: await persister.store.get(key) for key in stored} == stored
    assert [(o.key, o.last_modified) async for o in persister.store.iter_keys(prefix)] == listed, "nothing rewritten"
    # The terminal event is published again on each redelivery (an event lost after the commit comes back
    # this way); stats count each (job, transition) once.
    kinds = await persister.events(job.job_id, until=6)
    assert set(kinds) == {JobEventKind.ACCEPTED, JobEventKind.COMPLETED} and JobEventKind.PROCESSING not in kinds


async def test_a_failed_result_fails_the_job_with_its_reason(persister: Persister) -> None:
    job = await persister.job(_photo())
    records = await persister.records(
        _result(job, ResultKind.STARTED), _result(job, ResultKind.FAILED, error="model failed on this image: nan")
    )

    assert await persister.handler(records) == []

    row = await persister.row(job.job_id)
    assert row.status is JobStatus.FAILED
    assert row.error_message == "model failed on this image: nan"
    assert row.started_at is not None, "the started result was applied first, in order"
    assert (row.mask_path, row.processed_path) == (None, None)
    sha = job.content_sha256
    assert [o async for o in persister.store.iter_keys(f"processed/{sha[:2]}/{sha}/")] == []
    assert await persister.events(job.job_id, until=3) == [
        JobEventKind.PROCESSING,
        JobEventKind.ACCEPTED,
        JobEventKind.FAILED,
    ]


async def test_a_result_for_an_unknown_job_is_ignored(persister: Persister) -> None:
    job = await persister.job(_photo())
    ghost = job.model_copy(update={"job_id": uuid7()})
    assert await persister.handler(await persister.records(_result(ghost, ResultKind.FAILED, error="x"))) == []
    assert (await persister.row(job.job_id)).status is JobStatus.PENDING


async def test_an_unusable_mask_fails_the_job_and_its_stored_mask_is_discarded(persister: Persister) -> None:
    """A claim-checked mask that does not fit the image: permanent; giving up fails the job and deletes the
    mask inference stored for it, since no other job wants it."""
    job = await persister.job(_photo())
    mask_key, processed_key = _expected_keys(job, "webp", "webp")
    await persister.store.put(mask_key, encode_mask_png(np.zeros((5, 5), np.uint8)), content_type="image/png")
    (record,) = await persister.records(_result(job, ResultKind.COMPLETED, mask_key=mask_key))

    (failure,) = await persister.handler([record])
    assert isinstance(failure.error, ImageRejected) and classify(failure.error) is FailureClass.PERMANENT
    assert await persister.store.head(processed_key) is None, "nothing written for a cut-out that cannot be made"

    await persister.handler.give_up(record, failure.error, describe(failure.error))
    row = await persister.row(job.job_id)
    assert row.status is JobStatus.FAILED
    assert row.error_message is not None and row.error_message.startswith("result not usable: ")
    assert "mask is 5x5" in row.error_message
    assert await persister.store.head(mask_key) is None


async def test_a_second_job_of_the_same_content_reuses_the_cutout(persister: Persister) -> None:
    photo = _photo()
    first = await persister.job(photo)
    done = _result(first, ResultKind.COMPLETED, mask_png=_mask_for(first))
    assert await persister.handler(await persister.records(done)) == []
    _, processed_key = _expected_keys(first, "webp", "webp")
    before = [(o.key, o.last_modified) async for o in persister.store.iter_keys(processed_key)]

    second = await persister.job(photo)
    result = _result(second, ResultKind.COMPLETED, mask_png=_mask_for(second), reused=True)
    assert await persister.handler(await persister.records(result)) == []

    row = await persister.row(second.job_id)
    assert row.status is JobStatus.COMPLETED and row.reused_result
    assert row.processed_path == processed_key
    assert row.processed_bytes == (await persister.row(first.job_id)).processed_bytes
    assert [(o.key, o.last_modified) async for o in persister.store.iter_keys(processed_key)] == before


async def test_a_batch_applies_every_job_and_one_bad_job_fails_alone(persister: Persister) -> None:
    """Many jobs in one polled batch (the batched transitions): each job's results apply in order, a job
    already ended has its event published again, and a job whose cut-out cannot be made fails with its
    later results waiting behind it, while the others complete."""
    good = [await persister.job(_photo()) for _ in range(4)]
    ended = await persister.job(_photo())
    bad = await persister.job(_photo())
    mask_key, _ = _expected_keys(bad, "webp", "webp")
    await persister.store.put(mask_key, encode_mask_png(np.zeros((5, 5), np.uint8)), content_type="image/png")
    assert await persister.handler(await persister.records(_result(ended, ResultKind.FAILED, error="early"))) == []
    ghost = good[0].model_copy(update={"job_id": uuid7()})
    results = [_result(job, ResultKind.STARTED) for job in good]
    results += [_result(bad, ResultKind.STARTED), _result(bad, ResultKind.COMPLETED, mask_key=mask_key)]
    results += [_result(job, ResultKind.COMPLETED, mask_png=_mask_for(job)) for job in good]
    results += [_result(job, ResultKind.STARTED) for job in (ended, ghost, bad)]
    records = await persister.records(*results)

    failures = await persister.handler(records)

    assert [(f.record.offset, type(f.error).__name__) for f in failures] == [
        (records[5].offset, "ImageRejected"),
        (records[12].offset, "Deferred"),
    ]
    assert classify(failures[1].error) is FailureClass.TRANSIENT, "the later result waits, it is not given up"
    for job in good:
        row = await persister.row(job.job_id)
        assert row.status is JobStatus.COMPLETED and row.started_at is not None and row.processed_bytes
        assert await persister.events(job.job_id, until=3) == [
            JobEventKind.PROCESSING,
            JobEventKind.ACCEPTED,
            JobEventKind.COMPLETED,
        ]
    assert (await persister.row(bad.job_id)).status is JobStatus.PROCESSING, "its start applied, its end did not"
    assert (await persister.row(ended.job_id)).error_message == "early"
    replayed = await persister.events(ended.job_id, until=4)
    assert replayed == [JobEventKind.ACCEPTED, JobEventKind.FAILED] * 2, "the ended job's event again, once"


_STARTED_AT = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _plan_kinds(
    status: JobStatus, *kinds: ResultKind, started_at: datetime | None = None
) -> tuple[int | None, int | None, bool]:
    plan, items = _plan(status, *kinds, started_at=started_at)
    return _index(items, plan.started), _index(items, plan.end), plan.replay


def _plan(status: JobStatus, *kinds: ResultKind, started_at: datetime | None = None) -> tuple[JobPlan, list[Any]]:
    """A plan for a row in ``status`` and results of ``kinds``, the i-th occurring i minutes after _STARTED_AT."""
    job = JobRecord.model_construct(job_id=uuid7(), status=status, started_at=started_at)
    items = [
        (object(), ResultEvent.model_construct(kind=kind, occurred_at=_STARTED_AT + timedelta(minutes=i)))
        for i, kind in enumerate(kinds)
    ]
    return plan_job(job, items), items


def _index(items: list[Any], item: object) -> int | None:
    return None if item is None else next(i for i, it in enumerate(items) if it is item)


def test_plan_job_follows_the_status_guards() -> None:
    S, C, F = ResultKind.STARTED, ResultKind.COMPLETED, ResultKind.FAILED
    assert _plan_kinds(JobStatus.PENDING, S, C) == (0, 1, False)
    assert _plan_kinds(JobStatus.PENDING, S, S, F, C, S) == (0, 2, False), "the first start and the first end"
    assert _plan_kinds(JobStatus.PROCESSING, S, C) == (None, 1, False), "started only moves a pending job"
    assert _plan_kinds(JobStatus.PENDING, C, S) == (None, 0, False), "a start after the end changes nothing"
    assert _plan_kinds(JobStatus.PENDING, S) == (0, None, False)
    assert _plan_kinds(JobStatus.COMPLETED, S, C) == (None, None, True)
    assert _plan_kinds(JobStatus.FAILED, F) == (None, None, True)


def test_a_start_that_already_moved_the_row_is_announced_again() -> None:
    """Its processing event may have been lost after the commit (the batch is then retried): the row says
    this very result moved it (started_at is its time), so the redelivery publishes the event again."""
    S, C = ResultKind.STARTED, ResultKind.COMPLETED
    plan, items = _plan(JobStatus.PROCESSING, S, C, started_at=_STARTED_AT)
    assert (_index(items, plan.started), _index(items, plan.restated), _index(items, plan.end)) == (None, 0, 1)
    other, _ = _plan(JobStatus.PROCESSING, S, C, started_at=_STARTED_AT - timedelta(hours=1))
    assert other.restated is None, "a start other than the one that moved the row changes nothing"
    pending, _ = _plan(JobStatus.PENDING, S, started_at=None)
    assert pending.restated is None and pending.started is not None


async def test_a_fresh_result_costs_one_get_and_two_puts(
    persister: Persister, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 requests per fresh job (BENCHMARKS.md "End to end": each costs the embedded S3 server 20-30 ms of
    CPU): the original read once, the inline mask and the cut-out written once each, no HEAD."""
    job = await persister.job(_photo())
    records = await persister.records(
        _result(job, ResultKind.STARTED), _result(job, ResultKind.COMPLETED, mask_png=_mask_for(job))
    )
    calls: list[str] = []
    for name in ("head", "get", "put"):
        real = getattr(persister.store, name)

        async def counted(*args: object, _real=real, _name=name, **kwargs: object) -> object:  # type: ignore[no-untyped-def]
            calls.append(_name)
            return await _real(*args, **kwargs)

        monkeypatch.setattr(persister.store, name, counted)
    assert await persister.handler(records) == []
    assert sorted(calls) == ["get", "put", "put"], calls
    row = await persister.row(job.job_id)
    assert row.status is JobStatus.COMPLETED
    assert row.mask_path is not None and row.processed_path is not None
    assert await persister.store.head(row.mask_path) is not None and await persister.store.head(row.processed_path)


async def test_a_late_result_of_a_failed_job_leaves_no_mask_behind(persister: Persister) -> None:
    """Inference stored a large mask for a job that had failed meanwhile: no row will ever name it, so the
    redelivery path deletes it, unless another job of the same content completed with it."""
    photo = _photo()
    job = await persister.job(photo)
    assert await persister.handler(await persister.records(_result(job, ResultKind.FAILED, error="lost"))) == []
    mask_key, _ = _expected_keys(job, "webp", "webp")
    await persister.store.put(mask_key, _mask_for(job), content_type="image/png")

    assert await persister.handler(await persister.records(_result(job, ResultKind.COMPLETED, mask_key=mask_key))) == []
    assert (await persister.row(job.job_id)).status is JobStatus.FAILED
    assert await persister.store.head(mask_key) is None

    # The same content completed by another job with that very mask: the failed job's late result keeps it.
    done = await persister.job(photo)
    await persister.store.put(mask_key, _mask_for(done), content_type="image/png")
    completed = _result(done, ResultKind.COMPLETED, mask_key=mask_key)
    assert await persister.handler(await persister.records(completed)) == []
    assert (await persister.row(done.job_id)).status is JobStatus.COMPLETED
    assert await persister.handler(await persister.records(_result(job, ResultKind.COMPLETED, mask_key=mask_key))) == []
    assert await persister.store.head(mask_key) is not None


async def test_a_redelivered_start_publishes_the_processing_event_again(persister: Persister) -> None:
    """The start moved the row; were its event lost after the commit, the batch comes again: the event is
    published again (stats count a job's transition once), and the row does not move twice."""
    job = await persister.job(_photo())
    (started,) = await persister.records(_result(job, ResultKind.STARTED))
    assert await persister.handler([started]) == []
    moved = await persister.row(job.job_id)
    assert moved.status is JobStatus.PROCESSING
    assert await persister.handler([started]) == []
    assert (await persister.row(job.job_id)).updated_at == moved.updated_at, "not moved again"
    assert (await persister.events(job.job_id, until=2)).count(JobEventKind.PROCESSING) == 2
