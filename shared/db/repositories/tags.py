"""Tags: fuzzy search (design query 5) and name-to-id lookups."""

from __future__ import annotations

import asyncpg

from shared.db.models import TagMatch
from shared.db.queryset import Queries, default_queries
from shared.db.repositories.jobs import normalise_tags

MAX_RESULTS = 100


class TagsRepository:
    """SQL in shared/db/queries/tags.sql. Construct once per process and share."""

    def __init__(self, queries: Queries | None = None) -> None:
        self._q = queries or default_queries()

    async def search(
        self, conn: asyncpg.Connection, *, query: str, limit: int = 10, user_id: str | None = None
    ) -> list[TagMatch]:
        """Tags similar to ``query`` (pg_trgm ``%``), most similar first.

        The order is by trigram distance through the GiST index of migration 0002, which stops after
        ``limit`` rows: the design's GIN index could only filter, and was skipped (a full scan and
        sort, 14 ms median over 5k tags) when the query matched most tags. With ``user_id``, only that
        user's own tags are ranked (user_tags, migration 0008): what the API serves to a user.
        """
        if not 1 <= limit <= MAX_RESULTS:
            raise ValueError(f"limit must be 1..{MAX_RESULTS}, got {limit}")
        needle = query.strip().lower()
        if not needle:
            return []
        if user_id is not None:
            rows = await self._q.search_user_tags(conn, user_id=user_id, query=needle, limit=limit)
        else:
            rows = await self._q.search_tags(conn, query=needle, limit=limit)
        return [TagMatch(tag_id=r["tag_id"], name=r["name"], similarity=r["similarity"]) for r in rows]

    async def ensure(self, conn: asyncpg.Connection, *, names: list[str]) -> dict[str, int]:
        """Create the tags that do not exist yet; returns name -> tag_id for all of ``names``."""
        wanted = normalise_tags(names)
        if not wanted:
            return {}
        await self._q.create_tags(conn, names=wanted)
        rows = await self._q.get_tag_names(conn, names=wanted)
        return {str(r["name"]): int(r["tag_id"]) for r in rows}
