"""PostgreSQL access: the pool, the migrations, the partitions and the repositories.

All SQL lives in ``shared/db/queries/*.sql`` as aiosql named statements. They are parsed by
:func:`load_queries` into a :class:`Queries` object; repositories hold one and call statements by name,
always on a connection the caller passes (so the caller decides transactions).
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path
from typing import Any

import aiosql
import asyncpg

QUERIES_DIR = Path(str(files("shared.db") / "queries"))


class Queries:
    """The named statements of one directory of .sql files, parsed once, called by name.

    A thin typed face over aiosql's dynamic object (whose attributes mypy cannot see). The methods
    match the statement's aiosql operator: ``fetch`` for plain selects, ``fetchrow`` for ``^``,
    ``fetchval`` for ``$``, ``execute`` for ``!``.
    """

    def __init__(self, path: Path = QUERIES_DIR) -> None:
        self._aiosql: Any = aiosql.from_path(path, "asyncpg")
        self.names: frozenset[str] = frozenset(self._aiosql.available_queries)

    def sql(self, name: str) -> str:
        """The statement as sent to PostgreSQL (with $n placeholders), for EXPLAIN in tests."""
        return str(self._fn(name).sql)

    async def fetch(self, name: str, conn: asyncpg.Connection, /, **params: Any) -> list[asyncpg.Record]:
        return [row async for row in self._fn(name)(conn, **params)]

    async def fetchrow(self, name: str, conn: asyncpg.Connection, /, **params: Any) -> asyncpg.Record | None:
        return await self._fn(name)(conn, **params)

    async def fetchval(self, name: str, conn: asyncpg.Connection, /, **params: Any) -> Any:
        return await self._fn(name)(conn, **params)

    async def execute(self, name: str, conn: asyncpg.Connection, /, **params: Any) -> str:
        return str(await self._fn(name)(conn, **params))

    def _fn(self, name: str) -> Any:
        if name not in self.names:
            raise KeyError(f"no SQL statement named {name!r} in {QUERIES_DIR}")
        return getattr(self._aiosql, name)


def load_queries(path: Path = QUERIES_DIR) -> Queries:
    """Parse the .sql files (a few ms). Each call makes a new object."""
    return Queries(path)


@functools.cache
def default_queries() -> Queries:
    """One shared, lazily parsed :class:`Queries` for repositories constructed without one.

    Lazy on purpose: importing shared.db reads no file; the first repository built does, once per
    process (repositories are built with no arguments by shared.database).
    """
    return load_queries()
