"""StatsHandler fed job-event records read back from the real broker, on the module's own PostgreSQL
database: no consume loop, no other service. Each test counts on a day and for users of its own, so it
reads absolute figures and stands alone."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import pytest

from services.stats.handler import StatsHandler
from services.stats.settings import StatsSettings
from shared.contracts import JobEvent, JobEventKind, ProcessingParams
from shared.db.models import DailyStats
from shared.exceptions import ContractError
from shared.failures import FailureClass, classify, describe
from shared.ids import uuid7
from shared.runtime import ServiceRuntime
from shared.worker import Record
from tests.support.kafka import publish_records, read_back, read_topic

LEDGER_DAYS = 14


@dataclass(frozen=True)
class Stats:
    settings: StatsSettings
    handler: StatsHandler
    rt: ServiceRuntime

    async def records(self, *events: JobEvent) -> list[Record]:
        producer = await self.rt.producer()
        topic = self.rt.topics.job_events
        return await publish_records(producer, self.settings.kafka, topic, [(str(e.job_id), e) for e in events])

    async def day(self, day: date) -> DailyStats:
        db = await self.rt.database()
        async with db.pool.acquire() as conn:
            (row,) = await db.stats.daily_totals(conn, days=1, today=day)
        return row

    async def user_jobs(self, user: str) -> int | None:
        db = await self.rt.database()
        async with db.pool.acquire() as conn:
            jobs: int | None = await conn.fetchval("SELECT jobs FROM user_job_counts WHERE user_id = $1", user)
        return jobs

    async def params_jobs(self, day: date, contains: dict[str, object]) -> int:
        db = await self.rt.database()
        async with db.pool.acquire() as conn:
            return await db.stats.params_job_count(conn, contains=contains, date_from=day, date_to=day)

    def counted(self, outcome: str) -> float:
        value = self.rt.metrics.registry.get_sample_value(
            "rmbg_records_total", {"topic": self.rt.topics.job_events.name, "outcome": outcome}
        )
        return value or 0.0


@pytest.fixture(scope="module")
async def stats(service_common: dict[str, object]) -> AsyncIterator[Stats]:
    settings = StatsSettings(**service_common)  # type: ignore[arg-type]
    async with ServiceRuntime(settings, name="stats-test") as rt:
        handler = StatsHandler(
            db=await rt.database(),
            producer=await rt.producer(),
            topics=rt.topics,
            metrics=rt.metrics,
            ledger_days=LEDGER_DAYS,
        )
        yield Stats(settings=settings, handler=handler, rt=rt)


def _days_ago(n: int) -> datetime:
    """Noon UTC ``n`` days ago: a day no other test of this module counts on."""
    return datetime.combine(datetime.now(UTC).date() - timedelta(days=n), time(12), tzinfo=UTC)


@dataclass(frozen=True)
class _Job:
    job_id: uuid.UUID
    created_at: datetime
    user_id: str
    params: ProcessingParams

    def event(self, kind: JobEventKind, *, processing_time_ms: int | None = None) -> JobEvent:
        return JobEvent(
            job_id=self.job_id,
            created_at=self.created_at,
            kind=kind,
            occurred_at=datetime.now(UTC),
            user_id=self.user_id,
            processing_time_ms=processing_time_ms,
            error="it failed" if kind is JobEventKind.FAILED else None,
            params=self.params if kind is JobEventKind.ACCEPTED else None,
        )


def _job(created_at: datetime, user: str, params: ProcessingParams | None = None) -> _Job:
    return _Job(uuid7(created_at), created_at, user, params or ProcessingParams())


def _user() -> str:
    return f"user-{secrets.token_hex(4)}"


async def test_each_transition_counts_once_on_the_day_the_job_was_accepted(stats: Stats) -> None:
    at = _days_ago(1)
    alice, bob = _user(), _user()
    done = _job(at, alice, ProcessingParams(threshold=0.5))
    failed = _job(at, alice)
    pending = _job(at, bob)
    events = [
        done.event(JobEventKind.ACCEPTED),
        failed.event(JobEventKind.ACCEPTED),
        pending.event(JobEventKind.ACCEPTED),
        done.event(JobEventKind.PROCESSING),  # a dashboard signal, not a daily total
        done.event(JobEventKind.COMPLETED, processing_time_ms=1200),
        failed.event(JobEventKind.FAILED),
    ]

    assert await stats.handler(await stats.records(*events)) == []

    day = await stats.day(at.date())
    assert (day.total_jobs, day.completed_jobs, day.failed_jobs, day.sum_processing_time_ms) == (3, 1, 1, 1200)
    assert (await stats.user_jobs(alice), await stats.user_jobs(bob)) == (2, 1)
    assert await stats.params_jobs(at.date(), {"threshold": 0.5}) == 1
    assert await stats.params_jobs(at.date(), {}) == 3
    assert (await stats.day(at.date() - timedelta(days=1))).total_jobs == 0, "nothing counted on another day"


async def test_redelivery_and_repeated_events_change_nothing(stats: Stats) -> None:
    at = _days_ago(2)
    user = _user()
    job = _job(at, user, ProcessingParams(threshold=0.25))
    events = [job.event(JobEventKind.ACCEPTED), job.event(JobEventKind.COMPLETED, processing_time_ms=500)]
    records = await stats.records(*events)
    assert await stats.handler(records) == []
    before = await stats.day(at.date())
    duplicates = stats.counted("duplicate")

    assert await stats.handler(records) == [], "the same records again (a rewind after a failed commit)"
    # A producer retry or a re-announcement by the persister: new records, the same transitions.
    again = await stats.records(
        job.event(JobEventKind.ACCEPTED), job.event(JobEventKind.COMPLETED, processing_time_ms=999)
    )
    assert await stats.handler(again) == []

    assert await stats.day(at.date()) == before
    assert (before.total_jobs, before.completed_jobs, before.sum_processing_time_ms) == (1, 1, 500)
    assert await stats.user_jobs(user) == 1
    assert await stats.params_jobs(at.date(), {"threshold": 0.25}) == 1
    assert stats.counted("duplicate") - duplicates == 4


async def test_events_older_than_the_ledger_are_not_counted(stats: Stats) -> None:
    old = _days_ago(LEDGER_DAYS + 1)
    user = _user()
    job = _job(old, user)
    too_old = stats.counted("too_old")
    assert await stats.handler(await stats.records(job.event(JobEventKind.ACCEPTED))) == []
    assert (await stats.day(old.date())).total_jobs == 0
    assert await stats.user_jobs(user) is None
    assert stats.counted("too_old") - too_old == 1


async def test_a_malformed_record_fails_alone_and_is_dead_lettered(stats: Stats) -> None:
    at = _days_ago(3)
    job = _job(at, _user())
    producer = await stats.rt.producer()
    junk = await producer.send_and_wait(stats.rt.topics.job_events.name, b"{}", key=b"junk-stats")
    (junk_record,) = await read_back(stats.settings.kafka, [junk])
    (good_record,) = await stats.records(job.event(JobEventKind.ACCEPTED))

    (failure,) = await stats.handler([junk_record, good_record])

    assert failure.record.offset == junk_record.offset and failure.record.partition == junk_record.partition
    assert isinstance(failure.error, ContractError) and classify(failure.error) is FailureClass.PERMANENT
    assert (await stats.day(at.date())).total_jobs == 1, "the good event of the batch counted"

    await stats.handler.give_up(junk_record, failure.error, describe(failure.error))
    topics = stats.rt.topics
    letters = await read_topic(
        stats.settings.kafka,
        topics.dead_letter.name,
        lambda rs: any(topics.dead_letter.deserialize(r.value).key == "junk-stats" for r in rs),
    )
    (letter,) = [
        letter for letter in (topics.dead_letter.deserialize(r.value) for r in letters) if letter.key == "junk-stats"
    ]
    assert (letter.service, letter.payload, letter.offset) == ("stats", b"{}", junk_record.offset)
