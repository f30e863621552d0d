"""Which object keys the jobs reference, for retention and fsck (SQL in shared/db/queries/retention.sql).

Object keys derive from content (shared/storage/keys.py), so the questions are asked by content hash;
every one is served by ix_jobs_content, one probe (or one range) per partition. The lock and the epoch
that guard deleting objects are JobsRepository's (intake and the persister take them there too).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from shared.db.models import JobStatus, ShardJob
from shared.db.queryset import Queries, default_queries

SHARDS = 256  # object keys fan out by the first byte of the content hash: <prefix>/<xx>/<sha>...


@dataclass(frozen=True)
class KeysInUse:
    """What the remaining jobs of some contents still need (:meth:`ObjectsRepository.keys_in_use`)."""

    paths: frozenset[str]  # every key those jobs derive
    unfinished: frozenset[bytes]  # contents with a pending or processing job: their keys are not known yet

    def keeps(self, content_sha256: bytes | None, key: str) -> bool:
        """Whether ``key`` (of that content) must stay: a remaining job derives it, or one of the content's
        jobs is unfinished and may be about to reuse it (a stored mask)."""
        return key in self.paths or (content_sha256 is not None and content_sha256 in self.unfinished)


class ObjectsRepository:
    def __init__(self, queries: Queries | None = None) -> None:
        self._q = queries or default_queries()

    async def referenced_contents(self, conn: asyncpg.Connection, *, shas: list[bytes]) -> set[bytes]:
        """Which of these contents a remaining job still uses: one probe per content and partition (an index
        range scan over the batch's slice of the hash space measured 3x slower at 10M jobs, BENCHMARKS.md)."""
        return {bytes(r["content_sha256"]) for r in await self._q.referenced_contents(conn, shas=shas)}

    async def paths_for_contents(self, conn: asyncpg.Connection, *, shas: list[bytes]) -> set[str]:
        """Every object key the remaining jobs of these contents name."""
        return {str(r["path"]) for r in await self._q.paths_for_contents(conn, shas=shas)}

    async def keys_in_use(self, conn: asyncpg.Connection, *, shas: list[bytes]) -> KeysInUse:
        """The rule retention and fsck delete by (retention.sql retired_unreferenced applies it in SQL)."""
        if not shas:
            return KeysInUse(frozenset(), frozenset())
        paths = await self.paths_for_contents(conn, shas=shas)
        unfinished = {bytes(r["content_sha256"]) for r in await self._q.unfinished_contents(conn, shas=shas)}
        return KeysInUse(frozenset(paths), frozenset(unfinished))

    async def jobs_in_shard(self, conn: asyncpg.Connection, *, shard: int) -> list[ShardJob]:
        """The jobs whose content hash starts with the byte ``shard`` (0..255)."""
        if not 0 <= shard < SHARDS:
            raise ValueError(f"shard must be 0..{SHARDS - 1}, got {shard}")
        low = bytes([shard])
        # A hash is 32 bytes, so 33 x ff is above every hash of the last shard.
        high = bytes([shard + 1]) if shard < SHARDS - 1 else b"\xff" * 33
        return [
            ShardJob(
                job_id=r["job_id"],
                created_at=r["created_at"],
                status=JobStatus(r["status"]),
                content_sha256=bytes(r["content_sha256"]),
                original_path=r["original_path"],
                mask_path=r["mask_path"],
                processed_path=r["processed_path"],
                params=r["params"],
                params_hash=r["params_hash"],
            )
            for r in await self._q.jobs_in_shard(conn, low=low, high=high)
        ]
