"""Applies job events to ``processing_stats``.

Runs on aiokafka and PostgreSQL, not on Faust tables: Faust rebuilds tables from a changelog using end
offsets, which the broker available here misreports (it lost counts in measurements, see shared/infra.md),
and a table held in a worker is not the truth anyway. Here each (job, transition) is applied at most
once by a ledger row inserted in the same transaction as the counter update, so redelivery, producer
retries and replays all leave the counts equal to a count over the jobs table.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer, ConsumerRecord

from shared.contracts import JobEvent, JobEventKind, Topics
from shared.database import Database
from shared.db.models import StatKind
from shared.exceptions import ContractError
from shared.messaging import dead_letter
from shared.telemetry import PipelineMetrics

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
        self._producer = producer
        self._topics = topics
        self._metrics = metrics

    async def __call__(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        events: list[JobEvent] = []
        for record in records:
            try:
                events.append(self._topics.job_events.deserialize(record.value))
            except ContractError as exc:
                await dead_letter(self._producer, self._topics.dead_letter, record, reason=str(exc), service="stats")
                self._metrics.dead_letters.labels(topic=record.topic).inc()
        # The ledger remembers `ledger_days` days; an event for an older job could no longer be
        # deduplicated, so it is not counted (`rmbg stats-reconcile DAY` rebuilds such a day exactly).
        # Every job ends within minutes (the sweeper's attempts), so only a replay of old records lands here.
        horizon = datetime.now(UTC).date() - timedelta(days=self._ledger_days)
        too_old = [e for e in events if e.kind in _COUNTED and e.created_at.astimezone(UTC).date() < horizon]
        if too_old:
            log.warning("%d job events older than the %d-day ledger not counted", len(too_old), self._ledger_days)
            self._metrics.records.labels(topic=self._topics.job_events.name, outcome="too_old").inc(len(too_old))
        counted = [e for e in events if e.kind in _COUNTED and e.created_at.astimezone(UTC).date() >= horizon]
        if not counted:
            return
        with self._metrics.batch_seconds.time():
            applied = 0
            # One transaction per batch: all of it counts or none of it, and the offsets follow.
            async with self._db.pool.acquire() as conn, conn.transaction():
                for event in counted:
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
        self._metrics.records.labels(topic=self._topics.job_events.name, outcome="applied").inc(applied)
        self._metrics.records.labels(topic=self._topics.job_events.name, outcome="duplicate").inc(
            len(counted) - applied
        )
