"""Ingest settings: ``RMBG_INGEST__*`` plus the shared connection groups (``RMBG_POSTGRES__DSN``...)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.config import BaseServiceSettings


class IngestOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # 25 MiB covers a 24 MP JPEG from a camera; larger uploads are refused with 413 before decoding.
    max_image_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    # 40 MP (e.g. 8000x5000): above it a decode needs >120 MB of RGB and is treated as a bomb.
    max_pixels: int = Field(default=40_000_000, ge=1)
    # The model every new job asks for; inference refuses jobs for a model it does not serve.
    model: str = "briaai/RMBG-2.0"
    group_id: str = "rmbg-ingest"
    # Upload events handled at once (each fetches, validates and stores one image).
    concurrency: int = Field(default=8, ge=1, le=256)
    # Buckets upload events may name besides the service's own: the service's keys may reach more
    # buckets than upstream systems should be able to make it read.
    upload_buckets: tuple[str, ...] = ()
    # Upload events stamped further ahead than this are refused: clocks drift, but not by days.
    max_clock_skew_s: int = Field(default=300, ge=0)


class IngestSettings(BaseServiceSettings):
    ingest: IngestOptions = IngestOptions()
