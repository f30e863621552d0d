"""Property: any image, of any size, ratio, mode and format, goes through every stage's function and ends
either as a cut-out of its upright size or as a classified ``ImageRejected`` (permanent), never as any
other exception.

The stages are those a job meets: ``inspect_image`` (ingest), ``decode_rgb`` (inference) then a mask of the
decoded size (a gradient stands in for the model), ``apply_threshold`` + ``encode_mask_png`` (inference),
``make_cutout`` for every ``CutoutFormat`` (persister). Memory stays bounded: images above ``GEN_PIXELS``
are not drawn at all but written as a header-only PNG with a valid CRC (as a bomb arrives), and
``inspect_image`` runs with ``MAX_PIXELS`` so every large one is refused from its header.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from shared.contracts import CutoutFormat
from shared.exceptions import ImageRejected
from shared.failures import FailureClass, classify
from shared.imaging import (
    MAX_SIDE,
    apply_threshold,
    decode_rgb,
    encode_mask_png,
    inspect_image,
    make_cutout,
)

MAX_PIXELS = 4_000_000
MAX_BYTES = 64 * 1024 * 1024
# Images up to this many pixels are really drawn and encoded (a little above MAX_PIXELS, so a real file
# over the pixel limit is refused too); larger ones only as a header.
GEN_PIXELS = 5_000_000

MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")
EXIF_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF"})
ORIENTATION = 0x0112
# Bytes per pixel of each mode's raw data (mode "1" packs 8 pixels a byte, see _raw).
_BYTES_PER_PIXEL = {"L": 1, "LA": 2, "P": 1, "RGB": 3, "RGBA": 4, "CMYK": 4, "I;16": 2, "I": 4}

# Sides: mostly small, some medium, some at and beyond the limits every stage shares.
sides = st.one_of(
    st.integers(1, 48),
    st.integers(49, 2500),
    st.sampled_from([MAX_SIDE - 1, MAX_SIDE, MAX_SIDE + 1, 20_000, 30_000, 65_535]),
)


def _header_only_png(width: int, height: int) -> bytes:
    """A valid PNG header (correct CRCs) claiming width x height pixels, with almost no data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def _image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "1":
        return Image.frombytes("1", (width, height), rng.bytes(((width + 7) // 8) * height))
    if mode == "F":
        # Finite values, either in [0, 1] or in 8/16-bit ranges: the scaling paths of decode.
        top = float(rng.choice([1.0, 255.0, 65535.0]))
        values = (rng.random((height, width), dtype=np.float32) * top).astype(np.float32)
        return Image.frombytes("F", (width, height), values.tobytes())
    img = Image.frombytes(mode, (width, height), rng.bytes(_BYTES_PER_PIXEL[mode] * width * height))
    if mode == "P":
        img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        img.info["transparency"] = int(rng.integers(0, 256))
    return img


def _encode(img: Image.Image, fmt: str, orientation: int) -> bytes | None:
    """The file Pillow writes for ``img`` as ``fmt``, or None where Pillow refuses to write it."""
    kwargs: dict[str, object] = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        kwargs["exif"] = exif
    if img.mode == "P" and "transparency" in img.info:
        kwargs["transparency"] = img.info["transparency"]
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt, **kwargs)
    except (OSError, ValueError, KeyError):
        return None
    return buf.getvalue()


def _gradient(width: int, height: int) -> np.ndarray:
    """A mask of the decoded size that uses the whole 0-255 range (the model's place in the chain)."""
    cols = np.linspace(0, 255, num=width, dtype=np.float64)[None, :]
    rows = np.linspace(0, 255, num=height, dtype=np.float64)[:, None]
    return ((cols + rows) / 2).astype(np.uint8)


def _run_stages(
    data: bytes, threshold: float | None, quality: int
) -> tuple[tuple[int, int], dict[CutoutFormat, bytes]] | ImageRejected:
    """Every stage in order; the first ImageRejected ends the chain as a job would end."""
    try:
        info = inspect_image(data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    except ImageRejected as exc:
        return exc
    # Accepted at intake: every later stage must succeed (nothing invalid is queued, docs/failures.md).
    decoded = decode_rgb(data)
    assert decoded.mode == "RGB"
    assert decoded.size == (info.width, info.height), "intake and inference must agree on the upright size"
    mask = apply_threshold(_gradient(*decoded.size), threshold)
    assert mask.shape == (decoded.height, decoded.width) and mask.dtype == np.uint8
    mask_png = encode_mask_png(mask)
    cutouts = {fmt: make_cutout(data, mask_png, fmt, quality) for fmt in CutoutFormat}
    return decoded.size, cutouts


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
@given(
    width=sides,
    height=sides,
    mode=st.sampled_from(MODES),
    fmt=st.sampled_from(FORMATS),
    orientation=st.integers(1, 8),
    # From 1/255 up: the gradient's 0 at (0, 0) then always stays transparent. A mask with no transparent
    # pixel at all is the explicit test below (its WebP cut-outs lose their alpha channel).
    threshold=st.one_of(st.none(), st.floats(1 / 255, 1.0)),
    quality=st.integers(1, 100),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_image_ends_as_a_cutout_or_a_permanent_rejection(
    width: int,
    height: int,
    mode: str,
    fmt: str,
    orientation: int,
    threshold: float | None,
    quality: int,
    seed: int,
) -> None:
    if fmt not in EXIF_FORMATS:
        orientation = 1
    if width * height > GEN_PIXELS:
        data = _header_only_png(width, height)
        orientation = 1
    else:
        encoded = _encode(_image(mode, width, height, seed), fmt, orientation)
        assume(encoded is not None)  # a mode/format/size Pillow itself cannot write
        assert encoded is not None
        data = encoded

    outcome = _run_stages(data, threshold, quality)
    event(f"rejected: {outcome.code}" if isinstance(outcome, ImageRejected) else f"cut out: {mode} as {fmt}")

    if isinstance(outcome, ImageRejected):
        assert classify(outcome) is FailureClass.PERMANENT
        assert outcome.code and outcome.reason
        if width * height > MAX_PIXELS:
            assert outcome.code == "too_many_pixels"
        elif max(width, height) > MAX_SIDE:
            assert outcome.code == "too_large_dimensions"
        else:
            pytest.fail(f"a writable {width}x{height} {mode} {fmt} was refused: {outcome.code}: {outcome.reason}")
        return
    assert width * height <= MAX_PIXELS and max(width, height) <= MAX_SIDE
    size, cutouts = outcome
    upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    assert size == upright
    for cut_fmt, blob in cutouts.items():
        with Image.open(io.BytesIO(blob)) as out:
            out.load()
            assert out.mode == "RGBA", cut_fmt
            assert out.size == upright, cut_fmt


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", MODES)
def test_every_writable_mode_and_format_is_cut_out(mode: str, fmt: str) -> None:
    """Each pair once, deterministically (the property above draws them at random)."""
    data = _encode(_image(mode, 37, 23, seed=3), fmt, orientation=8 if fmt in EXIF_FORMATS else 1)
    if data is None:
        pytest.skip(f"Pillow cannot write mode {mode} as {fmt}")
    outcome = _run_stages(data, None, 80)
    assert not isinstance(outcome, ImageRejected), f"{outcome.code}: {outcome.reason}"
    size, cutouts = outcome
    expected = (23, 37) if fmt in EXIF_FORMATS else (37, 23)
    assert size == expected
    for blob in cutouts.values():
        with Image.open(io.BytesIO(blob)) as out:
            assert out.mode == "RGBA" and out.size == expected


def test_exif_rotated_jpeg_is_upright_at_intake_and_inference() -> None:
    """Orientation 6 (rotate 90° clockwise to view): the stored 64x48 pixels are shown as 48x64."""
    img = Image.frombytes("RGB", (64, 48), np.random.default_rng(7).bytes(64 * 48 * 3))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.size == (64, 48) and raw.getexif()[ORIENTATION] == 6

    info = inspect_image(data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert (info.width, info.height) == (48, 64)
    decoded = decode_rgb(data)
    assert decoded.size == (48, 64) and decoded.mode == "RGB"
    cut = make_cutout(data, encode_mask_png(_gradient(48, 64)), CutoutFormat.PNG, 80)
    with Image.open(io.BytesIO(cut)) as out:
        assert out.mode == "RGBA" and out.size == (48, 64)


@pytest.mark.parametrize("fmt", list(CutoutFormat))
def test_fully_opaque_mask_gives_an_opaque_cutout(fmt: CutoutFormat) -> None:
    """threshold 0.0 is a valid parameter (ge=0.0): every pixel of the mask becomes 255.

    WebP stores no alpha plane when every alpha is 255 (libwebp leaves it out by the format's rule), so
    such a WebP cut-out decodes as RGB: read as RGBA it is the same opaque image (README, cut-out format).
    """
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format="PNG")
    mask = apply_threshold(_gradient(40, 30), 0.0)
    assert int(mask.min()) == 255
    with Image.open(io.BytesIO(make_cutout(buf.getvalue(), encode_mask_png(mask), fmt, 80))) as out:
        assert out.size == (40, 30)
        assert out.mode == ("RGBA" if fmt is CutoutFormat.PNG else "RGB")
        assert int(np.asarray(out.convert("RGBA").getchannel("A")).min()) == 255
