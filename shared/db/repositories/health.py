"""Database health figures for `rmbg doctor`: typed rows over shared/db/queries/health.sql.

Only statistics views and catalogs are read (never a user table), so every method is cheap on a loaded
primary, except the two pgstattuple measures, which read what they measure and are called only on
request. Judging the figures is rmbg/maintenance/doctor.py's business, not this repository's.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
from pydantic import BaseModel, ConfigDict

from shared.db.queryset import Queries, default_queries


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Connections(_Row):
    total: int
    active: int
    idle_in_transaction: int
    max_connections: int
    reserved: int

    @property
    def usable(self) -> int:
        """Slots applications can take: superuser-reserved ones excluded."""
        return max(self.max_connections - self.reserved, 1)


class CacheHits(_Row):
    hit: int
    read: int
    stats_reset: datetime | None

    @property
    def ratio(self) -> float | None:
        total = self.hit + self.read
        return self.hit / total if total else None


class Session(_Row):
    """The session holding the longest query or the oldest transaction."""

    pid: int
    username: str | None
    state: str | None
    seconds: float
    query: str | None


class DeadTuples(_Row):
    relation: str
    live: int
    dead: int
    last_vacuum: datetime | None
    total_bytes: int

    @property
    def dead_ratio(self) -> float:
        return self.dead / max(self.live + self.dead, 1)


class IndexSize(_Row):
    index_name: str
    bytes: int


class IndexDensity(_Row):
    leaf_density: float  # percent, NaN for an empty index
    leaf_pages: int
    bytes: int


class TableBloat(_Row):
    free_percent: float
    dead_percent: float
    bytes: int


class Archiver(_Row):
    archive_mode: str
    archive_command: str
    archive_timeout: str
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    stats_reset: datetime | None


class Standby(_Row):
    name: str
    client_addr: str | None
    state: str | None
    sync_state: str | None
    replay_lag_s: float | None
    replay_lag_bytes: int | None


class Slot(_Row):
    name: str
    kind: str
    active: bool
    retained_bytes: int | None


class Setting(_Row):
    name: str
    setting: str
    source: str


class HealthRepository:
    """SQL in shared/db/queries/health.sql. Construct once and share; every method takes the connection."""

    def __init__(self, queries: Queries | None = None) -> None:
        self._q = queries or default_queries()

    async def connections(self, conn: asyncpg.Connection) -> Connections:
        return Connections.model_validate(dict(_one(await self._q.health_connections(conn), "health_connections")))

    async def cache_hits(self, conn: asyncpg.Connection) -> CacheHits:
        return CacheHits.model_validate(dict(_one(await self._q.health_cache(conn), "health_cache")))

    async def longest_query(self, conn: asyncpg.Connection) -> Session | None:
        row = await self._q.health_longest_query(conn)
        return None if row is None else Session.model_validate(dict(row))

    async def oldest_transaction(self, conn: asyncpg.Connection) -> Session | None:
        row = await self._q.health_oldest_transaction(conn)
        return None if row is None else Session.model_validate(dict(row))

    async def dead_tuples(self, conn: asyncpg.Connection, *, min_dead: int) -> list[DeadTuples]:
        return [DeadTuples.model_validate(dict(r)) for r in await self._q.health_dead_tuples(conn, min_dead=min_dead)]

    async def has_pgstattuple(self, conn: asyncpg.Connection) -> bool:
        return bool(await self._q.health_has_pgstattuple(conn))

    async def largest_btree_indexes(self, conn: asyncpg.Connection, *, limit: int) -> list[IndexSize]:
        rows = await self._q.health_largest_btree_indexes(conn, max_indexes=limit)
        return [IndexSize.model_validate(dict(r)) for r in rows]

    async def index_density(self, conn: asyncpg.Connection, *, index_name: str) -> IndexDensity:
        row = await self._q.health_index_density(conn, index_name=index_name)
        return IndexDensity.model_validate(dict(_one(row, "health_index_density")))

    async def table_bloat(self, conn: asyncpg.Connection, *, relation: str) -> TableBloat:
        row = await self._q.health_table_bloat(conn, relation=relation)
        return TableBloat.model_validate(dict(_one(row, "health_table_bloat")))

    async def archiver(self, conn: asyncpg.Connection) -> Archiver:
        return Archiver.model_validate(dict(_one(await self._q.health_archiver(conn), "health_archiver")))

    async def archive_ready(self, conn: asyncpg.Connection) -> int:
        """WAL segments waiting to be archived; raises InsufficientPrivilegeError without pg_monitor."""
        return int(await self._q.health_archive_ready(conn) or 0)

    async def standbys(self, conn: asyncpg.Connection) -> list[Standby]:
        return [Standby.model_validate(dict(r)) for r in await self._q.health_replication(conn)]

    async def slots(self, conn: asyncpg.Connection) -> list[Slot]:
        return [Slot.model_validate(dict(r)) for r in await self._q.health_slots(conn)]

    async def in_recovery(self, conn: asyncpg.Connection) -> bool:
        return bool(await self._q.health_in_recovery(conn))

    async def relation_exists(self, conn: asyncpg.Connection, *, relation: str) -> bool:
        return bool(await self._q.partition_exists(conn, relation=relation))

    async def durability(self, conn: asyncpg.Connection) -> dict[str, Setting]:
        return {s.name: s for s in (Setting.model_validate(dict(r)) for r in await self._q.health_durability(conn))}


def _one(row: asyncpg.Record | None, name: str) -> asyncpg.Record:
    if row is None:  # pragma: no cover - these statements always return one row
        raise RuntimeError(f"{name} returned no row")
    return row
