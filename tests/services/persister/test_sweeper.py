"""The stuck-job sweeper on the real servers, with two models served (one pool and topic each): a job of a
model taken out of service is failed with the reason once it has not moved for unqueued_after_s, while a
served model's job whose request waits in its topic is never touched."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError

from services.persister.settings import PersisterOptions, PersisterSettings
from services.persister.sweeper import Sweeper
from shared.contracts import Topics
from shared.db import Database
from shared.db.models import JobRecord, JobStatus
from shared.messaging import ensure_topics
from shared.models import ModelSettings
from shared.runtime import ServiceRuntime
from tests.support.jobs import insert_pending


@dataclass
class FlakyBroker:
    """The runtime's producer, except that a send to a topic in ``down`` fails as a broker that does not
    answer does (KafkaTimeoutError, transient); what went through is kept as (topic, key, message)."""

    producer: AIOKafkaProducer
    down: set[str] = field(default_factory=set)
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    refused: int = 0

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes, headers: Any) -> Any:
        if topic in self.down:
            self.refused += 1
            raise KafkaTimeoutError()
        landed = await self.producer.send_and_wait(topic, value, key=key, headers=headers)
        self.sent.append((topic, key.decode(), json.loads(value)))
        return landed

    def to(self, topic: str, job_id: UUID) -> list[dict[str, Any]]:
        return [m for t, k, m in self.sent if t == topic and k == str(job_id)]


@dataclass(frozen=True)
class Swept:
    sweeper: Sweeper
    db: Database
    # A second sweeper of the same settings, publishing through the given broker.
    through: Callable[[FlakyBroker], Sweeper]
    producer: AIOKafkaProducer
    topics: Topics

    async def job(self, model: str, *, queued_at: int) -> JobRecord:
        (job_id,) = await insert_pending(self.db, user_id="sweep-user", count=1, model_name=model)
        async with self.db.pool.acquire() as conn:
            await self.db.jobs.mark_queued(conn, job_id=job_id, partition=0, offset=queued_at)
        return await self.row(job_id)

    async def row(self, job_id: UUID) -> JobRecord:
        async with self.db.pool.acquire() as conn:
            job = await self.db.jobs.get_job(conn, job_id=job_id)
        assert job is not None
        return job


@pytest.fixture(scope="module")
async def swept(service_common: dict[str, object]) -> AsyncIterator[Swept]:
    models = ModelSettings(served=("rmbg-2.0", "birefnet"))
    settings = PersisterSettings(**{**service_common, "models": models})  # type: ignore[arg-type]
    await ensure_topics(settings.kafka, settings.topics, models)
    async with ServiceRuntime(settings, name="sweeper-test") as rt:
        db, producer, cache = await rt.database(), await rt.producer(), await rt.cache()

        def make(broker: AIOKafkaProducer) -> Sweeper:
            return Sweeper(
                options=PersisterOptions(unqueued_after_s=60, stuck_after_s=60, max_attempts=3),
                kafka=settings.kafka,
                db=db,
                producer=broker,
                topics=rt.topics,
                cache=cache,
                metrics=rt.metrics,
            )

        yield Swept(
            sweeper=make(producer),
            db=db,
            through=lambda broker: make(cast(AIOKafkaProducer, broker)),
            producer=producer,
            topics=rt.topics,
        )


async def test_a_job_of_a_model_no_longer_served_fails_with_the_reason(swept: Swept) -> None:
    retired = await swept.job("birefnet-lite", queued_at=0)  # in the catalogue, not served
    waiting = await swept.job("birefnet", queued_at=10**9)  # far past anything its pool committed

    await swept.sweeper.sweep_once(now=retired.updated_at + timedelta(seconds=30))
    assert (await swept.row(retired.job_id)).status is JobStatus.PENDING, "not before unqueued_after_s"

    await swept.sweeper.sweep_once(now=retired.updated_at + timedelta(seconds=120))
    row = await swept.row(retired.job_id)
    assert row.status is JobStatus.FAILED and row.error_message is not None
    assert row.error_message.startswith("model 'birefnet-lite' is no longer served (served: rmbg-2.0, birefnet)")
    assert row.attempts == retired.attempts, "failed at once, not re-queued"
    assert await swept.row(waiting.job_id) == waiting, "a request waiting in its pool's topic is left alone"


async def test_a_re_queue_the_broker_did_not_take_spends_no_attempt(swept: Swept) -> None:
    # Never queued (no position) and idle past unqueued_after_s: lost. While the broker does not answer,
    # every sweep tries it and gives its attempt back; before, each sweep spent one, and the third failed
    # the job "lost 3 times" though it was never re-published once.
    (job_id,) = await insert_pending(swept.db, user_id="sweep-user", count=1, model_name="rmbg-2.0")
    job = await swept.row(job_id)
    jobs_topic = swept.topics.jobs_for("rmbg-2.0").name
    broker = FlakyBroker(swept.producer, down={jobs_topic})
    sweeper = swept.through(broker)
    later = job.updated_at + timedelta(seconds=120)
    for _ in range(4):
        assert await sweeper.sweep_once(now=later) == (0, 0)
    assert broker.refused == 4
    assert await swept.row(job_id) == job, "attempt given back, updated_at unmoved: nothing spent"

    broker.down.clear()  # the broker is back: the next sweep re-queues it, and that attempt counts
    assert await sweeper.sweep_once(now=later) == (1, 0)
    row = await swept.row(job_id)
    assert row.status is JobStatus.PENDING and row.attempts == job.attempts + 1
    assert row.queue_partition is not None and row.queue_offset is not None
    assert [m["attempt"] for m in broker.to(jobs_topic, job_id)] == [job.attempts + 1]


async def test_a_failed_event_the_broker_did_not_take_is_sent_by_a_later_sweep(swept: Swept) -> None:
    # One job lost its last attempt (failed by the sweep), one behind it is re-queued in the same sweep.
    # The events topic does not answer: the failure's event is owed, the sweep goes on; once the broker
    # answers again, the next sweep sends it (accepted first, as every ending is announced).
    (spent,) = await insert_pending(swept.db, user_id="sweep-user", count=1, model_name="rmbg-2.0")
    async with swept.db.pool.acquire() as conn:
        await conn.execute("UPDATE image_process_jobs SET attempts = 3 WHERE job_id = $1", spent)
    (behind,) = await insert_pending(swept.db, user_id="sweep-user", count=1, model_name="rmbg-2.0")
    second = await swept.row(behind)
    assert (await swept.row(spent)).attempts == 3
    events = swept.topics.job_events.name
    broker = FlakyBroker(swept.producer, down={events})
    sweeper = swept.through(broker)
    later = second.updated_at + timedelta(seconds=120)

    assert await sweeper.sweep_once(now=later) == (1, 1)
    row = await swept.row(spent)
    assert row.status is JobStatus.FAILED and row.error_message is not None
    assert row.error_message.startswith("lost 3 times")
    assert (await swept.row(behind)).attempts == second.attempts + 1, "the sweep went on past the failed event"
    assert broker.to(events, spent) == []

    assert await sweeper.sweep_once(now=later) == (0, 0)  # still down: owed again, not lost
    assert broker.to(events, spent) == []

    broker.down.clear()
    assert await sweeper.sweep_once(now=later) == (0, 0)
    assert [m["kind"] for m in broker.to(events, spent)] == ["accepted", "failed"]
    assert await sweeper.sweep_once(now=later) == (0, 0)
    assert len(broker.to(events, spent)) == 2, "sent once: nothing owed any more"


async def test_two_replicas_sweeping_at_once_queue_a_lost_job_once(swept: Swept) -> None:
    # The attempt's row lock is held over the publish: the other replica's compare-and-set waits for it,
    # then finds the row moved and leaves it. One request, one attempt.
    (job_id,) = await insert_pending(swept.db, user_id="sweep-user", count=1, model_name="rmbg-2.0")
    job = await swept.row(job_id)
    broker = FlakyBroker(swept.producer)
    later = job.updated_at + timedelta(seconds=120)
    results = await asyncio.gather(*(swept.through(broker).sweep_once(now=later) for _ in range(2)))
    assert sorted(results) == [(0, 0), (1, 0)]
    assert len(broker.to(swept.topics.jobs_for("rmbg-2.0").name, job_id)) == 1
    assert (await swept.row(job_id)).attempts == job.attempts + 1


async def test_a_request_that_can_never_be_built_spends_its_attempts_and_fails(swept: Swept) -> None:
    # Not the broker's fault (stored params the contract refuses): nothing is given back, so the job
    # ends failed after max_attempts instead of being tried again every sweep forever.
    (job_id,) = await insert_pending(swept.db, user_id="sweep-user", count=1, model_name="rmbg-2.0")
    async with swept.db.pool.acquire() as conn:
        await conn.execute("""UPDATE image_process_jobs SET params = '{"bogus": 1}' WHERE job_id = $1""", job_id)
    job = await swept.row(job_id)
    later = job.updated_at + timedelta(seconds=120)
    for _ in range(3 - job.attempts):
        assert await swept.sweeper.sweep_once(now=later) == (0, 0)
    assert await swept.sweeper.sweep_once(now=later) == (0, 1)
    row = await swept.row(job_id)
    assert row.status is JobStatus.FAILED and row.attempts == 3
