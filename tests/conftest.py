"""Session-wide fixtures: the embedded stack and an isolated PostgreSQL database and Redis db.

``stack`` starts SeaweedFS (S3) and Tansu (Kafka API) once per session in a temporary folder, unless
RMBG_TEST_S3 / RMBG_TEST_KAFKA name external servers (then RMBG_TEST_S3_ACCESS_KEY / _SECRET_KEY give
the S3 keys). PostgreSQL and Redis are the local servers at 127.0.0.1:5432 and :6379.
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from rmbg.stack import EmbeddedStack, StackEndpoints
from rmbg.stack.postgres import LOCAL_ADMIN_DSN, drop_database, ensure_database, with_database
from shared.config import DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY

LOCAL_REDIS = "redis://127.0.0.1:6379"


@pytest.fixture(scope="session")
async def pg_dsn() -> AsyncIterator[str]:
    """A fresh database on the local server, dropped (sessions terminated first) at the end."""
    database = f"rmbg_test_{secrets.token_hex(6)}"
    await ensure_database(LOCAL_ADMIN_DSN, database)
    try:
        yield with_database(LOCAL_ADMIN_DSN, database)
    finally:
        await drop_database(LOCAL_ADMIN_DSN, database)


@pytest.fixture(scope="session")
async def redis_url() -> str:
    """A random Redis db (1-15) on the local server, emptied at the start of the session."""
    url = f"{LOCAL_REDIS}/{random.randint(1, 15)}"
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    return url


@pytest.fixture(scope="session")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, pg_dsn: str, redis_url: str
) -> AsyncIterator[StackEndpoints]:
    async with EmbeddedStack(
        tmp_path_factory.mktemp("stack"),
        want_postgres=pg_dsn,
        want_redis=redis_url,
        want_kafka=os.environ.get("RMBG_TEST_KAFKA") or None,
        want_s3=os.environ.get("RMBG_TEST_S3") or None,
        s3_access_key=os.environ.get("RMBG_TEST_S3_ACCESS_KEY", DEV_S3_ACCESS_KEY),
        s3_secret_key=os.environ.get("RMBG_TEST_S3_SECRET_KEY", DEV_S3_SECRET_KEY),
    ) as endpoints:
        yield endpoints
