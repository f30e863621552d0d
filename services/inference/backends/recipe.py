"""The RMBG-2.0 model card's pre- and post-processing, written with torch and Pillow only.

The card uses torchvision (``Resize((1024, 1024))`` + ``ToTensor`` + ``Normalize`` before the model,
``ToPILImage`` + ``mask.resize(image.size)`` after it). torchvision cannot be installed beside the CPU torch
used here (docs/model.md), so each step below reproduces what torchvision does on a PIL image:

* ``transforms.Resize((h, w))`` on a PIL image returns the image untouched when it already has that size,
  otherwise calls ``img.resize((w, h), Image.BILINEAR)`` (torchvision ``functional.resize`` ->
  ``_functional_pil.resize``: ``img.resize(tuple(size[::-1]), interpolation)``). The interpolation is
  ``InterpolationMode.BILINEAR`` mapped to ``PIL.Image.BILINEAR``; PIL's BILINEAR is always antialiased.
* ``ToTensor`` on an 8-bit image: HWC uint8 -> CHW, ``.to(float32).div(255)``.
* ``Normalize(mean, std)``: ``tensor.sub_(mean[:, None, None]).div_(std[:, None, None])`` in float32.
* ``ToPILImage`` on a float tensor: ``pic.mul(255).byte()`` (truncation, not rounding) -> mode ``"L"``.
* ``mask.resize(image.size)``: Pillow's default resampling for that call (BICUBIC in Pillow >= 7). We call
  exactly that method, without naming a filter, so the result follows whatever the card's call does.

``tests/services/inference/backends/test_recipe.py`` checks these against independent references.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from services.inference.backends.base import Matte
from shared.exceptions import ModelError

__all__ = [
    "MEAN",
    "MODEL_SIZE",
    "STD",
    "logits_to_model_masks",
    "postprocess",
    "postprocess_on_device",
    "preprocess",
    "preprocess_batch",
    "preprocess_on_device",
    "resize_for_model",
    "restore_size",
    "select_logits",
    "to_normalized_tensor",
]

# (width, height) as PIL counts; the card's Resize((1024, 1024)) is square, so the order cannot bite.
MODEL_SIZE: tuple[int, int] = (1024, 1024)
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def resize_for_model(image: Image.Image, size: tuple[int, int] = MODEL_SIZE) -> Image.Image:
    """RGB at the model's input size, as ``transforms.Resize(size)`` gives on a PIL image."""
    # The card feeds the opened image straight in; an RGBA/P/L upload would give the wrong channel count,
    # so it is brought to RGB first (alpha is dropped, as PIL's convert does; callers composite if needed).
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if rgb.size == size:
        # torchvision returns the very image when no resize is needed; PIL would only copy it anyway.
        return rgb
    return rgb.resize(size, Image.Resampling.BILINEAR)


def _normalize_table() -> np.ndarray:
    """(3, 256) float32: ``Normalize(MEAN, STD)`` of ``ToTensor``'s ``v / 255`` for every byte ``v``.

    Computed with the very float32 operations ``to_normalized_tensor`` applies to each pixel (``div(255)``,
    ``sub(mean)``, ``div(std)``, each correctly rounded), so looking a byte up gives the same bits as
    computing it: one pass over the image instead of four over a float copy (BENCHMARKS.md "CPU per image").
    """
    values = torch.arange(256, dtype=torch.float32).div(255).view(1, -1).repeat(3, 1)
    mean = torch.as_tensor(MEAN, dtype=torch.float32).view(-1, 1)
    std = torch.as_tensor(STD, dtype=torch.float32).view(-1, 1)
    return values.sub_(mean).div_(std).numpy()


_NORMALIZED = _normalize_table()


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    """``ToTensor`` then ``Normalize(MEAN, STD)`` on an RGB image: CHW float32."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
    hwc = np.asarray(image, dtype=np.uint8)
    chw = np.empty((3, hwc.shape[0], hwc.shape[1]), dtype=np.float32)
    for channel in range(3):
        # Bit-identical to torchvision's (x / 255 - mean) / std in float32: see _normalize_table.
        np.take(_NORMALIZED[channel], hwc[:, :, channel], out=chw[channel])
    return torch.from_numpy(chw)


def preprocess(image: Image.Image) -> torch.Tensor:
    """One image -> the card's model input (3, 1024, 1024), float32, on the CPU."""
    return to_normalized_tensor(resize_for_model(image))


def preprocess_batch(
    images: Sequence[Image.Image],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Stack images into an (N, 3, 1024, 1024) batch on ``device`` in ``dtype``.

    Normalisation happens in float32 on the CPU and the cast comes last, as in the card
    (``transform_image(image).unsqueeze(0).to("cuda")``, then ``.half()`` for fp16).
    """
    if not images:
        raise ValueError("preprocess_batch needs at least one image")
    batch = torch.stack([preprocess(image) for image in images])
    return batch.to(device=device, dtype=dtype)


def select_logits(outputs: object, batch_size: int) -> torch.Tensor:
    """The card's ``model(x)[-1]``: the last element of the returned list, checked to be (N, 1, H, W)."""
    if isinstance(outputs, torch.Tensor) or not isinstance(outputs, (list, tuple)) or not outputs:
        raise ModelError(f"model returned {type(outputs).__name__}, expected a non-empty list of tensors")
    logits = outputs[-1]
    if not isinstance(logits, torch.Tensor):
        raise ModelError(f"model's last output is {type(logits).__name__}, expected a tensor")
    if logits.dim() != 4 or logits.shape[0] != batch_size or logits.shape[1] != 1:
        raise ModelError(f"model's last output has shape {tuple(logits.shape)}, expected ({batch_size}, 1, H, W)")
    return logits


def logits_to_model_masks(logits: torch.Tensor) -> list[Image.Image]:
    """``sigmoid`` then ``ToPILImage`` per image: 8-bit ``"L"`` masks at the model's output resolution."""
    # The sigmoid runs in float32 even for an fp16 model: half precision would add its own rounding before
    # the 8-bit truncation. For an fp32 model this is exactly the card's ``.sigmoid()``.
    probs = logits.detach().float().sigmoid().cpu()
    # One finiteness check of the sum costs a fraction of an elementwise isfinite over the whole batch. NaN
    # (e.g. fp16 overflow inside the network) would otherwise silently become an arbitrary byte value.
    _check_finite(probs)
    # ToPILImage on a float tensor: mul(255).byte() truncates toward zero; sigmoid keeps values in [0, 1].
    masks_u8 = probs[:, 0].mul(255).byte().numpy()
    # A 2-D uint8 array becomes mode "L", which is what ToPILImage picks for it.
    return [Image.fromarray(np.ascontiguousarray(mask)) for mask in masks_u8]


def restore_size(mask: Image.Image, size: tuple[int, int]) -> Matte:
    """The card's ``mask.resize(image.size)``, returned as a uint8 HxW array."""
    # No resample argument on purpose: the card relies on Pillow's default for this call.
    return np.asarray(mask.resize(size), dtype=np.uint8).copy()


def postprocess(logits: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[Matte]:
    """Logits (N, 1, H, W) -> one uint8 matte per original (width, height) in ``sizes``."""
    if logits.shape[0] != len(sizes):
        raise ValueError(f"{logits.shape[0]} logits for {len(sizes)} sizes")
    return [restore_size(mask, size) for mask, size in zip(logits_to_model_masks(logits), sizes, strict=True)]


# -- the same steps on the model's device ------------------------------------------------------------------
# For a GPU: per image only the uint8 pixels cross to the device (3 MiB at 1024x1024 against 12 MiB of
# float32), and resize, normalise, sigmoid and the matte's resize back run there instead of in PIL on the
# host. Not bit-identical to the card's PIL path: torch's antialiased bilinear and bicubic filters differ
# from PIL's by rounding, and nothing is rounded to 8 bits between steps. How far the mattes move is
# measured by tests/services/inference/backends/test_recipe.py; the card's path stays the default
# (RMBG_INFERENCE__PREPROCESS=host).


def _check_finite(probs: torch.Tensor) -> None:
    # After a sigmoid every value is in [0, 1] or NaN: the sum is finite exactly when every value is.
    if not bool(torch.isfinite(probs.sum())):
        raise ModelError("model produced non-finite values")


def preprocess_on_device(
    images: Sequence[Image.Image], *, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """:func:`preprocess_batch` with the resize and normalisation on ``device``: (N, 3, 1024, 1024)."""
    if not images:
        raise ValueError("preprocess_on_device needs at least one image")
    dev = torch.device(device)
    mean = torch.as_tensor(MEAN, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std = torch.as_tensor(STD, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    width, height = MODEL_SIZE
    resized = []
    for image in images:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        # A copy (np.array, ~1 ms at 1024x1024): PIL's buffer is read-only and torch wants to own it.
        pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8))
        if dev.type == "cuda":
            # Pinned host memory lets the copy run asynchronously to the host thread.
            pixels = pixels.pin_memory().to(dev, non_blocking=True)
        chw = pixels.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
        if rgb.size != MODEL_SIZE:
            chw = F.interpolate(chw, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        resized.append(chw)
    batch = torch.cat(resized).div_(255).sub_(mean).div_(std)
    return batch.to(dtype=dtype)


def postprocess_on_device(logits: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[Matte]:
    """:func:`postprocess` with the sigmoid and the resize back on the logits' device."""
    if logits.shape[0] != len(sizes):
        raise ValueError(f"{logits.shape[0]} logits for {len(sizes)} sizes")
    probs = logits.detach().float().sigmoid()
    _check_finite(probs)
    mattes: list[Matte] = []
    for prob, (width, height) in zip(probs, sizes, strict=True):
        one = prob.unsqueeze(0)
        if one.shape[-2:] != (height, width):
            # Bicubic as the card's mask.resize; it overshoots [0, 1] near edges, hence the clamp.
            one = F.interpolate(one, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        # mul(255) then truncation, as ToPILImage.
        matte = one[0, 0].clamp_(0, 1).mul_(255).to(torch.uint8).cpu().numpy()
        mattes.append(np.ascontiguousarray(matte))
    return mattes
