"""Accepting a job: the one path both the HTTP endpoint and the upload topic go through.

Order matters for the invariants in docs/life-of-a-job.md:
1. validate the image fully, with the decode inference will run (nothing invalid is queued);
2. store the original under its content key (claim-check; the same bytes are stored once), holding no
   database connection while the object store answers;
3. insert the job row, so a client polling the id never gets "not found" for an accepted job;
4. publish the job request and the ``accepted`` event, then record where the request landed. If
   publishing fails after the row is written, the job is still pending in PostgreSQL with no queue
   position, and the persister's sweeper re-publishes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Literal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.ingest.settings import IngestOptions
from shared.cache import JobCache
from shared.config import ImageLimits
from shared.contracts import JobEvent, JobEventKind, ProcessingParams, Topics
from shared.db import Database
from shared.db.models import JobRecord, JobStatus
from shared.exceptions import ContractError, ImageRejected
from shared.ids import uuid7
from shared.imaging import ImageInfo, inspect_image
from shared.messaging import publish
from shared.models import ModelSettings
from shared.queueing import record_queue_position
from shared.storage import ObjectKeys, ObjectStore
from shared.telemetry import PipelineMetrics
from shared.views import job_event, job_request, job_view

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    job_id: uuid.UUID
    status: str
    created: bool  # False when the same upload event or Idempotency-Key was accepted earlier


@dataclass(frozen=True)
class Idempotency:
    """A client's Idempotency-Key and the fingerprint of the request it came with."""

    key: str
    fingerprint: bytes


class IdempotencyConflict(ContractError):
    """The Idempotency-Key was used before for a different request: refused, never a second job."""


class ModelNotServed(ContractError):
    """A job named a model no inference pool of this deployment serves: refused, never queued to wait."""

    def __init__(self, model: str, served: Sequence[str]) -> None:
        super().__init__(f"model {model!r} is not served here; served: {', '.join(served)}")
        self.model = model
        self.served = tuple(served)


class _LostRace(Exception):
    """A concurrent request with the same Idempotency-Key committed first (rolls this insert back)."""


class Intake:
    def __init__(
        self,
        *,
        options: IngestOptions,
        images: ImageLimits,
        db: Database,
        store: ObjectStore,
        producer: AIOKafkaProducer,
        topics: Topics,
        cache: JobCache,
        metrics: PipelineMetrics,
        executor: Executor,
        models: ModelSettings | None = None,
    ) -> None:
        self._options = options
        self._models = models or ModelSettings()
        self._images = images
        self._db = db
        self._store = store
        self._producer = producer
        self._topics = topics
        self._cache = cache
        self._metrics = metrics
        self._executor = executor

    async def inspect(self, data: bytes) -> ImageInfo:
        """Full validation (header, bytes, pixels, decode) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor,
            lambda: inspect_image(data, max_bytes=self._images.max_bytes, max_pixels=self._images.max_pixels),
        )

    async def accept(
        self,
        *,
        data: bytes,
        user_id: str,
        tags: Sequence[str],
        params: ProcessingParams,
        source: Literal["http", "upload"],
        job_id: uuid.UUID | None = None,
        idempotency: Idempotency | None = None,
        callback_url: str | None = None,
        model: str | None = None,
    ) -> Accepted:
        """Validate, store and queue one image for ``model`` (a served model's name; None: the default).
        Raises ImageRejected for the HTTP path to answer 4xx, ModelNotServed for a model not served.

        With ``idempotency``, the key is claimed in the same transaction as the job's row: of two
        concurrent retries one commits, the other rolls back and returns the first one's job. Callers
        look for an earlier job first with :meth:`replay` (the API does, before fetching or validating
        anything); here only the claim decides.
        ``callback_url`` (already checked by shared.outbound.check_url) registers the job's webhook in
        that transaction too, so a job never ends without its callback on record.
        """
        model_name = self._models.default_model if model is None else model
        if not self._models.is_served(model_name):
            # The HTTP path refuses these with 422 before calling; nothing unserved is ever queued.
            raise ModelNotServed(model_name, self._models.served)
        info = await self.inspect(data)
        sha = hashlib.sha256(data).hexdigest()
        key = ObjectKeys.original(sha, info.extension)
        job_id = job_id or uuid7()
        async with self._db.pool.acquire() as conn:
            epoch = await self._db.jobs.object_deletion_epoch(conn)
        # The upload runs with no database connection or lock held, so a slow object store stalls this
        # request only, not the pool or retention (which waits on the lock below).
        await self._store.put_if_absent(key, data, content_type=info.content_type, metadata={"sha256": sha})
        try:
            return await self._insert(
                job_id=job_id,
                user_id=user_id,
                tags=tags,
                params=params,
                source=source,
                key=key,
                sha=sha,
                data=data,
                info=info,
                epoch=epoch,
                idempotency=idempotency,
                callback_url=callback_url,
                model_name=model_name,
            )
        except _LostRace:
            assert idempotency is not None
            winner = await self.replay(user_id=user_id, idempotency=idempotency)
            if winner is None:  # pragma: no cover - the winner's row committed before our conflict
                raise RuntimeError("idempotency key claimed but not found") from None
            return winner

    async def replay(self, *, user_id: str, idempotency: Idempotency) -> Accepted | None:
        """The job an earlier request with this key made (IdempotencyConflict if it differed), or None."""
        async with self._db.pool.acquire() as conn:
            earlier = await self._db.keys.find_idempotent_job(conn, user_id=user_id, idem_key=idempotency.key)
            if earlier is None:
                return None
            if earlier.fingerprint != idempotency.fingerprint:
                raise IdempotencyConflict(
                    f"Idempotency-Key {idempotency.key!r} was used for a different request "
                    f"at {earlier.created_at:%Y-%m-%d %H:%M:%S} UTC"
                )
            record = await self._db.jobs.get_job(conn, job_id=earlier.job_id)
        # The job may since have been removed by retention (keys live a day, jobs months): then it is gone.
        status = record.status if record is not None else JobStatus.FAILED
        return Accepted(job_id=earlier.job_id, status=status, created=False)

    async def _insert(
        self,
        *,
        job_id: uuid.UUID,
        user_id: str,
        tags: Sequence[str],
        params: ProcessingParams,
        source: Literal["http", "upload"],
        key: str,
        sha: str,
        data: bytes,
        info: ImageInfo,
        epoch: int,
        idempotency: Idempotency | None,
        callback_url: str | None,
        model_name: str,
    ) -> Accepted:
        async with self._db.pool.acquire() as conn:
            async with conn.transaction():
                # Shared with other intakes, exclusive against retention's reference check + delete.
                await self._db.jobs.lock_objects_shared(conn)
                if await self._db.jobs.object_deletion_epoch(conn) != epoch:
                    # Retention or fsck may have deleted this content between the upload and the lock. Stored
                    # again here, under the lock and before the commit: should the store fail, the insert
                    # is rolled back with it, so the 503 the client gets ("nothing was accepted") is true.
                    await self._store.put(key, data, content_type=info.content_type, metadata={"sha256": sha})
                inserted = await self._db.jobs.insert_job(
                    conn,
                    job_id=job_id,
                    user_id=user_id,
                    original_ext=info.extension,  # the row derives ``key`` from it (ObjectKeys.original)
                    content_sha256=sha,
                    original_bytes=len(data),
                    image_width=info.width,
                    image_height=info.height,
                    params=params.canonical(),
                    params_hash=params.digest(),
                    model_name=model_name,
                    source=source,
                    tags=list(tags),
                )
                if idempotency is not None and not await self._db.keys.claim_idempotency_key(
                    conn, user_id=user_id, idem_key=idempotency.key, fingerprint=idempotency.fingerprint, job_id=job_id
                ):
                    raise _LostRace
                # Read inside the transaction: should it fail, the insert is rolled back too, so the 503 the
                # client gets ("nothing was accepted, retry") is true.
                record = await self._db.jobs.get_job(conn, job_id=job_id)
                if record is not None and callback_url is not None:
                    await self._db.webhooks.register(
                        conn, job_id=job_id, created_at=record.created_at, user_id=user_id, url=callback_url
                    )
        if record is None:  # pragma: no cover - the insert above guarantees a row
            raise RuntimeError(f"job {job_id} vanished after insert")
        if inserted:
            self._metrics.count_transition(status=JobStatus.PENDING, model=record.model_name, source=record.source)
        if record.status == JobStatus.PENDING:
            await self._cache.put_job(job_view(record))
            await self._cache.invalidate_user(user_id)
            await self.queue(record)
        return Accepted(job_id=job_id, status=record.status, created=inserted)

    async def reject(
        self,
        *,
        job_id: uuid.UUID,
        data: bytes,
        user_id: str,
        tags: Sequence[str],
        params: ProcessingParams,
        reason: str,
        original_path: str,
    ) -> Accepted:
        """Record an upload-topic image that failed validation as a failed job with its reason.

        Upstream systems poll by job id and read error_message, so a bad image is visible, not dropped.
        """
        sha = hashlib.sha256(data).hexdigest()
        async with self._db.pool.acquire() as conn:
            inserted = await self._db.jobs.insert_job(
                conn,
                job_id=job_id,
                user_id=user_id,
                original_ext=None,
                original_path=original_path[:512],
                content_sha256=sha,
                original_bytes=len(data),
                image_width=None,
                image_height=None,
                params=params.canonical(),
                params_hash=params.digest(),
                model_name=self._models.default_model,
                source="upload",
                tags=list(tags),
                status=JobStatus.FAILED,
                error_message=reason,
            )
            record = await self._db.jobs.get_job(conn, job_id=job_id)
        if record is None:  # pragma: no cover
            raise RuntimeError(f"job {job_id} vanished after insert")
        if inserted:
            self._metrics.count_transition(status=JobStatus.FAILED, model=record.model_name, source=record.source)
        await self._cache.put_job(job_view(record))
        await self._cache.invalidate_user(user_id)
        for kind in (JobEventKind.ACCEPTED, JobEventKind.FAILED):
            await self._emit(job_event(record, kind))
        return Accepted(job_id=job_id, status=record.status, created=inserted)

    async def queue(self, record: JobRecord) -> None:
        """Publish the job and its ``accepted`` event; a broker outage leaves it to the sweeper."""
        try:
            # To the pool of the job's model (its own topic when several models are served).
            topic = self._topics.jobs_for(record.model_name)
            landed = await publish(self._producer, topic, job_request(record), key=str(record.job_id))
        except KafkaError as exc:
            log.error("job %s stored but not queued (%s); the sweeper will re-queue it", record.job_id, exc)
            return
        await record_queue_position(self._db, record.job_id, landed)
        await self._emit(job_event(record, JobEventKind.ACCEPTED))

    async def _emit(self, event: JobEvent) -> None:
        try:
            await publish(self._producer, self._topics.job_events, event, key=str(event.job_id))
        except KafkaError as exc:
            # Stats are repaired from the jobs table (`rmbg stats reconcile`); the job itself is safe.
            log.error("job event %s not published: %s", event.event_id, exc)


__all__ = ["Accepted", "Idempotency", "IdempotencyConflict", "ImageRejected", "Intake", "ModelNotServed"]
