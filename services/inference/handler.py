"""Turns a batch of job requests into results.

Per batch: parse (malformed → dead letter), refuse jobs for a model this worker does not serve, reuse a
mask already stored for the same (content, model, threshold), fetch and decode the rest concurrently,
run the model once per chunk of ``batch_size`` images in the dedicated model thread, then publish one
result per job. The consume loop commits offsets only after every result is acknowledged.

A chunk starts as soon as ``batch_size`` of the batch's images are decoded, not when all are. With a
:class:`~services.inference.backends.base.StagedBackend` each chunk is prepared (resized, normalised, on
the device) and finished (mattes at full size, PNG) on the I/O threads, so the model thread runs one
chunk's forward pass while the next is prepared and the previous one finished; forward passes queue on
the one model thread in the order their chunks became ready.

Each job's errors stay with that job (``_Work.error``) and are reported per record: a missing original,
an undecodable image or a model error on that image alone fail that job (``give_up``), an S3 or broker
outage retries it, and the other jobs of the batch go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
from aiokafka import AIOKafkaProducer
from PIL import Image

from services.inference.backends.base import Matte, SegmentationBackend, StagedBackend
from services.inference.settings import InferenceOptions
from shared.config import ImageLimits
from shared.contracts import JobRequested, ResultEvent, ResultKind, Topics
from shared.contracts.events import MAX_INLINE_MASK_BYTES
from shared.exceptions import ContractError, ModelError, ModelFailed, TransientError
from shared.imaging import apply_threshold, decode_rgb, encode_mask_png
from shared.messaging import DeadLetters, publish, send
from shared.storage import ObjectKeys, ObjectStore
from shared.telemetry import PipelineMetrics
from shared.worker import Record, RecordFailure

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_A = TypeVar("_A")


def _timed(fn: Callable[[_A], _T], arg: _A) -> tuple[_T, float]:
    """``fn(arg)`` and its seconds, measured on the thread that runs it."""
    started = time.perf_counter()
    return fn(arg), time.perf_counter() - started


def _mask_png(mask: np.ndarray, threshold: float | None) -> bytes:
    """The job's mask as stored: thresholded when its params ask, then PNG."""
    return encode_mask_png(apply_threshold(mask, threshold))


@dataclass
class _Work:
    """One job request on its way through a batch, with what happened to it."""

    record: Record
    job: JobRequested
    mask_key: str = ""
    image: Image.Image | None = None
    error: BaseException | None = None
    acks: list[asyncio.Future[Any]] = field(default_factory=list)


class InferenceHandler:
    def __init__(
        self,
        *,
        options: InferenceOptions,
        images: ImageLimits,
        backend: SegmentationBackend,
        store: ObjectStore,
        producer: AIOKafkaProducer,
        topics: Topics,
        metrics: PipelineMetrics,
        model_executor: Executor,
        io_executor: Executor,
        model_names: frozenset[str] = frozenset(),
    ) -> None:
        self._options = options
        self._images = images
        self._backend = backend
        # Its steps overlap across chunks when the backend has them (StagedBackend); else predict whole.
        self._staged = backend if isinstance(backend, StagedBackend) else None
        # InferenceSettings resolves model_name to the catalogue name; backend.name (for a local folder, its
        # path) is only the fallback of handlers built by hand without a name.
        self.model_name = options.model_name or backend.name
        # The names a job for this model may carry (ModelSettings.names_for: an older row's hub id too).
        self._model_names = model_names | {self.model_name}
        self._store = store
        self._producer = producer
        self._topics = topics
        self._metrics = metrics
        self._model_executor = model_executor
        self._io_executor = io_executor
        self._fetch_limit = asyncio.Semaphore(options.fetch_concurrency)
        self._dead_letters = DeadLetters(producer, topics.dead_letter, "inference", metrics.dead_letters)

    async def __call__(self, records: list[Record]) -> list[RecordFailure]:
        failures: list[RecordFailure] = []
        work: list[_Work] = []
        stage = self._metrics.stage_seconds
        now_ms = time.time() * 1000
        for record in records:
            try:
                work.append(_Work(record=record, job=self._topics.jobs.deserialize(record.value)))
            except ContractError as exc:
                failures.append(RecordFailure(record, exc))  # permanent: the loop dead-letters it
                continue
            # From the request's publish (its record's timestamp) to now: a re-queued job waits from its
            # re-queue. Host clocks differ by milliseconds; a negative wait counts as none.
            stage.labels(stage="queue_wait").observe(max(0.0, (now_ms - record.timestamp) / 1000))
        with self._metrics.batch_seconds.time():
            await self._admit_and_compute(work)
            # Every result acknowledged (acks=all) before the loop commits the batch's offsets.
            await asyncio.gather(*(self._step(w, self._acknowledged(w)) for w in work if w.error is None))
        failures.extend(RecordFailure(w.record, w.error) for w in work if w.error is not None)
        return failures

    async def give_up(self, record: Record, error: BaseException, reason: str) -> None:
        """A job that can never be segmented gets a failed result with the reason (unreadable: dead letter)."""
        try:
            job = self._topics.jobs.deserialize(record.value)
        except ContractError:
            await self._dead_letters.send(record, reason, error=error)
            return
        self._metrics.records.labels(topic=self._topics.jobs.name, outcome="failed").inc()
        log.info("job %s failed: %s", job.job_id, reason)
        failed = self._result(job, ResultKind.FAILED, error=reason[:2000])
        ending = publish(self._producer, self._topics.results, failed, key=str(job.job_id))
        await self._dead_letters.or_send(record, reason, error, ending)

    @staticmethod
    async def _step(w: _Work, step: Awaitable[None]) -> None:
        try:
            await step
        except Exception as exc:
            w.error = exc

    @staticmethod
    async def _acknowledged(w: _Work) -> None:
        await asyncio.gather(*w.acks)

    async def _admit(self, w: _Work) -> None:
        """Check and prepare one job; leaves ``w.image`` unset when it is already answered."""
        job = w.job
        if job.model not in self._model_names:
            await self._fail(w, f"model {job.model!r} is not served by this worker (it serves {self.model_name!r})")
            return
        w.mask_key = ObjectKeys.job_mask(
            job.content_sha256,
            model_name=self.model_name,
            model_revision=self._backend.revision,
            threshold=job.params.threshold,
        )
        if await self._store.head(w.mask_key) is not None:
            # Same content, model and threshold were segmented before: reuse, do not compute again.
            await self._emit(
                w, self._result(w.job, ResultKind.COMPLETED, mask_key=w.mask_key, reused=True, inference_ms=0)
            )
            self._metrics.records.labels(topic=w.record.topic, outcome="reused").inc()
            return
        stage = self._metrics.stage_seconds
        async with self._fetch_limit:
            # A missing original (ObjectMissing) is permanent: the loop fails the job through give_up.
            with stage.labels(stage="fetch").time():
                data = await self._store.get(job.original_key, max_bytes=self._images.max_bytes)
        loop = asyncio.get_running_loop()
        with stage.labels(stage="decode").time():
            w.image = await loop.run_in_executor(self._io_executor, decode_rgb, data)

    async def _admit_and_compute(self, work: list[_Work]) -> None:
        """Admit every job concurrently; each ``batch_size`` images decoded start a chunk at once."""
        size = min(self._options.batch_size, self._backend.max_batch)
        ready: list[_Work] = []
        chunks: list[asyncio.Future[None]] = []

        async def admit(w: _Work) -> None:
            await self._step(w, self._admit(w))
            if w.image is not None and w.error is None:
                ready.append(w)
                if len(ready) == size:
                    chunks.append(asyncio.ensure_future(self._compute(ready.copy())))
                    ready.clear()

        try:
            await asyncio.gather(*(admit(w) for w in work))
            if ready:
                chunks.append(asyncio.ensure_future(self._compute(ready)))
            await asyncio.gather(*chunks)
        finally:
            # Only when this call is cancelled (the stop's grace ran out) or a chunk raised: the others must
            # not go on sending results after the batch was given back for redelivery.
            running = [chunk for chunk in chunks if not chunk.done()]
            for chunk in running:
                chunk.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _compute(self, chunk: list[_Work]) -> None:
        for w in chunk:
            await self._step(w, self._emit(w, self._result(w.job, ResultKind.STARTED)))
        await self._predict([w for w in chunk if w.error is None and w.image is not None])

    async def _predict(self, chunk: list[_Work]) -> None:
        """One forward pass over ``chunk``; a batch the model fails on is split to find the image to blame."""
        if not chunk:
            return
        images = [w.image for w in chunk if w.image is not None]
        try:
            masks, elapsed = await self._run_model(images)
        except ModelError as exc:
            if len(chunk) == 1:
                # Out of device memory is the device's state, not this image's (ModelOutOfMemory: retried).
                transient = isinstance(exc, TransientError)
                chunk[0].error = exc if transient else ModelFailed(f"model failed on this image: {exc}")
                return
            log.warning("batch of %d failed (%s); retrying one by one", len(chunk), exc)
            for w in chunk:
                await self._predict([w])
            return
        except Exception as exc:
            # Not the model's verdict on these images (an unexpected error in preparing or finishing the
            # chunk): each of its jobs carries it, and the loop retries them a bounded number of times.
            log.warning("batch of %d failed outside the model: %s", len(chunk), exc)
            for w in chunk:
                w.error = exc
            return
        self._metrics.model_seconds.observe(elapsed)
        self._metrics.stage_seconds.labels(stage="inference").observe(elapsed)
        self._metrics.batch_images.observe(len(chunk))
        per_image_ms = int(elapsed * 1000 / max(1, len(chunk)))
        await asyncio.gather(
            *(self._step(w, self._deliver(w, mask, per_image_ms)) for w, mask in zip(chunk, masks, strict=True))
        )

    async def _run_model(self, images: list[Image.Image]) -> tuple[list[Matte], float]:
        """The chunk's mattes, and the seconds of its forward pass (timed on the model thread, so time
        spent queued behind another chunk's pass is not counted)."""
        loop = asyncio.get_running_loop()
        staged = self._staged
        if staged is None:
            return await loop.run_in_executor(self._model_executor, _timed, self._backend.predict, images)
        stage = self._metrics.stage_seconds
        prepared, took = await loop.run_in_executor(self._io_executor, _timed, staged.prepare, images)
        stage.labels(stage="preprocess").observe(took)
        prepared, elapsed = await loop.run_in_executor(self._model_executor, _timed, staged.forward, prepared)
        masks, took = await loop.run_in_executor(self._io_executor, _timed, staged.finish, prepared)
        stage.labels(stage="postprocess").observe(took)
        return masks, elapsed

    async def _deliver(self, w: _Work, mask: np.ndarray, inference_ms: int) -> None:
        loop = asyncio.get_running_loop()
        with self._metrics.stage_seconds.labels(stage="encode_mask").time():
            # The threshold with the encode, in the pool: on a 40 MP mask it alone took 0.3-1.3 s, which on
            # the event loop held up every poll, heartbeat and result of the process.
            png = await loop.run_in_executor(self._io_executor, _mask_png, mask, w.job.params.threshold)
        if len(png) <= MAX_INLINE_MASK_BYTES:
            await self._emit(w, self._result(w.job, ResultKind.COMPLETED, mask_png=png, inference_ms=inference_ms))
        else:
            # Claim-check: a large mask goes to object storage first and travels by key.
            await self._store.put_if_absent(w.mask_key, png, content_type="image/png")
            await self._emit(
                w, self._result(w.job, ResultKind.COMPLETED, mask_key=w.mask_key, inference_ms=inference_ms)
            )
        self._metrics.records.labels(topic=self._topics.jobs.name, outcome="completed").inc()

    async def _fail(self, w: _Work, reason: str) -> None:
        log.info("job %s failed: %s", w.job.job_id, reason)
        self._metrics.records.labels(topic=self._topics.jobs.name, outcome="failed").inc()
        await self._emit(w, self._result(w.job, ResultKind.FAILED, error=reason[:2000]))

    async def _emit(self, w: _Work, result: ResultEvent) -> None:
        """Queue one result for ``w``; its acknowledgement is awaited before the batch's commit."""
        w.acks.append(await send(self._producer, self._topics.results, result, key=str(w.job.job_id)))

    def _result(
        self,
        job: JobRequested,
        kind: ResultKind,
        *,
        mask_png: bytes | None = None,
        mask_key: str | None = None,
        inference_ms: int | None = None,
        reused: bool = False,
        error: str | None = None,
    ) -> ResultEvent:
        return ResultEvent(
            kind=kind,
            job_id=job.job_id,
            created_at=job.created_at,
            attempt=job.attempt,
            occurred_at=datetime.now(UTC),
            model_name=self.model_name,
            model_revision=self._backend.revision,
            mask_png=mask_png,
            mask_key=mask_key,
            inference_ms=inference_ms,
            reused=reused,
            error=error,
        )
