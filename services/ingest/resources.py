"""Everything ingest holds open, opened in one place and closed in reverse order."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp
from aiokafka import AIOKafkaProducer

from services.ingest.backpressure import Backpressure
from services.ingest.intake import Intake
from services.ingest.limits import Limits
from services.ingest.live import JobEventHub, open_job_event_hub
from services.ingest.settings import IngestSettings
from shared.auth import ApiKeys, EmailCipher
from shared.cache import JobCache, open_redis
from shared.contracts import Topics
from shared.database import Database, open_database
from shared.messaging import open_producer
from shared.outbound import open_outbound
from shared.storage import ObjectStore, open_object_store
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


@contextlib.asynccontextmanager
async def open_ingest(settings: IngestSettings, metrics: PipelineMetrics) -> AsyncIterator[IngestResources]:
    async with contextlib.AsyncExitStack() as stack:
        # Image decoding holds the GIL only partly (Pillow releases it while decoding); 4 threads keep
        # two cores busy without letting a burst of uploads queue unbounded work.
        executor = stack.enter_context(ThreadPoolExecutor(max_workers=4, thread_name_prefix="ingest-img"))
        db = await stack.enter_async_context(open_database(settings.postgres))
        store = await stack.enter_async_context(open_object_store(settings.s3))
        producer = await stack.enter_async_context(open_producer(settings.kafka, client_id="ingest"))
        redis = await stack.enter_async_context(open_redis(settings.redis))
        cache = JobCache(redis, ttl_s=settings.redis.job_ttl_s)
        keys = ApiKeys(
            pool=db.pool,
            repo=db.keys,
            pepper=settings.auth.key_pepper.get_secret_value().encode(),
            redis=redis,
            cache_ttl_s=settings.auth.key_cache_ttl_s,
        )
        outbound = await stack.enter_async_context(open_outbound(settings.outbound))
        topics = Topics.from_settings(settings.topics, settings.kafka)
        hub = await stack.enter_async_context(open_job_event_hub(settings.kafka, topics.job_events, settings.live))
        intake = Intake(
            options=settings.ingest,
            db=db,
            store=store,
            producer=producer,
            topics=topics,
            cache=cache,
            metrics=metrics,
            executor=executor,
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
        )
