"""python -m bench.storage: generate, load both schemas, time the design's queries, retention, report.

    .venv/bin/python -m bench.storage --jobs 10000000 --dsn postgresql://postgres@127.0.0.1:5432/postgres

The DSN names a database to connect to for CREATE/DROP DATABASE; the two bench databases
(rmbg_bench_ours, rmbg_bench_baseline) are created afresh and dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.storage import queries as qmod
from bench.storage.generate import Shape, generate
from bench.storage.load import DB_PREFIX, bench_databases, connect, drop_database, dsn_for, load
from bench.storage.log import log
from bench.storage.report import render
from bench.storage.retention import baseline_retention, cutoff_for, ours_retention
from bench.storage.sizes import describe, settings, sizes

DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=10_000_000, help="jobs to generate (default 10,000,000)")
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="an existing database to connect to for CREATE/DROP DATABASE")
    p.add_argument("--seed", type=int, default=Shape.seed)
    p.add_argument("--runs", type=int, default=200, help="timed runs per query and side (default 200)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--budget-s", type=float, default=60.0,
                   help="stop timing a query after this many seconds (at least 5 runs); default 60")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="where report.md, results.json, plans go")
    p.add_argument("--keep", action="store_true", help="keep the two bench databases at the end")
    p.add_argument("--reuse", action="store_true",
                   help="skip generate/load: use the bench databases a --keep run left (no retention run since)")
    p.add_argument("--skip-retention", action="store_true", help="do not run retention (keeps --reuse possible)")
    p.add_argument("--db-prefix", default=DB_PREFIX,
                   help="the bench databases are <prefix>_ours and <prefix>_baseline (default rmbg_bench)")
    return p.parse_args(argv)


def machine() -> str:
    model = "unknown CPU"
    mem = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024 // 1024
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), {mem} GiB RAM, {platform.system()} {platform.release()}"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results_dir: Path = args.results
    await asyncio.to_thread((results_dir / "plans").mkdir, parents=True, exist_ok=True)
    ours_db, base_db = bench_databases(args.db_prefix)
    ours_dsn, base_dsn = dsn_for(args.dsn, ours_db), dsn_for(args.dsn, base_db)
    meta: dict[str, Any] = {
        "command": "python -m bench.storage " + shlex.join(sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "runs": args.runs, "warmup": args.warmup, "budget_s": args.budget_s,
        "generate_s": 0.0, "load_s": 0.0,
    }
    load_timings: dict[str, dict[str, float]] = {}
    if not args.reuse:
        t0 = time.perf_counter()
        data = generate(Shape(jobs=args.jobs, seed=args.seed))
        meta["generate_s"] = time.perf_counter() - t0
        log(f"generated {data.n:,} jobs and {data.tag_job.shape[0]:,} tags in {meta['generate_s']:.1f} s")
        loaded = await load(args.dsn, data, ours_db=ours_db, base_db=base_db)
        meta["load_s"] = loaded.seconds
        load_timings = loaded.timings
        del data
    # Ours connects with jit=off, as the services' pools do; the baseline keeps the server's defaults.
    ours, base = await connect(ours_dsn, jit_off=True), await connect(base_dsn)
    generic = await connect(ours_dsn, jit_off=True)
    await generic.execute("SET plan_cache_mode = force_generic_plan")
    try:
        meta["settings"] = await settings(base)  # the server's defaults (ours' connections set jit=off)
        info = await describe(ours)
        widths = {"ours": info["avg_row_bytes"], "baseline": await base.fetchval(
            "SELECT avg(pg_column_size(j.*))::int FROM image_process_jobs j TABLESAMPLE SYSTEM (1)")}
        size = {"ours": await sizes(ours), "baseline": await sizes(base)}
        log("sizes: " + ", ".join(
            f"{k} {sum(t['heap_bytes'] + t['index_bytes'] for t in v['tables']) / 2**30:.2f} GiB"
            for k, v in size.items()))
        q = qmod.OurQueries()
        samples = await qmod.draw_samples(ours, args.seed)
        spec_list = qmod.specs(q, samples)
        t0 = time.perf_counter()
        await qmod.build_proposals(ours)
        timings, proposals = await qmod.run_all(
            {"ours": ours, "baseline": base, "generic": generic}, spec_list,
            runs=args.runs, warmup=args.warmup, budget_s=args.budget_s, plans_dir=results_dir / "plans")
        checks = await qmod.cross_check(q, ours, base, samples)
        meta["queries_s"] = time.perf_counter() - t0
        log(f"cross-checks: {checks}")
        retention: dict[str, Any] | None = None
        meta["retention_s"] = 0.0
        if not args.skip_retention:
            t0 = time.perf_counter()
            cutoff = cutoff_for(info["span"]["first"])
            retention = {"ours": await ours_retention(ours, ours_dsn, cutoff),
                         "baseline": await baseline_retention(base, cutoff)}
            meta["retention_s"] = time.perf_counter() - t0
    finally:
        await ours.close()
        await base.close()
        await generic.close()
    result: dict[str, Any] = {
        "meta": meta, "data": info, "row_width": widths, "sizes": size, "load_timings": load_timings,
        "specs": [{"key": s.key, "title": s.title, "goal_ms": s.goal_ms, "design_figure": s.design_figure,
                   "ours_source": s.ours.source if s.ours else "-", "baseline_source": s.base.source if s.base else "-"}
                  for s in spec_list],
        "queries": {k: {side: t.as_dict() for side, t in v.items()} for k, v in timings.items()},
        "checks": checks, "proposals": proposals, "retention": retention,
        "shape": asdict(Shape(jobs=args.jobs, seed=args.seed)),
    }
    report = render(result)
    await asyncio.to_thread((results_dir / "report.md").write_text, report)
    await asyncio.to_thread((results_dir / "results.json").write_text, json.dumps(result, indent=1, default=str))
    print(report)
    if not args.keep:
        await drop_database(args.dsn, ours_db)
        await drop_database(args.dsn, base_db)
        log("dropped both bench databases")
    return result


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
