"""``rmbg serve stats``: keeps processing_stats current from the job-event stream."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from services.stats.handler import StatsHandler
from services.stats.settings import StatsOptions, StatsSettings
from shared.db import Database
from shared.runtime import ServiceRuntime, every, prepare_process, run_service
from shared.worker import LoopOptions, consume_topic

log = logging.getLogger(__name__)


async def run_stats(settings: StatsSettings, stop: asyncio.Event) -> None:
    opts = settings.stats
    async with ServiceRuntime(settings, name="stats") as rt:
        await rt.serve_telemetry()
        watch = rt.health.consumer(group=opts.group_id, topic=rt.topics.job_events.name)
        db = await rt.database()
        metrics = rt.metrics
        handler = StatsHandler(
            db=db, producer=await rt.producer(), topics=rt.topics, metrics=metrics, ledger_days=opts.ledger_days
        )
        consume = consume_topic(
            settings.kafka,
            topic=rt.topics.job_events.name,
            group_id=opts.group_id,
            client_id="stats",
            handler=handler,
            options=LoopOptions(max_records=opts.batch_size, max_wait_ms=opts.batch_wait_ms, grace_s=opts.grace_s),
            metrics=metrics.loop_metrics(),
            stop=stop,
            watch=watch,
        )
        await asyncio.gather(consume, prune_ledger(db, opts, stop), refresh_quartiles(db, opts, stop))


async def prune_ledger(db: Database, opts: StatsOptions, stop: asyncio.Event) -> None:
    """Hourly: forget ledger entries older than the window the handler still counts."""

    async def prune() -> None:
        before = datetime.now(UTC).date() - timedelta(days=opts.ledger_days)
        async with db.pool.acquire() as conn:
            removed = await db.stats.prune_ledger(conn, before=before)
        if removed:
            log.info("pruned %d stats ledger rows before %s", removed, before)

    await every(opts.prune_interval_s, stop, prune, name="ledger pruning")


async def refresh_quartiles(db: Database, opts: StatsOptions, stop: asyncio.Event) -> None:
    """Every minute: store the per-user quartile bounds the admin endpoint serves (migration 0015)."""

    # Several replicas each run this: one that finds a snapshot younger than half the interval skips it.
    fresh = timedelta(seconds=opts.quartiles_interval_s / 2)

    async def refresh() -> None:
        async with db.pool.acquire() as conn:
            if await db.stats.user_quartiles_snapshot(conn, max_age=fresh) is None:
                await db.stats.refresh_user_quartiles(conn)

    await every(opts.quartiles_interval_s, stop, refresh, name="user quartile refresh")


def main() -> None:
    settings = StatsSettings()
    prepare_process(settings)
    run_service(lambda stop: run_stats(settings, stop))


if __name__ == "__main__":
    main()
