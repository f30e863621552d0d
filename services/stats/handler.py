"""Applies job events to ``processing_stats``.

Runs on aiokafka and PostgreSQL, not on Faust tables: Faust rebuilds tables from a changelog using end
offsets, which the broker available here misreports (it lost counts in measurements, see README, "Libraries, and why"),
and a table held in a worker is not the truth anyway. Here each (job, transition) is applied at most
once by a ledger row inserted in the same transaction as the counter update, so redelivery, producer
retries and replays all leave the counts equal to a count over the jobs table.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer

from shared.contracts import JobEvent, JobEventKind, Topics
from shared.db import Database
from shared.db.models import StatKind
from shared.exceptions import ContractError
from shared.messaging import DeadLetters
from shared.telemetry import PipelineMetrics
from shared.worker import Record, RecordFailure

log = logging.getLogger(__name__)

# `processing` is a dashboard signal, not a daily total.
_LEDGER_KIND: dict[JobEventKind, StatKind] = {
    JobEventKind.ACCEPTED: "accepted",
    JobEventKind.COMPLETED: "completed",
    JobEventKind.FAILED: "failed",
}
_COUNTED = frozenset(_LEDGER_KIND)


class StatsHandler:
    def __init__(
        self,
        *,
        db: Database,
        producer: AIOKafkaProducer,
        topics: Topics,
        metrics: PipelineMetrics,
        ledger_days: int,
    ) -> None:
        self._ledger_days = ledger_days
        self._db = db
        self._topics = topics
        self._metrics = metrics
        self._dead_letters = DeadLetters(producer, topics.dead_letter, "stats", metrics.dead_letters)

    async def __call__(self, records: list[Record]) -> list[RecordFailure]:
        failures: list[RecordFailure] = []
        events: list[tuple[Record, JobEvent]] = []
        for record in records:
            try:
                events.append((record, self._topics.job_events.deserialize(record.value)))
            except ContractError as exc:
                failures.append(RecordFailure(record, exc))  # permanent: the loop dead-letters it
        counted = self._countable(events)
        if not counted:
            return failures
        with self._metrics.batch_seconds.time():
            # One transaction per batch: all of it counts or none of it, and the offsets follow. Should it
            # fail, the error escapes: an outage retries the batch, anything else makes the consume loop
            # handle each record alone (shared/worker.py), one transaction each, to find the one to blame.
            applied = await self._apply(counted)
        self._metrics.records.labels(topic=self._topics.job_events.name, outcome="applied").inc(applied)
        self._metrics.records.labels(topic=self._topics.job_events.name, outcome="duplicate").inc(
            len(counted) - applied
        )
        return failures

    async def give_up(self, record: Record, error: BaseException, reason: str) -> None:
        await self._dead_letters.send(record, reason, error=error)

    def _countable(self, events: list[tuple[Record, JobEvent]]) -> list[tuple[Record, JobEvent]]:
        # The ledger remembers `ledger_days` days; an event for an older job could no longer be
        # deduplicated, so it is not counted (`rmbg stats-reconcile DAY` rebuilds such a day exactly).
        # Every job ends within minutes (the sweeper's attempts), so only a replay of old records lands here.
        horizon = datetime.now(UTC).date() - timedelta(days=self._ledger_days)
        counted = [(r, e) for r, e in events if e.kind in _COUNTED]
        fresh = [(r, e) for r, e in counted if e.created_at.astimezone(UTC).date() >= horizon]
        if len(fresh) < len(counted):
            too_old = len(counted) - len(fresh)
            log.warning("%d job events older than the %d-day ledger not counted", too_old, self._ledger_days)
            self._metrics.records.labels(topic=self._topics.job_events.name, outcome="too_old").inc(too_old)
        return fresh

    async def _apply(self, items: list[tuple[Record, JobEvent]]) -> int:
        applied = 0
        async with self._db.pool.acquire() as conn, conn.transaction():
            for _, event in items:
                # A job counts on the UTC day it was accepted, like a GROUP BY over created_at.
                day = event.created_at.astimezone(UTC).date()
                if await self._db.stats.apply_event(
                    conn,
                    stat_date=day,
                    job_id=event.job_id,
                    kind=_LEDGER_KIND[event.kind],
                    processing_time_ms=event.processing_time_ms,
                ):
                    applied += 1
                    if event.kind is JobEventKind.ACCEPTED:
                        await self._db.stats.count_user(conn, user_id=event.user_id)
                    if event.kind is JobEventKind.ACCEPTED and event.params is not None:
                        await self._db.stats.count_params(
                            conn, stat_date=day, params_hash=event.params.digest(), params=event.params.canonical()
                        )
        return applied
