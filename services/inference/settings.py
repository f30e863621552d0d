"""Inference settings: ``RMBG_INFERENCE__*`` plus the shared connection groups."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.config import INFERENCE_GROUP_ID, BaseServiceSettings


class InferenceOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # "rmbg" loads model_source through transformers; "classic" is the weights-free GrabCut demo backend.
    backend: Literal["rmbg", "classic"] = "rmbg"
    # A hub id or a local folder with the hub layout (config.json, birefnet.py, model.safetensors).
    model_source: str = "briaai/RMBG-2.0"
    model_revision: str | None = None
    # The name jobs ask for and results are stored under; defaults to the backend's own name
    # (the hub id for "rmbg", "classic-grabcut" for "classic"). Set it when loading from a local folder.
    model_name: str | None = None
    device: str = "cpu"
    # float16 halves GPU memory and time on CUDA (BiRefNet README: 4.8 -> 3.5 GB); keep float32 on CPU.
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # Up to N images per forward pass, waiting at most T ms to fill a batch.
    batch_size: int = Field(default=4, ge=1, le=64)
    batch_wait_ms: int = Field(default=50, ge=1, le=10_000)
    # Originals fetched from S3 at once while the model works on the previous batch.
    fetch_concurrency: int = Field(default=8, ge=1, le=64)
    group_id: str = INFERENCE_GROUP_ID
    grace_s: float = Field(default=60.0, ge=0)


class InferenceSettings(BaseServiceSettings):
    inference: InferenceOptions = InferenceOptions()
