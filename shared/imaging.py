"""Image validation and encoding, shared by ingest (validate), inference (decode) and persister (encode).

All functions are CPU-bound and synchronous: callers run them in an executor, never on the event loop.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.contracts.events import CutoutFormat
from shared.exceptions import ImageRejected

# Formats a catalogue upload plausibly arrives in; anything else is refused before it is queued.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF"})
FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}
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
    """Validate an upload fully (header, size, pixel count, and a complete decode).

    The pixel count is checked from the header *before* decoding, so a decompression bomb (a small file
    that inflates to gigabytes) is refused without allocating its pixels.
    """
    if not data:
        raise ImageRejected("empty file", code="empty")
    if len(data) > max_bytes:
        raise ImageRejected(f"file of {len(data)} bytes exceeds the limit of {max_bytes}", code="too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                width, height = img.size
                if fmt not in ALLOWED_FORMATS:
                    raise ImageRejected(f"unsupported image format {fmt or 'unknown'}", code="unsupported_format")
                if width < 1 or height < 1:
                    raise ImageRejected("image has no pixels", code="corrupt")
                if width * height > max_pixels:
                    raise ImageRejected(
                        f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
                        code="too_many_pixels",
                    )
                img.load()  # decodes every pixel: truncated or corrupt data fails here
                content_type = Image.MIME.get(fmt, "application/octet-stream")
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb refused: {exc}", code="too_many_pixels") from None
    except UnidentifiedImageError:
        raise ImageRejected("not a recognised image file", code="corrupt") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"corrupt image: {exc}", code="corrupt") from None
    return ImageInfo(format=fmt, width=width, height=height, content_type=content_type)


def decode_rgb(data: bytes) -> Image.Image:
    """Decode to RGB, applying the EXIF orientation so the mask lines up with what a viewer shows."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            oriented = ImageOps.exif_transpose(img)
            return oriented.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"corrupt image: {exc}", code="corrupt") from None


def encode_mask_png(mask: np.ndarray) -> bytes:
    """Lossless 8-bit grayscale PNG: the mask is the product's ground truth and must not drift."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    buf = io.BytesIO()
    # compress_level 6 is zlib's default trade-off; masks are mostly flat and shrink 20-50x.
    Image.fromarray(mask, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_mask_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        if img.mode != "L":
            raise ImageRejected(f"mask must be 8-bit grayscale, got mode {img.mode}", code="corrupt")
        return np.asarray(img, dtype=np.uint8).copy()


def apply_threshold(mask: np.ndarray, threshold: float | None) -> np.ndarray:
    if threshold is None:
        return mask
    cut = round(threshold * 255)
    return np.where(mask >= cut, 255, 0).astype(np.uint8)


def compose_cutout(original: Image.Image, mask: np.ndarray) -> Image.Image:
    """The model card's cut-out: the original with the mask as its alpha channel."""
    if (mask.shape[1], mask.shape[0]) != original.size:
        raise ValueError(f"mask {mask.shape[1]}x{mask.shape[0]} does not match image {original.size}")
    rgba = original.convert("RGB")
    rgba.putalpha(Image.fromarray(mask, mode="L"))
    return rgba


def encode_cutout(image: Image.Image, *, fmt: CutoutFormat, webp_quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt is CutoutFormat.PNG:
        image.save(buf, format="PNG", compress_level=6)
    elif fmt is CutoutFormat.WEBP_LOSSLESS:
        # method 4 of 0-6: close to the best size at a fraction of method 6's time.
        image.save(buf, format="WEBP", lossless=True, method=4, exact=True)
    else:
        # exact=False lets the encoder discard RGB under fully transparent pixels, which nobody sees.
        image.save(buf, format="WEBP", quality=webp_quality, alpha_quality=100, method=4)
    return buf.getvalue()


def make_cutout(original: bytes, mask_png: bytes, fmt: CutoutFormat, quality: int) -> bytes:
    """Decode the original and the mask, check they match, and encode the cut-out."""
    image = decode_rgb(original)
    mask = decode_mask_png(mask_png)
    if (mask.shape[1], mask.shape[0]) != image.size:
        raise ImageRejected(
            f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.size[0]}x{image.size[1]}",
            code="corrupt",
        )
    return encode_cutout(compose_cutout(image, mask), fmt=fmt, webp_quality=quality)
