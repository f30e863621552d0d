"""Jobs in at a steady rate, over HTTP and the upload topic, each retried until accepted or the deadline."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import numpy as np
from aiokafka import AIOKafkaProducer
from PIL import Image

from rmbg.keyring import KeyRing
from shared.config import BaseServiceSettings
from shared.contracts import ProcessingParams, Topics, UploadEvent
from shared.ids import upload_job_id
from shared.messaging import open_producer, publish
from shared.storage import ObjectStore, open_object_store


class Workload(Protocol):
    """What a submitter needs of a drill's plan."""

    @property
    def jobs(self) -> int: ...
    @property
    def upload_share(self) -> float: ...
    @property
    def rate_per_s(self) -> float: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def image_side(self) -> int: ...
    @property
    def seed(self) -> int: ...


@dataclass
class Tally:
    """What the submitter did: only jobs it holds an id for count as accepted."""

    submitted_http: int = 0
    submitted_upload: int = 0
    accepted_http: list[str] = field(default_factory=list)
    accepted_upload: list[str] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)  # "503", "429", "connection", "publish", "s3-put"
    refused: Counter[str] = field(default_factory=Counter)  # answers not retried: status code -> count
    gave_up: int = 0
    last_accept: float = 0.0

    @property
    def accepted(self) -> list[str]:
        return self.accepted_http + self.accepted_upload


def drill_image(index: int, seed: int, side: int) -> bytes:
    """A small PNG, distinct per (seed, index): a plain background, a blob, the index in the first pixels."""
    rng = np.random.default_rng([seed, index])
    img = np.empty((side, side, 3), dtype=np.uint8)
    img[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    yy, xx = np.mgrid[:side, :side]
    cy, cx = rng.integers(side // 4, 3 * side // 4, 2)
    ry, rx = rng.integers(side // 8, side // 3, 2)
    img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.integers(0, 256, 3, dtype=np.uint8)
    img[0, :4, 0] = list(index.to_bytes(4, "big"))
    img[0, :4, 1] = list((seed % 2**32).to_bytes(4, "big"))
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Upload:
    """One job's image as submitted: its bytes, content type and file suffix."""

    data: bytes
    content_type: str = "image/png"
    suffix: str = "png"


# The image of job ``index``; a drill's default is ``drill_image`` (a small synthetic PNG).
ImageSource = Callable[[int], Upload]


class Submitter:
    """Jobs at a steady rate, at most ``concurrency`` at a time, each retried until accepted or the deadline."""

    def __init__(
        self,
        plan: Workload,
        settings: BaseServiceSettings,
        api_url: str,
        deadline: float,
        images: ImageSource | None = None,
        params: ProcessingParams | None = None,
    ) -> None:
        self.plan = plan
        # Every job's params, sent as the form's JSON and in each upload event (default: none, the soft matte).
        self.params = ProcessingParams() if params is None else params
        self._params_form = json.dumps(self.params.canonical())  # the same for every HTTP submission
        self.images: ImageSource = images or (lambda i: Upload(drill_image(i, plan.seed, plan.image_side)))
        self.settings = settings
        self.api_url = api_url
        self.deadline = deadline
        self.tally = Tally()
        self.run_id = uuid.uuid4().hex[:8]
        self._topics = Topics.from_settings(settings.topics, settings.kafka)
        self._producer: AIOKafkaProducer | None = None
        self._producer_exit = contextlib.AsyncExitStack()
        self._producer_lock = asyncio.Lock()
        # One API key per user submitting over HTTP, made before the first job (rmbg/keyring.py).
        self.keys = KeyRing(settings, name="drill")

    @staticmethod
    def user_of(index: int) -> str:
        return f"chaos-{index % 7}"

    def is_upload(self, index: int) -> bool:
        share = self.plan.upload_share
        return int((index + 1) * share) > int(index * share)

    async def run(self) -> None:
        sem = asyncio.Semaphore(self.plan.concurrency)
        began = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        # Keys first, while the stack is still calm (faults begin later); retried like any other step.
        http_users = sorted({self.user_of(i) for i in range(self.plan.jobs) if not self.is_upload(i)})
        if not await self._retrying("keys", lambda: self.keys.prepare(http_users)):
            return
        async with (
            httpx.AsyncClient(base_url=self.api_url, timeout=30) as client,
            open_object_store(self.settings.s3) as store,
        ):
            try:
                for i in range(self.plan.jobs):
                    await asyncio.sleep(max(0.0, began + i / self.plan.rate_per_s - time.monotonic()))
                    await sem.acquire()
                    if time.monotonic() > self.deadline:
                        sem.release()
                        break
                    tasks.append(asyncio.create_task(self._one(i, client, store, sem)))
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await self._close_producer()

    async def _one(self, index: int, client: httpx.AsyncClient, store: ObjectStore, sem: asyncio.Semaphore) -> None:
        try:
            image = self.images(index)
            upload = self.is_upload(index)
            job_id = await (self._upload(index, image, store) if upload else self._http(index, image, client))
            if job_id is None:
                self.tally.gave_up += 1
            else:
                self.tally.last_accept = time.monotonic()
        finally:
            sem.release()

    async def _http(self, index: int, image: Upload, client: httpx.AsyncClient) -> str | None:
        self.tally.submitted_http += 1
        form = {"tags": "chaos,http", "params": self._params_form}
        headers = await self.keys.headers(self.user_of(index))  # made in run(): no I/O here
        # A retry after a lost answer (ingest killed between its commit and the 202) must not make a
        # second job: the key names this submission, so the retry gets the first job back (200).
        headers = {**headers, "Idempotency-Key": f"drill-{self.run_id}-{index}"}
        while time.monotonic() < self.deadline:
            try:
                resp = await client.post(
                    "/v1/jobs",
                    files={"image": (f"{index}.{image.suffix}", image.data, image.content_type)},
                    data=form,
                    headers=headers,
                )
            except httpx.TransportError:
                self.tally.retries["connection"] += 1
                await asyncio.sleep(1.0)
                continue
            if resp.status_code in (200, 202):
                job_id: str = resp.json()["job_id"]
                self.tally.accepted_http.append(job_id)
                return job_id
            if resp.status_code in (429, 503):
                self.tally.retries[str(resp.status_code)] += 1
                await asyncio.sleep(min(5.0, float(resp.headers.get("Retry-After", "1"))))
                continue
            self.tally.refused[str(resp.status_code)] += 1
            return None
        return None

    async def _upload(self, index: int, image: Upload, store: ObjectStore) -> str | None:
        self.tally.submitted_upload += 1
        key = f"uploads/chaos/{self.run_id}/{index}.{image.suffix}"
        if not await self._retrying("s3-put", lambda: store.put(key, image.data, content_type=image.content_type)):
            return None
        event = UploadEvent(
            event_id=f"chaos-{self.run_id}-{index}",
            user_id=self.user_of(index),
            key=key,
            tags=["chaos", "upload"],
            params=self.params,
            occurred_at=datetime.now(UTC),
        )
        if not await self._retrying("publish", lambda: self._publish(event)):
            return None
        job_id = str(upload_job_id(event.event_id, event.occurred_at))
        self.tally.accepted_upload.append(job_id)
        return job_id

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[Any]]) -> bool:
        while time.monotonic() < self.deadline:
            try:
                await asyncio.wait_for(attempt(), timeout=40)
                return True
            except Exception:  # the broker or the store is down: the same event again, same job id
                self.tally.retries[what] += 1
                await asyncio.sleep(1.0)
        return False

    async def _publish(self, event: UploadEvent) -> None:
        producer = await self._get_producer()
        try:
            await publish(producer, self._topics.uploads, event, key=event.event_id)
        except Exception:
            await self._close_producer()  # a fresh client after a broker restart
            raise

    async def _get_producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is None:
                exit_stack = contextlib.AsyncExitStack()
                self._producer = await exit_stack.enter_async_context(
                    open_producer(self.settings.kafka, client_id="chaos")
                )
                self._producer_exit = exit_stack
            return self._producer

    async def _close_producer(self) -> None:
        async with self._producer_lock:
            if self._producer is not None:
                self._producer = None
                with contextlib.suppress(Exception):
                    await self._producer_exit.aclose()
