"""Real PostgreSQL for the data-layer tests.

One fresh database per test session (``rmbg_dbtest_<random>``), migrated to head with
``shared.db.migrate.upgrade`` and dropped at the end. Tests isolate themselves by unique user ids and
dates; tests of global queries (pages over all jobs, quartiles) use ``clean_conn``: a connection in a
transaction that starts by emptying the job tables and is rolled back afterwards.

RMBG_TEST_PG_ADMIN_DSN names the server (default: the local one, trust auth).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg
import pytest

from shared.db.migrate import upgrade
from shared.db.partitions import ensure_partitions, month_start
from shared.db.pool import create_pool
from shared.db.repositories import Repositories, create_repositories
from shared.ids import uuid7, uuid7_time

ADMIN_DSN = os.environ.get("RMBG_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def dsn_for(database: str) -> str:
    return urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{database}"))


async def create_database(name: str) -> str:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn_for(name)


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def db_dsn() -> AsyncIterator[str]:
    name = f"rmbg_dbtest_{secrets.token_hex(5)}"
    dsn = await create_database(name)
    try:
        await asyncio.to_thread(upgrade, dsn)
        yield dsn
    finally:
        await drop_database(name)


@pytest.fixture
async def scratch_database() -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """A factory of extra empty databases (for migration tests), all dropped at the test's end."""
    made: list[str] = []

    async def make() -> str:
        name = f"rmbg_dbtest_{secrets.token_hex(5)}"
        made.append(name)
        return await create_database(name)

    try:
        yield make
    finally:
        for name in made:
            await drop_database(name)


@pytest.fixture(scope="session")
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_dsn, min_size=1, max_size=6, command_timeout=60)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture(scope="session")
def repos() -> Repositories:
    return create_repositories()


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as c:
        yield c


@pytest.fixture
async def clean_conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction that sees no jobs, tags or stats; everything is rolled back."""
    async with pool.acquire() as c:
        tx = c.transaction()
        await tx.start()
        try:
            await c.execute("TRUNCATE image_tags, user_tags, image_process_jobs, tags, processing_stats, stats_ledger")
            yield c
        finally:
            await tx.rollback()


def unique_user(prefix: str = "u") -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def sha_of(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


JobFactory = Callable[..., Awaitable[UUID]]


@pytest.fixture
def raw_job() -> JobFactory:
    """Insert one job row directly (any status, any created_at) and return its id.

    The id is a UUIDv7 of ``at`` with random bits, so many rows can share one millisecond, as the
    pagination property needs; created_at is always the id's own timestamp, as in production.
    The month's partitions are created first when missing.
    """

    async def insert(
        conn: asyncpg.Connection,
        *,
        at: datetime,
        user_id: str,
        status: str = "completed",
        params: dict[str, Any] | None = None,
        processing_time_ms: int = 100,
        content: str = "img",
        model_name: str = "briaai/RMBG-2.0",
        params_hash: str = "p0",
        file_size_kb: int = 10,
    ) -> UUID:
        job_id = uuid7(at)
        await ensure_partitions(conn, start=month_start(at), months=1)
        finished = status in ("completed", "failed")
        await conn.execute(
            """
            INSERT INTO image_process_jobs (
                job_id, created_at, user_id, original_ext, cutout_format, status,
                completed_at, processing_time_ms, params, params_hash, error_message, content_sha256,
                model_name, original_bytes, source, file_size_kb)
            VALUES ($1, $2, $3, 'png', $4, $5, $6, $7, $8, $9, $10, $11, $12, 1000, 'http', $13)
            """,
            job_id,
            uuid7_time(job_id),
            user_id,
            "webp" if status == "completed" else None,  # the keys derive from the row (migration 0014)
            status,
            datetime.now(UTC) if finished else None,
            processing_time_ms if status == "completed" else None,
            params or {},
            params_hash,
            "boom" if status == "failed" else None,
            bytes.fromhex(sha_of(content)),
            model_name,
            file_size_kb,
        )
        return job_id

    return insert


@contextlib.asynccontextmanager
async def rolled_back(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A (sub)transaction that is always rolled back: one hypothesis example's private world."""
    tx = conn.transaction()
    await tx.start()
    try:
        yield conn
    finally:
        await tx.rollback()


@pytest.fixture
def rollback() -> Callable[[asyncpg.Connection], contextlib.AbstractAsyncContextManager[asyncpg.Connection]]:
    return rolled_back
