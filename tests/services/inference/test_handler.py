"""InferenceHandler fed records read back from the real broker, with the tiny model, a real object store
and a real producer: no consume loop and no other service. What it published is read from the results
topic (unique to this module)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rmbg.demo import sample_bytes
from services.inference.backends import recipe
from services.inference.backends.base import Chunk, SegmentationBackend, StagedBackend
from services.inference.backends.factory import load_backend
from services.inference.backends.rmbg import RmbgBackend
from services.inference.handler import InferenceHandler
from services.inference.settings import InferenceOptions, InferenceSettings
from shared.contracts import DeadLetter, JobRequested, ProcessingParams, ResultEvent, ResultKind, Topics
from shared.exceptions import ContractError, ModelFailed, ModelOutOfMemory, ObjectMissing
from shared.failures import FailureClass, classify, describe
from shared.ids import uuid7
from shared.imaging import encode_mask_png
from shared.models import ModelEntry, ModelSettings
from shared.runtime import ServiceRuntime
from shared.storage import ObjectKeys, ObjectStore
from shared.worker import Record
from tests.support.kafka import publish_records, read_back, read_topic
from tests.support.tiny_rmbg import build_tiny_rmbg

MODEL = "tiny-rmbg-handler-test"
HUB_ID = "example/tiny-rmbg-handler-test"  # what a row stored before the catalogue named the model


@dataclass(frozen=True)
class Inference:
    settings: InferenceSettings
    handler: InferenceHandler
    backend: SegmentationBackend
    store: ObjectStore
    rt: ServiceRuntime

    @property
    def topics(self) -> Topics:
        return self.rt.topics

    async def records(self, *jobs: JobRequested) -> list[Record]:
        """The jobs as the consume loop would hand them over: published, then fetched from the broker."""
        producer = await self.rt.producer()
        keyed = [(str(j.job_id), j) for j in jobs]
        return await publish_records(producer, self.settings.kafka, self.topics.jobs, keyed)

    async def results(self, *job_ids: uuid.UUID) -> dict[uuid.UUID, list[ResultEvent]]:
        """Every result published for ``job_ids``, read until each has a completed or failed one."""
        wanted = set(job_ids)

        def parse(records: list[Record]) -> dict[uuid.UUID, list[ResultEvent]]:
            by_job: dict[uuid.UUID, list[ResultEvent]] = {j: [] for j in wanted}
            for r in records:
                result = self.topics.results.deserialize(r.value)
                if result.job_id in wanted:
                    by_job[result.job_id].append(result)
            return by_job

        def done(records: list[Record]) -> bool:
            return all(
                any(r.kind is not ResultKind.STARTED for r in results) for results in parse(records).values()
            )

        return parse(await read_topic(self.settings.kafka, self.topics.results.name, done))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_rmbg(tmp_path_factory.mktemp("model") / "tiny_rmbg")


@pytest.fixture(scope="module")
async def inference(service_common: dict[str, object], model_dir: Path) -> AsyncIterator[Inference]:
    opts = InferenceOptions(backend="rmbg", model_source=str(model_dir), model_name=MODEL, batch_size=2)
    # This module's tiny model joins the catalogue through settings, as a deployment's own entry would.
    models = ModelSettings(
        served=(MODEL,), extra={MODEL: ModelEntry(hub_id=HUB_ID, licence="test weights", commercial_use=False)}
    )
    settings = InferenceSettings(**{**service_common, "models": models}, inference=opts)  # type: ignore[arg-type]
    async with ServiceRuntime(settings, name="inference-test") as rt:
        with ThreadPoolExecutor(1) as model_executor, ThreadPoolExecutor(2) as io_executor:
            backend = await asyncio.get_running_loop().run_in_executor(
                model_executor,
                lambda: load_backend("rmbg", model_source=str(model_dir), device="cpu", max_batch=opts.batch_size),
            )
            store = await rt.object_store()
            handler = InferenceHandler(
                options=opts,
                images=settings.images,
                backend=backend,
                store=store,
                producer=await rt.producer(),
                topics=rt.topics,
                metrics=rt.metrics,
                model_executor=model_executor,
                io_executor=io_executor,
                model_names=settings.models.names_for(MODEL),
            )
            yield Inference(settings=settings, handler=handler, backend=backend, store=store, rt=rt)


async def _job(
    inference: Inference, data: bytes | None, *, params: ProcessingParams | None = None, model: str = MODEL
) -> JobRequested:
    """A job request as intake makes it; ``data`` is stored as its original (None: the original is missing)."""
    payload = data if data is not None else uuid.uuid4().bytes
    sha = hashlib.sha256(payload).hexdigest()
    key = ObjectKeys.original(sha, "png")
    if data is not None:
        await inference.store.put(key, data, content_type="image/png")
    width, height = Image.open(io.BytesIO(data)).size if data is not None else (64, 48)
    return JobRequested(
        job_id=uuid7(),
        created_at=datetime.now(UTC),
        user_id="u1",
        original_key=key,
        content_sha256=sha,
        width=width,
        height=height,
        params=params or ProcessingParams(),
        model=model,
    )


def _mask(result: ResultEvent, size: tuple[int, int]) -> np.ndarray:
    assert result.mask_png is not None
    with Image.open(io.BytesIO(result.mask_png)) as img:
        assert img.format == "PNG" and img.mode == "L" and img.size == size
        return np.asarray(img)


async def test_a_good_job_gets_started_then_completed_with_its_mask(inference: Inference) -> None:
    photo = sample_bytes("coffee.png")
    soft = await _job(inference, photo)
    binary = await _job(inference, photo, params=ProcessingParams(threshold=0.5))
    records = await inference.records(soft, binary)

    assert await inference.handler(records) == []

    got = await inference.results(soft.job_id, binary.job_id)
    for job in (soft, binary):
        started, completed = got[job.job_id]
        assert started.kind is ResultKind.STARTED and completed.kind is ResultKind.COMPLETED
        assert (completed.job_id, completed.created_at, completed.attempt) == (job.job_id, job.created_at, 1)
        assert completed.model_name == MODEL and completed.model_revision
        assert completed.mask_key is None and not completed.reused, "a small mask rides in the message"
        assert completed.inference_ms is not None and completed.error is None
    soft_mask = _mask(got[soft.job_id][1], (soft.width, soft.height))
    binary_mask = _mask(got[binary.job_id][1], (binary.width, binary.height))
    assert len(np.unique(soft_mask)) > 2, "a soft matte"
    assert set(np.unique(binary_mask)) <= {0, 255} and len(np.unique(binary_mask)) == 2, "thresholded"
    # Nothing is written to the store for a mask that travels inline: the persister stores it.
    sha = soft.content_sha256
    assert [o async for o in inference.store.iter_keys(f"mask/{sha[:2]}/{sha}/")] == []


async def test_a_missing_original_fails_that_job_alone_as_permanent(inference: Inference) -> None:
    good = await _job(inference, sample_bytes("astronaut.png"))
    lost = await _job(inference, None)
    good_record, lost_record = await inference.records(good, lost)

    failures = await inference.handler([lost_record, good_record])

    assert [f.record.offset for f in failures] == [lost_record.offset]
    error = failures[0].error
    assert isinstance(error, ObjectMissing) and lost.original_key in str(error)
    assert classify(error) is FailureClass.PERMANENT, "the consume loop gives up on it, never retries"
    assert [r.kind for r in (await inference.results(good.job_id))[good.job_id]] == [
        ResultKind.STARTED,
        ResultKind.COMPLETED,
    ], "the other job of the batch is unaffected"

    # What the consume loop then does with a permanent failure: the job gets a failed result with the reason.
    await inference.handler.give_up(lost_record, error, describe(error))
    (failed,) = (await inference.results(lost.job_id))[lost.job_id]
    assert failed.kind is ResultKind.FAILED and failed.job_id == lost.job_id
    assert failed.error is not None and "not found" in failed.error and lost.original_key in failed.error


async def test_a_job_for_another_model_fails_with_the_reason(inference: Inference) -> None:
    job = await _job(inference, sample_bytes("coffee.png"), model="some-other-model")
    assert await inference.handler(await inference.records(job)) == []
    (failed,) = (await inference.results(job.job_id))[job.job_id]
    assert failed.kind is ResultKind.FAILED
    assert failed.error == f"model 'some-other-model' is not served by this worker (it serves {MODEL!r})"


async def test_a_job_naming_the_model_by_its_hub_id_is_served(inference: Inference) -> None:
    # An older row stores the hub id; the sweeper re-queues it with that name. It is this pool's model.
    job = await _job(inference, _distinct_photo(11), model=HUB_ID)
    assert await inference.handler(await inference.records(job)) == []
    results = (await inference.results(job.job_id))[job.job_id]
    assert [r.kind for r in results] == [ResultKind.STARTED, ResultKind.COMPLETED]
    assert results[-1].model_name == MODEL  # stored under the stable name from here on


async def test_a_stored_mask_is_reused_without_fetching_or_computing(inference: Inference) -> None:
    # The original is missing: were it fetched, the job would fail; the stored mask answers it instead.
    job = await _job(inference, None, params=ProcessingParams(threshold=0.25))
    revision = inference.backend.revision
    mask_key = ObjectKeys.mask(job.content_sha256, model_name=MODEL, model_revision=revision, threshold_tag="t0250")
    await inference.store.put(mask_key, encode_mask_png(np.zeros((8, 8), np.uint8)), content_type="image/png")

    assert await inference.handler(await inference.records(job)) == []

    (reused,) = (await inference.results(job.job_id))[job.job_id]
    assert reused.kind is ResultKind.COMPLETED and reused.reused
    assert (reused.mask_key, reused.mask_png, reused.inference_ms) == (mask_key, None, 0)


async def test_an_undecodable_original_is_permanent(inference: Inference) -> None:
    job = await _job(inference, None)
    await inference.store.put(job.original_key, b"\x89PNG\r\n\x1a\n but not really", content_type="image/png")
    (failure,) = await inference.handler(await inference.records(job))
    assert classify(failure.error) is FailureClass.PERMANENT, failure.error


async def test_a_malformed_record_is_dead_lettered(inference: Inference) -> None:
    producer = await inference.rt.producer()
    landed = await producer.send_and_wait(inference.topics.jobs.name, b'{"job_id": "not a job"}', key=b"junk")
    (record,) = await read_back(inference.settings.kafka, [landed])

    (failure,) = await inference.handler([record])
    assert isinstance(failure.error, ContractError) and classify(failure.error) is FailureClass.PERMANENT

    await inference.handler.give_up(record, failure.error, describe(failure.error))
    letters = await read_topic(
        inference.settings.kafka,
        inference.topics.dead_letter.name,
        lambda rs: any(_letter(inference.topics, r).key == "junk" for r in rs),
    )
    letter = next(_letter(inference.topics, r) for r in letters if _letter(inference.topics, r).key == "junk")
    assert (letter.source_topic, letter.partition, letter.offset) == (record.topic, record.partition, record.offset)
    assert letter.payload == record.value and letter.service == "inference"
    assert "malformed JobRequested" in letter.reason


def _letter(topics: Topics, record: Record) -> DeadLetter:
    return topics.dead_letter.deserialize(record.value)


@contextlib.asynccontextmanager
async def _handler_over(
    inference: Inference, backend: SegmentationBackend, store: ObjectStore | None = None
) -> AsyncIterator[InferenceHandler]:
    """A handler of this module's settings over ``backend``, chunks of two, with executors of its own."""
    with ThreadPoolExecutor(1) as model_executor, ThreadPoolExecutor(2) as io_executor:
        yield InferenceHandler(
            options=InferenceOptions(backend="rmbg", model_name=MODEL, batch_size=2),
            images=inference.settings.images,
            backend=backend,
            store=store or inference.store,
            producer=await inference.rt.producer(),
            topics=inference.topics,
            metrics=inference.rt.metrics,
            model_executor=model_executor,
            io_executor=io_executor,
        )


class _Recording:
    """A StagedBackend wrapping the tiny model that notes when each step of each chunk starts and ends; its
    forward pass is slowed to 0.3 s so that overlap shows whatever the machine's speed."""

    def __init__(self, inner: SegmentationBackend) -> None:
        assert isinstance(inner, StagedBackend)
        self._inner = inner
        self.name, self.revision, self.max_batch = inner.name, inner.revision, inner.max_batch
        self.timeline: list[tuple[str, int, str, float]] = []  # step, chunk size, start|end, monotonic

    def _note(self, step: str, chunk: Chunk | list[Image.Image], edge: str) -> None:
        size = len(chunk.sizes) if isinstance(chunk, Chunk) else len(chunk)
        self.timeline.append((step, size, edge, time.monotonic()))

    def predict(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        return self._inner.predict(images)

    def prepare(self, images: Sequence[Image.Image]) -> Chunk:
        self._note("prepare", list(images), "start")
        chunk = self._inner.prepare(images)
        self._note("prepare", chunk, "end")
        return chunk

    def forward(self, chunk: Chunk) -> Chunk:
        self._note("forward", chunk, "start")
        time.sleep(0.3)
        out = self._inner.forward(chunk)
        self._note("forward", chunk, "end")
        return out

    def finish(self, chunk: Chunk) -> list[np.ndarray]:
        return self._inner.finish(chunk)


async def test_the_next_chunk_is_prepared_while_the_model_runs(inference: Inference) -> None:
    """Five jobs, chunks of two: each chunk's forward passes run one at a time on the model thread, and a
    later chunk is prepared while an earlier one is in the model."""
    recording = _Recording(inference.backend)
    async with _handler_over(inference, recording) as handler:
        jobs = [await _job(inference, _distinct_photo(i)) for i in range(5)]
        assert await handler(await inference.records(*jobs)) == []
    got = await inference.results(*(j.job_id for j in jobs))
    assert all([r.kind for r in got[j.job_id]] == [ResultKind.STARTED, ResultKind.COMPLETED] for j in jobs)
    forwards = sorted((t, edge) for step, _, edge, t in recording.timeline if step == "forward")
    assert [edge for _, edge in forwards] == ["start", "end"] * 3, "one forward pass at a time"
    assert sorted(size for step, size, edge, _ in recording.timeline if step == "forward" and edge == "end") == [
        1, 2, 2
    ]
    first_forward_end = forwards[1][0]
    prepared_during = [
        t for step, _, edge, t in recording.timeline if step == "prepare" and edge == "start" and t < first_forward_end
    ]
    assert len(prepared_during) >= 2, "a later chunk was prepared before the first forward pass ended"


def _distinct_photo(seed: int) -> bytes:
    """The demo photo with a few pixels changed: distinct content, so no mask is reused between jobs."""
    with Image.open(io.BytesIO(sample_bytes("coffee.png"))) as img:
        pixels = np.asarray(img.convert("RGB")).copy()
    pixels[0, : seed + 1] = (seed * 40) % 255
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class _FailingPrepare(_Recording):
    """The tiny model, except that preparing a chunk of two raises an error nobody classified."""

    def prepare(self, images: Sequence[Image.Image]) -> Chunk:
        if len(images) == 2:
            raise RuntimeError("pin_memory failed")
        return super().prepare(images)


async def test_an_error_outside_the_model_fails_its_chunk_and_leaves_nothing_running(inference: Inference) -> None:
    """Three jobs, chunks of two: the chunk of two fails in preparation, the chunk of one completes. The
    handler returns (it does not raise) with the error on the two jobs, and the other chunk completes."""
    async with _handler_over(inference, _FailingPrepare(inference.backend)) as handler:
        jobs = [await _job(inference, _distinct_photo(20 + i)) for i in range(3)]
        failures = await handler(await inference.records(*jobs))
    assert len(failures) == 2 and all(isinstance(f.error, RuntimeError) for f in failures)
    assert all(classify(f.error) is FailureClass.UNKNOWN for f in failures)  # retried a bounded number of times
    failed = {inference.topics.jobs.deserialize(f.record.value).job_id for f in failures}
    (other,) = [j for j in jobs if j.job_id not in failed]
    assert (await inference.results(other.job_id))[other.job_id][-1].kind is ResultKind.COMPLETED


class _OutOfMemory:
    """Stands in for the network: the device has no memory left, whatever the batch."""

    def __call__(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


async def test_out_of_device_memory_is_retried_not_blamed_on_the_image(inference: Inference) -> None:
    backend = inference.backend
    assert isinstance(backend, RmbgBackend)
    model = backend._model
    backend._model = _OutOfMemory()  # type: ignore[assignment]
    try:
        jobs = [await _job(inference, _distinct_photo(30 + i)) for i in range(2)]
        failures = await inference.handler(await inference.records(*jobs))
    finally:
        backend._model = model
    # The batch of two is split, then each image alone meets the same state of the device: transient.
    assert len(failures) == 2
    assert all(isinstance(f.error, ModelOutOfMemory) for f in failures), [f.error for f in failures]
    assert all(classify(f.error) is FailureClass.TRANSIENT for f in failures)


async def test_out_of_memory_in_preprocessing_is_that_images(
    inference: Inference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Preprocessing holds an image at its own size (a 40 MP upload, ~480 MB of float32 on a GPU): out of
    memory there, with the image alone, is the image's, and fails its job instead of being retried forever."""

    def out_of_memory(*args: object, **kwargs: object) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 480.00 MiB")

    monkeypatch.setattr(recipe, "preprocess_batch", out_of_memory)
    job = await _job(inference, _distinct_photo(40))
    (failure,) = await inference.handler(await inference.records(job))
    assert isinstance(failure.error, ModelFailed) and classify(failure.error) is FailureClass.PERMANENT
    assert "out of cpu memory in preprocessing" in str(failure.error)


class _SlowFetch(ObjectStore):
    """The real store, but reading one of ``slow`` takes 30 s: that job is still being admitted."""

    def __init__(self, inner: ObjectStore, slow: set[str]) -> None:
        super().__init__(inner._client, inner.bucket)
        self._slow = slow

    async def get(self, key: str, *, bucket: str | None = None, max_bytes: int | None = None) -> bytes:
        if key in self._slow:
            await asyncio.sleep(30)
        return await super().get(key, bucket=bucket, max_bytes=max_bytes)


async def test_a_cancelled_batch_leaves_no_chunk_running(inference: Inference) -> None:
    """The stop's grace ran out: the consume loop cancels the handler while one job is still being fetched
    and a chunk of two already started. That chunk must not go on (and send results) after the batch was
    given back for redelivery."""
    recording = _Recording(inference.backend)
    jobs = [await _job(inference, _distinct_photo(50 + i)) for i in range(3)]
    store = _SlowFetch(inference.store, {jobs[2].original_key})
    async with _handler_over(inference, recording, store) as handler:
        running = asyncio.create_task(handler(await inference.records(*jobs)))
        deadline = time.monotonic() + 30
        while not any(step == "forward" for step, *_ in recording.timeline):
            assert time.monotonic() < deadline, "the chunk of two never reached the model"
            await asyncio.sleep(0.01)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        left = [t for t in asyncio.all_tasks() if "_compute" in repr(t.get_coro()) and not t.done()]
        assert left == [], "a chunk still at work after its batch was cancelled"
