"""Scratch databases on the local PostgreSQL: migrated, used by one test or module, dropped afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

from rmbg.stack.postgres import LOCAL_ADMIN_DSN, drop_database, ensure_database, with_database
from shared.db.migrate import upgrade


@contextlib.asynccontextmanager
async def migrated_database(prefix: str) -> AsyncIterator[str]:
    """The DSN of a fresh database named ``<prefix>_<random>`` at the migrations' head (sessions
    terminated and the database dropped on exit)."""
    name = f"{prefix}_{secrets.token_hex(5)}"
    await ensure_database(LOCAL_ADMIN_DSN, name)
    try:
        dsn = with_database(LOCAL_ADMIN_DSN, name)
        await asyncio.to_thread(upgrade, dsn)
        yield dsn
    finally:
        await drop_database(LOCAL_ADMIN_DSN, name)
