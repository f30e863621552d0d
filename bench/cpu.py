"""CPU per image, stage by stage, with the project's own functions, offline (no broker, S3 or database).

Run: ``.venv/bin/python -m bench.cpu`` (``--repeats 3 --size 1024 --bound-ms 400``). Prints Markdown tables.

Images: the five scikit-image sample photos resized (Lanczos) to SIZE x SIZE and uploaded as JPEG q90.
Mattes, per image:

* ``near-binary``: the tiny model's matte thresholded at 128, then a Gaussian blur of radius 1 (thin soft
  edges, as a real RMBG matte mostly looks);
* ``tiny``: the tiny test model's own soft matte (``tests/support/tiny_rmbg.py``), what the pipeline makes
  by default in tests: textured, smooth gradients, the costly case for lossless alpha;
* ``noisy``: ``tiny`` plus uniform noise in [-8, 8] (the worst case found for WebP's lossless alpha);
* ``random``: uniform random bytes (no structure at all).

Each figure is the median of REPEATS runs of CPU time (``time.process_time``: every thread of this
process, so a multi-threaded torch op counts in full) in one calling thread; the tables give the mean over
images and the worst image. "before" is what the services ran before issue 10 (WebP method 4); "now" is
what ``shared.imaging`` does now, measured in the same run. The run fails (exit 1) if any matte's cut-out
encode costs more than ``--bound-ms`` CPU milliseconds with the current settings.

Decoders compared with Pillow, when installed (not project dependencies; a missing one is reported as
unavailable): ``pip install simplejpeg pyvips PyTurboJPEG`` and ``apt-get install libvips42 libturbojpeg0``.
"""

# Each lambda is run at once, inside its loop iteration: late binding (B023) cannot bite.
# ruff: noqa: B023, C901, SLF001, RUF005

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import PIL.features
import torch
from PIL import Image, ImageFilter

from rmbg.demo import sample_bytes
from services.inference.backends import recipe
from shared.contracts.events import CutoutFormat
from shared.imaging import (
    CUTOUT_WEBP_METHOD,
    DEFAULT_WEBP_QUALITY,
    MASK_PNG_COMPRESS_LEVEL,
    apply_threshold,
    compose_cutout,
    decode_mask_png,
    decode_rgb,
    encode_cutout,
    encode_mask_png,
    inspect_image,
)

SAMPLES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")
MATTES = ("near-binary", "tiny", "noisy", "random")
BEFORE_WEBP_METHOD = 4  # what encode_cutout used before issue 10
BEFORE_MASK_LEVEL = 6


def cpu_ms(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median CPU milliseconds of ``fn()`` over ``repeats`` runs, and its last result."""
    times: list[float] = []
    result: Any = None
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        times.append((time.process_time() - start) * 1000)
    return statistics.median(times), result


def webp(image: Image.Image, *, quality: int, method: int, alpha_quality: int = 100) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="WEBP", quality=quality, alpha_quality=alpha_quality, method=method)
    return buf.getvalue()


def png_mask(mask: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG", optimize=False, compress_level=level)
    return buf.getvalue()


def alpha_of(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.getchannel("A"))


def preprocess_before(image: Image.Image) -> torch.Tensor:
    """``recipe.preprocess_batch([image])`` as it was before issue 10 (four float passes), for comparison."""
    hwc = torch.from_numpy(np.array(recipe.resize_for_model(image), dtype=np.uint8, copy=True))
    chw = hwc.permute(2, 0, 1).contiguous().to(dtype=torch.float32).div(255)
    mean = torch.as_tensor(recipe.MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(recipe.STD, dtype=torch.float32).view(-1, 1, 1)
    return torch.stack([chw.sub_(mean).div_(std)]).to(device="cpu", dtype=torch.float32)


def postprocess_before(logits: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """``recipe.postprocess`` as it was before issue 10 (elementwise isfinite), for comparison."""
    probs = logits.detach().float().sigmoid().cpu()
    if not bool(torch.isfinite(probs).all()):
        raise ValueError("non-finite")
    masks = [Image.fromarray(np.ascontiguousarray(m)) for m in probs[:, 0].mul(255).byte().numpy()]
    return [recipe.restore_size(m, size) for m, size in zip(masks, sizes, strict=True)]


class Table:
    def __init__(self, title: str, header: list[str], note: str = "") -> None:
        self.title, self.header, self.note = title, header, note
        self.rows: list[list[str]] = []

    def add(self, *cells: object) -> None:
        self.rows.append([c if isinstance(c, str) else f"{c:,.1f}" if isinstance(c, float) else str(c) for c in cells])

    def render(self) -> str:
        out = [f"### {self.title}", ""]
        if self.note:
            out += [self.note, ""]
        out.append("| " + " | ".join(self.header) + " |")
        out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.header))) + "|")
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(out) + "\n"


def mean_max(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), max(values)


def load_uploads(size: int) -> list[tuple[str, bytes]]:
    uploads = []
    for name in SAMPLES:
        with Image.open(io.BytesIO(sample_bytes(name))) as img:
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=90)
        uploads.append((name, buf.getvalue()))
    return uploads


def load_tiny_backend() -> Any:
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from services.inference.backends.factory import load_backend
    from tests.support.tiny_rmbg import build_tiny_rmbg

    folder = Path(tempfile.mkdtemp(prefix="bench-cpu-")) / "tiny-rmbg"
    build_tiny_rmbg(folder)
    return load_backend("rmbg", model_source=str(folder))


def make_mattes(tiny: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    binary = np.where(tiny >= 128, 255, 0).astype(np.uint8)
    near = np.asarray(Image.fromarray(binary, mode="L").filter(ImageFilter.GaussianBlur(1)), dtype=np.uint8)
    noisy = np.clip(tiny.astype(np.int16) + rng.integers(-8, 9, tiny.shape), 0, 255).astype(np.uint8)
    rand = rng.integers(0, 256, tiny.shape, dtype=np.uint8)
    return {"near-binary": near, "tiny": tiny, "noisy": noisy, "random": rand}


def decoders() -> dict[str, Callable[[bytes], np.ndarray] | str]:
    """JPEG decoders to compare with Pillow; a string says why one is unavailable."""
    found: dict[str, Callable[[bytes], np.ndarray] | str] = {}
    try:
        import simplejpeg

        found[f"simplejpeg {simplejpeg.__version__}"] = lambda d: simplejpeg.decode_jpeg(d, colorspace="RGB")
    except ImportError as exc:
        found["simplejpeg"] = f"unavailable ({exc})"
    try:
        import turbojpeg

        tj = turbojpeg.TurboJPEG()
        found["PyTurboJPEG (libturbojpeg0)"] = lambda d: tj.decode(d, pixel_format=turbojpeg.TJPF_RGB)
    except (ImportError, RuntimeError, OSError) as exc:
        found["PyTurboJPEG"] = f"unavailable ({str(exc).splitlines()[0]})"
    try:
        import pyvips

        def vips_decode(d: bytes) -> np.ndarray:
            im = pyvips.Image.new_from_buffer(d, "", access="sequential")
            return np.ndarray(buffer=im.write_to_memory(), dtype=np.uint8, shape=(im.height, im.width, im.bands))

        found[f"pyvips {pyvips.__version__} (libvips {pyvips.version(0)}.{pyvips.version(1)})"] = vips_decode
    except (ImportError, OSError) as exc:
        found["pyvips"] = f"unavailable ({exc})"
    return found


def run(size: int, repeats: int, bound_ms: float) -> tuple[str, bool]:
    uploads = load_uploads(size)
    backend = load_tiny_backend()
    r = repeats
    stages: dict[str, list[float]] = {}
    # (ms, bytes, alpha exact, alpha max error: -1 when not measured)
    webp_rows: dict[tuple[str, int, int, int], list[tuple[float, int, bool, int]]] = {}
    png_rows: dict[tuple[str, int], list[tuple[float, int]]] = {}
    dec_rows: dict[str, list[tuple[float, int]]] = {}

    def stage(name: str, ms: float) -> None:
        stages.setdefault(name, []).append(ms)

    methods = list(range(6))
    for index, (_name, jpeg) in enumerate(uploads):
        # ingest
        stage(
            "ingest: inspect_image (full validation decode)",
            cpu_ms(lambda: inspect_image(jpeg, max_bytes=1 << 30, max_pixels=1 << 30), r)[0],
        )
        # inference
        ms, image = cpu_ms(lambda: decode_rgb(jpeg), r)
        stage("inference: decode_rgb", ms)
        ms, before = cpu_ms(lambda: preprocess_before(image), r)
        stage("inference: preprocess BEFORE (four float passes)", ms)
        ms, batch = cpu_ms(lambda: recipe.preprocess_batch([image]), r)
        stage("inference: preprocess NOW (recipe.preprocess_batch, lookup table)", ms)
        assert torch.equal(before, batch), "preprocessing must stay bit-identical"
        ms, _ = cpu_ms(lambda: backend.predict([image]), r)
        stage("inference: tiny model predict (pre + net + post)", ms)
        with torch.inference_mode():
            logits = recipe.select_logits(backend._model(batch), 1)
        ms, before_masks = cpu_ms(lambda: postprocess_before(logits, [image.size]), r)
        stage("inference: postprocess BEFORE (elementwise isfinite)", ms)
        ms, masks = cpu_ms(lambda: recipe.postprocess(logits, [image.size]), r)
        stage("inference: postprocess NOW (recipe.postprocess)", ms)
        assert np.array_equal(before_masks[0], masks[0])
        mattes = make_mattes(masks[0], seed=index)
        for kind, mask in mattes.items():
            stage(
                f"inference: threshold (none) + mask PNG BEFORE (level {BEFORE_MASK_LEVEL}), {kind}",
                cpu_ms(lambda: png_mask(apply_threshold(mask, None), BEFORE_MASK_LEVEL), r)[0],
            )
            stage(
                f"inference: threshold (none) + mask PNG NOW (encode_mask_png, level {MASK_PNG_COMPRESS_LEVEL}), "
                f"{kind}",
                cpu_ms(lambda: encode_mask_png(apply_threshold(mask, None)), r)[0],
            )
        # persister
        stage("persister: decode_rgb (original again)", cpu_ms(lambda: decode_rgb(jpeg), r)[0])
        for kind, mask in mattes.items():
            mask_png = encode_mask_png(mask)
            stage(f"persister: decode_mask_png, {kind}", cpu_ms(lambda: decode_mask_png(mask_png), r)[0])
            ms, cut = cpu_ms(lambda: compose_cutout(image, mask), r)
            stage(f"persister: compose_cutout, {kind}", ms)
            ms, data = cpu_ms(lambda: webp(cut, quality=DEFAULT_WEBP_QUALITY, method=BEFORE_WEBP_METHOD), r)
            stage(f"persister: cut-out encode BEFORE (WebP q90 m{BEFORE_WEBP_METHOD}), {kind}", ms)
            ms, data = cpu_ms(
                lambda: encode_cutout(cut, fmt=CutoutFormat.WEBP, webp_quality=DEFAULT_WEBP_QUALITY), r
            )
            stage(f"persister: cut-out encode NOW (encode_cutout, q90 m{CUTOUT_WEBP_METHOD}), {kind}", ms)
            # alternatives: methods x quality, alpha quality
            for q in (90, 80):
                for m in methods if q == 90 else sorted({BEFORE_WEBP_METHOD, CUTOUT_WEBP_METHOD}):
                    ms, data = cpu_ms(lambda: webp(cut, quality=q, method=m), r)
                    exact = bool(np.array_equal(alpha_of(data), mask))
                    webp_rows.setdefault((kind, q, m, 100), []).append((ms, len(data), exact, 0 if exact else -1))
            for aq in (90, 50):
                ms, data = cpu_ms(
                    lambda: webp(cut, quality=90, method=CUTOUT_WEBP_METHOD, alpha_quality=aq), r
                )
                err = int(np.abs(alpha_of(data).astype(np.int16) - mask).max())
                webp_rows.setdefault((kind, 90, CUTOUT_WEBP_METHOD, aq), []).append((ms, len(data), err == 0, err))
            for level in (1, 3, 6, 9):
                ms, data = cpu_ms(lambda: png_mask(mask, level), r)
                png_rows.setdefault((kind, level), []).append((ms, len(data)))
    # method 6 once, on the first image only: it costs seconds.
    jpeg = uploads[0][1]
    image = decode_rgb(jpeg)
    m6 = {}
    for kind in ("near-binary", "tiny"):
        mask = make_mattes(backend.predict([image])[0], seed=0)[kind]
        cut = compose_cutout(image, mask)
        ms, data = cpu_ms(lambda: webp(cut, quality=90, method=6), 1)
        m6[kind] = (ms, len(data))

    # Decoders last: importing pyvips loads the system's libwebp, which Pillow's WebP encoder then uses.
    libs = f"libwebp {PIL.features.version('webp')}, libjpeg-turbo {PIL.features.version('jpg')}"
    decs = decoders()
    for _name, jpeg in uploads:
        ms, ref = cpu_ms(lambda: np.asarray(decode_rgb(jpeg)), r)
        dec_rows.setdefault("Pillow decode_rgb (libjpeg-turbo)", []).append((ms, 0))

        def draft() -> Image.Image:
            with Image.open(io.BytesIO(jpeg)) as im:
                im.draft("RGB", (size // 2, size // 2))
                return im.convert("RGB")

        dec_rows.setdefault("Pillow draft 1/2 scale (not full size: reference only)", []).append(
            (cpu_ms(draft, r)[0], -1)
        )
        for label, fn in decs.items():
            if isinstance(fn, str):
                dec_rows.setdefault(label + ": " + fn, [])
                continue
            ms, decoded = cpu_ms(lambda: fn(jpeg), r)
            pixels = np.asarray(decoded)
            diff = int(np.abs(pixels.astype(np.int16) - ref).max()) if pixels.shape == ref.shape else -2
            dec_rows.setdefault(label, []).append((ms, diff))
    # ---- render
    out: list[str] = []
    t = Table(f"CPU ms per {size}x{size} image, by stage", ["stage", "mean ms", "worst image ms"])
    for label, values in stages.items():
        mean, worst = mean_max(values)
        t.add(label, mean, worst)
    out.append(t.render())

    def total(keys: list[str]) -> float:
        return sum(statistics.fmean(stages[k]) for k in keys)

    t = Table(
        "CPU ms per job by process, the stages changed, before vs now (same run; mean over images)",
        ["process", "matte", "before ms", "now ms", "saved"],
        "Sums of the stage means above. Inference: decode + preprocess + postprocess + mask PNG (the network "
        "itself, unchanged, is left out). Persister: decode original + decode mask + compose + cut-out encode.",
    )
    for kind in MATTES:
        pre_b = [
            "inference: decode_rgb",
            "inference: preprocess BEFORE (four float passes)",
            "inference: postprocess BEFORE (elementwise isfinite)",
        ]
        pre = [
            "inference: decode_rgb",
            "inference: preprocess NOW (recipe.preprocess_batch, lookup table)",
            "inference: postprocess NOW (recipe.postprocess)",
        ]
        inf_b = total(pre_b + [f"inference: threshold (none) + mask PNG BEFORE (level {BEFORE_MASK_LEVEL}), {kind}"])
        inf_n = total(
            pre
            + [f"inference: threshold (none) + mask PNG NOW (encode_mask_png, level {MASK_PNG_COMPRESS_LEVEL}), {kind}"]
        )
        base = [
            "persister: decode_rgb (original again)",
            f"persister: decode_mask_png, {kind}",
            f"persister: compose_cutout, {kind}",
        ]
        per_b = total(base + [f"persister: cut-out encode BEFORE (WebP q90 m{BEFORE_WEBP_METHOD}), {kind}"])
        per_n = total(base + [f"persister: cut-out encode NOW (encode_cutout, q90 m{CUTOUT_WEBP_METHOD}), {kind}"])
        t.add("inference", kind, inf_b, inf_n, f"{100 * (1 - inf_n / inf_b):.0f}%")
        t.add("persister", kind, per_b, per_n, f"{100 * (1 - per_n / per_b):.0f}%")
    out.append(t.render())

    t = Table(
        "Cut-out WebP: method and quality vs CPU and size (alpha_quality 100 unless said)",
        ["matte", "quality", "method", "alpha_quality", "mean ms", "worst ms", "mean KiB", "alpha exact / max err"],
    )
    for (kind, q, m, aq), vals in sorted(
        webp_rows.items(),
        key=lambda kv: (MATTES.index(kv[0][0]) if kv[0][0] in MATTES else 9, -kv[0][1], -kv[0][3], kv[0][2]),
    ):
        if not vals:
            continue
        mean, worst = mean_max([v[0] for v in vals])
        kib = statistics.fmean(v[1] for v in vals) / 1024
        worst_err = max(v[3] for v in vals)
        alpha = "exact" if all(v[2] for v in vals) else f"max err {worst_err}" if worst_err > 0 else "NOT exact"
        tag = " (before)" if m == BEFORE_WEBP_METHOD and q == 90 and aq == 100 else ""
        tag += " (now)" if m == CUTOUT_WEBP_METHOD and q == 90 and aq == 100 else ""
        t.add(kind, str(q), f"{m}{tag}", str(aq), mean, worst, kib, alpha)
    for kind, (ms, n) in m6.items():
        t.add(kind, "90", "6 (first image, 1 run)", "100", ms, ms, n / 1024, "")
    out.append(t.render())

    t = Table(
        "Mask PNG: compress level vs CPU and size (lossless at every level)",
        ["matte", "level", "mean ms", "worst ms", "mean KiB"],
    )
    for (kind, level), sized in png_rows.items():
        mean, worst = mean_max([v[0] for v in sized])
        tag = " (before)" if level == BEFORE_MASK_LEVEL else ""
        tag += " (now)" if level == MASK_PNG_COMPRESS_LEVEL else ""
        t.add(kind, f"{level}{tag}", mean, worst, statistics.fmean(v[1] for v in sized) / 1024)
    out.append(t.render())

    t = Table("JPEG decode of the upload (1024x1024 q90)", ["decoder", "mean ms", "worst ms", "max abs diff vs Pillow"])
    for label, decodes in dec_rows.items():
        if not decodes:
            t.add(label, "", "", "")
            continue
        mean, worst = mean_max([v[0] for v in decodes])
        diff = max(v[1] for v in decodes)
        t.add(label, mean, worst, "n/a" if diff == -1 else "shape differs" if diff == -2 else str(diff))
    out.append(t.render())

    worst_now = max(
        max(stages[f"persister: cut-out encode NOW (encode_cutout, q90 m{CUTOUT_WEBP_METHOD}), {k}"]) for k in MATTES
    )
    ok = worst_now <= bound_ms
    out.append(
        f"Bound: the worst cut-out encode with the current settings over every image and matte is {worst_now:,.1f} "
        f"CPU ms; bound {bound_ms:,.0f} ms: {'PASS' if ok else 'FAIL'}.\n"
    )
    return f"Pillow encoders measured with {libs}.\n\n" + "\n".join(out), ok


def run_header(started: datetime, libraries: str) -> str:
    """The line a bench prints above its tables: machine, Python, the libraries measured, date, duration."""
    return (
        f"Machine: {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} usable CPUs; Python "
        f"{platform.python_version()}, {libraries}. Run {started:%Y-%m-%d %H:%M} UTC, "
        f"{(datetime.now(UTC) - started).total_seconds():.0f} s.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bound-ms", type=float, default=600.0)
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    report, ok = run(args.size, args.repeats, args.bound_ms)
    print(
        run_header(
            started,
            f"Pillow {PIL.__version__} (libwebp {PIL.features.version('webp')}, libjpeg-turbo "
            f"{PIL.features.version('jpg')}, zlib {PIL.features.version('zlib')}), numpy {np.__version__}, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads)",
        )
    )
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
