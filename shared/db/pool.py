"""The asyncpg pool every service holds, with JSON codecs so jsonb columns read and write as Python."""

from __future__ import annotations

import json
from typing import cast

import asyncpg


async def init_connection(conn: asyncpg.Connection) -> None:
    """Register json/jsonb codecs (text format, json.dumps/loads) on one connection.

    Repositories pass and receive jsonb values as dicts, so every connection they get must have these:
    the pool applies them to each new connection; call this yourself on a bare ``asyncpg.connect``.
    """
    for typename in ("jsonb", "json"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text")


async def create_pool(dsn: str, *, min_size: int, max_size: int, command_timeout: float) -> asyncpg.Pool:
    """A pool of ``min_size``..``max_size`` connections; statements time out after ``command_timeout`` s."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        init=init_connection,
        # JIT compiles plans whose estimated cost crosses a threshold; on the partitioned jobs table a
        # generic plan of the keyset page crossed it and took 155 ms instead of 0.29 ms at 10M jobs
        # (BENCHMARKS.md). Our statements are short OLTP lookups: JIT never pays back here.
        server_settings={"jit": "off"},
    )
    return cast("asyncpg.Pool", pool)
