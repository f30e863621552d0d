"""The cut-out WebP's alpha plane: libwebp's alpha filter (none / fast) against Pillow's encoder, one run.

Run: ``.venv/bin/python -m bench.cutout_alpha`` (``--size 1024 --repeats 3``). Prints Markdown tables.

Pillow's WebP encoder offers no choice of the alpha plane's predictive filter, so it always runs libwebp's
default ("fast"), which for an alpha plane of more than 192 levels encodes the plane twice (with the
estimated filter and with none) and keeps the smaller. ``shared.imaging`` encodes the lossy cut-out through
libwebp's full config (the ``webp`` package) and skips the filter unless over half the matte is soft.
Compared on ``bench.cpu``'s inputs (the five sample photos as JPEG q90 uploads, its four mattes) and on
mattes between near-binary and textured: the near-binary matte with its first rows replaced by the tiny
model's textured matte. Each figure is the median of REPEATS ``time.process_time`` runs in one thread;
tables give the mean and worst over images. Every output is decoded with Pillow and its alpha compared
with the matte: the run fails (exit 1) if any is not exact.
"""

# Each lambda is run at once, inside its loop iteration: late binding (B023) cannot bite.
# ruff: noqa: B023

from __future__ import annotations

import argparse
import io
import statistics
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import PIL
import PIL.features
import webp
from PIL import Image

from bench.cpu import MATTES, Table, cpu_ms, load_tiny_backend, load_uploads, make_mattes, mean_max, run_header
from shared.contracts.events import CutoutFormat
from shared.imaging import (
    CUTOUT_WEBP_METHOD,
    DEFAULT_WEBP_QUALITY,
    compose_cutout,
    decode_rgb,
    encode_cutout,
    encode_webp_rgba,
    soft_share,
)

TEXTURED_SHARES = (0.05, 0.1, 0.2, 0.4, 0.7)


def pillow(cut: Image.Image) -> bytes:
    buf = io.BytesIO()
    cut.save(buf, format="WEBP", quality=DEFAULT_WEBP_QUALITY, alpha_quality=100, method=CUTOUT_WEBP_METHOD)
    return buf.getvalue()


def libwebp(cut: Image.Image, alpha_filtering: int) -> bytes:
    return encode_webp_rgba(
        np.asarray(cut), quality=DEFAULT_WEBP_QUALITY, method=CUTOUT_WEBP_METHOD, alpha_filtering=alpha_filtering
    )


def encoders() -> dict[str, Callable[[Image.Image], bytes]]:
    return {
        "Pillow (filter fast: before)": pillow,
        "libwebp, filter none": lambda cut: libwebp(cut, 0),
        "libwebp, filter fast": lambda cut: libwebp(cut, 1),
        "encode_cutout (chosen by soft share: now)": lambda cut: encode_cutout(
            cut, fmt=CutoutFormat.WEBP, webp_quality=DEFAULT_WEBP_QUALITY
        ),
    }


def webp_libwebp_version() -> str:
    """The libwebp linked into the ``webp`` package (it bundles its own, not Pillow's)."""
    import ctypes
    from pathlib import Path

    so = next(Path(webp.__file__).parent.glob("_webp*.so"))
    v = int(ctypes.CDLL(str(so)).WebPGetEncoderVersion())
    return f"{v >> 16}.{(v >> 8) & 255}.{v & 255}"


def run(size: int, repeats: int) -> tuple[str, bool]:
    backend = load_tiny_backend()
    rows: dict[tuple[str, str], list[tuple[float, int, float]]] = {}
    exact = True
    for index, (_name, jpeg) in enumerate(load_uploads(size)):
        image = decode_rgb(jpeg)
        mattes = make_mattes(np.asarray(backend.predict([image])[0]), seed=index)
        for share in TEXTURED_SHARES:
            mixed = mattes["near-binary"].copy()
            cut_rows = int(share * mixed.shape[0])
            mixed[:cut_rows] = mattes["tiny"][:cut_rows]
            mattes[f"near-binary, first {share:.0%} of rows textured"] = mixed
        for kind, mask in mattes.items():
            cut = compose_cutout(image, mask)
            for label, encode in encoders().items():
                ms, data = cpu_ms(lambda: encode(cut), repeats)
                alpha = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))[..., 3]
                exact = exact and bool(np.array_equal(alpha, mask))
                rows.setdefault((kind, label), []).append((ms, len(data), soft_share(mask)))
    t = Table(
        f"Cut-out WebP q{DEFAULT_WEBP_QUALITY} method {CUTOUT_WEBP_METHOD}, exact alpha: the alpha plane's filter",
        ["matte", "soft share (mean)", "encoder", "mean ms", "worst ms", "mean KiB", "KiB vs Pillow"],
    )
    order = list(MATTES) + [f"near-binary, first {s:.0%} of rows textured" for s in TEXTURED_SHARES]
    for kind in order:
        base = statistics.fmean(v[1] for v in rows[(kind, "Pillow (filter fast: before)")])
        for label in encoders():
            vals = rows[(kind, label)]
            mean, worst = mean_max([v[0] for v in vals])
            kib = statistics.fmean(v[1] for v in vals)
            share = statistics.fmean(v[2] for v in vals)
            t.add(kind, f"{share:.1%}", label, mean, worst, kib / 1024, f"{100 * (kib / base - 1):+.1f}%")
    verdict = "every output's alpha equals its matte" if exact else "SOME ALPHA IS NOT EXACT"
    return t.render() + f"\nAlpha: {verdict}.\n", exact


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    report, ok = run(args.size, args.repeats)
    print(
        run_header(
            started,
            f"Pillow {PIL.__version__} (libwebp {PIL.features.version('webp')}), webp "
            f"{__import__('importlib.metadata').metadata.version('webp')} (libwebp {webp_libwebp_version()})",
        )
    )
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
