"""Inference by batch size: the tiny test model through the project's own backend, on the CPU.

Run: ``.venv/bin/python -m bench.inference`` (``--batch-sizes 1 2 4 8 16 --repeats 5 --size 1600x1200``).
Prints a Markdown table.

What it measures. The tiny model folder (``tests/support/tiny_rmbg.py``) is built in a temporary directory
and loaded with ``services.inference.backends.factory.load_backend("rmbg", model_source=folder)``, the path
the inference service takes (``from_pretrained(..., trust_remote_code=True)``). For each batch size N:

* *pipeline*: ``backend.predict(images)`` on N decoded RGB photos with ``max_batch=N`` (one chunk):
  the card's preprocessing (resize to 1024x1024, normalise), the network, and the postprocessing (sigmoid,
  8-bit mask, resize back to the original size), i.e. everything ``predict`` does;
* *network alone*: ``model(batch)`` on the preprocessed (N, 3, 1024, 1024) batch under
  ``torch.inference_mode()``, as ``predict`` calls it.

Each figure is the median over REPEATS runs of wall-clock time (``time.perf_counter``) after one warm-up
round, the batch sizes interleaved within each round (a load burst on a shared machine hits all of them);
images/s = N / median seconds, ms/image = median ms / N. The photos are the five
scikit-image samples resized (Lanczos) to SIZE, cycled to fill the batch.

This is the *tiny* model (about 5k parameters), so the figures bound the pipeline's own overhead per image
(pre/post-processing and the backend's plumbing) on this CPU; they say nothing about RMBG-2.0's speed,
whose network costs orders of magnitude more (see ``bench/gpu.py`` for the GPU measurement).
"""

# The lambdas are called at once, inside their loop iteration: late binding (B023) cannot bite.
# ruff: noqa: B023, SLF001

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rmbg.demo import SAMPLES, sample_bytes
from services.inference.backends import recipe

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from exc
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return width, height


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def load_tiny_backend(max_batch: int) -> Any:
    """The tiny model folder, built afresh and loaded through ``load_backend`` as the service does."""
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from services.inference.backends.factory import load_backend
    from tests.support.tiny_rmbg import build_tiny_rmbg

    folder = Path(tempfile.mkdtemp(prefix="bench-inference-")) / "tiny_rmbg"
    build_tiny_rmbg(folder)
    return load_backend("rmbg", model_source=str(folder), max_batch=max_batch)


def photos(size: tuple[int, int]) -> list[Image.Image]:
    images = []
    for name in SAMPLES:
        with Image.open(io.BytesIO(sample_bytes(name))) as img:
            images.append(img.convert("RGB").resize(size, Image.Resampling.LANCZOS))
    return images


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(batch_sizes: list[int], repeats: int, size: tuple[int, int]) -> list[dict[str, float]]:
    """Median seconds per batch size; the batch sizes are interleaved within each of REPEATS rounds, so a
    burst of load from other processes on a shared machine spreads over every batch size instead of one."""
    backend = load_tiny_backend(max(batch_sizes))
    model = backend._model
    pool = photos(size)
    cases = []
    for n in batch_sizes:
        images = [pool[i % len(pool)] for i in range(n)]
        batch = recipe.preprocess_batch(images, device=backend.device, dtype=backend.dtype)
        cases.append((n, images, batch))

    def pipeline(n: int, images: list[Image.Image]) -> object:
        backend.max_batch = n  # one chunk of N, as the service's batcher hands it over
        return backend.predict(images)

    def network(batch: torch.Tensor) -> object:
        with torch.inference_mode():
            return model(batch)

    times: dict[int, tuple[list[float], list[float]]] = {n: ([], []) for n in batch_sizes}
    for round_ in range(repeats + 1):  # round 0 is the warm-up: first-call allocations, lazy initialisation
        for n, images, batch in cases:
            pipe_s = _seconds(lambda: pipeline(n, images))
            net_s = _seconds(lambda: network(batch))
            if round_:
                times[n][0].append(pipe_s)
                times[n][1].append(net_s)
    rows = []
    for n in batch_sizes:
        pipeline_s, network_s = (statistics.median(t) for t in times[n])
        rows.append(
            {
                "n": n,
                "pipe_ips": n / pipeline_s,
                "pipe_ms": pipeline_s * 1000 / n,
                "net_ips": n / network_s,
                "net_ms": network_s * 1000 / n,
                "overhead_ms": (pipeline_s - network_s) * 1000 / n,
            }
        )
    return rows


def table(rows: list[dict[str, float]]) -> str:
    lines = [
        "| batch | pipeline images/s | pipeline ms/image | network images/s | network ms/image "
        "| pre/post + plumbing ms/image |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['pipe_ips']:.1f} | {r['pipe_ms']:.1f} | {r['net_ips']:.1f} | {r['net_ms']:.1f} "
            f"| {r['overhead_ms']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=_positive, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument("--repeats", type=_positive, default=5)
    parser.add_argument("--size", type=_size, default=(1600, 1200), help="upload size WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    rows = measure(args.batch_sizes, args.repeats, args.size)
    cpu = platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = f"{names[0]} ({cpu})" if names else cpu
    except OSError:
        pass
    print(
        f"Tiny test model (tests/support/tiny_rmbg.py, ~5k parameters) through load_backend('rmbg'), CPU, "
        f"float32; uploads {args.size[0]}x{args.size[1]} RGB; median of {args.repeats} interleaved runs after "
        "1 warm-up round.\n"
        f"Machine: {cpu}, {len(os.sched_getaffinity(0))} usable CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}. Run {started:%Y-%m-%d %H:%M} "
        f"UTC, {(datetime.now(UTC) - started).total_seconds():.0f} s.\n"
        "The tiny model bounds the pipeline's overhead; these are not RMBG-2.0's speed.\n"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
