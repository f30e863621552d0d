"""The cut-out's lossy WebP encode, Pillow against libvips (pyvips), CPU and bytes, same run.

Run: ``.venv/bin/python -m bench.cutout_encoders`` (``--size 1024 --images 5 --repeats 5``). Prints Markdown.

Inputs are ``bench.cpu``'s: the sample photos resized to SIZE x SIZE, uploaded as JPEG q90 and decoded with
``decode_rgb``, and its four mattes per image (near-binary, tiny, noisy, random) from the tiny test model.
The parent process builds them once and writes them to a temporary ``.npz``; each encoder family is then
timed in its own fresh interpreter (``--worker pillow`` / ``--worker vips``), because importing pyvips loads
the system's libwebp, which Pillow's WebP encoder would then use. Per image the two workers run one after
the other, alternating which goes first, so a change of machine load falls on both.

Timed (median of REPEATS runs of ``time.process_time``, all threads of the worker):

* Pillow: ``Image.save(format="WEBP", quality=90, alpha_quality=100, method=M)`` on the RGBA image from
  ``compose_cutout``, M = 0..4 (``shared.imaging`` uses method 2);
* libvips: ``Image.new_from_memory(rgba)`` (no copy) + ``webpsave_buffer(Q=90, alpha_q=100, effort=E,
  lossless=False, smart_subsample=S)``, E = 0..4, S = False/True, and ``webpsave_buffer()`` with libvips'
  own defaults (Q 75, effort 4) for reference.

Every output is decoded by the parent with Pillow (what the services and fsck use): its alpha must equal
the mask exactly; RGB fidelity is the PSNR of straight RGB over the pixels with alpha > 0. Each worker
reports the libwebp it actually ran with (the shared objects mapped into it, and their encoder version).
pyvips is not a project dependency: ``pip install pyvips`` and ``apt-get install libvips42``.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

MATTE_KINDS = ("near-binary", "tiny", "noisy", "random")
QUALITY = 90
PILLOW_METHODS = range(5)
VIPS_EFFORTS = range(5)
NOW_METHOD = 2  # shared.imaging.CUTOUT_WEBP_METHOD (not imported here: the workers stay light)

U8 = npt.NDArray[np.uint8]


def cpu_ms(fn: Callable[[], bytes], repeats: int) -> tuple[float, bytes]:
    """Median CPU milliseconds of ``fn()`` over ``repeats`` runs, and its last result."""
    times: list[float] = []
    result = b""
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        times.append((time.process_time() - start) * 1000)
    return statistics.median(times), result


def libwebp_in_process() -> list[str]:
    """The libwebp shared objects mapped into this process, each with the encoder version it reports."""
    paths = sorted(
        {
            line.split()[-1]
            for line in Path("/proc/self/maps").read_text().splitlines()
            if "/libwebp" in line and ".so" in line and "mux" not in line
        }
    )
    found = []
    for path in paths:
        v = int(ctypes.CDLL(path).WebPGetEncoderVersion())
        found.append(f"{path} ({v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF})")
    return found


# ---------------------------------------------------------------- workers (fresh interpreters)


def pillow_worker(data: dict[str, U8], repeats: int, out: Path) -> dict[str, Any]:
    import PIL
    import PIL.features

    from shared.imaging import compose_cutout

    rgb = Image.fromarray(data["rgb"], mode="RGB")
    rows = []
    for kind in MATTE_KINDS:
        cut = compose_cutout(rgb, data[kind])
        for m in PILLOW_METHODS:

            def encode(m: int = m, cut: Image.Image = cut) -> bytes:
                buf = io.BytesIO()
                cut.save(buf, format="WEBP", quality=QUALITY, alpha_quality=100, method=m)
                return buf.getvalue()

            ms, encoded = cpu_ms(encode, repeats)
            setting = f"q{QUALITY} m{m}" + (" (now)" if m == NOW_METHOD else "")
            rows.append(save_row(out, "Pillow", setting, kind, ms, encoded))
    lib = f"Pillow {PIL.__version__}, libwebp {PIL.features.version('webp')}"
    return {"rows": rows, "library": lib, "libwebp": libwebp_in_process()}


def vips_worker(data: dict[str, U8], repeats: int, out: Path) -> dict[str, Any]:
    import pyvips

    rgb = data["rgb"]
    settings: list[tuple[str, dict[str, Any]]] = [
        (f"Q{QUALITY} effort {e}{' smart_subsample' if s else ''}", {"effort": e, "smart_subsample": s})
        for s in (False, True)
        for e in VIPS_EFFORTS
    ]
    rows = []
    for kind in MATTE_KINDS:
        rgba = np.ascontiguousarray(np.dstack([rgb, data[kind]]))
        h, w = rgba.shape[:2]
        for label, kw in [*settings, ("libvips defaults (Q75, effort 4)", {})]:
            opts = {"Q": QUALITY, "alpha_q": 100, "lossless": False, **kw} if kw else {}

            def encode(rgba: U8 = rgba, opts: dict[str, Any] = opts, w: int = w, h: int = h) -> bytes:
                image = pyvips.Image.new_from_memory(rgba.data, w, h, 4, "uchar")
                return bytes(image.webpsave_buffer(**opts))

            ms, encoded = cpu_ms(encode, repeats)
            rows.append(save_row(out, "libvips", label, kind, ms, encoded))
    lib = f"pyvips {pyvips.__version__}, libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"
    return {"rows": rows, "library": lib, "libwebp": libwebp_in_process()}


def save_row(out: Path, family: str, setting: str, kind: str, ms: float, encoded: bytes) -> dict[str, Any]:
    path = out / f"{family}-{len(list(out.iterdir()))}.webp"
    path.write_bytes(encoded)
    return {"family": family, "setting": setting, "matte": kind, "ms": ms, "file": str(path)}


def worker_main(family: str, data_path: Path, repeats: int, out: Path) -> None:
    with np.load(data_path) as npz:
        data = {k: np.asarray(npz[k], dtype=np.uint8) for k in npz.files}
    result = (pillow_worker if family == "pillow" else vips_worker)(data, repeats, out)
    (out / f"{family}.json").write_text(json.dumps(result))


# ---------------------------------------------------------------- parent


def build_inputs(size: int, images: int, folder: Path) -> list[tuple[str, Path]]:
    """bench.cpu's uploads and mattes, one ``.npz`` per image (rgb + the four mattes)."""
    from bench.cpu import load_tiny_backend, load_uploads, make_mattes
    from shared.imaging import decode_rgb

    backend = load_tiny_backend()
    built = []
    for index, (name, jpeg) in enumerate(load_uploads(size)[:images]):
        image = decode_rgb(jpeg)
        mattes = make_mattes(backend.predict([image])[0], seed=index)
        path = folder / f"image-{index}.npz"
        savez: Callable[..., None] = np.savez  # numpy's stub takes **mattes for allow_pickle
        savez(path, rgb=np.asarray(image, dtype=np.uint8), **mattes)
        built.append((name, path))
    return built


def check(path: str, rgb: U8, mask: U8) -> tuple[int, bool, float]:
    """Bytes, whether the decoded alpha equals the mask, and straight-RGB PSNR over alpha > 0."""
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        decoded = np.asarray(img.convert("RGBA"), dtype=np.uint8)
    exact = bool(np.array_equal(decoded[..., 3], mask))
    seen = mask > 0
    err = decoded[..., :3][seen].astype(np.float64) - rgb[seen]
    mse = float(np.mean(err * err)) if err.size else 0.0
    return len(data), exact, 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


def run(size: int, images: int, repeats: int) -> str:
    root = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="bench-cutout-encoders-"))
    inputs = build_inputs(size, images, work)
    # (family, setting, matte) -> per image (ms, bytes, exact, psnr)
    figures: dict[tuple[str, str, str], list[tuple[float, int, bool, float]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for index, (_name, data_path) in enumerate(inputs):
        with np.load(data_path) as npz:
            data = {k: np.asarray(npz[k], dtype=np.uint8) for k in npz.files}
        order = ("pillow", "vips") if index % 2 == 0 else ("vips", "pillow")
        for family in order:
            out = work / f"{family}-{index}"
            out.mkdir()
            cmd = [sys.executable, "-m", "bench.cutout_encoders", "--worker", family, "--data", str(data_path)]
            cmd += ["--out", str(out), "--repeats", str(repeats)]
            subprocess.run(cmd, cwd=root, check=True)
            result = json.loads((out / f"{family}.json").read_text())
            info[family] = result
            for row in result["rows"]:
                checked = check(row["file"], data["rgb"], data[row["matte"]])
                figures.setdefault((row["family"], row["setting"], row["matte"]), []).append((row["ms"], *checked))
    return render(figures, info, size, len(inputs), repeats)


def render(
    figures: dict[tuple[str, str, str], list[tuple[float, int, bool, float]]],
    info: dict[str, dict[str, Any]],
    size: int,
    images: int,
    repeats: int,
) -> str:
    out = [
        f"Inputs: {images} sample photos at {size}x{size}, bench.cpu's four mattes each; median of {repeats} "
        "runs per image; mean and worst over images.",
        "",
    ]
    for family, result in info.items():
        out.append(f"* {family} worker: {result['library']}; libwebp mapped: {'; '.join(result['libwebp'])}")
    out += [
        "",
        "| matte | encoder | setting | mean CPU ms | worst ms | mean KiB | RGB PSNR dB (alpha > 0) | alpha |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    summary: dict[str, dict[tuple[str, str], tuple[float, float, bool]]] = {}
    for kind in MATTE_KINDS:
        for (family, setting, matte), vals in figures.items():
            if matte != kind:
                continue
            ms = statistics.fmean(v[0] for v in vals)
            kib = statistics.fmean(v[1] for v in vals) / 1024
            exact = all(v[2] for v in vals)
            psnr = statistics.fmean(v[3] for v in vals)
            summary.setdefault(kind, {})[(family, setting)] = (ms, kib, exact)
            out.append(
                f"| {kind} | {family} | {setting} | {ms:,.1f} | {max(v[0] for v in vals):,.1f} | {kib:,.1f} | "
                f"{psnr:.2f} | {'exact' if exact else 'NOT exact'} |"
            )
    out += [
        "",
        f"Per matte: Pillow q{QUALITY} m{NOW_METHOD} (now) against the cheapest libvips setting (Q{QUALITY}) "
        "with exact alpha and mean bytes no more than 1% above it.",
        "",
        "| matte | Pillow now ms | Pillow now KiB | libvips setting | libvips ms | libvips KiB | CPU vs now |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for kind, rows in summary.items():
        now_ms, now_kib, _ = rows[("Pillow", f"q{QUALITY} m{NOW_METHOD} (now)")]
        fits = [
            (ms, kib, setting)
            for (family, setting), (ms, kib, exact) in rows.items()
            if family == "libvips" and exact and setting.startswith("Q") and kib <= now_kib * 1.01
        ]
        if not fits:
            out.append(f"| {kind} | {now_ms:,.1f} | {now_kib:,.1f} | none qualifies | | | |")
            continue
        ms, kib, setting = min(fits)
        out.append(
            f"| {kind} | {now_ms:,.1f} | {now_kib:,.1f} | {setting} | {ms:,.1f} | {kib:,.1f} | "
            f"{100 * (ms / now_ms - 1):+.0f}% |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", choices=("pillow", "vips"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.data, args.repeats, args.out)
        return 0
    started = datetime.now(UTC)
    load_start = os.getloadavg()
    report = run(args.size, args.images, args.repeats)
    load_end = os.getloadavg()
    print(
        f"Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} usable CPUs; Python "
        f"{platform.python_version()}, numpy {np.__version__}. Run {started:%Y-%m-%d %H:%M} UTC, "
        f"{(datetime.now(UTC) - started).total_seconds():.0f} s; load average (1/5/15 min) at start "
        f"{'/'.join(f'{x:.2f}' for x in load_start)}, at end {'/'.join(f'{x:.2f}' for x in load_end)}.\n"
    )
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
