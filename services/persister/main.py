"""``rmbg serve persister``: results to S3 and PostgreSQL, the stuck-job sweeper and the webhook dispatcher."""

from __future__ import annotations

import asyncio

from services.persister.handler import PersistHandler
from services.persister.settings import PersisterSettings
from services.persister.sweeper import Sweeper
from services.persister.webhooks import WebhookDispatcher, WebhookMetrics
from shared.auth import SecretCipher
from shared.runtime import ServiceRuntime, cpu_cores, prepare_process, run_service
from shared.webhooks import WebhookSecrets
from shared.worker import LoopOptions, consume_topic


async def run_persister(settings: PersisterSettings, stop: asyncio.Event) -> None:
    opts = settings.persister
    async with ServiceRuntime(settings, name="persister") as rt:
        await rt.serve_telemetry()
        metrics, topics = rt.metrics, rt.topics
        watch = rt.health.consumer(group=opts.group_id, topic=topics.results.name)
        # Cut-out decode + encode is CPU work (1 MP: tens of ms, BENCHMARKS.md "CPU per image"); Pillow
        # releases the GIL while it codes, so one thread per core keeps every core busy.
        executor = rt.executor(workers=cpu_cores(), prefix="persister-img")
        db = await rt.database()
        store = await rt.object_store()
        producer = await rt.producer()
        cache = await rt.cache()
        # Webhook targets are users' URLs: only what the outbound policy allows is ever connected to.
        outbound = await rt.outbound(limit=settings.webhooks.concurrency)
        handler = PersistHandler(
            options=opts,
            images=settings.images,
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
        rt.scrape_hooks.append(sweeper.measure)
        consume = consume_topic(
            settings.kafka,
            topic=topics.results.name,
            group_id=opts.group_id,
            client_id="persister",
            handler=handler,
            options=LoopOptions(max_records=opts.concurrency * 8, grace_s=opts.grace_s),
            metrics=metrics.loop_metrics(),
            stop=stop,
            watch=watch,
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
    prepare_process(settings)
    run_service(lambda stop: run_persister(settings, stop))


if __name__ == "__main__":
    main()
