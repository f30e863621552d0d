"""The contract every segmentation backend meets, so the inference service never knows which one it runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from PIL import Image

from shared.exceptions import ModelError

__all__ = ["Chunk", "Matte", "ModelError", "SegmentationBackend", "StagedBackend"]

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


@dataclass
class Chunk:
    """Up to ``max_batch`` images on their way through a :class:`StagedBackend`.

    ``inputs`` and ``outputs`` are the backend's own (for RMBG the input batch and the logits, possibly on
    a GPU); only the backend reads them."""

    sizes: list[tuple[int, int]]
    inputs: Any
    outputs: Any = None


@runtime_checkable
class StagedBackend(SegmentationBackend, Protocol):
    """A backend whose ``predict`` is three steps, so that the inference handler can overlap them across
    chunks: while the model thread runs ``forward`` on one chunk, other threads ``prepare`` the next (resize
    and normalise, upload to the device) and ``finish`` the previous one (mattes back at full size).

    ``prepare`` and ``finish`` may run on any thread and at the same time as ``forward``; ``forward`` only ever
    runs on the one model thread. Each raises ``ModelError`` when it fails."""

    def prepare(self, images: Sequence[Image.Image]) -> Chunk:
        """The model input for at most ``max_batch`` images."""
        ...

    def forward(self, chunk: Chunk) -> Chunk:
        """Run the model on ``chunk.inputs``; the chunk with its ``outputs`` set."""
        ...

    def finish(self, chunk: Chunk) -> list[Matte]:
        """One uint8 matte per image of the chunk, at its original size."""
        ...
