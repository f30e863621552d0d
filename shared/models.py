"""The model catalogue: every model a deployment may serve, under a stable name, with its licence.

A model's *name* (``rmbg-2.0``, ``birefnet``...) is what jobs ask for and what rows, result events and
object keys store. It never changes with where the weights are loaded from: a local folder given as
``RMBG_INFERENCE__MODEL_SOURCE`` still stores the catalogue name, never the folder's path.

Which models a deployment serves, and the default a job gets when it names none, are settings shared by
every service (``RMBG_MODELS__SERVED=rmbg-2.0,birefnet``, ``RMBG_MODELS__DEFAULT=birefnet``), validated
against the catalogue at start. ``RMBG_MODELS__EXTRA`` (JSON) adds entries for one deployment, e.g. the
tiny test model of the test suite, which is no product model and so is not listed here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.exceptions import ConfigError


class ModelEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Hugging Face hub id the weights load from by default (None: a backend without weights).
    hub_id: str | None = None
    backend: Literal["rmbg", "classic"] = "rmbg"
    licence: str
    # Whether the weights' licence allows commercial use without a separate agreement.
    commercial_use: bool
    note: str = ""


# Product models. All BiRefNet-architecture models load through the same from_pretrained path and the
# same recipe (docs/model.md).
CATALOGUE: dict[str, ModelEntry] = {
    "rmbg-2.0": ModelEntry(
        hub_id="briaai/RMBG-2.0",
        licence="CC BY-NC 4.0",
        commercial_use=False,
        note="non-commercial; commercial use needs an agreement with BRIA (gated on the hub)",
    ),
    "birefnet": ModelEntry(
        hub_id="ZhengPeng7/BiRefNet",
        licence="MIT",
        commercial_use=True,
        note="BiRefNet general model, the architecture RMBG-2.0 is built on",
    ),
    "birefnet-lite": ModelEntry(
        hub_id="ZhengPeng7/BiRefNet_lite",
        licence="MIT",
        commercial_use=True,
        note="BiRefNet with a Swin-T backbone: faster, less memory, somewhat less accurate",
    ),
    "classic-grabcut": ModelEntry(
        backend="classic",
        licence="no weights (OpenCV GrabCut, Apache-2.0)",
        commercial_use=True,
        note="weights-free demo stand-in, not a segmentation model",
    ),
}

DEFAULT_MODEL = "rmbg-2.0"


class ModelSettings(BaseModel):
    """``RMBG_MODELS__*``: what this deployment serves (ingest refuses jobs for any other model)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Comma-separated in the environment: RMBG_MODELS__SERVED=rmbg-2.0,birefnet
    served: Annotated[tuple[str, ...], NoDecode] = (DEFAULT_MODEL,)
    # The model of a job that names none; None: the first served.
    default: str | None = None
    # Deployment-specific entries, JSON in the environment: {"my-model": {"hub_id": ..., "licence": ...}}
    extra: dict[str, ModelEntry] = Field(default_factory=dict)

    @field_validator("served", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelSettings:
        overlap = sorted(set(self.extra) & set(CATALOGUE))
        if overlap:
            raise ConfigError(f"RMBG_MODELS__EXTRA may not redefine catalogue models: {', '.join(overlap)}")
        if not self.served:
            raise ConfigError("RMBG_MODELS__SERVED names no model")
        served = tuple(dict.fromkeys(self.resolve(name) for name in self.served))
        object.__setattr__(self, "served", served)
        default = self.resolve(self.default) if self.default else served[0]
        if default not in served:
            raise ConfigError(f"RMBG_MODELS__DEFAULT={default} is not served (served: {', '.join(served)})")
        object.__setattr__(self, "default", default)
        return self

    @property
    def catalogue(self) -> dict[str, ModelEntry]:
        return {**CATALOGUE, **self.extra}

    @property
    def default_model(self) -> str:
        assert self.default is not None  # set by the validator
        return self.default

    def resolve(self, name: str) -> str:
        """The stable name for ``name``: a catalogue name, or a catalogue entry's hub id (the name stored
        before the catalogue existed, e.g. ``briaai/RMBG-2.0``). Anything else is a ConfigError."""
        catalogue = self.catalogue
        if name in catalogue:
            return name
        for known, entry in catalogue.items():
            if entry.hub_id is not None and entry.hub_id == name:
                return known
        raise ConfigError(f"unknown model {name!r}: the catalogue has {', '.join(catalogue)}")

    def entry(self, name: str) -> ModelEntry:
        return self.catalogue[self.resolve(name)]

    def is_served(self, name: str) -> bool:
        return name in self.served

    def names_for(self, name: str) -> frozenset[str]:
        """Every name a job may carry for the model ``name``: its stable name and its hub id (what rows
        stored before the catalogue existed, and what the sweeper re-queues such a row with)."""
        stable = self.resolve(name)
        hub_id = self.catalogue[stable].hub_id
        return frozenset({stable} if hub_id is None else {stable, hub_id})

    # Routing: one inference pool per model. Each served model gets its own jobs topic and consumer group
    # (`<jobs topic>.<model>`, `<inference group>.<model>`) rather than one shared topic that every pool
    # reads and filters: a pool then reads only its own model's jobs, its lag is its own backlog (what its
    # autoscaler should follow), a restart of one pool rebalances no other, and a slow model does not
    # delay another's jobs behind it in a partition. A deployment serving one model keeps the plain topic
    # and group, exactly as before models could be named.
    @property
    def routed(self) -> bool:
        return len(self.served) > 1

    def served_name(self, model: str) -> str | None:
        """The served model's stable name for ``model`` (a name or a hub id, as older rows store), or None."""
        try:
            name = self.resolve(model)
        except ConfigError:
            return None
        return name if name in self.served else None

    def jobs_topic(self, base: str, model: str) -> str:
        """The jobs topic the pool of ``model`` consumes (``base`` itself for a one-model deployment)."""
        return f"{base}.{self.served_name(model) or model}" if self.routed else base

    def inference_group(self, base: str, model: str) -> str:
        """The consumer group of ``model``'s inference pool (``base`` itself for a one-model deployment)."""
        return f"{base}.{self.served_name(model) or model}" if self.routed else base

    def listing(self) -> list[dict[str, object]]:
        """What is served, as GET /v1/models and `rmbg models --json` show it."""
        out: list[dict[str, object]] = []
        for name in self.served:
            entry = self.catalogue[name]
            out.append(
                {
                    "name": name,
                    "default": name == self.default,
                    "hub_id": entry.hub_id,
                    "licence": entry.licence,
                    "commercial_use": entry.commercial_use,
                    "note": entry.note,
                }
            )
        return out


__all__ = ["CATALOGUE", "DEFAULT_MODEL", "ModelEntry", "ModelSettings"]
