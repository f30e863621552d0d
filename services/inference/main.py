"""``rmbg serve inference``: load the model once, then consume jobs in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from services.inference.backends.factory import load_backend
from services.inference.handler import InferenceHandler
from services.inference.settings import InferenceSettings
from shared.contracts import Topics
from shared.messaging import open_producer
from shared.runtime import run_service
from shared.storage import open_object_store
from shared.telemetry import PipelineMetrics, configure_logging, serve_metrics
from shared.worker import LoopOptions, consume_topic

log = logging.getLogger(__name__)


async def run_inference(settings: InferenceSettings, stop: asyncio.Event) -> None:
    opts = settings.inference
    metrics = PipelineMetrics.create()
    topics = Topics.from_settings(settings.topics, settings.kafka)
    async with contextlib.AsyncExitStack() as stack:
        # One model thread: the model is not re-entrant and one forward pass already uses every core.
        model_executor = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="model"))
        io_executor = stack.enter_context(ThreadPoolExecutor(max_workers=2, thread_name_prefix="inference-io"))
        loop = asyncio.get_running_loop()
        backend = await loop.run_in_executor(
            model_executor,
            lambda: load_backend(
                opts.backend,
                model_source=opts.model_source,
                revision=opts.model_revision,
                device=opts.device,
                max_batch=opts.batch_size,
                dtype=opts.dtype,
            ),
        )
        log.info(
            "inference serving %s (revision %s) on %s", opts.model_name or backend.name, backend.revision, opts.device
        )
        if settings.telemetry.metrics_port:
            # Only after the model loaded: `rmbg up` and probes take /metrics answering as "ready".
            serve_metrics(metrics.registry, settings.telemetry.metrics_port)
        store = await stack.enter_async_context(open_object_store(settings.s3))
        producer = await stack.enter_async_context(open_producer(settings.kafka, client_id="inference"))
        handler = InferenceHandler(
            options=opts,
            backend=backend,
            store=store,
            producer=producer,
            topics=topics,
            metrics=metrics,
            model_executor=model_executor,
            io_executor=io_executor,
        )
        await consume_topic(
            settings.kafka,
            topic=topics.jobs.name,
            group_id=opts.group_id,
            client_id="inference",
            handler=handler,
            options=LoopOptions(max_records=opts.batch_size, max_wait_ms=opts.batch_wait_ms, grace_s=opts.grace_s),
            metrics=metrics.loop_metrics(),
            stop=stop,
        )


def main() -> None:
    settings = InferenceSettings()
    configure_logging(settings.telemetry)
    run_service(lambda stop: run_inference(settings, stop))


if __name__ == "__main__":
    main()
