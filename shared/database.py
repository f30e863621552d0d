"""The database handle a service holds: one pool and the repositories, opened and closed together."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from shared.config import PostgresSettings
from shared.db.pool import create_pool
from shared.db.queryset import default_queries
from shared.db.repositories import (
    JobsRepository,
    KeysRepository,
    StatsRepository,
    TagsRepository,
    UsersRepository,
    WebhooksRepository,
    create_repositories,
)


@dataclass(frozen=True)
class Database:
    pool: asyncpg.Pool
    jobs: JobsRepository
    keys: KeysRepository
    stats: StatsRepository
    tags: TagsRepository
    users: UsersRepository
    webhooks: WebhooksRepository

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
    repos = create_repositories()
    try:
        yield Database(
            pool=pool,
            jobs=repos.jobs,
            keys=repos.keys,
            stats=repos.stats,
            tags=repos.tags,
            users=repos.users,
            webhooks=repos.webhooks,
        )
    finally:
        await pool.close()
