"""Stats settings: ``RMBG_STATS__*`` plus the shared connection groups."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.config import BaseServiceSettings


class StatsOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group_id: str = "rmbg-stats"
    # Events applied per PostgreSQL transaction: 500 amortises the commit (about 1-2 ms here).
    batch_size: int = Field(default=500, ge=1, le=10_000)
    batch_wait_ms: int = Field(default=200, ge=1)
    grace_s: float = Field(default=10.0, ge=0)
    # Days of (job, transition) dedup entries kept: far beyond a job's life (minutes) and a topic's
    # usual 7-day retention, while bounding the ledger to about 2 rows x 14 days of jobs.
    ledger_days: int = Field(default=14, ge=2, le=400)
    prune_interval_s: float = Field(default=3600.0, gt=0)
    # How often the all-time per-user quartile bounds are stored for the admin endpoint (migration 0015):
    # computing them reads 3/4 of a 50k-user index (4.5-16 ms), once a minute instead of per request.
    quartiles_interval_s: float = Field(default=60.0, gt=0)


class StatsSettings(BaseServiceSettings):
    stats: StatsOptions = StatsOptions()
