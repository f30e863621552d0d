"""Image validation: every kind of bad upload gets a clear reason; good ones pass untouched."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import webp
from PIL import Image, ImageOps

from shared.contracts import CutoutFormat
from shared.exceptions import ImageRejected
from shared.imaging import (
    CUTOUT_WEBP_METHOD,
    apply_threshold,
    compose_cutout,
    encode_cutout,
    encode_mask_png,
    inspect_image,
    make_cutout,
)
from shared.imaging import _alpha_filtering as alpha_filtering
from tests.support.images import bomb_png

LIMITS = {"max_bytes": 5_000_000, "max_pixels": 4_000_000}


def _png(w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_valid_png_is_described() -> None:
    info = inspect_image(_png(), **LIMITS)
    assert (info.format, info.width, info.height, info.extension, info.content_type) == (
        "PNG",
        64,
        48,
        "png",
        "image/png",
    )


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty"),
        (b"hello, not an image", "corrupt"),
        (_png()[:300], "corrupt"),
    ],
)
def test_bad_bytes_are_refused_with_a_reason(data: bytes, code: str) -> None:
    with pytest.raises(ImageRejected) as err:
        inspect_image(data, **LIMITS)
    assert err.value.code == code and err.value.reason


def test_too_many_bytes() -> None:
    with pytest.raises(ImageRejected) as err:
        inspect_image(_png(), max_bytes=100, max_pixels=10**9)
    assert err.value.code == "too_large"


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageRejected) as err:
        inspect_image(bomb_png(60_000), **LIMITS)  # 3.6 gigapixels declared in a 100-byte file
    assert err.value.code == "too_many_pixels"


def test_unsupported_format() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    with pytest.raises(ImageRejected) as err:
        inspect_image(buf.getvalue(), **LIMITS)
    assert err.value.code == "unsupported_format"


def test_threshold_binarises_and_none_keeps_the_soft_matte() -> None:
    matte = np.array([[0, 100, 128, 255]], dtype=np.uint8)
    assert apply_threshold(matte, None) is matte
    assert apply_threshold(matte, 0.5).tolist() == [[0, 0, 255, 255]]


@pytest.mark.parametrize("fmt", list(CutoutFormat))
def test_cutout_alpha_is_the_mask_exactly(fmt: CutoutFormat) -> None:
    mask = np.random.default_rng(1).integers(0, 256, (48, 64), dtype=np.uint8)
    out = Image.open(io.BytesIO(make_cutout(_png(), encode_mask_png(mask), fmt, 80)))
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out.getchannel("A")), mask)


def _transparent_png(orientation: int | None = None) -> tuple[bytes, np.ndarray]:
    """An RGBA PNG whose background is transparent over magenta (RGB nobody is meant to see), with a
    half-transparent shadow; its alpha as a viewer shows it (upright)."""
    rgba = np.zeros((48, 64, 4), dtype=np.uint8)
    rgba[..., :3] = (255, 0, 255)  # hidden under alpha 0
    rgba[10:30, 10:40] = (20, 120, 200, 255)  # the product
    rgba[30:36, 10:40] = (0, 0, 0, 60)  # its shadow
    image = Image.fromarray(rgba, mode="RGBA")
    buf = io.BytesIO()
    if orientation is None:
        image.save(buf, format="PNG")
        return buf.getvalue(), rgba[..., 3]
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(buf, format="PNG", exif=exif)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())))
    assert upright.size == (48, 64)  # turned a quarter
    return buf.getvalue(), np.asarray(upright.getchannel("A"))


@pytest.mark.parametrize("fmt", list(CutoutFormat))
@pytest.mark.parametrize("orientation", [None, 6])
def test_the_originals_own_transparency_stays_in_the_cutout(fmt: CutoutFormat, orientation: int | None) -> None:
    data, own = _transparent_png(orientation)
    mask = np.full(own.shape, 255, dtype=np.uint8)  # a model that keeps everything
    mask[:, :5] = 0
    out = Image.open(io.BytesIO(make_cutout(data, encode_mask_png(mask), fmt, 80)))
    assert np.array_equal(np.asarray(out.getchannel("A")), np.minimum(mask, own))


def test_an_opaque_original_keeps_the_mask_as_its_alpha() -> None:
    image = Image.fromarray(np.full((48, 64, 4), 200, dtype=np.uint8), mode="RGBA")
    image.putalpha(255)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    mask = np.random.default_rng(2).integers(0, 256, (48, 64), dtype=np.uint8)
    out = Image.open(io.BytesIO(make_cutout(buf.getvalue(), encode_mask_png(mask), CutoutFormat.PNG, 80)))
    assert np.array_equal(np.asarray(out.getchannel("A")), mask)


def test_a_noisy_soft_matte_never_costs_seconds() -> None:
    """The lossy cut-out's lossless alpha is where soft mattes cost; method 6 takes 8-11 s CPU on one
    1024x1024 soft matte (BENCHMARKS.md "CPU per image"), method 2 about 0.25 s. Alpha stays exact."""
    assert CUTOUT_WEBP_METHOD <= 4
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:1024, 0:1024]
    smooth = 128 + 100 * np.sin(xx / 37.0) * np.cos(yy / 53.0)  # textured gradients, like the tiny model's
    mask = np.clip(smooth + rng.integers(-8, 9, smooth.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    started = time.process_time()
    data = encode_cutout(compose_cutout(image, mask), fmt=CutoutFormat.WEBP, webp_quality=90)
    spent = time.process_time() - started
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).getchannel("A")), mask)
    assert spent < 3.0, f"cut-out encode took {spent:.2f} s of CPU"


def test_mismatched_mask_is_refused() -> None:
    with pytest.raises(ImageRejected):
        make_cutout(_png(), encode_mask_png(np.zeros((10, 10), dtype=np.uint8)), CutoutFormat.PNG, 90)


@pytest.mark.parametrize("method", [0, 4])
def test_the_operator_chosen_webp_method_keeps_alpha_exact(method: int) -> None:
    mask = np.random.default_rng(3).integers(0, 256, (48, 64), dtype=np.uint8)
    data = make_cutout(_png(), encode_mask_png(mask), CutoutFormat.WEBP, 90, webp_method=method)
    out = Image.open(io.BytesIO(data))
    assert np.array_equal(np.asarray(out.getchannel("A")), mask)


def test_webp_methods_that_cost_seconds_are_refused() -> None:
    from services.persister.settings import PersisterOptions

    with pytest.raises(ValueError, match="0-4"):
        make_cutout(_png(), encode_mask_png(np.zeros((48, 64), dtype=np.uint8)), CutoutFormat.WEBP, 90, webp_method=6)
    assert PersisterOptions(cutout_webp_method=0).cutout_webp_method == 0
    for bad in (-1, 5, 6):
        with pytest.raises(ValueError):
            PersisterOptions(cutout_webp_method=bad)


def _edge_matte(soft_rows: int, h: int = 96, w: int = 128) -> np.ndarray:
    """A binary matte (object in the middle) whose first soft_rows rows are a soft ramp."""
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    mask[:soft_rows] = np.tile(np.linspace(1, 254, w).astype(np.uint8), (soft_rows, 1))
    return mask


def test_the_alpha_filter_is_skipped_unless_most_of_the_matte_is_soft() -> None:
    """libwebp's "fast" filter encodes a many-level alpha plane twice; it only pays when over half the
    matte is soft (BENCHMARKS.md "Cut-out WebP: the alpha plane's filter")."""
    assert alpha_filtering(_edge_matte(0)) == 0  # binary
    assert alpha_filtering(_edge_matte(48)) == 0  # exactly half soft
    assert alpha_filtering(_edge_matte(49)) == 1  # just over half
    assert alpha_filtering(np.full((8, 8), 128, dtype=np.uint8)) == 1
    assert alpha_filtering(np.full((8, 8), 255, dtype=np.uint8)) == 0


@pytest.mark.parametrize("soft_rows", [0, 10, 90])
def test_alpha_stays_exact_with_either_filter(soft_rows: int) -> None:
    mask = _edge_matte(soft_rows)
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    data = encode_cutout(compose_cutout(image, mask), fmt=CutoutFormat.WEBP, webp_quality=90)
    out = Image.open(io.BytesIO(data))
    assert out.format == "WEBP" and out.size == (128, 96)
    assert np.array_equal(np.asarray(out.getchannel("A")), mask)


def test_an_all_opaque_webp_cutout_has_no_alpha_plane() -> None:
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    data = encode_cutout(
        compose_cutout(image, np.full((48, 64), 255, dtype=np.uint8)), fmt=CutoutFormat.WEBP, webp_quality=90
    )
    out = Image.open(io.BytesIO(data))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out.convert("RGBA"))[..., 3], np.full((48, 64), 255))


def test_a_cutout_the_encoder_refuses_is_a_classified_rejection() -> None:
    # WebP stores at most 16383 pixels a side: libwebp refuses the picture, which must not crash.
    wide = Image.new("RGBA", (16384, 1))
    with pytest.raises(ImageRejected) as info:
        encode_cutout(wide, fmt=CutoutFormat.WEBP, webp_quality=90)
    assert info.value.code == "encode_failed" and "webp" in str(info.value)


def test_libwebp_failing_past_its_checks_is_out_of_memory_not_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    # What libwebp does when malloc fails (webp 0.4.0 then reads an error field it does not declare).
    def fail(self: object, config: object) -> object:
        raise AttributeError("cdata 'WebPPicture *' has no field 'error_code'")

    monkeypatch.setattr(webp.WebPPicture, "encode", fail)
    cut = compose_cutout(Image.new("RGB", (8, 8)), np.full((8, 8), 128, dtype=np.uint8))
    with pytest.raises(MemoryError, match="libwebp could not encode 8x8"):
        encode_cutout(cut, fmt=CutoutFormat.WEBP, webp_quality=90)


@pytest.mark.parametrize("quality", [101, -5])
def test_settings_libwebp_refuses_are_a_classified_rejection(quality: int) -> None:
    cut = compose_cutout(Image.new("RGB", (8, 8)), np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ImageRejected) as info:
        encode_cutout(cut, fmt=CutoutFormat.WEBP, webp_quality=quality)
    assert info.value.code == "encode_failed"
