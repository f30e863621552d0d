"""``rmbg serve stats``: keeps processing_stats current from the job-event stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from services.stats.handler import StatsHandler
from services.stats.settings import StatsOptions, StatsSettings
from shared.contracts import Topics
from shared.database import Database, open_database
from shared.messaging import open_producer
from shared.runtime import every, run_service
from shared.telemetry import PipelineMetrics, configure_logging, serve_metrics
from shared.worker import LoopOptions, consume_topic

log = logging.getLogger(__name__)


async def run_stats(settings: StatsSettings, stop: asyncio.Event) -> None:
    opts = settings.stats
    metrics = PipelineMetrics.create()
    if settings.telemetry.metrics_port:
        serve_metrics(metrics.registry, settings.telemetry.metrics_port)
    topics = Topics.from_settings(settings.topics, settings.kafka)
    async with contextlib.AsyncExitStack() as stack:
        db = await stack.enter_async_context(open_database(settings.postgres))
        producer = await stack.enter_async_context(open_producer(settings.kafka, client_id="stats"))
        handler = StatsHandler(db=db, producer=producer, topics=topics, metrics=metrics, ledger_days=opts.ledger_days)
        consume = consume_topic(
            settings.kafka,
            topic=topics.job_events.name,
            group_id=opts.group_id,
            client_id="stats",
            handler=handler,
            options=LoopOptions(max_records=opts.batch_size, max_wait_ms=opts.batch_wait_ms, grace_s=opts.grace_s),
            metrics=metrics.loop_metrics(),
            stop=stop,
        )
        await asyncio.gather(consume, prune_ledger(db, opts, stop))


async def prune_ledger(db: Database, opts: StatsOptions, stop: asyncio.Event) -> None:
    """Hourly: forget ledger entries older than the window the handler still counts."""

    async def prune() -> None:
        before = datetime.now(UTC).date() - timedelta(days=opts.ledger_days)
        async with db.pool.acquire() as conn:
            removed = await db.stats.prune_ledger(conn, before=before)
        if removed:
            log.info("pruned %d stats ledger rows before %s", removed, before)

    await every(opts.prune_interval_s, stop, prune, name="ledger pruning")


def main() -> None:
    settings = StatsSettings()
    configure_logging(settings.telemetry)
    run_service(lambda stop: run_stats(settings, stop))


if __name__ == "__main__":
    main()
