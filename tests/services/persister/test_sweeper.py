"""The stuck-job sweeper on the real servers, with two models served (one pool and topic each): a job of a
model taken out of service is failed with the reason once it has not moved for unqueued_after_s, while a
served model's job whose request waits in its topic is never touched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import pytest

from services.persister.settings import PersisterOptions, PersisterSettings
from services.persister.sweeper import Sweeper
from shared.db import Database
from shared.db.models import JobRecord, JobStatus
from shared.messaging import ensure_topics
from shared.models import ModelSettings
from shared.runtime import ServiceRuntime
from tests.support.jobs import insert_pending


@dataclass(frozen=True)
class Swept:
    sweeper: Sweeper
    db: Database

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
        sweeper = Sweeper(
            options=PersisterOptions(unqueued_after_s=60, stuck_after_s=60, max_attempts=3),
            kafka=settings.kafka,
            db=await rt.database(),
            producer=await rt.producer(),
            topics=rt.topics,
            cache=await rt.cache(),
            metrics=rt.metrics,
        )
        yield Swept(sweeper=sweeper, db=await rt.database())


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
