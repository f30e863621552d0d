"""Turns a batch of job requests into results.

Per batch: parse (malformed → dead letter), refuse jobs for a model this worker does not serve, reuse a
mask already stored for the same (content, model, threshold), fetch and decode the rest concurrently,
run the model once per chunk of ``batch_size`` images in the dedicated model thread, then publish one
result per job. The consume loop commits offsets only after every result is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer, ConsumerRecord
from PIL import Image

from services.inference.backends.base import SegmentationBackend
from services.inference.settings import InferenceOptions
from shared.contracts import JobRequested, ResultEvent, ResultKind, Topics
from shared.contracts.events import MAX_INLINE_MASK_BYTES
from shared.exceptions import ContractError, ImageRejected, ModelError, StorageError
from shared.imaging import apply_threshold, decode_rgb, encode_mask_png
from shared.messaging import dead_letter, send
from shared.storage import ObjectKeys, ObjectStore
from shared.telemetry import PipelineMetrics

log = logging.getLogger(__name__)


@dataclass
class _Work:
    job: JobRequested
    mask_key: str
    image: Image.Image | None = None


class InferenceHandler:
    def __init__(
        self,
        *,
        options: InferenceOptions,
        backend: SegmentationBackend,
        store: ObjectStore,
        producer: AIOKafkaProducer,
        topics: Topics,
        metrics: PipelineMetrics,
        model_executor: Executor,
        io_executor: Executor,
    ) -> None:
        self._options = options
        self._backend = backend
        self.model_name = options.model_name or backend.name
        self._store = store
        self._producer = producer
        self._topics = topics
        self._metrics = metrics
        self._model_executor = model_executor
        self._io_executor = io_executor
        self._fetch_limit = asyncio.Semaphore(options.fetch_concurrency)
        self._acks: list[asyncio.Future[Any]] = []

    async def __call__(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        self._acks = []
        with self._metrics.batch_seconds.time():
            work = [w for w in await asyncio.gather(*(self._admit(r) for r in records)) if w is not None]
            to_compute = [w for w in work if w.image is not None]
            for start in range(0, len(to_compute), self._options.batch_size):
                await self._compute(to_compute[start : start + self._options.batch_size])
            # Every result acknowledged (acks=all) before the loop commits the batch's offsets.
            await asyncio.gather(*self._acks)

    async def _admit(self, record: ConsumerRecord[bytes, bytes]) -> _Work | None:
        """Parse one record and prepare it; returns None when it is already answered."""
        try:
            job = self._topics.jobs.deserialize(record.value)
        except ContractError as exc:
            await dead_letter(self._producer, self._topics.dead_letter, record, reason=str(exc), service="inference")
            self._metrics.dead_letters.labels(topic=record.topic).inc()
            return None
        if job.model != self.model_name:
            await self._fail(job, f"model {job.model!r} is not served by this worker (it serves {self.model_name!r})")
            return None
        mask_key = ObjectKeys.mask(
            job.content_sha256,
            model_name=self.model_name,
            model_revision=self._backend.revision,
            threshold_tag=ObjectKeys.threshold_tag(job.params.threshold),
        )
        if await self._store.head(mask_key) is not None:
            # Same content, model and threshold were segmented before: reuse, do not compute again.
            await self._emit(job, ResultKind.COMPLETED, mask_key=mask_key, reused=True, inference_ms=0)
            self._metrics.records.labels(topic=record.topic, outcome="reused").inc()
            return None
        async with self._fetch_limit:
            try:
                data = await self._store.get(job.original_key, max_bytes=self._options.max_image_bytes)
            except StorageError as exc:
                if "not found" in str(exc):
                    await self._fail(job, f"original {job.original_key} is missing from object storage")
                    return None
                raise
        loop = asyncio.get_running_loop()
        try:
            image = await loop.run_in_executor(self._io_executor, decode_rgb, data)
        except ImageRejected as exc:
            await self._fail(job, exc.reason)
            return None
        return _Work(job=job, mask_key=mask_key, image=image)

    async def _compute(self, chunk: list[_Work]) -> None:
        for w in chunk:
            await self._emit(w.job, ResultKind.STARTED)
        images = [w.image for w in chunk if w.image is not None]
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            masks = await loop.run_in_executor(self._model_executor, self._backend.predict, images)
        except ModelError as exc:
            if len(chunk) == 1:
                await self._fail(chunk[0].job, f"model failed: {exc}")
                return
            # Isolate the image that breaks the batch: retry one by one.
            log.warning("batch of %d failed (%s); retrying one by one", len(chunk), exc)
            for w in chunk:
                await self._compute([w])
            return
        elapsed = time.perf_counter() - started
        self._metrics.model_seconds.observe(elapsed)
        self._metrics.batch_images.observe(len(chunk))
        per_image_ms = int(elapsed * 1000 / max(1, len(chunk)))
        for w, mask in zip(chunk, masks, strict=True):
            await self._deliver(w, mask, per_image_ms)

    async def _deliver(self, w: _Work, mask: np.ndarray, inference_ms: int) -> None:
        loop = asyncio.get_running_loop()
        final = apply_threshold(mask, w.job.params.threshold)
        png = await loop.run_in_executor(self._io_executor, encode_mask_png, final)
        if len(png) <= MAX_INLINE_MASK_BYTES:
            await self._emit(w.job, ResultKind.COMPLETED, mask_png=png, inference_ms=inference_ms)
        else:
            # Claim-check: a large mask goes to object storage first and travels by key.
            await self._store.put_if_absent(w.mask_key, png, content_type="image/png")
            await self._emit(w.job, ResultKind.COMPLETED, mask_key=w.mask_key, inference_ms=inference_ms)
        self._metrics.records.labels(topic=self._topics.jobs.name, outcome="completed").inc()

    async def _fail(self, job: JobRequested, reason: str) -> None:
        log.info("job %s failed: %s", job.job_id, reason)
        self._metrics.records.labels(topic=self._topics.jobs.name, outcome="failed").inc()
        await self._emit(job, ResultKind.FAILED, error=reason[:2000])

    async def _emit(
        self,
        job: JobRequested,
        kind: ResultKind,
        *,
        mask_png: bytes | None = None,
        mask_key: str | None = None,
        inference_ms: int | None = None,
        reused: bool = False,
        error: str | None = None,
    ) -> None:
        result = ResultEvent(
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
        self._acks.append(await send(self._producer, self._topics.results, result, key=str(job.job_id)))
