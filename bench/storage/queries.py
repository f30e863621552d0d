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


@dataclass(frozen=True)
class Spec:
    key: str
    title: str
    ours: Side | None
    base: Side | None
    goal_ms: float | None = 5.0  # p95 goal (None: reported only)
    design_figure: str = ""  # what the design measured for it (seed-schema.md)
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

    def as_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "p50_ms": self.p50, "p95_ms": self.p95, "max_ms": self.max,
                "rows": self.rows, "plan": self.plan, "plan_file": self.plan_file}


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
    """The query list: the design's six, its measured weak spots, and two proposals (ours only)."""
    t09 = {"threshold": 0.9}
    since30 = s.end - timedelta(days=30)
    mix_params = s.params_mix
    return [
        Spec("q1", "1. a user's 10 latest completed jobs",
             Side(q.sql("recent_completed"), [q.args("recent_completed", user_id=u, limit=10) for u in s.users],
                  "jobs.sql recent_completed (with tag names)"),
             Side(baseline.RECENT_COMPLETED, [(u,) for u in s.users], "design"),
             design_figure="p95 about 1 ms"),
        Spec("q2", "2. daily totals, 30 days",
             Side(q.sql("daily_totals"), [q.args("daily_totals", today=d, days=30) for d in s.days],
                  "stats.sql daily_totals (processing_stats)"),
             Side(baseline.DAILY_TOTALS, [_day_bounds(d) for d in s.days], "design: GROUP BY over the jobs"),
             goal_ms=2.0, design_figure="1.9 s median"),
        Spec("q3", "3. keyset page of completed jobs (20)",
             Side(q.sql("page_completed_after"),
                  [q.args("page_completed_after", before_created_at=c, before_job_id=j, limit=20)
                   for c, j in s.cursors], "jobs.sql page_completed_after (created_at, job_id)"),
             Side(baseline.KEYSET_PAGE, [(c,) for c, _ in s.cursors], "design: created_at < cursor"),
             design_figure="p95 about 1 ms"),
        Spec("q4", "4. params @> {\"threshold\": 0.9}, 20 rows",
             Side(q.sql("by_params"), [q.args("by_params", contains=t09, limit=20)],
                  "jobs.sql by_params (newest first)"),
             Side(baseline.PARAMS_CONTAINMENT, [(t09,)], "design: LIMIT 20, no order"),
             design_figure="p95 about 1 ms"),
        Spec("q4m", "4. params @>, 8 values from 10% to 0.02% of jobs, 20 rows",
             Side(q.sql("by_params"), [q.args("by_params", contains=p, limit=20) for p in mix_params],
                  "jobs.sql by_params (newest first)"),
             Side(baseline.PARAMS_CONTAINMENT, [(p,) for p in mix_params], "design: LIMIT 20, no order"),
             design_figure=""),
        Spec("q4c", "4. COUNT of params @> {\"threshold\": 0.9} (1M of 10M rows)",
             Side(baseline.PARAMS_COUNT, [(t09,)], "design SQL (no count statement in ours)"),
             Side(baseline.PARAMS_COUNT, [(t09,)], "design"),
             design_figure="2.9 s"),
        Spec("q5", "5. fuzzy tag search 'product' (10 best)",
             Side(q.sql("search_tags"), [q.args("search_tags", query="product", limit=10)],
                  "tags.sql search_tags (GiST, nearest first)"),
             Side(baseline.FUZZY_TAGS, [("product",)], "design: % with GIN, sorted by similarity"),
             design_figure="14 ms median, 24 ms p95"),
        Spec("q5m", "5. fuzzy tag search, 16 terms (10 best)",
             Side(q.sql("search_tags"), [q.args("search_tags", query=t, limit=10) for t in s.tag_terms],
                  "tags.sql search_tags"),
             Side(baseline.FUZZY_TAGS, [(t,) for t in s.tag_terms], "design"),
             design_figure=""),
        Spec("q6", "6. per-user counts with NTILE(4), all time",
             Side(q.sql("user_job_quartiles"), [q.args("user_job_quartiles", since=None)],
                  "jobs.sql user_job_quartiles(since => NULL)"),
             Side(baseline.USER_QUARTILES, [()], "design"),
             design_figure="0.95 s"),
        Spec("q6m", "6. per-user counts with NTILE(4), last 30 days",
             Side(q.sql("user_job_quartiles"), [q.args("user_job_quartiles", since=since30)],
                  "jobs.sql user_job_quartiles(since => 30 days ago)"),
             Side(baseline.USER_QUARTILES_SINCE, [(since30,)], "design + WHERE created_at >= since"),
             design_figure=""),
        Spec("p6", "proposal: NTILE(4) over a per-user counts table (50k rows)",
             Side(PROPOSAL_NTILE, [()], "prototype, not in the schema: bench temp table"),
             None, design_figure="",
             ours_note="what a user_job_counts table kept by the stats path would cost to read"),
        Spec("p6u", "proposal: one user's quartile from the counts table",
             Side(PROPOSAL_USER_QUARTILE, [(u,) for u in s.users], "prototype, not in the schema"),
             None, design_figure=""),
        Spec("p4c", "proposal: COUNT of params @> from per-day counts by params_hash",
             Side(PROPOSAL_PARAMS_COUNT, [(t09,)] + [(p,) for p in mix_params], "prototype, not in the schema"),
             None, design_figure=""),
    ]


# Prototypes of aggregates the project does not have (built per run in temp tables, see build_proposals).
PROPOSAL_NTILE = """
SELECT user_id, job_count, ntile(4) OVER (ORDER BY job_count, user_id) AS quartile
FROM bench_user_job_counts ORDER BY job_count DESC, user_id
"""
PROPOSAL_USER_QUARTILE = """
SELECT c.user_id, c.job_count,
       1 + (4 * (SELECT count(*) FROM bench_user_job_counts b
                 WHERE (b.job_count, b.user_id) < (c.job_count, c.user_id)))
           / (SELECT count(*) FROM bench_user_job_counts) AS quartile
FROM bench_user_job_counts c WHERE c.user_id = $1
"""
PROPOSAL_PARAMS_COUNT = "SELECT COALESCE(sum(jobs), 0) FROM bench_params_daily WHERE params @> $1"


async def build_proposals(conn: asyncpg.Connection) -> dict[str, Any]:
    """Temp tables standing in for aggregates a stats consumer could keep (measured, not proposed as-is)."""
    t0 = time.perf_counter()
    await conn.execute(
        """
        CREATE TEMP TABLE bench_user_job_counts AS
            SELECT user_id, count(*) AS job_count FROM image_process_jobs GROUP BY user_id;
        ALTER TABLE bench_user_job_counts ADD PRIMARY KEY (user_id);
        CREATE INDEX ON bench_user_job_counts (job_count, user_id);
        CREATE TEMP TABLE bench_params_daily AS
            SELECT (created_at AT TIME ZONE 'UTC')::date AS stat_date, params_hash,
                   min(params::text)::jsonb AS params, count(*) AS jobs
            FROM image_process_jobs GROUP BY 1, 2;
        CREATE INDEX ON bench_params_daily USING gin (params jsonb_path_ops);
        ANALYZE bench_user_job_counts; ANALYZE bench_params_daily;
        """
    )
    rows = await conn.fetchval("SELECT count(*) FROM bench_params_daily")
    size = await conn.fetchval("SELECT pg_total_relation_size('bench_params_daily')")
    users = await conn.fetchval("SELECT count(*) FROM bench_user_job_counts")
    usize = await conn.fetchval("SELECT pg_total_relation_size('bench_user_job_counts')")
    return {"params_daily_rows": rows, "params_daily_bytes": size, "user_counts_rows": users,
            "user_counts_bytes": usize, "build_s": time.perf_counter() - t0}


async def run_side(conn: asyncpg.Connection, side: Side, *, runs: int, warmup: int, budget_s: float) -> Timing:
    """Warm up, then time up to ``runs`` executions (cycling the parameters) within ``budget_s``."""
    n_args = len(side.args)
    t_warm = time.perf_counter()
    for i in range(warmup):
        await conn.fetch(side.sql, *side.args[i % n_args])
        if time.perf_counter() - t_warm > budget_s / 4:
            break
    times: list[float] = []
    rows = 0
    t_start = time.perf_counter()
    for i in range(runs):
        args = side.args[i % n_args]
        t0 = time.perf_counter()
        result = await conn.fetch(side.sql, *args)
        times.append((time.perf_counter() - t0) * 1000)
        if i == 0:
            rows = len(result)
        if time.perf_counter() - t_start > budget_s and len(times) >= 5:
            break
    return Timing(runs=len(times), p50=statistics.median(times), p95=_pct(times, 95), max=max(times), rows=rows)


def _pct(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def explain(conn: asyncpg.Connection, side: Side, path: Path) -> list[str]:
    rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + side.sql, *side.args[0])
    lines = [str(r[0]) for r in rows]
    text = f"-- {side.source}\n-- args: {side.args[0]!r}\n{side.sql.strip()}\n\n" + "\n".join(lines) + "\n"
    await asyncio.to_thread(path.write_text, text)
    return lines


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
    ours: asyncpg.Connection, base: asyncpg.Connection, spec_list: list[Spec], *, runs: int, warmup: int,
    budget_s: float, plans_dir: Path,
) -> dict[str, dict[str, Timing]]:
    """Each query on ours then the baseline (so both see the same cache state), then the plans."""
    out: dict[str, dict[str, Timing]] = {}
    for spec in spec_list:
        out[spec.key] = {}
        for name, conn, side in (("ours", ours, spec.ours), ("baseline", base, spec.base)):
            if side is None:
                continue
            timing = await run_side(conn, side, runs=runs, warmup=warmup, budget_s=budget_s)
            plan_path = plans_dir / f"{spec.key}_{name}.txt"
            plan = await explain(conn, side, plan_path)
            timing.plan = summarise_plan(plan)
            timing.plan_file = str(plan_path)
            out[spec.key][name] = timing
            log(f"{spec.key} {name}: p50 {timing.p50:.2f} ms, p95 {timing.p95:.2f} ms, max {timing.max:.2f} ms "
                f"({timing.runs} runs)")
    return out


async def cross_check(q: OurQueries, ours: asyncpg.Connection, base: asyncpg.Connection, s: Samples
                      ) -> dict[str, bool]:
    """Do both schemas give the same answers? (Same data, so they must.)"""
    checks: dict[str, bool] = {}
    day = s.end.date()
    ours_days = await ours.fetch(q.sql("daily_totals"), *q.args("daily_totals", today=day, days=30))
    base_days = await base.fetch(baseline.DAILY_TOTALS, *_day_bounds(day))
    checks["daily totals (count, avg) equal"] = [
        (r["stat_date"], r["total_jobs"], r["avg_processing_time_ms"]) for r in ours_days if r["total_jobs"]
    ] == [(r["day"], r["total_jobs"], round(r["avg_processing_time_ms"], 2)) for r in base_days]
    # processing_stats against the project's own recount from the jobs (stats.sql totals_from_jobs).
    same = True
    for d in (s.days[1], s.days[2], day):
        counted = await ours.fetchrow("SELECT * FROM processing_stats WHERE stat_date = $1", d)
        recount = await ours.fetchrow(q.sql("totals_from_jobs"), *q.args("totals_from_jobs", stat_date=d))
        assert recount is not None
        same = same and counted is not None and all(
            counted[k] == recount[k] for k in ("total_jobs", "completed_jobs", "failed_jobs", "sum_processing_time_ms"))
    checks["processing_stats == totals_from_jobs (3 days)"] = same
    sql_count = baseline.PARAMS_COUNT
    checks["params count equal"] = (await ours.fetchval(sql_count, {"threshold": 0.9})
                                    == await base.fetchval(sql_count, {"threshold": 0.9}))
    ours_q = await ours.fetch(q.sql("user_job_quartiles"), *q.args("user_job_quartiles", since=None))
    base_q = await base.fetch(baseline.USER_QUARTILES)
    checks["per-user counts equal"] = sorted(r["job_count"] for r in ours_q) == sorted(r["job_count"] for r in base_q)
    ours_t = await ours.fetch(q.sql("search_tags"), *q.args("search_tags", query="product", limit=10))
    base_t = await base.fetch(baseline.FUZZY_TAGS, "product")
    checks["tag search: same similarities"] = (
        [round(r["similarity"], 5) for r in ours_t] == [round(r["similarity"], 5) for r in base_t])
    return checks
