"""Inference settings: ``RMBG_INFERENCE__*`` plus the shared connection groups."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.config import INFERENCE_GROUP_ID, BaseServiceSettings
from shared.exceptions import ConfigError

CLASSIC_MODEL = "classic-grabcut"


class InferenceOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # "rmbg" loads model_source through transformers; "classic" is the weights-free GrabCut demo backend.
    # None: the catalogue entry's backend.
    backend: Literal["rmbg", "classic"] | None = None
    # The one model this process serves: a catalogue name (shared/models.py), which jobs ask for and results,
    # rows and object keys store. None: RMBG_MODELS__DEFAULT ("classic-grabcut" for the classic backend).
    # A catalogue entry's hub id is accepted and stored as its name (briaai/RMBG-2.0 -> rmbg-2.0).
    model_name: str | None = None
    # Where the weights load from: a hub id or a local folder with the hub layout (config.json, birefnet.py,
    # model.safetensors). None: the catalogue entry's hub id. Never stored: a folder's path is no name.
    model_source: str | None = None
    model_revision: str | None = None
    device: str = "cpu"
    # float16 halves GPU memory and time on CUDA (BiRefNet README: 4.8 -> 3.5 GB); keep float32 on CPU.
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # With a half dtype: "autocast" (torch.autocast, weights kept in float32) or "cast" (the card's
    # model.half(), half the weight memory). See services/inference/backends/rmbg.py.
    precision: Literal["autocast", "cast"] = "autocast"
    # "host": the card's resize and normalisation in PIL, exact. "device": in torch on the model's device,
    # within 1-2 levels of it (tests/services/inference/backends/test_recipe.py): for a GPU, whose host
    # would otherwise spend ~30 ms of CPU per image on it (BENCHMARKS.md "CPU per image").
    preprocess: Literal["host", "device"] = "host"
    # Up to N images per forward pass. A batch is whatever is waiting when the worker polls; once one
    # record has arrived it waits up to T ms more for the batch to fill (dynamic batching: no wait when
    # idle-ish traffic comes one by one, full batches under load).
    batch_size: int = Field(default=4, ge=1, le=64)
    batch_wait_ms: int = Field(default=50, ge=1, le=10_000)
    # Batches polled at once. Their forward passes run one after another on the model thread while the
    # next batch is fetched, decoded and preprocessed and the previous one's mattes are encoded and sent:
    # with 1 the model idles for all of that between batches.
    batches_per_poll: int = Field(default=2, ge=1, le=16)
    # Originals fetched from S3 at once while the model works on the previous batch.
    fetch_concurrency: int = Field(default=8, ge=1, le=64)
    group_id: str = INFERENCE_GROUP_ID
    grace_s: float = Field(default=60.0, ge=0)


class InferenceSettings(BaseServiceSettings):
    inference: InferenceOptions = InferenceOptions()

    @model_validator(mode="after")
    def _resolve_model(self) -> InferenceSettings:
        """Fill in model_name (a stable catalogue name), backend and model_source from the catalogue."""
        opts = self.inference
        if opts.model_name is not None:
            name = self.models.resolve(opts.model_name)
        elif opts.backend == "classic":
            name = CLASSIC_MODEL
        else:
            name = self.models.default_model
        # A deployment that names what it serves (RMBG_MODELS__SERVED) routes only those models' jobs: a
        # pool for another would read a topic nobody writes to, or, serving one model, the shared topic,
        # failing every job on it. Left unset, the pool's own model is the single-model shorthand
        # (`rmbg up --backend classic`), as RMBG_INGEST__MODEL is for ingest.
        if "served" in self.models.model_fields_set and name not in self.models.served:
            raise ConfigError(
                f"RMBG_INFERENCE__MODEL_NAME={name} is not served (RMBG_MODELS__SERVED="
                f"{','.join(self.models.served)}): no job would reach this pool"
            )
        entry = self.models.catalogue[name]
        backend = opts.backend or entry.backend
        if backend != entry.backend:
            raise ConfigError(
                f"RMBG_INFERENCE__BACKEND={backend} cannot serve {name}, a model of the {entry.backend} backend"
            )
        source = opts.model_source or entry.hub_id
        if backend == "rmbg" and source is None:
            raise ConfigError(f"model {name} has no hub id: set RMBG_INFERENCE__MODEL_SOURCE to its folder")
        resolved = opts.model_copy(update={"model_name": name, "backend": backend, "model_source": source})
        object.__setattr__(self, "inference", resolved)
        return self

    @property
    def model_name(self) -> str:
        assert self.inference.model_name is not None  # set by the validator
        return self.inference.model_name
