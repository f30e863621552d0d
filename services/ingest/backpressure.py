"""Backpressure: ingest refuses work the pipeline cannot finish in time (docs/failures.md).

The signal is read from PostgreSQL, where the truth about jobs lives, not from consumer lag (which a
broker may misreport, see README): how many jobs are unfinished, and how long they have waited (judged
by the ``backlog_wait_rank``-th longest wait, so a few stuck jobs do not count as a queue).
A reading is reused for ``backlog_check_interval_s`` so a burst of requests costs one query a second.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from services.ingest.settings import IngestOptions
from shared.db import Database
from shared.exceptions import Overloaded

# Retry-After bounds: a client comes back soon enough to keep the pipeline fed, not so soon it hammers us.
_MIN_RETRY_S = 5
_MAX_RETRY_S = 120


@dataclass(frozen=True)
class Backlog:
    jobs: int
    wait_s: float  # of the backlog_wait_rank-th longest-waiting unfinished job


class Backpressure:
    def __init__(self, *, options: IngestOptions, db: Database) -> None:
        self._options = options
        self._db = db
        self._reading: Backlog | None = None
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    async def check(self) -> None:
        """Raise Overloaded (a transient error) when the backlog is over either limit."""
        backlog = await self.reading()
        opts = self._options
        if backlog.jobs > opts.max_backlog_jobs:
            raise Overloaded(
                f"{backlog.jobs} jobs are waiting (limit {opts.max_backlog_jobs}); retry later",
                retry_after_s=_retry_after(backlog.wait_s / 2),
            )
        if backlog.wait_s > opts.max_queue_wait_s:
            raise Overloaded(
                f"waiting jobs have waited {backlog.wait_s:.0f} s (limit {opts.max_queue_wait_s:.0f} s); retry later",
                retry_after_s=_retry_after(backlog.wait_s - opts.max_queue_wait_s),
            )

    async def reading(self) -> Backlog:
        async with self._lock:
            now = time.monotonic()
            if self._reading is None or now - self._read_at >= self._options.backlog_check_interval_s:
                async with self._db.pool.acquire() as conn:
                    jobs, since = await self._db.jobs.backlog(conn, rank=self._options.backlog_wait_rank)
                wait = max(0.0, (datetime.now(UTC) - since).total_seconds()) if since is not None else 0.0
                self._reading = Backlog(jobs=jobs, wait_s=wait)
                self._read_at = now
            return self._reading


def _retry_after(seconds: float) -> int:
    return int(min(_MAX_RETRY_S, max(_MIN_RETRY_S, math.ceil(seconds))))
