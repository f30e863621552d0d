"""bench/storage, tiny: 20,000 jobs through the same generate, load, queries and retention as the 10M run
(`python -m bench.storage`), in databases of its own. The figures are not checked, only that the run
completes, its cross-checks agree and retention keeps the counts right; the row width is checked only for
being measured (at 1M and 10M it is 295 B against the design's 301-302 B, BENCHMARKS.md)."""

from __future__ import annotations

import secrets
from pathlib import Path

import asyncpg

from bench.storage.__main__ import main, parse_args
from tests.support.databases import LOCAL_ADMIN_DSN


async def test_a_small_storage_run_completes_and_cross_checks(tmp_path: Path) -> None:
    prefix = f"rmbg_smoke_{secrets.token_hex(4)}"
    args = parse_args([
        "--jobs", "20000", "--runs", "3", "--warmup", "1", "--budget-s", "0.2",
        "--dsn", LOCAL_ADMIN_DSN, "--db-prefix", prefix, "--results", str(tmp_path),
    ])
    result = await main(args)
    assert result["checks"] and all(result["checks"].values()), result["checks"]
    ours = result["retention"]["ours"]
    assert ours["jobs_removed"] > 0 and ours["objects_deleted"] > 0
    assert all(ours["checks"].values()), ours["checks"]
    assert result["row_width"]["ours"] is not None
    assert (tmp_path / "report.md").read_text().startswith("# Storage benchmark")
    conn = await asyncpg.connect(LOCAL_ADMIN_DSN)
    try:
        left = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", prefix + "%")
    finally:
        await conn.close()
    assert not left  # dropped at the end without --keep
