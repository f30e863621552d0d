"""Everything ingest holds open, opened in one place and closed in reverse order."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiokafka import AIOKafkaProducer

from services.ingest.backpressure import Backpressure
from services.ingest.intake import Intake
from services.ingest.limits import Limits
from services.ingest.live import JobEventHub, open_job_event_hub
from services.ingest.settings import IngestSettings
from shared.auth import ApiKeys, EmailCipher
from shared.cache import JobCache
from shared.contracts import Topics
from shared.db import Database
from shared.health import Health
from shared.runtime import ServiceRuntime, cpu_cores
from shared.storage import ObjectStore
from shared.telemetry import PipelineMetrics


@dataclass(frozen=True)
class IngestResources:
    settings: IngestSettings
    db: Database
    store: ObjectStore
    producer: AIOKafkaProducer
    cache: JobCache
    keys: ApiKeys
    emails: EmailCipher
    topics: Topics
    metrics: PipelineMetrics
    intake: Intake
    backpressure: Backpressure
    limits: Limits
    # Fetches image URLs: refuses non-public targets at connect time (shared/outbound.py).
    outbound: aiohttp.ClientSession
    hub: JobEventHub
    # /healthz, /readyz and the dependency gauges on /metrics (shared/health.py).
    health: Health


@contextlib.asynccontextmanager
async def open_ingest(settings: IngestSettings, metrics: PipelineMetrics) -> AsyncIterator[IngestResources]:
    async with ServiceRuntime(
        settings, name="ingest", metrics=metrics, ready_timeout_s=settings.ingest.ready_timeout_s
    ) as rt:
        # Image decoding holds the GIL only partly (Pillow releases it while decoding); two threads per
        # core keep the cores busy without letting a burst of uploads queue unbounded work.
        executor = rt.executor(workers=2 * cpu_cores(), prefix="ingest-img")
        db = await rt.database()
        store = await rt.object_store()
        producer = await rt.producer()
        redis = await rt.redis()
        cache = await rt.cache()
        keys = ApiKeys(
            pool=db.pool,
            repo=db.keys,
            pepper=settings.auth.key_pepper.get_secret_value().encode(),
            redis=redis,
            cache_ttl_s=settings.auth.key_cache_ttl_s,
        )
        outbound = await rt.outbound()
        topics = rt.topics
        hub = await rt.enter(open_job_event_hub(settings.kafka, topics.job_events, settings.live))
        intake = Intake(
            options=settings.ingest,
            images=settings.images,
            db=db,
            store=store,
            producer=producer,
            topics=topics,
            cache=cache,
            metrics=metrics,
            executor=executor,
            models=settings.models,
        )
        yield IngestResources(
            settings=settings,
            db=db,
            store=store,
            producer=producer,
            cache=cache,
            keys=keys,
            emails=EmailCipher(settings.auth.encryption_keys.get_secret_value()),
            topics=topics,
            metrics=metrics,
            intake=intake,
            backpressure=Backpressure(options=settings.ingest, db=db),
            limits=Limits(
                redis=redis,
                db=db,
                rate_per_s=settings.ingest.rate_limit_per_s,
                burst=settings.ingest.rate_limit_burst,
                daily_jobs=settings.ingest.daily_job_quota,
            ),
            outbound=outbound,
            hub=hub,
            health=rt.health,
        )
