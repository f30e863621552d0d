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


class StatsSettings(BaseServiceSettings):
    stats: StatsOptions = StatsOptions()
