"""The design's six queries, ours and the baseline's, timed with many parameters, with their plans.

Ours are the project's own statements (shared/db/queries/*.sql, loaded with aiosql, parameters in the
order aiosql binds them); the baseline's are the design's (bench.storage.baseline). Both go through
asyncpg's prepared-statement cache exactly like the services' calls, so PostgreSQL's switch to a
generic plan after five executions is part of what is measured. Times are client-side (send, execute,
receive, decode) on one connection over the loopback.
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import aiosql
import asyncpg

from bench.storage import baseline
from bench.storage.log import log
from shared.db import QUERIES_DIR

Args = tuple[Any, ...]


class OurQueries:
    """Our .sql statements as text plus their parameter order (aiosql's own parse)."""

    def __init__(self, path: Path = QUERIES_DIR) -> None:
        self._q: Any = aiosql.from_path(path, "asyncpg")

    def sql(self, name: str) -> str:
        return str(getattr(self._q, name).sql)

    def args(self, name: str, **params: Any) -> Args:
        order: list[str] = list(self._q.driver_adapter.var_sorted[name])
        if set(order) != set(params):
            raise KeyError(f"{name} takes {order}, given {sorted(params)}")
        return tuple(params[p] for p in order)


@dataclass(frozen=True)
class Side:
    sql: str
    args: list[Args]
    source: str  # where the SQL comes from, for the report
    conn: str = ""  # "" (ours/baseline) or "generic": see run_all


@dataclass(frozen=True)
class Spec:
    key: str
    title: str
    ours: Side | None
    base: Side | None
    goal_ms: float | None = 5.0  # p95 goal (None: reported only)
    design_figure: str = ""  # what the design measured for it (docs/storage.md)
    ours_note: str = ""


@dataclass
class Timing:
    runs: int
    p50: float
    p95: float
    max: float
    rows: int
    plan: list[str] = field(default_factory=list)
    plan_file: str = ""
    by_arg: list[tuple[str, float, float]] = field(default_factory=list)  # (first argument, p50, max)

    def as_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "p50_ms": self.p50, "p95_ms": self.p95, "max_ms": self.max,
                "rows": self.rows, "plan": self.plan, "plan_file": self.plan_file, "by_arg": self.by_arg}


@dataclass(frozen=True)
class Samples:
    """Random parameters drawn from the loaded data (the same for both databases)."""

    end: datetime
    start: datetime
    users: list[str]
    cursors: list[tuple[datetime, Any]]  # (created_at, our job_id) of completed jobs
    days: list[date]
    params_mix: list[dict[str, Any]]
    tag_terms: list[str]


PARAMS_MIX: list[dict[str, Any]] = [
    {"threshold": 0.9},  # 10% of jobs
    {"threshold": 0.5},  # 18%
    {"cutout_format": "webp"},  # 10%
    {"threshold": 0.3},  # 1%
    {"threshold": 0.35},  # 0.2%
    {"threshold": 0.9, "cutout_format": "png"},  # 1.8%
    {"cutout_format": "webp", "webp_quality": 75},  # 1%
    {"threshold": 0.05, "cutout_format": "webp_lossless"},  # 0.02%
]
TAG_TERMS = ["product", "produkt", "shoes", "product-shoes", "portrait", "potrait", "food", "bag", "red",
             "summer", "wedding", "logo", "sneaker", "leather", "car", "kitchen"]


async def draw_samples(conn: asyncpg.Connection, seed: int, count: int = 400) -> Samples:
    """Parameters from our database: half the users by activity (a sample of jobs), half uniform."""
    rng = random.Random(seed)
    end = await conn.fetchval("SELECT max(created_at) FROM image_process_jobs")
    start = await conn.fetchval("SELECT min(created_at) FROM image_process_jobs")
    await conn.execute("SELECT setseed($1)", (seed % 1000) / 1000)
    by_activity = [r[0] for r in await conn.fetch(
        "SELECT user_id FROM image_process_jobs TABLESAMPLE BERNOULLI (1) REPEATABLE (7) ORDER BY random() LIMIT $1",
        count // 2)]
    uniform = [r[0] for r in await conn.fetch(
        "SELECT user_id FROM users ORDER BY random() LIMIT $1", count - len(by_activity))]
    users = by_activity + uniform
    rng.shuffle(users)
    cursors = [(r[0], r[1]) for r in await conn.fetch(
        "SELECT created_at, job_id FROM image_process_jobs TABLESAMPLE BERNOULLI (1) REPEATABLE (11) "
        "WHERE status = 'completed' ORDER BY random() LIMIT $1", count)]
    first_day = (start + timedelta(days=30)).date()
    span = (end.date() - first_day).days
    days = [first_day + timedelta(days=rng.randint(0, max(span, 0))) for _ in range(count)]
    days[0] = end.date()  # the representative run: the 30 days ending today
    return Samples(end=end, start=start, users=users, cursors=cursors, days=days,
                   params_mix=PARAMS_MIX, tag_terms=TAG_TERMS)


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(days=29)
    return lo, datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


def specs(q: OurQueries, s: Samples) -> list[Spec]:
    """The query list: the design's six (and its measured weak spots), variants, and proposals (ours only)."""
    t09 = {"threshold": 0.9}
    since30 = s.end - timedelta(days=30)
    all_days = {"date_from": s.start.date(), "date_to": s.end.date()}
    mix = s.params_mix
    recent = Side(q.sql("recent_completed"), [q.args("recent_completed", user_id=u, limit=10) for u in s.users],
                  "jobs.sql recent_completed (with tag names)")
    page = Side(q.sql("page_completed_after"),
                [q.args("page_completed_after", before_created_at=c, before_job_id=j, limit=20) for c, j in s.cursors],
                "jobs.sql page_completed_after (created_at, job_id)")
    by_params = Side(q.sql("by_params"), [q.args("by_params", contains=p, limit=20) for p in mix],
                     "jobs.sql by_params (newest first)")
    t09_side = Side(q.sql("by_params"), [q.args("by_params", contains=t09, limit=20)], "jobs.sql by_params")
    return [
        Spec("q1", "1. a user's 10 latest completed jobs", recent,
             Side(baseline.RECENT_COMPLETED, [(u,) for u in s.users], "design"),
             design_figure="p95 about 1 ms"),
        Spec("q1n", "1. same, ours with a generic plan (jit off)", _generic(recent), None, goal_ms=None),
        Spec("q2", "2. daily totals, 30 days",
             Side(q.sql("daily_totals"), [q.args("daily_totals", today=d, days=30) for d in s.days],
                  "stats.sql daily_totals (processing_stats)"),
             Side(baseline.DAILY_TOTALS, [_day_bounds(d) for d in s.days], "design: GROUP BY over the jobs"),
             goal_ms=2.0, design_figure="1.9 s median"),
        Spec("q3", "3. keyset page of completed jobs (20)", page,
             Side(baseline.KEYSET_PAGE, [(c,) for c, _ in s.cursors], "design: created_at < cursor"),
             design_figure="p95 about 1 ms"),
        Spec("q3n", "3. same, ours with a generic plan (jit off)", _generic(page), None, goal_ms=None),
        Spec("q4", "4. params @> {\"threshold\": 0.9}, 20 rows", t09_side,
             Side(baseline.PARAMS_CONTAINMENT, [(t09,)], "design: LIMIT 20, no order"),
             design_figure="p95 about 1 ms"),
        Spec("q4n", "4. same, ours with a generic plan (jit off)", _generic(t09_side), None, goal_ms=None),
        Spec("q4m", "4. params @>, 8 values from 10% to 0.02% of jobs, 20 rows", by_params,
             Side(baseline.PARAMS_CONTAINMENT, [(p,) for p in mix], "design: LIMIT 20, no order")),
        Spec("q4c", "4. COUNT of params @> {\"threshold\": 0.9} (10% of jobs)",
             Side(q.sql("params_job_count"), [q.args("params_job_count", contains=t09, **all_days)],
                  "stats.sql params_job_count (params_daily_counts, all days)"),
             Side(baseline.PARAMS_COUNT, [(t09,)], "design"),
             design_figure="2.9 s"),
        Spec("q4s", "4. the same COUNT scanning our jobs table (design SQL)",
             Side(baseline.PARAMS_COUNT, [(t09,)], "design SQL on our schema"), None, goal_ms=None),
        Spec("q5", "5. fuzzy tag search 'product' (10 best)",
             Side(q.sql("search_tags"), [q.args("search_tags", query="product", limit=10)],
                  "tags.sql search_tags (GiST, nearest first)"),
             Side(baseline.FUZZY_TAGS, [("product",)], "design: % with GIN, sorted by similarity"),
             design_figure="14 ms median, 24 ms p95"),
        Spec("q5m", "5. fuzzy tag search, 16 terms (10 best)",
             Side(q.sql("search_tags"), [q.args("search_tags", query=t, limit=10) for t in s.tag_terms],
                  "tags.sql search_tags"),
             Side(baseline.FUZZY_TAGS, [(t,) for t in s.tag_terms], "design")),
        Spec("q6", "6. per-user counts with NTILE(4), all time (50k rows returned)",
             Side(q.sql("user_job_quartiles_all"), [()], "jobs.sql user_job_quartiles_all (user_job_counts)"),
             Side(baseline.USER_QUARTILES, [()], "design"),
             design_figure="0.95 s"),
        Spec("q6m", "6. per-user counts with NTILE(4), last 30 days",
             Side(q.sql("user_job_quartiles"), [q.args("user_job_quartiles", since=since30)],
                  "jobs.sql user_job_quartiles(since => 30 days ago)"),
             Side(baseline.USER_QUARTILES_SINCE, [(since30,)], "design + WHERE created_at >= since")),
        Spec("p6u", "proposal: one user's quartile (counts table + index on (jobs, user_id))",
             Side(PROPOSAL_USER_QUARTILE, [(u,) for u in s.users], "prototype: temp copy of user_job_counts"),
             None),
        Spec("p6b", "proposal: the three quartile boundaries from user_job_counts",
             Side(PROPOSAL_BOUNDARIES, [()], "query on the project's user_job_counts"), None),
        Spec("p4h", "proposal: params @> via params_hash, 8 values, 20 rows newest first",
             Side(PROPOSAL_BY_PARAMS_HASH, [(p,) for p in mix],
                  "prototype: btree (params_hash, created_at DESC, job_id DESC), built for this step only"),
             None),
    ]


def _generic(side: Side) -> Side:
    return Side(side.sql, side.args, side.source + ", plan_cache_mode=force_generic_plan, jit=off", conn="generic")


# Prototypes of what the project does not have (temp tables, or an index built and dropped around the step).
PROPOSAL_USER_QUARTILE = """
SELECT c.user_id, c.jobs,
       1 + (4 * (SELECT count(*) FROM bench_user_job_counts b
                 WHERE (b.jobs, b.user_id) < (c.jobs, c.user_id)))
           / (SELECT count(*) FROM bench_user_job_counts) AS quartile
FROM bench_user_job_counts c WHERE c.user_id = $1
"""
PROPOSAL_BOUNDARIES = """
SELECT percentile_disc(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY jobs) FROM user_job_counts WHERE jobs > 0
"""
PROPOSAL_BY_PARAMS_HASH = """
SELECT j.*, (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM (SELECT DISTINCT params_hash FROM params_daily_counts WHERE params @> $1) h
CROSS JOIN LATERAL (
    SELECT * FROM image_process_jobs x WHERE x.params_hash = h.params_hash
    ORDER BY x.created_at DESC, x.job_id DESC LIMIT 20) j
ORDER BY j.created_at DESC, j.job_id DESC
LIMIT 20
"""
PROPOSAL_INDEX = (
    "CREATE INDEX bench_ix_jobs_params_hash ON image_process_jobs (params_hash, created_at DESC, job_id DESC)"
)


async def build_proposals(conn: asyncpg.Connection) -> dict[str, Any]:
    """Temp tables for the prototypes that need no change to the schema."""
    await conn.execute(
        """
        CREATE TEMP TABLE bench_user_job_counts AS SELECT user_id, jobs FROM user_job_counts WHERE jobs > 0;
        ALTER TABLE bench_user_job_counts ADD PRIMARY KEY (user_id);
        CREATE INDEX ON bench_user_job_counts (jobs, user_id);
        ANALYZE bench_user_job_counts;
        """
    )
    return {}


async def with_proposal_index(conn: asyncpg.Connection) -> dict[str, Any]:
    t0 = time.perf_counter()
    await conn.execute("SET maintenance_work_mem = '512MB'")
    await conn.execute(PROPOSAL_INDEX)
    took = time.perf_counter() - t0
    await conn.execute("ANALYZE image_process_jobs")
    size = await conn.fetchval(
        "SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('bench_ix_jobs_params_hash')")
    await conn.execute("RESET maintenance_work_mem")
    return {"params_hash_index_build_s": took, "params_hash_index_bytes": int(size or 0)}


async def run_side(conn: asyncpg.Connection, side: Side, *, runs: int, warmup: int, budget_s: float) -> Timing:
    """Warm up, then time up to ``runs`` executions (cycling the parameters) within ``budget_s``."""
    n_args = len(side.args)
    t_warm = time.perf_counter()
    for i in range(warmup):
        await conn.fetch(side.sql, *side.args[i % n_args])
        if time.perf_counter() - t_warm > budget_s / 4:
            break
    times: list[float] = []
    per_arg: dict[int, list[float]] = {}
    rows = 0
    t_start = time.perf_counter()
    for i in range(runs):
        args = side.args[i % n_args]
        t0 = time.perf_counter()
        result = await conn.fetch(side.sql, *args)
        times.append((time.perf_counter() - t0) * 1000)
        per_arg.setdefault(i % n_args, []).append(times[-1])
        if i == 0:
            rows = len(result)
        if time.perf_counter() - t_start > budget_s and len(times) >= 5:
            break
    by_arg = []
    if 1 < n_args <= 16:  # a small fixed set of values (params, tag terms): report each
        by_arg = [(repr(side.args[k][0]), statistics.median(v), max(v)) for k, v in sorted(per_arg.items())]
    return Timing(runs=len(times), p50=statistics.median(times), p95=_pct(times, 95), max=max(times), rows=rows,
                  by_arg=by_arg)


def _pct(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def explain(conn: asyncpg.Connection, side: Side, path: Path) -> list[str]:
    if side.conn.startswith("generic"):
        lines = await _explain_generic(conn, side)
    else:
        rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + side.sql, *side.args[0])
        lines = [str(r[0]) for r in rows]
    text = f"-- {side.source}\n-- args: {side.args[0]!r}\n{side.sql.strip()}\n\n" + "\n".join(lines) + "\n"
    await asyncio.to_thread(path.write_text, text)
    return lines


async def _explain_generic(conn: asyncpg.Connection, side: Side) -> list[str]:
    """EXPLAIN of the generic plan: an SQL-level PREPARE, then EXECUTE with the values as literals.

    (EXPLAIN of a statement with bound parameters plans it for those values, i.e. a custom plan.)
    """
    stmt = await conn.prepare(side.sql)
    types = [t.name if t.schema == "pg_catalog" else f"{t.schema}.{t.name}" for t in stmt.get_parameters()]
    literals = [await conn.fetchval(f"SELECT quote_nullable($1::{t})", a) + f"::{t}"
                for t, a in zip(types, side.args[0], strict=True)]
    await conn.execute(f"PREPARE bench_generic ({', '.join(types)}) AS {side.sql}")
    try:
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_generic({', '.join(literals)})")
    finally:
        await conn.execute("DEALLOCATE bench_generic")
    return [str(r[0]) for r in rows]


_COST = re.compile(r"\s*\(cost=[^)]*\)")
_PART = re.compile(r"_y\d{4}m\d{2}|\b(j|it|it2|t2)_\d+\b")
_NUMS = re.compile(r"\d+(\.\d+)?")


def summarise_plan(lines: list[str], limit: int = 16) -> list[str]:
    """The plan's node lines without costs, runs of per-partition twins folded into one line."""
    keep = [
        _COST.sub("", ln).rstrip() for i, ln in enumerate(lines)
        if i == 0 or "->" in ln or "Sort Method" in ln or "Execution Time" in ln or "Rows Removed" in ln
        or "Index Cond" in ln or "Recheck" in ln or "Disk" in ln
    ]
    folded: list[str] = []
    count = 0
    previous_key = None
    for ln in keep:
        key = _NUMS.sub("#", _PART.sub("P", ln))
        if key == previous_key:
            count += 1
            continue
        if count:
            folded[-1] += f"  [+{count} more like it]"
        folded.append(ln)
        previous_key, count = key, 0
    if count:
        folded[-1] += f"  [+{count} more like it]"
    if len(folded) > limit:
        folded = [*folded[: limit - 2], "  ...", folded[-1]]
    return folded


async def run_all(
    conns: dict[str, asyncpg.Connection], spec_list: list[Spec], *, runs: int, warmup: int, budget_s: float,
    plans_dir: Path,
) -> tuple[dict[str, dict[str, Timing]], dict[str, Any]]:
    """Each query on ours then the baseline (so both see the same cache state), then the plans.

    ``conns``: "ours" (jit=off, as the services' pools), "baseline" (the server's defaults) and
    "generic" (ours with plan_cache_mode = force_generic_plan, jit=off). The
    p4h prototype's index is built just before it and dropped right after.
    """
    out: dict[str, dict[str, Timing]] = {}
    extra: dict[str, Any] = {}
    for spec in spec_list:
        out[spec.key] = {}
        if spec.key == "p4h":
            extra.update(await with_proposal_index(conns["ours"]))
        try:
            for name, side in (("ours", spec.ours), ("baseline", spec.base)):
                if side is None:
                    continue
                conn = conns[side.conn or name]
                timing = await run_side(conn, side, runs=runs, warmup=warmup, budget_s=budget_s)
                plan_path = plans_dir / f"{spec.key}_{name}.txt"
                plan = await explain(conn, side, plan_path)
                timing.plan = summarise_plan(plan)
                timing.plan_file = str(plan_path)
                out[spec.key][name] = timing
                log(f"{spec.key} {name}: p50 {timing.p50:.2f} ms, p95 {timing.p95:.2f} ms, max {timing.max:.2f} ms "
                    f"({timing.runs} runs)")
        finally:
            if spec.key == "p4h":
                await conns["ours"].execute("DROP INDEX IF EXISTS bench_ix_jobs_params_hash")
    return out, extra


def _round_half_up(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


async def cross_check(q: OurQueries, ours: asyncpg.Connection, base: asyncpg.Connection, s: Samples
                      ) -> dict[str, bool]:
    """Do both schemas give the same answers? (Same data, so they must.)"""
    checks: dict[str, bool] = {}
    day = s.end.date()
    ours_days = await ours.fetch(q.sql("daily_totals"), *q.args("daily_totals", today=day, days=30))
    base_days = await base.fetch(baseline.DAILY_TOTALS, *_day_bounds(day))
    # processing_stats rounds the average with PostgreSQL's round(numeric, 2), half away from zero; Python's
    # round(Decimal) rounds half to even, which made the check fail on a day whose mean ended in exactly 5.
    checks["daily totals (count, avg) equal"] = [
        (r["stat_date"], r["total_jobs"], r["avg_processing_time_ms"]) for r in ours_days if r["total_jobs"]
    ] == [(r["day"], r["total_jobs"], _round_half_up(r["avg_processing_time_ms"])) for r in base_days]
    # processing_stats against the project's own recount from the jobs (stats.sql totals_from_jobs).
    same = True
    for d in (s.days[1], s.days[2], day):
        counted = await ours.fetchrow("SELECT * FROM processing_stats WHERE stat_date = $1", d)
        recount = await ours.fetchrow(q.sql("totals_from_jobs"), *q.args("totals_from_jobs", stat_date=d))
        assert recount is not None
        same = same and counted is not None and all(
            counted[k] == recount[k] for k in ("total_jobs", "completed_jobs", "failed_jobs", "sum_processing_time_ms"))
    checks["processing_stats == totals_from_jobs (3 days)"] = same
    t09 = {"threshold": 0.9}
    counted = await ours.fetchval(q.sql("params_job_count"), *q.args(
        "params_job_count", contains=t09, date_from=s.start.date(), date_to=s.end.date()))
    checks["params count (params_daily_counts) == baseline COUNT"] = (
        counted == await base.fetchval(baseline.PARAMS_COUNT, t09))
    ours_q = await ours.fetch(q.sql("user_job_quartiles_all"))
    base_q = await base.fetch(baseline.USER_QUARTILES)
    checks["per-user counts (user_job_counts) == baseline"] = (
        sorted(r["job_count"] for r in ours_q) == sorted(r["job_count"] for r in base_q))
    ours_h = await ours.fetch(PROPOSAL_BY_PARAMS_HASH, {"threshold": 0.35})
    ours_b = await ours.fetch(q.sql("by_params"), *q.args("by_params", contains={"threshold": 0.35}, limit=20))
    checks["p4h prototype == by_params"] = [r["job_id"] for r in ours_h] == [r["job_id"] for r in ours_b]
    ours_t = await ours.fetch(q.sql("search_tags"), *q.args("search_tags", query="product", limit=10))
    base_t = await base.fetch(baseline.FUZZY_TAGS, "product")
    checks["tag search: same similarities"] = (
        [round(r["similarity"], 5) for r in ours_t] == [round(r["similarity"], 5) for r in base_t])
    return checks
