"""The job cache against a real Redis: never a stale state after a transition; optional when down."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.cache import JobCache, open_cache
from shared.config import RedisSettings


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[JobCache]:
    async with open_cache(RedisSettings(url=redis_url, job_ttl_s=60)) as c:
        yield c


def _job(job_id: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"job_id": job_id, "status": status, "user_id": "u1", **extra}


async def test_write_through_moves_forward_only(cache: JobCache) -> None:
    job_id = str(uuid.uuid4())
    await cache.put_job(_job(job_id, "pending"))
    await cache.put_job(_job(job_id, "completed", mask_path="m"))
    # A late 'processing' write (a slow writer) must not replace the terminal state.
    await cache.put_job(_job(job_id, "processing"))
    assert (await cache.get_job(job_id)) == _job(job_id, "completed", mask_path="m")


async def test_read_fill_never_overwrites_a_newer_write(cache: JobCache) -> None:
    job_id = str(uuid.uuid4())
    # Reader read 'pending' from PostgreSQL, then the writer committed and wrote 'completed'...
    await cache.put_job(_job(job_id, "completed"))
    # ...and only now the reader fills its (stale) read: it must lose.
    await cache.fill_job(_job(job_id, "pending"))
    assert (await cache.get_job(job_id) or {})["status"] == "completed"


async def test_a_fill_before_the_write_is_replaced_by_the_write(cache: JobCache) -> None:
    job_id = str(uuid.uuid4())
    await cache.fill_job(_job(job_id, "pending"))
    await cache.put_job(_job(job_id, "processing"))
    assert (await cache.get_job(job_id) or {})["status"] == "processing"


async def test_user_list_is_invalidated_by_a_transition(cache: JobCache) -> None:
    user = f"user-{uuid.uuid4().hex[:6]}"
    version, cached = await cache.get_user_list(user, "completed:10")
    assert cached is None
    # A reader computed the list from PostgreSQL at `version`; a transition happens before it stores it.
    await cache.invalidate_user(user)
    await cache.put_user_list(user, version, "completed:10", [{"job_id": "old"}])
    _, cached = await cache.get_user_list(user, "completed:10")
    assert cached is None, "a list computed before the transition must never be served after it"
    new_version, _ = await cache.get_user_list(user, "completed:10")
    await cache.put_user_list(user, new_version, "completed:10", [{"job_id": "new"}])
    assert (await cache.get_user_list(user, "completed:10"))[1] == [{"job_id": "new"}]


async def test_dead_redis_degrades_to_misses() -> None:
    # Nothing listens on port 1: every call fails fast and is reported as a miss, never raised.
    async with open_cache(RedisSettings(url="redis://127.0.0.1:1/0", socket_timeout_s=0.2)) as dead:
        await dead.put_job(_job("x", "pending"))
        assert await dead.get_job("x") is None
        assert await dead.get_user_list("u", "v") == (0, None)
        assert dead.errors >= 3


async def test_disabled_cache_is_a_no_op() -> None:
    async with open_cache(RedisSettings(url="")) as off:
        assert not off.enabled
        await off.put_job(_job("x", "pending"))
        assert await off.get_job("x") is None
