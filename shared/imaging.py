"""Image validation and encoding, shared by ingest (validate), inference (decode) and persister (encode).

All functions are CPU-bound and synchronous: callers run them in an executor, never on the event loop.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import webp
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.contracts.events import CutoutFormat
from shared.exceptions import ImageRejected

# Formats a catalogue upload plausibly arrives in; anything else is refused before it is queued.
# MPO is how Pillow names a JPEG with extra frames (phones and 3D cameras write them): its first frame is
# the photo. Multi-frame files (animated WebP, multi-page TIFF, MPO) are cut out from their first frame.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF"})
FORMAT_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}
_CONTENT_TYPES = {"MPO": "image/jpeg"}
# The longest side every later stage can process: WebP (the default cut-out) stores at most 16383 pixels
# per side, so intake refuses longer sides instead of accepting a job whose cut-out cannot be encoded.
MAX_SIDE = 16383
CUTOUT_CONTENT_TYPES = {
    CutoutFormat.PNG: ("png", "image/png"),
    CutoutFormat.WEBP_LOSSLESS: ("webp", "image/webp"),
    CutoutFormat.WEBP: ("webp", "image/webp"),
}


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    content_type: str

    @property
    def extension(self) -> str:
        return FORMAT_EXTENSIONS[self.format]


def inspect_image(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Validate an upload fully: header, size, pixel count, and the same decode inference will run.

    The pixel count and sides are checked from the header *before* decoding, so a decompression bomb (a
    small file that inflates to gigabytes) is refused without allocating its pixels. The width and height
    returned are those of the upright image (after its EXIF orientation), as the mask will have them.
    """
    if not data:
        raise ImageRejected("empty file", code="empty")
    if len(data) > max_bytes:
        raise ImageRejected(f"file of {len(data)} bytes exceeds the limit of {max_bytes}", code="too_large")
    with _opened(data) as img:
        fmt = img.format or ""
        if fmt not in ALLOWED_FORMATS:
            raise ImageRejected(f"unsupported image format {fmt or 'unknown'}", code="unsupported_format")
        _check_size(img.size, max_pixels)
        upright = _to_rgb(img)  # decodes every pixel: truncated or corrupt data fails here
    content_type = _CONTENT_TYPES.get(fmt) or Image.MIME.get(fmt, "application/octet-stream")
    return ImageInfo(format=fmt, width=upright.width, height=upright.height, content_type=content_type)


def decode_rgb(data: bytes) -> Image.Image:
    """Decode to 8-bit RGB, applying the EXIF orientation so the mask lines up with what a viewer shows."""
    with _opened(data) as img:
        return _to_rgb(img)


def decode_rgb_alpha(data: bytes) -> tuple[Image.Image, np.ndarray | None]:
    """decode_rgb, and the image's own alpha where it has transparency (upright as the pixels are; None
    when it has none, or none below 255)."""
    with _opened(data) as img:
        rgb = _to_rgb(img)
        if not img.has_transparency_data:
            return rgb, None
        alpha = np.asarray(ImageOps.exif_transpose(img).convert("RGBA"))[..., 3]
        return rgb, (None if int(alpha.min()) == 255 else np.ascontiguousarray(alpha))


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageRejected("image has no pixels", code="corrupt")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
            code="too_many_pixels",
        )
    if max(width, height) > MAX_SIDE:
        raise ImageRejected(
            f"image of {width}x{height} has a side longer than {MAX_SIDE} pixels (the cut-out's WebP limit)",
            code="too_large_dimensions",
        )


@contextlib.contextmanager
def _opened(data: bytes) -> Iterator[Image.Image]:
    """Open ``data`` with Pillow, turning every decoder complaint into a classified ImageRejected."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                yield img
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb refused: {exc}", code="too_many_pixels") from None
    except UnidentifiedImageError:
        raise ImageRejected("not a recognised image file", code="corrupt") from None
    # MemoryError is not caught: running out of memory says nothing about the image (it is retried).
    except (OSError, SyntaxError, ValueError, TypeError, struct.error, EOFError) as exc:
        raise ImageRejected(f"corrupt image: {exc}", code="corrupt") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """The first frame, upright, as 8-bit RGB; deeper modes are scaled, not clipped."""
    img.load()
    oriented = ImageOps.exif_transpose(img)
    mode = oriented.mode
    if mode == "RGB":
        return oriented  # exif_transpose returns a new image, detached from the file
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit and 32-bit grey: Pillow's convert("RGB") clips at 255 (a 16-bit photo turns white).
        values = np.asarray(oriented, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        grey = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    try:
        return oriented.convert("RGB")
    except ValueError as exc:  # e.g. LAB or an exotic TIFF mode Pillow cannot convert
        raise ImageRejected(f"unsupported colour mode {mode}: {exc}", code="unsupported_format") from None


# zlib level for the mask PNG (lossless at every level). Level 3 measured against zlib's default 6 on
# 1024x1024 mattes (BENCHMARKS.md "CPU per image"): a fraction of the CPU on soft mattes for a few % bytes.
MASK_PNG_COMPRESS_LEVEL = 3


def encode_mask_png(mask: np.ndarray) -> bytes:
    """Lossless 8-bit grayscale PNG: the mask is the product's ground truth and must not drift."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG", optimize=False, compress_level=MASK_PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_mask_png(data: bytes) -> np.ndarray:
    with _opened(data) as img:
        if img.mode != "L":
            raise ImageRejected(f"mask must be 8-bit grayscale, got mode {img.mode}", code="corrupt")
        return np.asarray(img, dtype=np.uint8).copy()


def apply_threshold(mask: np.ndarray, threshold: float | None) -> np.ndarray:
    if threshold is None:
        return mask
    cut = round(threshold * 255)
    # uint8 scalars keep the result uint8: with Python ints np.where built an int64 copy (8 bytes a pixel).
    return np.where(mask >= cut, np.uint8(255), np.uint8(0))


def compose_cutout(original: Image.Image, mask: np.ndarray) -> Image.Image:
    """The model card's cut-out: the original with the mask as its alpha channel."""
    if (mask.shape[1], mask.shape[0]) != original.size:
        raise ValueError(f"mask {mask.shape[1]}x{mask.shape[0]} does not match image {original.size}")
    rgba = original.convert("RGB")
    rgba.putalpha(Image.fromarray(mask, mode="L"))
    return rgba


# The cut-out's WebP quality when a job does not choose: the persister's default and what fsck rebuilds
# with. q90 measured on the sample photos at 1024x1024 (BENCHMARKS.md): RGB PSNR >= 37.6 dB at 71 KiB.
DEFAULT_WEBP_QUALITY = 90
# libwebp's effort (0-6) for the lossy cut-out. It also sets the effort of the lossless alpha plane
# (alpha_quality=100 keeps alpha exact), which is what soft, textured mattes cost: method 2 measured at
# about half of method 4's CPU for a few % more bytes, and method 6 costs seconds on any soft matte
# (BENCHMARKS.md "CPU per image"). A deployment setting at most (RMBG_PERSISTER__CUTOUT_WEBP_METHOD), never
# taken from a job, and at most 4, so no matte can cost seconds. Method 0 measured 25-48% less CPU than 2
# for 11-19% more bytes (BENCHMARKS.md, "Cut-out encode: Pillow vs libvips").
CUTOUT_WEBP_METHOD = 2
MAX_CUTOUT_WEBP_METHOD = 4


def encode_cutout(
    image: Image.Image, *, fmt: CutoutFormat, webp_quality: int, webp_method: int = CUTOUT_WEBP_METHOD
) -> bytes:
    """Encode the cut-out; an encoder limit is a classified ImageRejected, not a crash."""
    if not 0 <= webp_method <= MAX_CUTOUT_WEBP_METHOD:
        raise ValueError(f"webp_method must be 0-{MAX_CUTOUT_WEBP_METHOD} (5 and 6 cost seconds per soft matte)")
    try:
        return _encode_cutout(image, fmt=fmt, webp_quality=webp_quality, webp_method=webp_method)
    except (OSError, ValueError) as exc:
        raise ImageRejected(f"cut-out cannot be encoded as {fmt.value}: {exc}", code="encode_failed") from None


def _encode_cutout(image: Image.Image, *, fmt: CutoutFormat, webp_quality: int, webp_method: int) -> bytes:
    buf = io.BytesIO()
    if fmt is CutoutFormat.PNG:
        image.save(buf, format="PNG", compress_level=6)
    elif fmt is CutoutFormat.WEBP_LOSSLESS:
        # method 4 of 0-6: close to the best size at a fraction of method 6's time.
        image.save(buf, format="WEBP", lossless=True, method=4, exact=True)
    else:
        return _encode_webp_lossy(image, quality=webp_quality, method=webp_method)
    return buf.getvalue()


# libwebp's alpha_filtering: 0 none, 1 fast (its default, and all Pillow offers). For an alpha plane of
# more than 192 levels, "fast" encodes the plane twice, once with an estimated predictive filter and once
# with none, and keeps the smaller. On mattes whose soft (0 < alpha < 255) pixels are at most half the
# image, "none" won or came within 1% every time measured, at about half the alpha plane's CPU
# (BENCHMARKS.md, "Cut-out WebP: the alpha plane's filter"); a real matte is soft only along its edges.
# Over half soft (a textured matte), the filter pays: 15% fewer bytes on the tiny model's own mattes.
_ALPHA_FILTER_NONE = 0
_ALPHA_FILTER_FAST = 1
_MAX_SOFT_SHARE_FOR_NO_FILTER = 0.5


def soft_share(alpha: np.ndarray) -> float:
    """The share of soft pixels (0 < alpha < 255) of a matte."""
    # alpha - 1 wraps 0 to 255, so "< 254" is exactly 1..254: one pass, no temporary boolean pair.
    return int(np.count_nonzero((alpha - np.uint8(1)) < 254)) / max(alpha.size, 1)


def _alpha_filtering(alpha: np.ndarray) -> int:
    return _ALPHA_FILTER_NONE if soft_share(alpha) <= _MAX_SOFT_SHARE_FOR_NO_FILTER else _ALPHA_FILTER_FAST


def _encode_webp_lossy(image: Image.Image, *, quality: int, method: int) -> bytes:
    """Lossy RGB with an exact (lossless) alpha plane; the alpha filter chosen by the matte's soft share."""
    if max(image.size) > MAX_SIDE:
        raise ValueError(f"WebP stores at most {MAX_SIDE} pixels a side, not {image.size[0]}x{image.size[1]}")
    # compose_cutout already gives RGBA: converting again would copy 4 MiB per 1024x1024 cut-out.
    rgba = np.ascontiguousarray(np.asarray(image if image.mode == "RGBA" else image.convert("RGBA")))
    return encode_webp_rgba(rgba, quality=quality, method=method, alpha_filtering=_alpha_filtering(rgba[..., 3]))


def encode_webp_rgba(rgba: np.ndarray, *, quality: int, method: int, alpha_filtering: int) -> bytes:
    """Encode an HxWx4 uint8 array through libwebp's full config (the `webp` package).

    Pillow's encoder cannot choose the alpha plane's filter, which is half of a near-binary cut-out's CPU.
    Alpha is lossless (alpha_quality 100). exact stays off: the encoder may discard RGB under fully
    transparent pixels, which nobody sees. An all-opaque image is stored without an alpha plane, as
    Pillow's encoder does.
    """
    try:
        # WebPConfig.new validates the settings itself and raises WebPError for any libwebp refuses.
        config = webp.WebPConfig.new(quality=quality, method=method)
    except webp.WebPError as exc:
        raise ValueError(f"libwebp refuses quality {quality}, method {method}: {exc}") from None
    config.ptr.alpha_quality = 100
    config.ptr.alpha_filtering = alpha_filtering
    try:
        picture = webp.WebPPicture.from_numpy(rgba)
        return bytes(picture.encode(config).buffer())
    except (webp.WebPError, AttributeError, TypeError) as exc:
        # webp 0.4.0 raises AttributeError when libwebp fails to encode (it reads an error field its
        # bindings do not declare; a release that declares it would raise TypeError adding an int to a str).
        # With the settings and the side checked, what is left is running out of memory (measured: a
        # 3000x3000 cut-out under an address-space limit), which says nothing about the image: MemoryError,
        # retried, where a ValueError failed the job for good as encode_failed.
        raise MemoryError(f"libwebp could not encode {rgba.shape[1]}x{rgba.shape[0]}: {exc}") from None


def make_cutout(
    original: bytes, mask_png: bytes, fmt: CutoutFormat, quality: int, webp_method: int = CUTOUT_WEBP_METHOD
) -> bytes:
    """Decode the original and the mask, check they match, and encode the cut-out.

    Where the original has transparency of its own, the cut-out keeps it: its alpha is the lower of the
    mask's and the original's. With the mask alone, what the upload hid under transparent pixels (any RGB
    is stored there) showed through, and a half-transparent shadow turned opaque."""
    image, own_alpha = decode_rgb_alpha(original)
    mask = decode_mask_png(mask_png)
    if (mask.shape[1], mask.shape[0]) != image.size:
        raise ImageRejected(
            f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.size[0]}x{image.size[1]}",
            code="corrupt",
        )
    if own_alpha is not None:
        mask = np.minimum(mask, own_alpha)
    return encode_cutout(compose_cutout(image, mask), fmt=fmt, webp_quality=quality, webp_method=webp_method)
