"""The parsed .sql statements: :class:`Queries`, the typed methods of shared/db/statements.py run by aiosql.

All SQL lives in ``shared/db/queries/*.sql`` as aiosql named statements. shared/db/statements.py (generated
from those files by ``python -m shared.db.gen_statements``) gives each statement one typed async method;
this module runs them on asyncpg. Repositories hold one :class:`Queries` and call statements as methods
(``await self._q.get_job(conn, job_id=..., created_at=...)``), always on a connection the caller passes,
so the caller decides transactions.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path
from typing import Any

import aiosql
import asyncpg

from shared.db.statements import Statements

QUERIES_DIR = Path(str(files("shared.db") / "queries"))


class Queries(Statements):
    """The statements of one directory of .sql files, parsed once."""

    def __init__(self, path: Path = QUERIES_DIR) -> None:
        # aiosql's object is dynamic (mypy sees none of its attributes): only the primitives below touch it.
        self._aiosql: Any = aiosql.from_path(path, "asyncpg")
        self.names: frozenset[str] = frozenset(self._aiosql.available_queries)

    def sql(self, name: str) -> str:
        """The statement as sent to PostgreSQL (with $n placeholders), for EXPLAIN in tests."""
        return str(self._fn(name).sql)

    # The four ways aiosql runs a statement on asyncpg, one per operator (see shared.db.gen_statements).

    async def _rows(self, name: str, conn: asyncpg.Connection, /, **params: Any) -> list[asyncpg.Record]:
        return [row async for row in self._fn(name)(conn, **params)]

    async def _row(self, name: str, conn: asyncpg.Connection, /, **params: Any) -> asyncpg.Record | None:
        return await self._fn(name)(conn, **params)

    async def _value(self, name: str, conn: asyncpg.Connection, /, **params: Any) -> Any:
        return await self._fn(name)(conn, **params)

    async def _status(self, name: str, conn: asyncpg.Connection, /, **params: Any) -> str:
        return str(await self._fn(name)(conn, **params))

    def _fn(self, name: str) -> Any:
        if name not in self.names:
            # Queries parsed from another directory than the one statements.py was generated from.
            raise KeyError(f"no SQL statement named {name!r} in the .sql files these Queries were parsed from")
        return getattr(self._aiosql, name)


def load_queries(path: Path = QUERIES_DIR) -> Queries:
    """Parse the .sql files (a few ms). Each call makes a new object."""
    return Queries(path)


@functools.cache
def default_queries() -> Queries:
    """One shared, lazily parsed :class:`Queries` for repositories constructed without one.

    Lazy on purpose: importing shared.db reads no file; the first repository built does, once per
    process (shared.db.database builds them with no arguments).
    """
    return load_queries()
