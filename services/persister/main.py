"""``rmbg serve persister``: results to S3 and PostgreSQL, the stuck-job sweeper and the webhook dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

from services.persister.handler import PersistHandler
from services.persister.settings import PersisterSettings
from services.persister.sweeper import Sweeper
from services.persister.webhooks import WebhookDispatcher, WebhookMetrics
from shared.auth import SecretCipher
from shared.cache import open_cache
from shared.contracts import Topics
from shared.database import open_database
from shared.messaging import open_producer
from shared.outbound import open_outbound
from shared.runtime import run_service
from shared.storage import open_object_store
from shared.telemetry import PipelineMetrics, configure_logging, serve_metrics
from shared.webhooks import WebhookSecrets
from shared.worker import LoopOptions, consume_topic


async def run_persister(settings: PersisterSettings, stop: asyncio.Event) -> None:
    opts = settings.persister
    metrics = PipelineMetrics.create()
    if settings.telemetry.metrics_port:
        serve_metrics(metrics.registry, settings.telemetry.metrics_port)
    topics = Topics.from_settings(settings.topics, settings.kafka)
    async with contextlib.AsyncExitStack() as stack:
        # Cut-out encoding is CPU work (1 MP: WebP q90 about 90 ms, PNG 275 ms, BENCHMARKS.md): 2 threads, 2 cores.
        executor = stack.enter_context(ThreadPoolExecutor(max_workers=2, thread_name_prefix="persister-img"))
        db = await stack.enter_async_context(open_database(settings.postgres))
        store = await stack.enter_async_context(open_object_store(settings.s3))
        producer = await stack.enter_async_context(open_producer(settings.kafka, client_id="persister"))
        cache = await stack.enter_async_context(open_cache(settings.redis))
        # Webhook targets are users' URLs: only what the outbound policy allows is ever connected to.
        outbound = await stack.enter_async_context(
            open_outbound(settings.outbound, limit=settings.webhooks.concurrency)
        )
        handler = PersistHandler(
            options=opts,
            db=db,
            store=store,
            producer=producer,
            topics=topics,
            cache=cache,
            metrics=metrics,
            executor=executor,
        )
        sweeper = Sweeper(
            options=opts, kafka=settings.kafka, db=db, producer=producer, topics=topics, cache=cache, metrics=metrics
        )
        consume = consume_topic(
            settings.kafka,
            topic=topics.results.name,
            group_id=opts.group_id,
            client_id="persister",
            handler=handler,
            options=LoopOptions(max_records=opts.concurrency * 8, grace_s=opts.grace_s),
            metrics=metrics.loop_metrics(),
            stop=stop,
        )
        loops = [consume, sweeper.run(stop)]
        if settings.webhooks.enabled:
            dispatcher = WebhookDispatcher(
                options=settings.webhooks,
                policy=settings.outbound,
                db=db,
                store=store,
                session=outbound,
                secrets=WebhookSecrets(
                    repo=db.webhooks,
                    cipher=SecretCipher(settings.auth.encryption_keys.get_secret_value(), what="a webhook secret"),
                ),
                metrics=WebhookMetrics.create(metrics.registry),
            )
            loops.append(dispatcher.run(stop))
        await asyncio.gather(*loops)


def main() -> None:
    settings = PersisterSettings()
    configure_logging(settings.telemetry)
    run_service(lambda stop: run_persister(settings, stop))


if __name__ == "__main__":
    main()
