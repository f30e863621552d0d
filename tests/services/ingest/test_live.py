"""The job-events hub on the real broker (Tansu from the session stack): fan-out by job, bounded queues."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer

from rmbg.stack import StackEndpoints
from services.ingest.live import HubFull, JobEventHub, Subscription, SubscriptionDropped, open_job_event_hub
from services.ingest.settings import LiveOptions
from shared.config import BaseServiceSettings
from shared.contracts import JobEvent, JobEventKind, Topics
from shared.ids import uuid7
from shared.messaging import ensure_topics, open_producer, publish
from tests.e2e.conftest import base_settings


@pytest.fixture
async def settings(stack: StackEndpoints) -> BaseServiceSettings:
    """Topics of their own (unique names per test), so no other test's events reach the hub."""
    base = BaseServiceSettings(**base_settings(stack))  # type: ignore[arg-type]
    await ensure_topics(base.kafka, base.topics)
    return base


@contextlib.asynccontextmanager
async def _hub_and_producer(
    settings: BaseServiceSettings, **options: int
) -> AsyncIterator[tuple[JobEventHub, AIOKafkaProducer, Topics]]:
    topics = Topics.from_settings(settings.topics, settings.kafka)
    async with (
        open_job_event_hub(settings.kafka, topics.job_events, LiveOptions(**options)) as hub,
        open_producer(settings.kafka, client_id="test-live") as producer,
    ):
        yield hub, producer, topics


def _event(job_id: uuid.UUID, kind: JobEventKind) -> JobEvent:
    now = datetime.now(UTC)
    return JobEvent(job_id=job_id, created_at=now, kind=kind, occurred_at=now, user_id="live-test")


async def _send(producer: AIOKafkaProducer, topics: Topics, event: JobEvent) -> None:
    await publish(producer, topics.job_events, event, key=str(event.job_id))


async def _kinds(sub: Subscription, count: int) -> list[JobEventKind]:
    kinds: list[JobEventKind] = []
    for _ in range(count):
        event = await sub.next(15)
        assert event is not None, f"only {kinds} arrived for {sub.job_id}"
        assert str(event.job_id) == sub.job_id
        kinds.append(event.kind)
    return kinds


async def test_each_subscriber_gets_its_jobs_events_in_order(settings: BaseServiceSettings) -> None:
    a, b, unwatched = uuid7(), uuid7(), uuid7()
    async with _hub_and_producer(settings) as (hub, producer, topics):
        with hub.subscribe(str(a)) as sub_a, hub.subscribe(str(a)) as sub_a2, hub.subscribe(str(b)) as sub_b:
            assert hub.subscribers == 3
            for job, kind in [
                (a, JobEventKind.ACCEPTED),
                (b, JobEventKind.ACCEPTED),
                (unwatched, JobEventKind.ACCEPTED),
                (a, JobEventKind.PROCESSING),
                (b, JobEventKind.FAILED),
                (a, JobEventKind.COMPLETED),
            ]:
                await _send(producer, topics, _event(job, kind))
            flow = [JobEventKind.ACCEPTED, JobEventKind.PROCESSING, JobEventKind.COMPLETED]
            assert await _kinds(sub_a, 3) == flow
            assert await _kinds(sub_a2, 3) == flow  # two streams of one job both see everything
            assert await _kinds(sub_b, 2) == [JobEventKind.ACCEPTED, JobEventKind.FAILED]
            # Nothing else is waiting: the unwatched job's event went to nobody.
            assert await sub_a.next(0.5) is None and await sub_b.next(0.1) is None
        assert hub.subscribers == 0 and not hub.watches(str(a))


async def test_a_subscriber_that_stops_reading_is_dropped_alone(settings: BaseServiceSettings) -> None:
    job = uuid7()
    async with _hub_and_producer(settings, queue_events=2) as (hub, producer, topics):
        with hub.subscribe(str(job)) as slow, hub.subscribe(str(job)) as reader:
            kinds = [JobEventKind.ACCEPTED, JobEventKind.PROCESSING, JobEventKind.ACCEPTED, JobEventKind.COMPLETED]
            for kind in kinds:
                await _send(producer, topics, _event(job, kind))
                assert await _kinds(reader, 1) == [kind]  # the reader keeps up, one event at a time
            # The third event found the slow subscriber's 2 unread ones: dropped, its queue emptied.
            assert slow.dropped and hub.dropped == 1 and hub.subscribers == 1
            with pytest.raises(SubscriptionDropped):
                await slow.next(1)
            # A fifth event still reaches the reader, and only it.
            await _send(producer, topics, _event(job, JobEventKind.FAILED))
            assert await _kinds(reader, 1) == [JobEventKind.FAILED]
        assert hub.subscribers == 0


async def test_records_that_are_no_job_event_are_skipped(settings: BaseServiceSettings) -> None:
    job = uuid7()
    async with _hub_and_producer(settings) as (hub, producer, topics):
        with hub.subscribe(str(job)) as sub:
            await producer.send_and_wait(topics.job_events.name, b'{"not": "an event"}', key=str(job).encode())
            await _send(producer, topics, _event(job, JobEventKind.PROCESSING))
            assert await _kinds(sub, 1) == [JobEventKind.PROCESSING]
            assert hub.malformed == 1


async def test_subscribers_are_capped_and_woken_when_the_hub_closes(settings: BaseServiceSettings) -> None:
    job = str(uuid7())
    async with _hub_and_producer(settings, max_subscribers=2) as (hub, _, _):
        with hub.subscribe(job), hub.subscribe(job):
            with pytest.raises(HubFull) as full, hub.subscribe(job):
                pass
            assert full.value.retry_after_s > 0 and "limit 2" in full.value.reason
        with hub.subscribe(job) as sub:  # the two closed: room again
            waiting = asyncio.create_task(sub.next(30))
            await asyncio.sleep(0.05)
            hub.close()  # what open_job_event_hub does first at shutdown
            with pytest.raises(SubscriptionDropped):
                await asyncio.wait_for(waiting, 5)
        with pytest.raises(HubFull):
            hub.check_capacity()
