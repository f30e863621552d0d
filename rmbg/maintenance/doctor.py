"""`rmbg doctor`: the design's database health checks, each with a verdict (ok, warn, fail) and a hint.

The checks are the design's monitoring list (docs/storage.md, "Operations": active connections, cache
hit ratio, the longest running query, table bloat) and what this project's own operations depend on:
monthly partitions created ahead of time, WAL archiving (point-in-time recovery, docs/backups.md),
standbys and replication slots, and the durability settings an acknowledged job relies on. The figures
come from shared/db/repositories/health.py (statistics views only: cheap on a loaded primary); the
thresholds are :class:`DoctorSettings` (``RMBG_DOCTOR__*``), each with its reason.

Exit status: 1 when any check fails, else 0 (warnings do not fail the run, so a cron job or a
Kubernetes probe built on it alerts only on what needs action now).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import asyncpg
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.db.partitions import PARTITIONED_TABLES, list_partitions, month_start
from shared.db.pool import init_connection
from shared.db.repositories.health import HealthRepository

_PARTITION_MONTH = re.compile(r"_y(?P<year>\d{4})m(?P<month>\d{2})$")
_GIB = 1024**3


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


_RANK = {Verdict.OK: 0, Verdict.WARN: 1, Verdict.FAIL: 2}


class DoctorSettings(BaseSettings):
    """Thresholds of the checks (``RMBG_DOCTOR__<FIELD>``), each with the reason for its default."""

    model_config = SettingsConfigDict(env_prefix="RMBG_DOCTOR__", frozen=True, extra="ignore")

    # Four services hold at most 10 connections each per replica (RMBG_POSTGRES__MAX_POOL): at 70% of the
    # usable slots one more rollout (old and new pods both connected) can exhaust them; at 90% it will.
    connections_warn: float = Field(default=0.70, gt=0, le=1)
    connections_fail: float = Field(default=0.90, gt=0, le=1)
    # Our reads are primary-key and index probes over a hot working set: below 99% of blocks from
    # shared_buffers the working set no longer fits (raise shared_buffers); below 95% most reads hit disk.
    cache_hit_warn: float = Field(default=0.99, gt=0, le=1)
    cache_hit_fail: float = Field(default=0.95, gt=0, le=1)
    # A ratio over fewer block reads than this (800 MiB of 8 KiB pages) says nothing: a fresh server or
    # one whose statistics were just reset starts cold.
    cache_min_blocks: int = Field(default=100_000, ge=0)
    # Services give up on a statement after 30 s (RMBG_POSTGRES__COMMAND_TIMEOUT_S): a longer one is an
    # operator's query or a stuck report; at 5 minutes it is holding locks and a snapshot long enough to hurt.
    query_warn_s: float = Field(default=30.0, gt=0)
    query_fail_s: float = Field(default=300.0, gt=0)
    # An open transaction holds the xmin horizon: VACUUM keeps every row version deleted since it began,
    # in every table. Our transactions last milliseconds; a minute means a client forgot to commit, 15 a
    # bloat incident in progress (the profile's idle_in_transaction_session_timeout is 60 s).
    transaction_warn_s: float = Field(default=60.0, gt=0)
    transaction_fail_s: float = Field(default=900.0, gt=0)
    # Dead tuples: autovacuum starts at 20% dead (autovacuum_vacuum_scale_factor) plus 50 rows; a table
    # past that has not been vacuumed when it should have been; past half dead it is twice its size.
    # Tables with fewer dead rows than dead_min_rows are not judged (a small table's ratio swings).
    dead_min_rows: int = Field(default=10_000, ge=1)
    dead_warn_ratio: float = Field(default=0.20, gt=0, le=1)
    dead_fail_ratio: float = Field(default=0.50, gt=0, le=1)
    # B-tree leaf density (pgstattuple, --deep): a fresh index is ~90% full, one that split under random
    # keys settles near 70%; under 50% REINDEX CONCURRENTLY would halve it.
    index_density_warn: float = Field(default=50.0, gt=0, le=100)
    deep_max_indexes: int = Field(default=10, ge=1)
    # The persister's sweeper keeps 3 months ahead (services/persister/sweeper.py). Under 2 it has not
    # run for a month; under 1 next month's first insert must create its partition on the write path
    # (repositories/jobs.py does, under a lock every concurrent insert then waits on).
    partitions_ahead_warn: int = Field(default=2, ge=0)
    partitions_ahead_fail: int = Field(default=1, ge=0)
    # WAL archiving. Off: no point-in-time recovery, a restore loses everything after the last backup.
    # Dev and test servers run without it (warn); production sets RMBG_DOCTOR__REQUIRE_ARCHIVING=true.
    require_archiving: bool = False
    # Segments waiting for archive_command: 16 MiB each, kept in pg_wal until archived. 10 is a burst
    # archive-push should clear in seconds; 100 (1.6 GiB) is a stuck archive filling the disk.
    archive_ready_warn: int = Field(default=10, ge=1)
    archive_ready_fail: int = Field(default=100, ge=1)
    # Standbys: a replay lag of 30 s is what a failover would lose or wait for; 5 minutes is broken.
    replay_lag_warn_s: float = Field(default=30.0, gt=0)
    replay_lag_fail_s: float = Field(default=300.0, gt=0)
    # An inactive replication slot keeps WAL forever: warn at 1 GiB retained, fail at 10 GiB.
    slot_retained_warn_bytes: int = Field(default=1 * _GIB, ge=1)
    slot_retained_fail_bytes: int = Field(default=10 * _GIB, ge=1)
    # doctor's own statements read statistics views only; a hung catalog lock must not hang the doctor.
    statement_timeout_s: float = Field(default=10.0, gt=0)


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    summary: str  # what was measured, in words
    hint: str  # what to do about it (for ok: what the check watches)
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict.value, "summary": self.summary, "hint": self.hint,
                "data": self.data}


@dataclass(frozen=True)
class DoctorReport:
    checks: list[Check]

    @property
    def verdict(self) -> Verdict:
        return max((c.verdict for c in self.checks), key=_RANK.__getitem__, default=Verdict.OK)

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict is Verdict.FAIL else 0

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def as_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "checks": [c.as_json() for c in self.checks]}


def _grade(value: float, warn: float, fail: float, *, higher_is_worse: bool = True) -> Verdict:
    if higher_is_worse:
        return Verdict.FAIL if value >= fail else Verdict.WARN if value >= warn else Verdict.OK
    return Verdict.FAIL if value < fail else Verdict.WARN if value < warn else Verdict.OK


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _size(n: int) -> str:
    for unit, size in (("GiB", _GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class Doctor:
    def __init__(self, settings: DoctorSettings, repo: HealthRepository | None = None, *, deep: bool = False) -> None:
        self._s = settings
        self._repo = repo or HealthRepository()
        self._deep = deep

    async def run(self, conn: asyncpg.Connection, *, now: datetime | None = None) -> DoctorReport:
        at = now or datetime.now(UTC)
        checks: list[tuple[str, Callable[[], Awaitable[Check]]]] = [
            ("connections", lambda: self.connections(conn)),
            ("cache_hit_ratio", lambda: self.cache_hit_ratio(conn)),
            ("longest_query", lambda: self.longest_query(conn)),
            ("oldest_transaction", lambda: self.oldest_transaction(conn)),
            ("table_bloat", lambda: self.table_bloat(conn)),
            ("index_bloat", lambda: self.index_bloat(conn)),
            ("partitions_ahead", lambda: self.partitions_ahead(conn, today=at.date())),
            ("wal_archiving", lambda: self.wal_archiving(conn, now=at)),
            ("replication", lambda: self.replication(conn)),
            ("durability", lambda: self.durability(conn)),
        ]
        out = []
        for name, run in checks:  # one connection: the checks run one after another
            out.append(await _guarded(name, run))
        return DoctorReport(out)

    async def connections(self, conn: asyncpg.Connection) -> Check:
        c = await self._repo.connections(conn)
        used = c.total / c.usable
        verdict = _grade(used, self._s.connections_warn, self._s.connections_fail)
        summary = (f"{c.total} of {c.usable} usable connections ({used:.0%}; max_connections {c.max_connections}, "
                   f"{c.reserved} reserved), {c.active} active, {c.idle_in_transaction} idle in transaction")
        hint = {
            Verdict.OK: "client sessions against max_connections less superuser_reserved_connections",
            Verdict.WARN: "lower RMBG_POSTGRES__MAX_POOL or the replica counts, or put PgBouncer in front",
            Verdict.FAIL: "new connections are about to be refused: lower pool sizes or raise max_connections",
        }[verdict]
        return Check("connections", verdict, summary, hint, c.model_dump() | {"used_ratio": round(used, 4)})

    async def cache_hit_ratio(self, conn: asyncpg.Connection) -> Check:
        c = await self._repo.cache_hits(conn)
        ratio = c.ratio
        data = c.model_dump(mode="json") | {"ratio": ratio}
        blocks = c.hit + c.read
        if ratio is None or blocks < self._s.cache_min_blocks:
            return Check("cache_hit_ratio", Verdict.OK, f"too few block reads to judge ({blocks})",
                         f"judged from {self._s.cache_min_blocks} block reads on", data)
        verdict = _grade(ratio, self._s.cache_hit_warn, self._s.cache_hit_fail, higher_is_worse=False)
        hint = {
            Verdict.OK: "blocks found in shared_buffers over all block reads of this database",
            Verdict.WARN: "the working set outgrows shared_buffers: raise it (25% of RAM) or find the scans "
            "(pg_stat_statements by shared_blks_read)",
            Verdict.FAIL: "most reads miss the cache: look for sequential scans of large tables "
            "(pg_stat_user_tables.seq_tup_read) and raise shared_buffers",
        }[verdict]
        return Check("cache_hit_ratio", verdict, f"{ratio:.2%} of {blocks} block reads from shared_buffers", hint, data)

    async def longest_query(self, conn: asyncpg.Connection) -> Check:
        s = await self._repo.longest_query(conn)
        if s is None:
            return Check("longest_query", Verdict.OK, "no other statement running", "running statements by age")
        verdict = _grade(s.seconds, self._s.query_warn_s, self._s.query_fail_s)
        hint = {
            Verdict.OK: "running statements by age",
            Verdict.WARN: f"pid {s.pid} runs longer than the services' 30 s timeout: EXPLAIN it",
            Verdict.FAIL: f"cancel it if it is not expected: SELECT pg_cancel_backend({s.pid})",
        }[verdict]
        summary = f"{_duration(s.seconds)}, pid {s.pid} ({s.username}): {(s.query or '').strip()[:80]}"
        return Check("longest_query", verdict, summary, hint, s.model_dump())

    async def oldest_transaction(self, conn: asyncpg.Connection) -> Check:
        s = await self._repo.oldest_transaction(conn)
        if s is None:
            return Check("oldest_transaction", Verdict.OK, "no other transaction open",
                         "open transactions hold back VACUUM in every table")
        verdict = _grade(s.seconds, self._s.transaction_warn_s, self._s.transaction_fail_s)
        hint = {
            Verdict.OK: "open transactions hold back VACUUM in every table",
            Verdict.WARN: f"pid {s.pid} holds a snapshot: VACUUM keeps every row deleted since it began",
            Verdict.FAIL: f"end it: SELECT pg_terminate_backend({s.pid}); set idle_in_transaction_session_timeout",
        }[verdict]
        summary = f"{_duration(s.seconds)}, pid {s.pid} ({s.username}, {s.state})"
        return Check("oldest_transaction", verdict, summary, hint, s.model_dump())

    async def table_bloat(self, conn: asyncpg.Connection) -> Check:
        rows = await self._repo.dead_tuples(conn, min_dead=self._s.dead_min_rows)
        data: dict[str, Any] = {"tables": [r.model_dump(mode="json") | {"dead_ratio": round(r.dead_ratio, 4)}
                                           for r in rows]}
        if self._deep and rows and await self._repo.has_pgstattuple(conn):
            data["measured"] = {r.relation: (await self._repo.table_bloat(conn, relation=r.relation)).model_dump()
                                for r in rows[:3]}
        if not rows:
            return Check("table_bloat", Verdict.OK, f"no table has {self._s.dead_min_rows} dead rows",
                         "dead row versions (pg_stat_user_tables) per table")
        worst = rows[0]
        verdict = _grade(worst.dead_ratio, self._s.dead_warn_ratio, self._s.dead_fail_ratio)
        hint = {
            Verdict.OK: "dead row versions (pg_stat_user_tables) per table",
            Verdict.WARN: f"VACUUM (VERBOSE) {worst.relation}; if autovacuum keeps falling behind, lower its "
            "autovacuum_vacuum_scale_factor for that table; check oldest_transaction",
            Verdict.FAIL: f"VACUUM {worst.relation} now and find what held the xmin horizon "
            "(oldest_transaction, replication slots); pg_repack or VACUUM FULL gives the space back",
        }[verdict]
        summary = (f"{worst.relation}: {worst.dead} dead of {worst.live + worst.dead} rows ({worst.dead_ratio:.0%}); "
                   f"{len(rows)} tables over {self._s.dead_min_rows} dead rows")
        return Check("table_bloat", verdict, summary, hint, data)

    async def index_bloat(self, conn: asyncpg.Connection) -> Check:
        if not self._deep:
            return Check("index_bloat", Verdict.OK, "not measured (reads whole indexes: rmbg doctor --deep)",
                         "B-tree leaf density with pgstattuple's pgstatindex")
        if not await self._repo.has_pgstattuple(conn):
            return Check("index_bloat", Verdict.WARN, "pgstattuple is not installed",
                         "CREATE EXTENSION pgstattuple (PostgreSQL contrib) to measure index bloat")
        measured: dict[str, Any] = {}
        worst: tuple[str, float] | None = None
        for index in await self._repo.largest_btree_indexes(conn, limit=self._s.deep_max_indexes):
            density = await self._repo.index_density(conn, index_name=index.index_name)
            measured[index.index_name] = density.model_dump()
            if density.leaf_pages >= 10 and (worst is None or density.leaf_density < worst[1]):
                worst = (index.index_name, density.leaf_density)
        if worst is None:
            return Check("index_bloat", Verdict.OK, "no B-tree large enough to judge", "leaf density", measured)
        verdict = Verdict.WARN if worst[1] < self._s.index_density_warn else Verdict.OK
        hint = (f"REINDEX INDEX CONCURRENTLY {worst[0]}" if verdict is Verdict.WARN
                else "B-tree leaf density of the largest indexes (fresh: ~90%)")
        return Check("index_bloat", verdict, f"least dense: {worst[0]} at {worst[1]:.0f}% leaf density of "
                     f"{len(measured)} largest B-trees", hint, {"indexes": measured})

    async def partitions_ahead(self, conn: asyncpg.Connection, *, today: date) -> Check:
        current = month_start(today)
        ahead: dict[str, int] = {}
        missing_current: list[str] = []
        for table in PARTITIONED_TABLES:
            months = set()
            for name in await list_partitions(conn, table=table):
                m = _PARTITION_MONTH.search(name)
                if m:
                    months.add(date(int(m["year"]), int(m["month"]), 1))
            if not months and not await self._repo.relation_exists(conn, relation=table):
                return Check("partitions_ahead", Verdict.FAIL, f"{table} does not exist",
                             "the schema is not migrated: rmbg migrate")
            if current not in months:
                missing_current.append(table)
            n, month = 0, _next_month(current)
            while month in months:
                n, month = n + 1, _next_month(month)
            ahead[table] = n
        fewest = min(ahead.values())
        data = {"current_month": current.isoformat(), "months_ahead": ahead, "missing_current": missing_current}
        if missing_current:
            return Check("partitions_ahead", Verdict.FAIL, f"no partition for this month ({current:%Y-%m}) of "
                         f"{', '.join(missing_current)}",
                         "create them now: the persister's sweeper does (or SELECT rmbg_ensure_partitions"
                         "(date_trunc('month', now())::date, 4))", data)
        verdict = _grade(fewest, self._s.partitions_ahead_warn, self._s.partitions_ahead_fail, higher_is_worse=False)
        hint = {
            Verdict.OK: "months of image_process_jobs / image_tags partitions after this one",
            Verdict.WARN: "the persister's sweeper keeps 3 months ahead: is it running?",
            Verdict.FAIL: "next month has no partition: run the persister (its sweeper creates them) or "
            "SELECT rmbg_ensure_partitions(date_trunc('month', now())::date, 4)",
        }[verdict]
        summary = ", ".join(f"{t}: {n} months ahead" for t, n in ahead.items())
        return Check("partitions_ahead", verdict, summary, hint, data)

    async def wal_archiving(self, conn: asyncpg.Connection, *, now: datetime) -> Check:
        a = await self._repo.archiver(conn)
        data: dict[str, Any] = a.model_dump(mode="json")
        if a.archive_mode == "off":
            verdict = Verdict.FAIL if self._s.require_archiving else Verdict.WARN
            return Check("wal_archiving", verdict, "archive_mode is off: no point-in-time recovery",
                         "set archive_mode = on and archive_command = 'pgbackrest --stanza=rmbg archive-push %p' "
                         "(deploy/postgres/postgresql.conf; a restart is needed)", data)
        try:
            ready: int | None = await self._repo.archive_ready(conn)
        except asyncpg.InsufficientPrivilegeError:
            ready = None
        data["ready_segments"] = ready
        failing = a.last_failed_time is not None and (
            a.last_archived_time is None or a.last_failed_time > a.last_archived_time
        )
        verdict = Verdict.FAIL if failing else Verdict.OK
        if ready is not None:
            verdict = max(verdict, _grade(ready, self._s.archive_ready_warn, self._s.archive_ready_fail),
                          key=_RANK.__getitem__)
        last = (f"last archived {a.last_archived_wal} {_duration((now - a.last_archived_time).total_seconds())} ago"
                if a.last_archived_time else "nothing archived yet")
        summary = f"{a.archived_count} archived, {a.failed_count} failed; {last}"
        if ready is not None:
            summary += f"; {ready} segments waiting"
        if failing:
            summary += f"; the last attempt failed ({a.last_failed_wal})"
        hint = {
            Verdict.OK: "pg_stat_archiver and the archive status directory",
            Verdict.WARN: "archive-push falls behind: check the repository's bandwidth, or archive-async=y",
            Verdict.FAIL: "archive_command fails: the server log and pgBackRest's log say why "
            "(pgbackrest --stanza=rmbg check); WAL piles up in pg_wal until it does",
        }[verdict]
        if ready is None:
            hint += " (grant pg_monitor to see the waiting segments)"
        return Check("wal_archiving", verdict, summary, hint, data)

    async def replication(self, conn: asyncpg.Connection) -> Check:
        standbys = await self._repo.standbys(conn)
        slots = await self._repo.slots(conn)
        data = {"in_recovery": await self._repo.in_recovery(conn),
                "standbys": [s.model_dump() for s in standbys], "slots": [s.model_dump() for s in slots]}
        verdict, notes = Verdict.OK, []
        for s in standbys:
            lag = s.replay_lag_s or 0.0
            v = _grade(lag, self._s.replay_lag_warn_s, self._s.replay_lag_fail_s)
            verdict = max(verdict, v, key=_RANK.__getitem__)
            notes.append(f"{s.name} {s.state} {s.sync_state} lag {_duration(lag)}")
        for slot in slots:
            if not slot.active and slot.retained_bytes:
                v = _grade(slot.retained_bytes, self._s.slot_retained_warn_bytes, self._s.slot_retained_fail_bytes)
                verdict = max(verdict, v, key=_RANK.__getitem__)
                notes.append(f"inactive slot {slot.name} retains {_size(slot.retained_bytes)}")
        role = "standby (in recovery)" if data["in_recovery"] else "primary"
        summary = f"{role}; {len(standbys)} standbys, {len(slots)} slots" + (f": {'; '.join(notes)}" if notes else "")
        hint = {
            Verdict.OK: "pg_stat_replication lag and the WAL replication slots retain",
            Verdict.WARN: "a standby lags or an unused slot keeps WAL: drop slots nobody uses "
            "(SELECT pg_drop_replication_slot(name))",
            Verdict.FAIL: "a standby is far behind or a slot is filling pg_wal: fix or drop it",
        }[verdict]
        return Check("replication", verdict, summary, hint, data)

    async def durability(self, conn: asyncpg.Connection) -> Check:
        s = await self._repo.durability(conn)
        data = {name: v.model_dump() for name, v in s.items()}
        unsafe = [f"{name} = off (from {v.source})" for name, v in s.items() if v.setting == "off"]
        if unsafe:
            return Check("durability", Verdict.FAIL, "; ".join(unsafe),
                         "a 202 tells the client its job exists: with synchronous_commit = off a crash loses the "
                         "last ~600 ms of acknowledged commits (3 x wal_writer_delay); set it back to on "
                         "(ALTER DATABASE / ROLE ... RESET synchronous_commit)", data)
        summary = ", ".join(f"{name} = {v.setting}" for name, v in s.items())
        return Check("durability", Verdict.OK, summary, "an acknowledged job must survive a crash", data)


async def _guarded(name: str, run: Callable[[], Awaitable[Check]]) -> Check:
    """One check, its errors turned into its verdict: a check that cannot read is not a passing one."""
    try:
        return await run()
    except asyncpg.InsufficientPrivilegeError as exc:
        return Check(name, Verdict.WARN, f"not permitted: {exc}", "run doctor as a role with pg_monitor")
    except (asyncpg.PostgresError, TimeoutError) as exc:
        return Check(name, Verdict.FAIL, f"the check failed: {type(exc).__name__}: {exc}",
                     "the server log says more", {"error": str(exc)})


def _next_month(d: date) -> date:
    return date(d.year + d.month // 12, d.month % 12 + 1, 1)


async def run_doctor(dsn: str, settings: DoctorSettings, *, deep: bool = False) -> DoctorReport:
    """Connect once (not a pool: doctor is one session), run every check, close."""
    try:
        conn = await asyncpg.connect(
            dsn, timeout=10, server_settings={"application_name": "rmbg-doctor", "jit": "off",
                                              "statement_timeout": str(int(settings.statement_timeout_s * 1000))},
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return DoctorReport([Check("connect", Verdict.FAIL, f"cannot connect: {type(exc).__name__}: {exc}",
                                   "is PostgreSQL up, and RMBG_POSTGRES__DSN right?")])
    try:
        await init_connection(conn)
        return await Doctor(settings, deep=deep).run(conn)
    finally:
        await asyncio.shield(conn.close())
