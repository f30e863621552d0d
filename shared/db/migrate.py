"""Apply the Alembic migrations in ``migrations/`` to a PostgreSQL database.

Alembic renders the SQL (offline mode, see migrations/env.py for why) from the revision the database
is at to the one asked for; asyncpg runs it. Both functions are synchronous: async callers run them
in a thread (``await asyncio.to_thread(upgrade, dsn)``); called from a thread with a running event
loop they move themselves to a worker thread rather than fail.

Concurrency: several services may start together and all call ``upgrade``. A session-level advisory
lock (7270, 0) is taken before the current revision is read, so the first applies the migrations and
the others wait, then find the database at head and do nothing. The rendered script is one
transaction (BEGIN ... COMMIT): a failure leaves schema and ``alembic_version`` as they were.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar, cast

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError

from shared.db.locks import LOCK_CLASS, AdvisoryLock
from shared.exceptions import RmbgError

_T = TypeVar("_T")

_VERSION_TABLE = "alembic_version"


class MigrationError(RmbgError):
    """The database cannot be brought to the requested revision (unknown revision, failed SQL)."""


def script_location() -> Path:
    """The ``migrations`` package directory, found through the import system, not the CWD."""
    return Path(str(files("migrations")))


def alembic_config() -> Config:
    """The Alembic configuration, built in code (no ini file needed)."""
    cfg = Config()
    # ConfigParser interpolation reads '%' specially; a path never should.
    cfg.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise MigrationError("no migrations found")
    return head


def upgrade(dsn: str, revision: str = "head") -> None:
    """Bring the database at ``dsn`` to ``revision`` (default: the newest). Idempotent."""
    _run_sync(lambda: _upgrade(dsn, revision))


def current(dsn: str) -> str | None:
    """The revision the database is at, or None for a database never migrated."""
    return _run_sync(lambda: _current(dsn))


def render_sql(start: str | None, target: str = "head") -> str:
    """The SQL that takes a database from ``start`` (None: empty) to ``target``."""
    buffer = io.StringIO()
    cfg = alembic_config()
    cfg.output_buffer = buffer
    try:
        command.upgrade(cfg, f"{start}:{target}" if start else target, sql=True)
    except CommandError as exc:
        raise MigrationError(f"cannot render migrations {start or 'base'} -> {target}: {exc}") from exc
    return buffer.getvalue()


def _resolve(target: str) -> str | None:
    script = ScriptDirectory.from_config(alembic_config())
    try:
        revisions = script.get_revisions(target)
    except (CommandError, RevisionError) as exc:
        raise MigrationError(f"unknown revision {target!r}: {exc}") from exc
    if len(revisions) > 1:
        raise MigrationError(f"revision {target!r} names {len(revisions)} heads; name one")
    rev = revisions[0] if revisions else None
    return rev.revision if rev is not None else None


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except (CommandError, RevisionError):
        return False


def _is_ancestor(script: ScriptDirectory, older: str, newer: str) -> bool:
    return any(rev.revision == older for rev in script.iterate_revisions(newer, "base"))


async def _upgrade(dsn: str, revision: str) -> None:
    target = _resolve(revision)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1, $2)", LOCK_CLASS, AdvisoryLock.MIGRATIONS)
        try:
            at = await _read_version(conn)
            if at == target:
                return
            script = ScriptDirectory.from_config(alembic_config())
            if at is not None and not _known(script, at):
                raise MigrationError(
                    f"database is at {at}, a revision this code does not know (deployed by newer code?)"
                )
            if target is None or (at is not None and _is_ancestor(script, target, at)):
                # Downgrades are deliberate operator work (alembic CLI, with --sql to review).
                raise MigrationError(f"database is at {at}; refusing to move back to {revision!r}")
            sql = render_sql(at, target)
            try:
                await conn.execute(sql)
            except asyncpg.PostgresError as exc:
                # The script's BEGIN left a failed transaction open: end it, or the unlock below fails.
                if conn.is_in_transaction():
                    await conn.execute("ROLLBACK")
                raise MigrationError(f"migration {at or 'base'} -> {target} failed: {exc}") from exc
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, AdvisoryLock.MIGRATIONS)
    finally:
        await conn.close()


async def _current(dsn: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await _read_version(conn)
    finally:
        await conn.close()


async def _read_version(conn: asyncpg.Connection) -> str | None:
    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _VERSION_TABLE) is not True:
        return None
    # Linear history: one row at most (alembic keeps one per head).
    value = await conn.fetchval(f"SELECT version_num FROM {_VERSION_TABLE} LIMIT 1")
    return cast("str | None", value)


def _run_sync(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    # Called from async code without to_thread: run on a private loop in a worker thread. This blocks
    # the caller's loop for the duration, as any synchronous call would.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmbg-migrate") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()
