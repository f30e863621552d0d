"""python -m bench.params_plan: design query 4 per value, jobs.sql by_params vs JobsRepository.by_params.

    .venv/bin/python -m bench.storage --jobs 1000000 --keep ...   # leaves rmbg_bench_ours
    .venv/bin/python -m bench.params_plan --dsn postgresql://postgres@127.0.0.1:5432/rmbg_bench_ours

Runs on the database a `bench.storage --keep` run left (ours). If it is not at head, it is upgraded first
(migration 0012 builds ix_jobs_params_hash_created; the build time and index size are reported). Then for
each of the storage bench's 8 param values (10% to 0.02% of jobs), interleaved per round, times
client-side: ``plain``, the single statement jobs.sql by_params; ``two_trips``, the per-request choice as
the repository made it until 2026-12-03 (params_share, then by_params_hashes or by_params: two round
trips); ``chosen``, the repository's JobsRepository.by_params now (params.sql by_params_chosen: the
choice and the read in one statement), and checks all three return the same 20 jobs.
Connections use jit=off, as the services' pools do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.storage.queries import PARAMS_MIX
from shared.db.migrate import current, head_revision, upgrade
from shared.db.models import JobRecord
from shared.db.pool import create_pool
from shared.db.queryset import Queries, default_queries
from shared.db.repositories import Repositories, create_repositories
from shared.db.repositories.jobs import RARE_PARAMS_MAX_HASHES, RARE_PARAMS_SHARE, is_rare_share


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.params_plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/rmbg_bench_ours")
    p.add_argument("--runs", type=int, default=40)
    return p.parse_args(argv)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _rare(share: asyncpg.Record) -> bool:
    """params_share's answer judged by the repository's rule (the two-trip baseline's choice)."""
    return is_rare_share(hashes=len(share["hashes"]), jobs=int(share["jobs"]), all_jobs=int(share["all_jobs"]))


async def server_side(conn: asyncpg.Connection, q: Queries) -> dict[str, Any]:
    # Server-side planning + execution (EXPLAIN ANALYZE), less exposed to a busy client machine than
    # the client-side times: medians of 7 runs per value. two_trips = params_share + the statement it
    # chooses; chosen = the one statement, whose function's plans are cached after its first call on this
    # connection (the earlier client-side rounds made them), so its planning is not in these figures.
    async def server_ms(sql: str, *a: Any) -> float:
        raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *a)
        plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]  # the pool's json codec may decode it
        return float(plan["Planning Time"]) + float(plan["Execution Time"])

    server: dict[str, Any] = {}
    for p in PARAMS_MIX:
        s = await q.params_share(conn, contains=p)
        assert s is not None
        rare = _rare(s)
        pl, two, one = [], [], []
        for _ in range(7):
            pl.append(await server_ms(q.sql("by_params"), p, 20))
            share_ms = await server_ms(q.sql("params_share"), p)
            if rare:
                two.append(share_ms + await server_ms(q.sql("by_params_hashes"), list(s["hashes"]), 20))
            else:
                two.append(share_ms + pl[-1])
            one.append(await server_ms(q.sql("by_params_chosen"), p, 20, RARE_PARAMS_SHARE, RARE_PARAMS_MAX_HASHES))
        server[json.dumps(p)] = {"path": "hashes" if rare else "created_at/GIN",
                                 "plain_ms": round(statistics.median(pl), 2),
                                 "two_trips_ms": round(statistics.median(two), 2),
                                 "chosen_ms": round(statistics.median(one), 2)}
    return server


Variant = tuple[str, Callable[[dict[str, Any]], Awaitable[list[JobRecord]]]]


def _variants(conn: asyncpg.Connection, q: Queries, repos: Repositories) -> tuple[Variant, ...]:
    """The three ways to answer one value, by name, in the order they are timed."""

    async def plain(contains: dict[str, Any]) -> list[JobRecord]:
        rows = await q.by_params(conn, contains=contains, limit=20)
        return [JobRecord.from_row(r) for r in rows]

    async def two_trips(contains: dict[str, Any]) -> list[JobRecord]:
        share = await q.params_share(conn, contains=contains)
        assert share is not None
        hashes = list(share["hashes"])
        if _rare(share):
            rows = await q.by_params_hashes(conn, hashes=hashes, limit=20) if hashes else []
        else:
            rows = await q.by_params(conn, contains=contains, limit=20)
        return [JobRecord.from_row(r) for r in rows]

    async def chosen(contains: dict[str, Any]) -> list[JobRecord]:
        return await repos.jobs.by_params(conn, contains=contains, limit=20)

    return (("plain", plain), ("two_trips", two_trips), ("chosen", chosen))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    before = await asyncio.to_thread(current, args.dsn)
    if before != head_revision():
        t0 = time.perf_counter()
        await asyncio.to_thread(upgrade, args.dsn)
        out["upgrade"] = {"from": before, "to": head_revision(), "s": round(time.perf_counter() - t0, 1)}
    pool = await create_pool(args.dsn, min_size=1, max_size=1, command_timeout=600)
    repos = create_repositories()
    q = default_queries()
    try:
        async with pool.acquire() as conn:
            await conn.execute("ANALYZE image_process_jobs")
            out["index_bytes"] = int(await conn.fetchval(
                "SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('ix_jobs_params_hash_created')") or 0)
            out["jobs"] = int(await conn.fetchval("SELECT count(*) FROM image_process_jobs"))

            variants = _variants(conn, q, repos)
            times: dict[str, dict[str, list[float]]] = {json.dumps(p): {n: [] for n, _ in variants} for p in PARAMS_MIX}
            shares: dict[str, Any] = {}
            for p in PARAMS_MIX:
                answers = {name: [r.job_id for r in await fn(p)] for name, fn in variants}
                assert answers["two_trips"] == answers["chosen"] == answers["plain"], p
                s = await q.params_share(conn, contains=p)
                assert s is not None
                shares[json.dumps(p)] = {"hashes": len(s["hashes"]),
                                         "share": round(int(s["jobs"]) / max(1, int(s["all_jobs"])), 5)}
                for _ in range(3):
                    for _, fn in variants:
                        await fn(p)
            for _ in range(args.runs):
                for p in PARAMS_MIX:
                    for name, fn in variants:
                        t = time.perf_counter()
                        await fn(p)
                        times[json.dumps(p)][name].append((time.perf_counter() - t) * 1000)
            out["per_value"] = {
                k: {**shares[k], **{n: f"{statistics.median(v):.2f} / {pct(v, 0.95):.2f} ms" for n, v in d.items()}}
                for k, d in times.items()
            }
            for name, _ in variants:
                every = [x for d in times.values() for x in d[name]]
                out[f"all_values_{name}"] = f"{statistics.median(every):.2f} / {pct(every, 0.95):.2f} ms"
            out["server_side_median"] = await server_side(conn, q)
    finally:
        await pool.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse_args())), indent=2))
