"""``rmbg serve inference``: load the model once, warm it up, then consume jobs in batches.

Ready (/readyz) once the model is loaded and one warm-up pass has run, the object store and the broker
answer, and the consumer has its partitions: a job arriving then meets no cold start.
"""

from __future__ import annotations

import asyncio
import logging
import time

from PIL import Image

from services.inference.backends.base import SegmentationBackend
from services.inference.backends.factory import load_backend
from services.inference.handler import InferenceHandler
from services.inference.settings import InferenceSettings
from shared.runtime import ServiceRuntime, cpu_cores, prepare_process, run_service
from shared.telemetry import register_gpu_memory
from shared.worker import LoopOptions, consume_topic

log = logging.getLogger(__name__)


async def run_inference(settings: InferenceSettings, stop: asyncio.Event) -> None:
    opts = settings.inference
    name = settings.model_name  # the stable catalogue name, never the folder the weights come from
    kind, source = opts.backend, opts.model_source
    assert kind is not None and source is not None  # resolved by InferenceSettings from the catalogue
    async with ServiceRuntime(settings, name="inference") as rt:
        # First, so probes get "not ready: loading" rather than no answer while the model loads.
        await rt.serve_telemetry()
        model = rt.health.condition("model", waiting=f"loading {name} from {opts.model_source} ({opts.backend})")
        # This pool's own topic and group when several models are served (ModelSettings.jobs_topic).
        jobs_topic = rt.topics.jobs_for(name).name
        group_id = settings.models.inference_group(opts.group_id, name)
        watch = rt.health.consumer(group=group_id, topic=jobs_topic)
        # One model thread: the model is not re-entrant and one forward pass already uses every core.
        model_executor = rt.executor(workers=1, prefix="model")
        # Decode and mask PNG encode: Pillow releases the GIL while it codes, one thread per core.
        io_executor = rt.executor(workers=cpu_cores(), prefix="inference-io")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        backend = await loop.run_in_executor(
            model_executor,
            lambda: load_backend(
                kind,
                model_source=source,
                revision=opts.model_revision,
                device=opts.device,
                max_batch=opts.batch_size,
                dtype=opts.dtype,
                preprocess=opts.preprocess,
                precision=opts.precision,
            ),
        )
        load_s = time.perf_counter() - started
        model.set_waiting(f"warming up {backend.name}")
        warmup_s = await loop.run_in_executor(model_executor, warm_up, backend)
        rt.metrics.model_load_seconds.set(load_s)
        rt.metrics.model_warmup_seconds.set(warmup_s)
        rt.metrics.model_info.labels(
            model=name, revision=backend.revision, backend=opts.backend, device=opts.device
        ).set(1)
        gpu = register_gpu_memory(rt.metrics.registry)
        log.info(
            "inference serving %s (revision %s) on %s: loaded in %.1f s, warmed up in %.2f s%s",
            name,
            backend.revision,
            opts.device,
            load_s,
            warmup_s,
            " (GPU memory exported)" if gpu else "",
        )
        model.set_ready(
            f"{name}@{backend.revision} on {opts.device}, loaded in {load_s:.1f} s, warm-up {warmup_s:.2f} s"
        )
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
            model_names=settings.models.names_for(name),
        )
        await consume_topic(
            settings.kafka,
            topic=jobs_topic,
            group_id=group_id,
            client_id="inference",
            handler=handler,
            options=LoopOptions(
                max_records=opts.batch_size * opts.batches_per_poll,
                max_wait_ms=opts.batch_wait_ms,
                fill_wait_ms=opts.batch_wait_ms,
                grace_s=opts.grace_s,
            ),
            metrics=rt.metrics.loop_metrics(),
            stop=stop,
            watch=watch,
        )


def warm_up(backend: SegmentationBackend) -> float:
    """One forward pass on a small grey image (kernels chosen, caches and allocator primed); its seconds.

    The backend resizes every input to the model's size, so a small image costs a full pass. A model that
    cannot segment it raises here and the worker never says it is ready."""
    started = time.perf_counter()
    backend.predict([Image.new("RGB", (64, 64), (128, 128, 128))])
    return time.perf_counter() - started


def main() -> None:
    settings = InferenceSettings()
    prepare_process(settings)
    run_service(lambda stop: run_inference(settings, stop))


if __name__ == "__main__":
    main()
