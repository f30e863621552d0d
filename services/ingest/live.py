"""Job transitions as they happen, for the event streams of one ingest process (``GET /v1/jobs/{id}/events``).

One :class:`JobEventHub` per process follows the job-events topic with a consumer in no group, so every
replica sees every event and a stream can be served by whichever replica the client reached. Each event
goes to the subscribers of its job only, through a bounded queue per subscriber: a subscriber that stops
reading is dropped (its stream re-reads the job and ends) instead of growing memory.

The hub starts at the topic's end and is never trusted to be exact: the stand-in broker may report an end
before the true one (docs/test-servers.md), so a replay of recent events can arrive; subscribers compare
each event's status rank with the last state they sent and ignore what is not newer. Nor is it the truth:
a stream starts from the job's stored state and re-reads it for every newer event it hears of.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

from aiokafka import AIOKafkaConsumer

from services.ingest.settings import LiveOptions
from shared.config import KafkaSettings
from shared.contracts import JobEvent, JobEventKind, Topic
from shared.db.models import JobStatus
from shared.exceptions import ContractError, Overloaded, RmbgError
from shared.failures import describe
from shared.messaging import open_tail_consumer

log = logging.getLogger(__name__)

# Seconds a client refused for a full hub is told to wait: streams of finished jobs end within seconds.
FULL_RETRY_AFTER_S = 5


def event_status(kind: JobEventKind) -> JobStatus:
    """The job status a transition event moves into (``accepted`` is the pending state)."""
    return JobStatus.PENDING if kind is JobEventKind.ACCEPTED else JobStatus(kind.value)


class HubFull(Overloaded):
    """This process already serves as many streams as it may (``RMBG_LIVE__MAX_SUBSCRIBERS``)."""


class SubscriptionDropped(RmbgError):
    """The subscriber fell behind its queue's limit, or the hub closed: re-read the job instead."""


class Subscription:
    """One stream's view of the hub: the events of one job, in the order the hub received them."""

    def __init__(self, job_id: str, limit: int) -> None:
        self.job_id = job_id
        self._limit = limit
        # Unbounded by type, bounded by offer(): at most `limit` events and one wake-up mark (None).
        self._queue: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        self.dropped = False

    def offer(self, event: JobEvent) -> bool:
        """Queue ``event``; False (and the subscription is dropped) when ``limit`` are already waiting."""
        if self.dropped:
            return False
        if self._queue.qsize() >= self._limit:
            self.drop()
            return False
        self._queue.put_nowait(event)
        return True

    def drop(self) -> None:
        """Forget the waiting events and wake the reader, which then raises SubscriptionDropped."""
        if self.dropped:
            return
        self.dropped = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def next(self, timeout_s: float) -> JobEvent | None:
        """The next event of this job, or None after ``timeout_s`` without one."""
        if self.dropped:
            raise SubscriptionDropped(f"events of job {self.job_id} fell behind")
        try:
            event = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None
        if event is None:
            raise SubscriptionDropped(f"events of job {self.job_id} fell behind")
        return event


class JobEventHub:
    """Fans job events out to subscribers by job id. Lives on the event loop: not thread-safe, no locks
    needed (delivery never awaits, so a subscriber set never changes while it is walked)."""

    def __init__(self, *, max_subscribers: int, queue_events: int) -> None:
        self._max = max_subscribers
        self._queue_events = queue_events
        self._by_job: dict[str, set[Subscription]] = {}
        self._count = 0
        self._closed = False
        self.delivered = 0  # events handed to at least one subscriber
        self.dropped = 0  # subscribers dropped for falling behind
        self.malformed = 0  # records that were no JobEvent (skipped)

    @property
    def subscribers(self) -> int:
        return self._count

    def watches(self, job_id: str) -> bool:
        return job_id in self._by_job

    def check_capacity(self) -> None:
        """Raise HubFull now, before a stream is answered, rather than once it has started."""
        if self._closed:
            raise HubFull("the server is shutting down", retry_after_s=FULL_RETRY_AFTER_S)
        if self._count >= self._max:
            raise HubFull(
                f"{self._count} event streams are open here (limit {self._max})", retry_after_s=FULL_RETRY_AFTER_S
            )

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[Subscription]:
        """Receive ``job_id``'s events (its canonical UUID text) while the block runs."""
        self.check_capacity()
        sub = Subscription(job_id, self._queue_events)
        self._by_job.setdefault(job_id, set()).add(sub)
        self._count += 1
        try:
            yield sub
        finally:
            self._remove(sub)

    def deliver(self, event: JobEvent) -> None:
        subs = self._by_job.get(str(event.job_id))
        if not subs:
            return
        self.delivered += 1
        for sub in list(subs):
            if not sub.offer(event):
                self.dropped += 1
                log.warning("event stream of job %s dropped: %d events unread", sub.job_id, self._queue_events)
                self._remove(sub)

    def close(self) -> None:
        """Wake and drop every subscriber: their streams end with the job's stored state."""
        self._closed = True
        for subs in list(self._by_job.values()):
            for sub in list(subs):
                sub.drop()
                self._remove(sub)

    def _remove(self, sub: Subscription) -> None:
        subs = self._by_job.get(sub.job_id)
        if subs is None or sub not in subs:
            return  # dropped before its block ended
        subs.discard(sub)
        self._count -= 1
        if not subs:
            del self._by_job[sub.job_id]


async def feed(consumer: AIOKafkaConsumer, topic: Topic[JobEvent], hub: JobEventHub) -> None:
    """Hand every record of ``consumer`` to ``hub`` until cancelled."""
    while True:
        try:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
        except Exception as exc:  # the consumer reconnects by itself; the streams' quiet re-reads cover the gap
            log.warning("job events: fetch failed (%s); retrying in 1 s", describe(exc, limit=300))
            await asyncio.sleep(1.0)
            continue
        for records in batches.values():
            for record in records:
                # Every producer keys an event by its job id (intake, persister/announce.py), which is what
                # keeps one job's events in one partition and in order. Events of jobs nobody here watches
                # are therefore skipped undecoded: a replica pays JSON parsing for its own streams only.
                key = record.key.decode(errors="replace") if record.key else None
                if key is not None and not hub.watches(key):
                    continue
                try:
                    event = topic.deserialize(record.value)
                except ContractError as exc:
                    hub.malformed += 1
                    log.debug("job events: skipped %s@%d: %s", record.partition, record.offset, exc)
                    continue
                hub.deliver(event)


@contextlib.asynccontextmanager
async def open_job_event_hub(
    kafka: KafkaSettings, topic: Topic[JobEvent], options: LiveOptions
) -> AsyncIterator[JobEventHub]:
    """The hub, fed from the end of ``topic`` until the block ends; then its subscribers are woken, the feed
    stopped and the consumer closed, in that order."""
    hub = JobEventHub(max_subscribers=options.max_subscribers, queue_events=options.queue_events)
    async with open_tail_consumer(kafka, topic=topic.name, client_id="ingest-live") as consumer:
        task = asyncio.create_task(feed(consumer, topic, hub), name="job-events-hub")
        try:
            yield hub
        finally:
            hub.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
