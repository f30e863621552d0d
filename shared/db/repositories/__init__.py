"""Repositories: typed access to the tables, one class per area, all sharing one parsed query set.

Each repository takes the connection as the first argument of every method and keyword-only
arguments after it. Build them with no arguments (they share :func:`shared.db.default_queries`,
parsed on first use) or pass a :class:`shared.db.Queries` explicitly (tests, other query dirs).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.db.queryset import Queries, default_queries
from shared.db.repositories.jobs import InvalidCursor, JobsRepository, decode_cursor, encode_cursor
from shared.db.repositories.keys import KeysRepository
from shared.db.repositories.objects import ObjectsRepository
from shared.db.repositories.retention import RetentionRepository
from shared.db.repositories.stats import ReconcileRefused, StatsRepository
from shared.db.repositories.tags import TagsRepository
from shared.db.repositories.users import UsersRepository
from shared.db.repositories.webhooks import AttemptResult, WebhooksRepository


@dataclass(frozen=True)
class Repositories:
    jobs: JobsRepository
    keys: KeysRepository
    objects: ObjectsRepository
    retention: RetentionRepository
    stats: StatsRepository
    tags: TagsRepository
    users: UsersRepository
    webhooks: WebhooksRepository


def create_repositories(queries: Queries | None = None) -> Repositories:
    """All repositories over one query set (parsed once)."""
    q = queries or default_queries()
    return Repositories(
        jobs=JobsRepository(q),
        keys=KeysRepository(q),
        objects=ObjectsRepository(q),
        retention=RetentionRepository(q),
        stats=StatsRepository(q),
        tags=TagsRepository(q),
        users=UsersRepository(q),
        webhooks=WebhooksRepository(q),
    )


__all__ = [
    "AttemptResult",
    "InvalidCursor",
    "JobsRepository",
    "KeysRepository",
    "ObjectsRepository",
    "ReconcileRefused",
    "Repositories",
    "RetentionRepository",
    "StatsRepository",
    "TagsRepository",
    "UsersRepository",
    "WebhooksRepository",
    "create_repositories",
    "decode_cursor",
    "encode_cursor",
]
