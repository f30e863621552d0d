"""Cut-out format and stored bytes per job, measured on scikit-image's bundled sample photos.

Run: ``.venv/bin/python -m bench.cutout_formats`` (prints markdown tables; see BENCHMARKS.md).

Each photo is resized to exactly SIZE x SIZE (1024 by default, the design's reference size) and "uploaded"
twice: as the JPEG a catalogue typically receives (Pillow, quality 90) and as a PNG (Pillow defaults). As
the services do, the upload is decoded with ``decode_rgb``, matted with ``ClassicBackend`` (GrabCut, soft
edges), the mask is encoded with ``encode_mask_png`` and the cut-out is ``compose_cutout`` of the decoded
upload, encoded with ``encode_cutout``.

Measured per cut-out format: encoded bytes, encode and decode time (median of REPEATS), and what decoding
gives back: the largest alpha error, and RGB fidelity both as plain (straight, un-premultiplied) RGB over
the pixels with alpha > 0 and as premultiplied RGB (rgb * alpha / 255, what a viewer composites) over all
pixels.

Stored bytes per job compare the design's naive baseline (three PNGs with Pillow's defaults: the original
re-encoded, the mask, the cut-out) with what the service stores (the original as uploaded, the mask from
``encode_mask_png``, the cut-out in the format under test). Originals are stored under their sha256, so an
image uploaded N times is stored once: per-job bytes = (original + mask + cut-out) / N for N duplicates
(same params); the tables report N = 1 and the smallest N at which a case would meet the target.
"""

from __future__ import annotations

import argparse
import io
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from importlib.resources import files
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import PIL
from PIL import Image

from services.inference.backends.classic import ClassicBackend
from shared.contracts.events import CutoutFormat
from shared.imaging import compose_cutout, decode_rgb, encode_cutout, encode_mask_png

SAMPLES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")
UPLOADS = ("jpeg", "png")
T = TypeVar("T")


@dataclass(frozen=True)
class Variant:
    label: str
    fmt: CutoutFormat
    quality: int  # only used by lossy WebP; encode_cutout ignores it otherwise

    def encode(self, image: Image.Image) -> bytes:
        return encode_cutout(image, fmt=self.fmt, webp_quality=self.quality)


@dataclass(frozen=True)
class FormatResult:
    image: str
    upload: str
    variant: str
    nbytes: int
    encode_ms: float
    decode_ms: float
    alpha_max_err: int
    psnr_plain: float  # plain RGB over alpha > 0
    max_err_plain: int
    psnr_premul: float  # premultiplied RGB over all pixels
    max_err_premul: float


@dataclass(frozen=True)
class JobBytes:
    image: str
    upload: str
    original: int  # as uploaded
    mask: int  # encode_mask_png
    cutouts: dict[str, int]  # variant label -> bytes
    baseline: int  # three default PNGs

    def ours(self, variant: str) -> int:
        return self.original + self.mask + self.cutouts[variant]


def variants(webp_qualities: Sequence[int]) -> list[Variant]:
    out = [
        Variant("PNG (level 6)", CutoutFormat.PNG, 90),
        Variant("WebP lossless (m4)", CutoutFormat.WEBP_LOSSLESS, 90),
    ]
    out += [Variant(f"WebP lossy q{q} (alpha 100)", CutoutFormat.WEBP, q) for q in webp_qualities]
    return out


def load_sample(name: str, size: int) -> Image.Image:
    data = files("skimage.data").joinpath(name).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def png_default(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # Pillow defaults: zlib's default level, no optimize
    return buf.getvalue()


def jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def median_ms(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Median wall time in ms over ``repeats`` calls, and the last call's result."""
    times: list[float] = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def decode_rgba(data: bytes) -> npt.NDArray[np.uint8]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img.convert("RGBA"), dtype=np.uint8)


def psnr(diff: npt.NDArray[np.float64]) -> float:
    if diff.size == 0:
        return math.inf
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def quality(ref: npt.NDArray[np.uint8], got: npt.NDArray[np.uint8]) -> tuple[int, float, int, float, float]:
    """(alpha max err, plain PSNR over alpha>0, plain max err, premultiplied PSNR, premultiplied max err)."""
    ref_f, got_f = ref.astype(np.float64), got.astype(np.float64)
    alpha_err = int(np.abs(ref_f[..., 3] - got_f[..., 3]).max())
    visible = ref[..., 3] > 0
    plain = (ref_f[..., :3] - got_f[..., :3])[visible]
    premul = ref_f[..., :3] * ref_f[..., 3:] / 255.0 - got_f[..., :3] * got_f[..., 3:] / 255.0
    plain_max = int(np.abs(plain).max()) if plain.size else 0
    return alpha_err, psnr(plain), plain_max, psnr(premul), float(np.abs(premul).max())


def measure(
    names: Sequence[str], size: int, jpeg_quality: int, vs: Sequence[Variant], repeats: int
) -> tuple[list[FormatResult], list[JobBytes]]:
    backend = ClassicBackend()
    results: list[FormatResult] = []
    jobs: list[JobBytes] = []
    for name in names:
        photo = load_sample(name, size)
        uploads = {"jpeg": jpeg(photo, jpeg_quality), "png": png_default(photo)}
        for upload in UPLOADS:
            original = uploads[upload]
            decoded = decode_rgb(original)  # what inference and the persister see
            matte = backend.predict([decoded])[0]
            cutout = compose_cutout(decoded, matte)
            ref = np.asarray(cutout, dtype=np.uint8)
            mask_png = encode_mask_png(matte)
            baseline = (
                len(png_default(decoded))
                + len(png_default(Image.fromarray(matte, mode="L")))
                + len(png_default(cutout))
            )
            cutouts: dict[str, int] = {}
            for v in vs:
                enc_ms, enc = median_ms(partial(v.encode, cutout), repeats)
                dec_ms, got = median_ms(partial(decode_rgba, enc), repeats)
                a_err, p_plain, m_plain, p_pre, m_pre = quality(ref, got)
                results.append(
                    FormatResult(name, upload, v.label, len(enc), enc_ms, dec_ms, a_err, p_plain, m_plain, p_pre, m_pre)
                )
                cutouts[v.label] = len(enc)
            jobs.append(JobBytes(name, upload, len(original), len(mask_png), cutouts, baseline))
    return results, jobs


def fmt_db(value: float) -> str:
    return "lossless" if math.isinf(value) else f"{value:.1f}"


def kib(n: float) -> str:
    return f"{n / 1024:,.1f}"


def format_table(results: Sequence[FormatResult], upload: str) -> list[str]:
    lines = [
        "| image | cut-out format | KiB | encode ms | decode ms | alpha max err "
        "| PSNR plain RGB, α>0 (dB) | max err plain | PSNR premult. (dB) | max err premult. |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.upload != upload:
            continue
        lines.append(
            f"| {r.image} | {r.variant} | {kib(r.nbytes)} | {r.encode_ms:.1f} | {r.decode_ms:.1f} "
            f"| {r.alpha_max_err} | {fmt_db(r.psnr_plain)} | {r.max_err_plain} | {fmt_db(r.psnr_premul)} "
            f"| {r.max_err_premul:.1f} |"
        )
    return lines


def summary_table(results: Sequence[FormatResult], vs: Sequence[Variant]) -> list[str]:
    lines = [
        "| upload | cut-out format | mean KiB | mean encode ms | mean decode ms | alpha max err (all) "
        "| min PSNR plain (dB) | max err plain (all) | min PSNR premult. (dB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for upload in UPLOADS:
        for v in vs:
            rs = [r for r in results if r.upload == upload and r.variant == v.label]
            lines.append(
                f"| {upload} | {v.label} | {kib(statistics.mean(r.nbytes for r in rs))} "
                f"| {statistics.mean(r.encode_ms for r in rs):.1f} "
                f"| {statistics.mean(r.decode_ms for r in rs):.1f} "
                f"| {max(r.alpha_max_err for r in rs)} | {fmt_db(min(r.psnr_plain for r in rs))} "
                f"| {max(r.max_err_plain for r in rs)} | {fmt_db(min(r.psnr_premul for r in rs))} |"
            )
    return lines


def storage_table(jobs: Sequence[JobBytes], vs: Sequence[Variant], target: float) -> list[str]:
    lines = [
        "| upload | cut-out format | original KiB | mask KiB | cut-out KiB | ours KiB | baseline KiB "
        f"| ours / baseline | per image (min–max) | ≤ {target:.0%}? | N duplicates to meet |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for upload in UPLOADS:
        js = [j for j in jobs if j.upload == upload]
        n = len(js)
        orig = sum(j.original for j in js) / n
        mask = sum(j.mask for j in js) / n
        base = sum(j.baseline for j in js) / n
        for v in vs:
            cut = sum(j.cutouts[v.label] for j in js) / n
            ours = orig + mask + cut
            ratio = ours / base
            per = [j.ours(v.label) / j.baseline for j in js]
            if ratio <= target:
                verdict = f"yes ({(target - ratio) * 100:.1f} pt under)"
            else:
                over = ours / (target * base)
                verdict = f"no, misses by {(ratio - target) * 100:.1f} pt ({over:.2f}× too big)"
            n_dup = max(1, math.ceil(ours / (target * base)))
            lines.append(
                f"| {upload} | {v.label} | {kib(orig)} | {kib(mask)} | {kib(cut)} | {kib(ours)} | {kib(base)} "
                f"| {ratio:.1%} | {min(per):.1%}–{max(per):.1%} | {verdict} | {n_dup} |"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1024, help="side of the square test image (default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats; the median is reported")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="quality of the simulated JPEG upload")
    parser.add_argument("--webp-quality", type=int, nargs="+", default=[90, 80], help="lossy WebP qualities")
    parser.add_argument("--target", type=float, default=0.15, help="stored-bytes target (of baseline)")
    parser.add_argument("--images", nargs="+", default=list(SAMPLES), help="files in skimage.data")
    args = parser.parse_args(argv)

    vs = variants(args.webp_quality)
    results, jobs = measure(args.images, args.size, args.jpeg_quality, vs, args.repeats)

    print(
        f"<!-- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; Python {platform.python_version()}, "
        f"Pillow {PIL.__version__}, {platform.machine()}; {args.size}x{args.size}, "
        f"JPEG upload q{args.jpeg_quality}, median of {args.repeats} -->"
    )
    print("\n### Stored bytes per job (mean over images)\n")
    print("\n".join(storage_table(jobs, vs, args.target)))
    print("\n### Cut-out formats, summary over images\n")
    print("\n".join(summary_table(results, vs)))
    for upload in UPLOADS:
        print(f"\n### Cut-out formats per image, {upload} upload\n")
        print("\n".join(format_table(results, upload)))
    lossless_bad = [r for r in results if r.variant.startswith(("PNG", "WebP lossless")) and r.max_err_plain]
    alpha_bad = [r for r in results if r.alpha_max_err]
    print(
        f"\nalpha exact in every format: {'yes' if not alpha_bad else 'NO: ' + str(alpha_bad)}; "
        f"lossless formats RGB-exact over α>0: {'yes' if not lossless_bad else 'NO'}"
    )


if __name__ == "__main__":
    main()
