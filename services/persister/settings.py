"""Persister settings: ``RMBG_PERSISTER__*`` plus the shared connection groups."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.config import INFERENCE_GROUP_ID, BaseServiceSettings
from shared.contracts import CutoutFormat
from shared.imaging import CUTOUT_WEBP_METHOD, DEFAULT_WEBP_QUALITY, MAX_CUTOUT_WEBP_METHOD


class PersisterOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group_id: str = "rmbg-persister"
    # Results handled at once; each composes one cut-out (CPU) and writes two objects and a row.
    concurrency: int = Field(default=8, ge=1, le=256)
    # Default cut-out encoding when a job does not choose. Measured on the sample photos at 1024x1024
    # (BENCHMARKS.md): WebP q90 with exact alpha is 71 KiB against 783 KiB lossless WebP and 1,256 KiB PNG,
    # RGB PSNR >= 37.6 dB, and the original and mask stay lossless. Jobs may ask for png or webp_lossless.
    cutout_format: CutoutFormat = CutoutFormat.WEBP
    webp_quality: int = Field(default=DEFAULT_WEBP_QUALITY, ge=1, le=100)
    # libwebp effort of the lossy cut-out, the persister's largest CPU cost (about three quarters of it,
    # BENCHMARKS.md "The live services, profiled"). 2: 120-250 ms per 1024x1024 cut-out here; 0 takes 25-48%
    # less CPU for 11-19% more bytes; 3-4 cost more CPU for a few % fewer bytes. 5-6 are refused: seconds.
    cutout_webp_method: int = Field(default=CUTOUT_WEBP_METHOD, ge=0, le=MAX_CUTOUT_WEBP_METHOD)
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


class WebhookOptions(BaseModel):
    """The webhook dispatcher (services/persister/webhooks.py): ``RMBG_WEBHOOKS__*``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    # How often due rows are looked for when the dispatcher is idle; a full claim polls again at once.
    # Half a second is the latency a receiver sees on top of the job's own; the query is one probe of a
    # partial index that holds only due rows.
    poll_interval_s: float = Field(default=0.5, gt=0)
    # Sends in flight at once per replica (also the outbound connection pool's size). A slow receiver
    # holds a slot for at most timeout_s, so 16 slots keep 1.6 deliveries a second moving even if every
    # target times out.
    concurrency: int = Field(default=16, ge=1, le=256)
    # One attempt: connect, send, and the answer's status line within this. Standard Webhooks senders use
    # 15 s; 10 s keeps a stuck receiver from holding a slot longer.
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    # A claimed row is leased for this long: no other replica sends it meanwhile, and a replica that died
    # holding it frees it when the lease ends. Must exceed one attempt with its database work.
    lease_s: float = Field(default=60.0, gt=0)
    # Wait after the n-th failed attempt (the last entry is the last wait; one more failure gives up):
    # 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h: 10 attempts over about 15.7 h.
    retry_delays_s: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800)
    # Each wait is scaled by a random factor in [1 - jitter, 1 + jitter]: receivers that were down
    # together are not hit together when they come back.
    jitter: float = Field(default=0.2, ge=0, lt=1)
    # The bound whatever the schedule says: no attempt starts later than this after the job ended.
    max_age_s: float = Field(default=86_400, gt=0)
    # Presigned URLs of the job's objects in the payload live this long: long enough for a receiver to
    # fetch at once, short enough that a logged payload is soon useless. 0 leaves them out.
    url_ttl_s: int = Field(default=900, ge=0, le=7 * 24 * 3600)
    # On stop, sends in flight get this long to finish; the rest are cut, and their leases lapse and
    # hand them to the next replica (the receiver may see that attempt twice, with one webhook-id).
    grace_s: float = Field(default=15.0, ge=0)

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> WebhookOptions:
        if self.lease_s <= self.timeout_s:
            raise ValueError("webhooks.lease_s must exceed webhooks.timeout_s")
        if any(d < 0 for d in self.retry_delays_s):
            raise ValueError("webhooks.retry_delays_s must not be negative")
        return self


class PersisterSettings(BaseServiceSettings):
    persister: PersisterOptions = PersisterOptions()
    webhooks: WebhookOptions = WebhookOptions()
