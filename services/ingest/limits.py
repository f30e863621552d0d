"""Per-key request rate and per-user daily job quota, kept in Redis, answered with 429 + Retry-After.

- Rate: GCRA (the generic cell rate algorithm: a token bucket kept as one timestamp per key), in one Lua
  script on Redis' own clock, so every ingest replica shares one bucket per key and replica clocks do
  not matter. ``rate_per_s`` sustained, ``burst`` at once.
- Quota: accepted jobs per user per UTC day, one counter per (user, day) that expires after two days.
  It is checked before the upload is read and counted after the job is accepted, so concurrent
  submissions can pass it by at most the number in flight (a few, not a day's worth).
- Redis down (the documented fallback, docs/access.md): the rate falls back to the same GCRA in this
  process (each replica then enforces the limit alone, so a key may get up to N replicas' worth), and
  the quota is counted from PostgreSQL (the user's jobs since midnight: one index range scan of
  ix_jobs_user_created). Nothing is refused because Redis is down, and nothing goes unlimited.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.auth import Principal
from shared.db import Database
from shared.exceptions import RateLimited

log = logging.getLogger(__name__)

# KEYS[1] = bucket; ARGV = emission interval (us), burst tolerance (us). Returns 0 when allowed, else the
# microseconds to wait. The key lives only as long as it matters (tolerance + one interval).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return wait end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"""

# KEYS[1] = a user's counter of the day; ARGV[1] = its lifetime (s). Counts one job only where the counter
# exists: a missing one (the day's first job, Redis restarted) is seeded from PostgreSQL at the next check,
# which already holds this job's row. A bare INCR made it 1 instead, and the check then trusted that 1: a
# second day's quota after every Redis restart.
_COUNT_IF_SEEDED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
"""

# Keys tracked by the in-process fallback; the least recently seen are forgotten beyond it.
_LOCAL_KEYS = 100_000
# Users whose count this process could not add to Redis (it was down), forgotten beyond this many: their
# counters are dropped and seeded again from PostgreSQL once Redis answers.
_UNCOUNTED_USERS = 100_000
# A counter's lifetime: two days covers the whole UTC day it counts, whatever the hour it was made.
_COUNTER_TTL_S = 2 * 86400


class _LocalGcra:
    """The same algorithm in memory, for when Redis does not answer."""

    def __init__(self) -> None:
        self._tat: OrderedDict[str, float] = OrderedDict()

    def wait_s(self, key: str, *, interval: float, tolerance: float) -> float:
        now = time.monotonic()
        tat = max(self._tat.get(key, now), now)
        wait = tat - tolerance - now
        if wait > 0:
            return wait
        self._tat[key] = tat + interval
        self._tat.move_to_end(key)
        while len(self._tat) > _LOCAL_KEYS:
            self._tat.popitem(last=False)
        return 0.0


class Limits:
    def __init__(
        self,
        *,
        redis: Redis | None,
        db: Database,
        rate_per_s: float,
        burst: int,
        daily_jobs: int,
        namespace: str = "rmbg",
    ) -> None:
        self._redis = redis
        self._db = db
        self._rate = rate_per_s
        self._burst = burst
        self._daily = daily_jobs
        self._ns = namespace
        self._local = _LocalGcra()
        self._uncounted: OrderedDict[str, None] = OrderedDict()

    async def check_rate(self, principal: Principal) -> None:
        """One request of ``principal``'s key; RateLimited when it is over its rate."""
        rate = principal.rate_per_s or self._rate
        interval = 1.0 / rate
        tolerance = interval * (self._burst - 1)
        wait = await self._redis_wait(f"{self._ns}:rate:{principal.key_id}", interval, tolerance)
        if wait is None:
            wait = self._local.wait_s(principal.key_id, interval=interval, tolerance=tolerance)
        if wait > 0:
            raise RateLimited(
                f"more than {rate:g} requests/s (burst {self._burst}) with this key", retry_after_s=math.ceil(wait)
            )

    async def check_quota(self, principal: Principal) -> None:
        """Before a submission: RateLimited(code=quota_exceeded) when today's jobs reached the quota."""
        # A key's own quota of 0 suspends its submissions; only None means the service's default.
        quota = self._daily if principal.daily_quota is None else principal.daily_quota
        if quota == 0:
            raise RateLimited(
                "this key may not submit jobs (its daily quota is 0)",
                retry_after_s=_seconds_to_midnight(),
                code="quota_exceeded",
            )
        used = await self._used_today(principal.user_id)
        if used >= quota:
            raise RateLimited(
                f"the daily quota of {quota} jobs is used up (resets at 00:00 UTC)",
                retry_after_s=_seconds_to_midnight(),
                code="quota_exceeded",
            )

    async def count_job(self, principal: Principal) -> None:
        """After a job was accepted (a replay of an earlier job is not counted)."""
        if self._redis is None:
            return
        try:
            await self._redis.eval(_COUNT_IF_SEEDED, 1, self._quota_key(principal.user_id), _COUNTER_TTL_S)
        except (RedisError, OSError) as exc:
            # The job is not lost from the count: PostgreSQL holds it, and this user's counter is seeded
            # from there again at the next check that reaches Redis (otherwise it would stay short by every
            # job accepted while Redis was down).
            self._uncounted[principal.user_id] = None
            self._uncounted.move_to_end(principal.user_id)
            while len(self._uncounted) > _UNCOUNTED_USERS:
                self._uncounted.popitem(last=False)
            log.warning("quota count failed (PostgreSQL counts while Redis is down): %s", exc)

    def _quota_key(self, user_id: str) -> str:
        return f"{self._ns}:quota:{user_id}:{datetime.now(UTC):%Y%m%d}"

    async def _redis_wait(self, key: str, interval: float, tolerance: float) -> float | None:
        if self._redis is None:
            return None
        try:
            wait_us = await self._redis.eval(_GCRA, 1, key, int(interval * 1e6), int(tolerance * 1e6))
        except (RedisError, OSError) as exc:
            log.warning("rate limit falls back to this process (Redis: %s)", exc)
            return None
        return float(wait_us) / 1e6

    async def _used_today(self, user_id: str) -> int:
        if self._redis is not None:
            key = self._quota_key(user_id)
            try:
                if user_id in self._uncounted:
                    await self._redis.delete(key)  # short by the jobs Redis missed: seed it afresh below
                    del self._uncounted[user_id]
                raw = await self._redis.get(key)
                if raw is not None:
                    return int(raw)
                # No counter yet today (first job, or Redis restarted): PostgreSQL knows; seed from it so
                # a Redis restart does not hand out a second quota.
                used = await self._count_in_postgres(user_id)
                await self._redis.set(key, used, ex=_COUNTER_TTL_S, nx=True)
                return used
            except (RedisError, OSError) as exc:
                log.warning("quota read falls back to PostgreSQL (Redis: %s)", exc)
        return await self._count_in_postgres(user_id)

    async def _count_in_postgres(self, user_id: str) -> int:
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        async with self._db.pool.acquire() as conn:
            summary = await self._db.stats.user_summary(conn, user_id=user_id, since=midnight)
        return summary.total_jobs


def _seconds_to_midnight() -> int:
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((tomorrow - now).total_seconds()))
