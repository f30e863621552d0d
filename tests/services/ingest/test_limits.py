"""Rate limits and quotas on real servers: one bucket per key shared by every replica through Redis, and
the documented fallback when Redis does not answer (limits per process, quota counted in PostgreSQL)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.ingest.limits import Limits
from shared.auth import Principal
from shared.config import PostgresSettings
from shared.db import Database, open_database
from shared.exceptions import RateLimited
from tests.support.databases import migrated_database
from tests.support.jobs import insert_pending


@pytest.fixture
async def db() -> AsyncIterator[Database]:
    async with migrated_database("rmbg_lim") as dsn, open_database(PostgresSettings(dsn=dsn, max_pool=2)) as database:
        yield database


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def dead_redis() -> AsyncIterator[aioredis.Redis]:
    """A client of a port nothing listens on: every call fails, as when Redis is down."""
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        yield client
    finally:
        await client.aclose()


def _principal(**kw: object) -> Principal:
    return Principal(user_id=f"u-{secrets.token_hex(4)}", key_id=secrets.token_hex(6), is_admin=False, **kw)  # type: ignore[arg-type]


async def _allowed(limits: Limits, who: Principal, tries: int) -> int:
    allowed = 0
    for _ in range(tries):
        try:
            await limits.check_rate(who)
            allowed += 1
        except RateLimited as exc:
            assert exc.retry_after_s >= 1 and exc.code == "rate_limited"
    return allowed


async def test_replicas_share_one_bucket_per_key(db: Database, redis: aioredis.Redis) -> None:
    ns = f"t{secrets.token_hex(3)}"
    one, two = (Limits(redis=redis, db=db, rate_per_s=0.5, burst=4, daily_jobs=10, namespace=ns) for _ in range(2))
    who = _principal()
    # Burst of 4 across both "replicas"; a sustained rate of 0.5/s adds nothing within the test's second.
    assert await _allowed(one, who, 3) + await _allowed(two, who, 3) == 4
    # Another key has its own bucket, and a key's own rate overrides the default: at 0.01/s the wait
    # after its burst is about 100 s instead of about 2.
    assert await _allowed(one, _principal(), 6) == 4
    slow = _principal(rate_per_s=0.01)
    assert await _allowed(one, slow, 4) == 4
    with pytest.raises(RateLimited) as waited:
        await one.check_rate(slow)
    assert 90 <= waited.value.retry_after_s <= 101


async def test_with_redis_down_each_process_limits_alone(db: Database, dead_redis: aioredis.Redis) -> None:
    one = Limits(redis=dead_redis, db=db, rate_per_s=0.5, burst=4, daily_jobs=10)
    two = Limits(redis=dead_redis, db=db, rate_per_s=0.5, burst=4, daily_jobs=10)
    who = _principal()
    assert await _allowed(one, who, 6) == 4  # refused beyond the burst, not waved through
    assert await _allowed(two, who, 6) == 4  # the documented cost: each replica allows a full burst


async def test_quota_counts_in_redis_seeded_from_postgres(db: Database, redis: aioredis.Redis) -> None:
    limits = Limits(redis=redis, db=db, rate_per_s=100, burst=10, daily_jobs=3, namespace=f"t{secrets.token_hex(3)}")
    who = _principal()
    await insert_pending(db, user_id=who.user_id, count=2)  # made before this counter existed (e.g. Redis restarted)
    await limits.check_quota(who)  # 2 of 3: seeded from PostgreSQL
    await limits.count_job(who)
    with pytest.raises(RateLimited) as over:
        await limits.check_quota(who)
    assert over.value.code == "quota_exceeded" and 1 <= over.value.retry_after_s <= 86400
    await limits.check_quota(_principal(daily_quota=100))  # a key's own quota
    with pytest.raises(RateLimited, match="may not submit jobs"):
        await limits.check_quota(_principal(daily_quota=0))  # 0 suspends the key, it is not "the default"


async def test_with_redis_down_the_quota_is_counted_in_postgres(db: Database, dead_redis: aioredis.Redis) -> None:
    limits = Limits(redis=dead_redis, db=db, rate_per_s=100, burst=10, daily_jobs=3)
    who = _principal()
    await insert_pending(db, user_id=who.user_id, count=2)
    await limits.check_quota(who)
    await limits.count_job(who)  # nowhere to count: PostgreSQL already holds the job
    await insert_pending(db, user_id=who.user_id, count=1)
    with pytest.raises(RateLimited):
        await limits.check_quota(who)


async def test_a_counter_lost_between_check_and_count_is_seeded_again(db: Database, redis: aioredis.Redis) -> None:
    ns = f"t{secrets.token_hex(3)}"
    limits = Limits(redis=redis, db=db, rate_per_s=100, burst=10, daily_jobs=3, namespace=ns)
    who = _principal()
    await insert_pending(db, user_id=who.user_id, count=2)
    await limits.check_quota(who)  # 2 of 3
    await insert_pending(db, user_id=who.user_id, count=1)  # the job that check let in
    for key in await redis.keys(f"{ns}:quota:*"):
        await redis.delete(key)  # Redis restarted while the job was being accepted
    await limits.count_job(who)  # must not start the day's counter at 1
    assert await redis.keys(f"{ns}:quota:*") == []
    with pytest.raises(RateLimited):
        await limits.check_quota(who)  # 3 of 3, from PostgreSQL


async def test_jobs_accepted_while_redis_was_down_still_count_once_it_is_back(
    db: Database, redis: aioredis.Redis, dead_redis: aioredis.Redis
) -> None:
    limits = Limits(redis=redis, db=db, rate_per_s=100, burst=10, daily_jobs=3, namespace=f"t{secrets.token_hex(3)}")
    who = _principal()
    await limits.check_quota(who)  # the counter exists: 0 of 3
    limits._redis = dead_redis  # Redis goes away (the same Limits, as in a running replica)
    for _ in range(3):
        await limits.check_quota(who)  # counted from PostgreSQL meanwhile
        await insert_pending(db, user_id=who.user_id, count=1)
        await limits.count_job(who)  # cannot reach Redis
    limits._redis = redis  # back, with its counter still at 0
    with pytest.raises(RateLimited):
        await limits.check_quota(who)
