"""`rmbg doctor` against the real local server: a migrated scratch database passes, then each check is
made to fail the way it fails in production (a dropped month, synchronous_commit off, dead rows, an open
transaction), and the command's exit status follows."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from rmbg.maintenance.doctor import Doctor, DoctorSettings, Verdict, run_doctor
from shared.db.partitions import month_start, partition_name
from tests.support.databases import migrated_database


@pytest.fixture
async def scratch_dsn() -> AsyncIterator[str]:
    async with migrated_database("rmbg_doctor") as dsn:
        yield dsn


async def _cli(dsn: str, *args: str, **env: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rmbg.cli", "doctor", *args,
        env={**os.environ, "RMBG_POSTGRES__DSN": dsn, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _next_month_partitions() -> list[str]:
    this = month_start(datetime.now(UTC))
    nxt = this.replace(year=this.year + this.month // 12, month=this.month % 12 + 1)
    # image_tags references the jobs: its partition goes first.
    return [partition_name("image_tags", nxt), partition_name("image_process_jobs", nxt)]


async def test_a_migrated_database_passes_then_a_missing_month_fails_the_command(scratch_dsn: str) -> None:
    code, out = await _cli(scratch_dsn, "--json")
    report = json.loads(out)
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    assert code == 0, out
    assert verdicts["partitions_ahead"] == "ok"
    assert verdicts["durability"] == "ok"
    assert verdicts["connections"] == "ok"
    # The machine's server runs without WAL archiving: a warning by default, a failure where required.
    assert verdicts["wal_archiving"] in ("ok", "warn")
    ahead = next(c for c in report["checks"] if c["name"] == "partitions_ahead")
    assert ahead["data"]["months_ahead"] == {"image_process_jobs": 3, "image_tags": 3}
    assert set(verdicts) == {
        "connections", "cache_hit_ratio", "longest_query", "oldest_transaction", "table_bloat", "index_bloat",
        "partitions_ahead", "wal_archiving", "replication", "durability",
    }
    assert all(c["hint"] for c in report["checks"])

    conn = await asyncpg.connect(scratch_dsn)
    try:
        tags, jobs = _next_month_partitions()
        # As retention removes a month (migration 0003): the tags partition, then the jobs one detached.
        await conn.execute(f"DROP TABLE {tags}")
        await conn.execute(f"ALTER TABLE image_process_jobs DETACH PARTITION {jobs}")
        await conn.execute(f"DROP TABLE {jobs}")
    finally:
        await conn.close()
    code, out = await _cli(scratch_dsn)
    assert code == 1, out
    line = next(x for x in out.splitlines() if "partitions_ahead" in x)
    assert line.startswith("fail"), out
    assert "0 months ahead" in line
    assert "doctor: fail" in out
    assert "hint: next month has no partition" in out


async def test_archiving_required_turns_the_warning_into_a_failure(scratch_dsn: str) -> None:
    conn = await asyncpg.connect(scratch_dsn)
    try:
        mode = await conn.fetchval("SHOW archive_mode")
    finally:
        await conn.close()
    if mode != "off":
        pytest.fail("this test expects the machine's server to run with archive_mode = off")
    code, out = await _cli(scratch_dsn, "--json", RMBG_DOCTOR__REQUIRE_ARCHIVING="true")
    check = next(c for c in json.loads(out)["checks"] if c["name"] == "wal_archiving")
    assert (code, check["verdict"]) == (1, "fail")
    assert "archive_mode" in check["hint"]


async def test_synchronous_commit_off_is_refused(scratch_dsn: str) -> None:
    """The seed design's synchronous_commit = off loses acknowledged jobs on a crash: doctor fails it."""
    database = scratch_dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await conn.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = off')
    finally:
        await conn.close()
    report = await run_doctor(scratch_dsn, DoctorSettings())
    check = report.check("durability")
    assert check.verdict is Verdict.FAIL
    assert "synchronous_commit = off (from database)" in check.summary
    assert "600 ms" in check.hint
    assert report.exit_code == 1


async def test_dead_rows_an_open_transaction_and_deep_measures(scratch_dsn: str) -> None:
    settings = DoctorSettings(dead_min_rows=1000, transaction_warn_s=0.5, transaction_fail_s=600)
    conn = await asyncpg.connect(scratch_dsn)
    holder = await asyncpg.connect(scratch_dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        await conn.execute("CREATE TABLE scratch (id int PRIMARY KEY, pad text) WITH (autovacuum_enabled = off)")
        await conn.execute("INSERT INTO scratch SELECT g, repeat('x', 50) FROM generate_series(1, 20000) g")
        await conn.execute("DELETE FROM scratch WHERE id > 5000")
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("ANALYZE scratch")  # sets n_live_tup; dead rows stay (no VACUUM)
        tx = holder.transaction()
        await tx.start()
        await holder.fetchval("SELECT txid_current()")
        await asyncio.sleep(1.0)

        report = await Doctor(settings, deep=True).run(conn)
        bloat = report.check("table_bloat")
        assert bloat.verdict is Verdict.FAIL, bloat
        assert bloat.summary.startswith("public.scratch: 15000 dead of 20000 rows (75%)")
        assert "public.scratch" in bloat.data["measured"]
        oldest = report.check("oldest_transaction")
        assert oldest.verdict is Verdict.WARN, oldest
        assert oldest.data["pid"] == holder.get_server_pid()
        index = report.check("index_bloat")
        assert index.verdict in (Verdict.OK, Verdict.WARN)
        assert "scratch_pkey" in index.data["indexes"]
        await tx.rollback()
    finally:
        await holder.close()
        await conn.close()


async def test_an_unreachable_server_is_one_failing_check() -> None:
    report = await run_doctor("postgresql://postgres@127.0.0.1:1/none", DoctorSettings())
    assert [c.name for c in report.checks] == ["connect"]
    assert report.exit_code == 1
