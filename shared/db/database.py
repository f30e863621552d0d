"""The database handle a service holds: one pool and the repositories over it, opened and closed together."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from shared.config import PostgresSettings
from shared.db.pool import create_pool
from shared.db.queryset import Queries, default_queries
from shared.db.repositories import Repositories, create_repositories


@dataclass(frozen=True)
class Database(Repositories):
    """The repositories (``db.jobs``, ``db.stats``, ...: the fields of :class:`Repositories`) and the pool
    their callers take connections from."""

    pool: asyncpg.Pool

    @classmethod
    def over(cls, pool: asyncpg.Pool, queries: Queries | None = None) -> Database:
        """The repositories of ``queries`` (the shared default when None) beside ``pool``; the pool stays
        the caller's to close."""
        repos = create_repositories(queries)
        return cls(pool=pool, **{f.name: getattr(repos, f.name) for f in dataclasses.fields(Repositories)})

    async def ping(self) -> None:
        """One round trip on a pooled connection; raises when PostgreSQL is unreachable."""
        async with self.pool.acquire() as conn:
            await default_queries().ping(conn)


@contextlib.asynccontextmanager
async def open_database(settings: PostgresSettings) -> AsyncIterator[Database]:
    pool = await create_pool(
        settings.dsn.get_secret_value(),
        min_size=settings.min_pool,
        max_size=settings.max_pool,
        command_timeout=settings.command_timeout_s,
    )
    try:
        yield Database.over(pool)
    finally:
        await pool.close()
