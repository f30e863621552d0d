"""Persister settings: ``RMBG_PERSISTER__*`` plus the shared connection groups."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.config import INFERENCE_GROUP_ID, BaseServiceSettings
from shared.contracts import CutoutFormat


class PersisterOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group_id: str = "rmbg-persister"
    # Results handled at once; each composes one cut-out (CPU) and writes two objects and a row.
    concurrency: int = Field(default=8, ge=1, le=256)
    # Default cut-out encoding when a job does not choose. Measured on the sample photos at 1024x1024
    # (BENCHMARKS.md): WebP q90 with exact alpha is 71 KiB against 783 KiB lossless WebP and 1,256 KiB PNG,
    # RGB PSNR >= 37.6 dB, and the original and mask stay lossless. Jobs may ask for png or webp_lossless.
    cutout_format: CutoutFormat = CutoutFormat.WEBP
    webp_quality: int = Field(default=90, ge=1, le=100)
    max_image_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    # The sweeper judges a job lost only when it really is (docs/failures.md), never for waiting in a queue:
    # - its request was never acknowledged by the broker and the row is older than this. Intake publishes
    #   within milliseconds of the insert and the producer gives up after 15 s (request_timeout_ms), so
    #   60 s means the publish failed or ingest died in between;
    unqueued_after_s: int = Field(default=60, ge=1)
    # - or inference consumed and committed its request (results are acknowledged before that commit) and
    #   no result has moved the job for this long. Only a lost result (a broker that lost data) gets here;
    #   the window stays well above a persister backlog, which would otherwise look the same.
    stuck_after_s: int = Field(default=600, ge=1)
    # - or nothing moved it for this long, wherever its request is: the last resort for a queue that was
    #   itself lost (a topic deleted and re-created resets offsets, so stored positions look "waiting").
    #   A day outlasts any outage worth waiting out; backpressure keeps a healthy queue far shorter.
    max_idle_s: int = Field(default=86_400, ge=1)
    # Re-queues of a lost job before it is failed with the reason.
    max_attempts: int = Field(default=3, ge=1, le=20)
    sweep_interval_s: float = Field(default=30.0, gt=0)
    # Whose committed offsets tell that a request was consumed.
    inference_group_id: str = INFERENCE_GROUP_ID
    grace_s: float = Field(default=30.0, ge=0)


class PersisterSettings(BaseServiceSettings):
    persister: PersisterOptions = PersisterOptions()
