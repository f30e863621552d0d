"""``rmbg serve inference``: load the model once, then consume jobs in batches."""

from __future__ import annotations

import asyncio
import logging

from services.inference.backends.factory import load_backend
from services.inference.handler import InferenceHandler
from services.inference.settings import InferenceSettings
from shared.runtime import ServiceRuntime, run_service
from shared.telemetry import configure_logging
from shared.worker import LoopOptions, consume_topic

log = logging.getLogger(__name__)


async def run_inference(settings: InferenceSettings, stop: asyncio.Event) -> None:
    opts = settings.inference
    async with ServiceRuntime(settings, name="inference") as rt:
        # One model thread: the model is not re-entrant and one forward pass already uses every core.
        model_executor = rt.executor(workers=1, prefix="model")
        io_executor = rt.executor(workers=2, prefix="inference-io")
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
        # Only after the model loaded: `rmbg up` and probes take /metrics answering as "ready".
        rt.serve_metrics()
        handler = InferenceHandler(
            options=opts,
            images=settings.images,
            backend=backend,
            store=await rt.object_store(),
            producer=await rt.producer(),
            topics=rt.topics,
            metrics=rt.metrics,
            model_executor=model_executor,
            io_executor=io_executor,
        )
        await consume_topic(
            settings.kafka,
            topic=rt.topics.jobs.name,
            group_id=opts.group_id,
            client_id="inference",
            handler=handler,
            options=LoopOptions(max_records=opts.batch_size, max_wait_ms=opts.batch_wait_ms, grace_s=opts.grace_s),
            metrics=rt.metrics.loop_metrics(),
            stop=stop,
        )


def main() -> None:
    settings = InferenceSettings()
    configure_logging(settings.telemetry)
    run_service(lambda stop: run_inference(settings, stop))


if __name__ == "__main__":
    main()
