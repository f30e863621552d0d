"""The contract every segmentation backend meets, so the inference service never knows which one it runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from PIL import Image

from shared.exceptions import ModelError

__all__ = ["Matte", "ModelError", "SegmentationBackend"]

# An 8-bit matte: HxW, uint8, 0 = background, 255 = foreground, at the input image's original size.
Matte = npt.NDArray[np.uint8]


@runtime_checkable
class SegmentationBackend(Protocol):
    """A loaded model that turns images into mattes.

    ``name`` and ``revision`` together identify what produced a matte (results are stored and deduplicated
    under them), so two backends that can give different mattes must never share both.
    """

    name: str
    revision: str
    max_batch: int

    def predict(self, images: Sequence[Image.Image]) -> list[Matte]:
        """Return one uint8 HxW matte per image, at that image's original size, in input order.

        Synchronous and CPU/GPU-bound: callers run it in an executor, never on the event loop. Inputs longer
        than ``max_batch`` are split into chunks internally. Raises ``ModelError`` when inference fails.
        """
        ...
