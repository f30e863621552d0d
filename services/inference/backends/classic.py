"""A weights-free segmentation backend: OpenCV GrabCut seeded from the image border.

It exists for machines that cannot have the RMBG-2.0 weights (demos, CI without the gated model) and is
chosen explicitly; ``factory.load_backend`` never falls back to it when RMBG fails to load. It suits the
catalogue case it was written for, an object roughly centred on a plainer background; it is not a
substitute for the model's quality.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from services.inference.backends.base import Matte
from shared.exceptions import ModelError

__all__ = ["ClassicBackend"]

# GrabCut's cost grows with the pixel count; 512 px keeps a photo under about a second on one core.
DEFAULT_WORK_SIZE = 512
# Below this the border band and the centre seed leave GrabCut too few pixels to fit its colour models.
_MIN_WORK_SIDE = 32
_RNG_SEED = 0x5EED


class ClassicBackend:
    """GrabCut with border pixels as definite background and a centre rectangle as probable foreground."""

    name = "classic-grabcut"
    # Bump when any parameter below changes: stored mattes are keyed by (name, revision).
    revision = "v1"

    def __init__(
        self,
        *,
        max_batch: int = 8,
        work_size: int = DEFAULT_WORK_SIZE,
        iterations: int = 5,
        border_fraction: float = 0.02,
        centre_margin: float = 0.125,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if work_size < _MIN_WORK_SIDE:
            raise ValueError(f"work_size must be >= {_MIN_WORK_SIDE}, got {work_size}")
        if not 0 < border_fraction < centre_margin < 0.5:
            raise ValueError("need 0 < border_fraction < centre_margin < 0.5")
        self.max_batch = max_batch
        self.work_size = work_size
        self.iterations = iterations
        self.border_fraction = border_fraction
        self.centre_margin = centre_margin

    def predict(self, images: Sequence[Image.Image]) -> list[Matte]:
        """One uint8 matte per image at its original size. GrabCut has no batch form: images run in turn."""
        return [self._segment(image) for image in images]

    def _segment(self, image: Image.Image) -> Matte:
        rgb = np.asarray(image.convert("RGB"))
        height, width = rgb.shape[:2]
        scale = self.work_size / max(height, width)
        # Downscale big photos for speed; upscale tiny ones so the seeds leave GrabCut pixels to learn from.
        if min(height, width) * scale < _MIN_WORK_SIDE:
            scale = _MIN_WORK_SIDE / min(height, width)
        work_w, work_h = max(1, round(width * scale)), max(1, round(height * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        small = cv2.resize(rgb, (work_w, work_h), interpolation=interpolation)
        foreground = self._grabcut(np.asarray(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), dtype=np.uint8))
        # Bilinear upscaling of the 0/1 mask gives a ramp about one work pixel wide at the edges; a blur of
        # half a work pixel (sigma) on top softens GrabCut's staircase so the cut-out does not look jagged.
        alpha = cv2.resize(foreground, (width, height), interpolation=cv2.INTER_LINEAR)
        sigma = max(0.8, 0.5 / scale)
        alpha = np.asarray(cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma, sigmaY=sigma), dtype=np.float32)
        matte: Matte = np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return matte

    def _grabcut(self, bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        height, width = bgr.shape[:2]
        mask = np.full((height, width), cv2.GC_PR_BGD, dtype=np.uint8)
        band = max(1, round(self.border_fraction * min(height, width)))
        mask[:band, :] = cv2.GC_BGD
        mask[-band:, :] = cv2.GC_BGD
        mask[:, :band] = cv2.GC_BGD
        mask[:, -band:] = cv2.GC_BGD
        top, left = round(self.centre_margin * height), round(self.centre_margin * width)
        mask[top : height - top, left : width - left] = cv2.GC_PR_FGD
        bgd_model = np.zeros((1, 65), dtype=np.float64)
        fgd_model = np.zeros((1, 65), dtype=np.float64)
        # GrabCut seeds its colour models with k-means from OpenCV's RNG, which is per thread and advances on
        # every call: reseeding makes the same image give the same matte whatever ran before in this thread.
        cv2.setRNGSeed(_RNG_SEED)
        try:
            # The rectangle is ignored with GC_INIT_WITH_MASK: the mask above carries the seeds.
            cv2.grabCut(bgr, mask, (0, 0, 0, 0), bgd_model, fgd_model, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error as exc:
            raise ModelError(f"GrabCut failed on a {width}x{height} working image: {exc}") from exc
        return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
