"""Redis cache of job status (the hottest read: clients poll it) and of a user's recent jobs.

PostgreSQL holds the truth; Redis may be lost or down at any time, and then every read goes to
PostgreSQL and nothing fails. Two rules keep the cache from ever serving a state older than one already
written:
- Job entries carry the status rank (pending 0 < processing 1 < completed/failed 2). Writers call
  ``put_job`` after their PostgreSQL commit; a Lua script refuses to replace a higher rank with a lower
  one, and readers fill a miss only with SET NX, so a slow reader cannot overwrite a newer write.
- A user's recent-jobs list is stored under a per-user version; every transition bumps the version
  (INCR) after its commit, so an entry computed before the bump is never read again.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.config import RedisSettings
from shared.db.models import STATUS_RANK, JobStatus

log = logging.getLogger(__name__)


# KEYS[1] = job key; ARGV = payload, rank, ttl. Replace unless the cached rank is higher.
_PUT_IF_NEWER = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and doc['_rank'] and tonumber(doc['_rank']) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[3]))
return 1
"""


class JobCache:
    def __init__(self, client: aioredis.Redis | None, *, ttl_s: int, namespace: str = "rmbg") -> None:
        self._client = client
        self._ttl = ttl_s
        self._ns = namespace
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def _job_key(self, job_id: str) -> str:
        return f"{self._ns}:job:{job_id}"

    def _user_ver_key(self, user_id: str) -> str:
        return f"{self._ns}:user:{user_id}:ver"

    def _user_list_key(self, user_id: str, version: int, variant: str) -> str:
        return f"{self._ns}:user:{user_id}:recent:{version}:{variant}"

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        raw = await self._call("GET", self._job_key(job_id))
        if raw is None:
            return None
        doc: dict[str, Any] = json.loads(raw)
        doc.pop("_rank", None)
        return doc

    async def put_job(self, job: dict[str, Any]) -> None:
        """Write-through after a committed transition (never lowers a cached state)."""
        payload = self._encode(job)
        await self._call(
            "EVAL",
            _PUT_IF_NEWER,
            1,
            self._job_key(str(job["job_id"])),
            payload,
            STATUS_RANK[JobStatus(job["status"])],
            self._ttl,
        )

    async def fill_job(self, job: dict[str, Any]) -> None:
        """Fill a miss with what PostgreSQL said; SET NX so a concurrent newer write wins."""
        await self._call("SET", self._job_key(str(job["job_id"])), self._encode(job), "EX", self._ttl, "NX")

    async def invalidate_user(self, user_id: str) -> None:
        await self._call("INCR", self._user_ver_key(user_id))

    async def get_user_list(self, user_id: str, variant: str) -> tuple[int, list[dict[str, Any]] | None]:
        """Returns the user's current version and the cached list for it (None on a miss)."""
        ver_raw = await self._call("GET", self._user_ver_key(user_id))
        version = int(ver_raw) if ver_raw is not None else 0
        raw = await self._call("GET", self._user_list_key(user_id, version, variant))
        return version, (json.loads(raw) if raw is not None else None)

    async def put_user_list(self, user_id: str, version: int, variant: str, items: list[dict[str, Any]]) -> None:
        await self._call(
            "SET",
            self._user_list_key(user_id, version, variant),
            json.dumps(items, default=str),
            "EX",
            min(self._ttl, 300),
        )

    @staticmethod
    def _encode(job: dict[str, Any]) -> str:
        return json.dumps({**job, "_rank": STATUS_RANK[JobStatus(job["status"])]}, default=str)

    async def _call(self, *args: Any) -> Any:
        if self._client is None:
            return None
        try:
            return await self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as exc:
            # The cache is optional: log, count, and let the caller go to PostgreSQL.
            self.errors += 1
            log.warning("redis %s failed: %s", args[0], exc)
            return None


@contextlib.asynccontextmanager
async def open_redis(settings: RedisSettings) -> AsyncIterator[aioredis.Redis | None]:
    """The one Redis client a process holds (None when ``settings.url`` is empty: Redis is optional)."""
    if not settings.url:
        yield None
        return
    client = aioredis.from_url(
        settings.url,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        decode_responses=True,
        health_check_interval=30,
    )
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def open_cache(settings: RedisSettings) -> AsyncIterator[JobCache]:
    async with open_redis(settings) as client:
        yield JobCache(client, ttl_s=settings.job_ttl_s)
