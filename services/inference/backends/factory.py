"""Choose and load a segmentation backend from settings."""

from __future__ import annotations

from typing import Literal

import torch

from services.inference.backends.base import SegmentationBackend
from services.inference.backends.classic import ClassicBackend
from services.inference.backends.rmbg import DEFAULT_SOURCE, Precision, Preprocess, RmbgBackend
from shared.exceptions import ConfigError

__all__ = ["BackendKind", "DtypeName", "load_backend"]

BackendKind = Literal["rmbg", "classic"]
DtypeName = Literal["float32", "float16", "bfloat16"]
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def load_backend(
    kind: BackendKind,
    *,
    model_source: str = DEFAULT_SOURCE,
    revision: str | None = None,
    device: str = "cpu",
    max_batch: int = 8,
    dtype: DtypeName = "float32",
    preprocess: Preprocess = "host",
    precision: Precision = "autocast",
) -> SegmentationBackend:
    """Load the backend named by ``kind``.

    ``"rmbg"`` loads ``model_source`` (hub id or local folder) and raises ``ModelError`` if it cannot:
    there is deliberately no fallback to ``"classic"``, whose mattes are far worse and would be stored under
    a model the operator did not choose. ``"classic"`` ignores the model arguments.
    Unknown kinds, dtypes or batch sizes are a ``ConfigError``.
    """
    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
    if kind == "classic":
        return ClassicBackend(max_batch=max_batch)
    if kind == "rmbg":
        torch_dtype = _DTYPES.get(dtype)
        if torch_dtype is None:
            raise ConfigError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
        return RmbgBackend.load(
            model_source,
            revision=revision,
            device=device,
            dtype=torch_dtype,
            max_batch=max_batch,
            preprocess=preprocess,
            precision=precision,
        )
    raise ConfigError(f"unknown segmentation backend {kind!r}; expected 'rmbg' or 'classic'")
