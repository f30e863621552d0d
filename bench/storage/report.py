"""The markdown report of one benchmark run (stdout and bench/results/report.md)."""

from __future__ import annotations

from typing import Any

GOAL_QUERY_MS = 5.0
GOAL_DAILY_MS = 2.0
GOAL_RETENTION_S = 10.0


def mib(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 1024**3:
        return f"{n / 1024**3:.2f} GiB"
    return f"{n / 1024**2:.1f} MiB"


def ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    if v >= 100:
        return f"{v:.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    return f"{v:.2f} ms"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _sizes_section(r: dict[str, Any]) -> list[str]:
    out = ["## Sizes (after VACUUM ANALYZE, before retention)", ""]
    jobs = r["data"]["jobs"]
    for side in ("ours", "baseline"):
        s = r["sizes"][side]
        total = sum(t["heap_bytes"] + t["index_bytes"] for t in s["tables"])
        out += [f"### {side}: {mib(total)} in all, {total / max(jobs, 1):.0f} bytes per job", ""]
        rows = [[t["name"] + (f" ({t['partitions']} partitions)" if t["partitioned"] else ""),
                 f"{t['est_rows']:,}", mib(t["heap_bytes"]), mib(t["index_bytes"]),
                 mib(t["heap_bytes"] + t["index_bytes"])] for t in s["tables"]]
        out += _table(["table", "rows", "heap (+toast)", "indexes", "total"], rows)
        out += [""]
        rows = [[f"{i['table_name']}.{i['name']}", mib(i["bytes"]), f"`{i['def']}`"] for i in s["indexes"]]
        out += _table(["index", "size", "definition"], rows)
        out += [""]
    w = r.get("row_width", {})
    if w:
        out += [f"Average job row (pg_column_size): ours {w.get('ours')} bytes, baseline {w.get('baseline')} bytes.",
                ""]
    return out


def _ratio(x: float) -> str:
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def _query_rows(r: dict[str, Any]) -> list[list[str]]:
    rows = []
    for spec in r["specs"]:
        q = r["queries"][spec["key"]]
        o, b = q.get("ours"), q.get("baseline")
        goal = spec["goal_ms"]
        verdict = "-"
        if o is not None and goal is not None:
            verdict = "met" if o["p95_ms"] < goal else f"missed x{o['p95_ms'] / goal:.0f}"
        speed = _ratio(b["p50_ms"] / o["p50_ms"]) if (o and b and o["p50_ms"] > 0) else "-"
        rows.append([
            spec["title"],
            f"{ms(o['p50_ms'])} / {ms(o['p95_ms'])}" if o else "-",
            f"{ms(b['p50_ms'])} / {ms(b['p95_ms'])}" if b else "-",
            speed,
            f"{o['runs'] if o else '-'}/{b['runs'] if b else '-'}",
            spec["design_figure"] or "-",
            (f"< {ms(goal)}: {verdict}" if goal is not None else "-"),
        ])
    return rows


def _plans_section(r: dict[str, Any]) -> list[str]:
    out = ["## Plans (one representative run each, EXPLAIN (ANALYZE, BUFFERS); costs removed, partition twins folded)",
           ""]
    for spec in r["specs"]:
        q = r["queries"][spec["key"]]
        out += [f"### {spec['title']}", ""]
        for side in ("ours", "baseline"):
            t = q.get(side)
            if t is None:
                continue
            out += [f"{side} ({spec[side + '_source']}):", "", "```", *t["plan"], "```", ""]
    return out


def _retention_section(r: dict[str, Any]) -> list[str]:
    ret = r.get("retention")
    if not ret:
        return ["## Retention", "", "Skipped (--skip-retention).", ""]
    o, b = ret["ours"], ret["baseline"]
    bj = b["before"]["image_process_jobs"]
    bd = b["after_delete"]["image_process_jobs"]
    bv = b["after_vacuum"]["image_process_jobs"]
    bt, btd = b["before"]["image_tags"], b["after_delete"]["image_tags"]
    oj, oa = o["before"]["image_process_jobs"], o["after"]["image_process_jobs"]
    ot, oat = o["before"]["image_tags"], o["after"]["image_tags"]
    led = o["ledger"]
    ph = o["phases"]
    out = [f"## Retention of one month (everything created before {o['cutoff']}, UTC)", ""]
    rows = [
        ["ours, partitions: rmbg_retire_month (DROP tags partition, per-user counts, DETACH jobs partition) + "
         f"rmbg_drop_retired; months {', '.join(o['months'])}", f"{ph['partitions']:.2f} s",
         f"{o['jobs_removed']:,} jobs",
         f"jobs {mib(oj['heap'] + oj['idx'])} -> {mib(oa['heap'] + oa['idx'])}, tags {mib(ot['heap'] + ot['idx'])}"
         f" -> {mib(oat['heap'] + oat['idx'])} (heap + indexes); dead tuples left "
         f"{oa['dead_tuple_count'] + oat['dead_tuple_count']:,}"],
        ["ours, object references: read the retired months' keys, check which contents newer jobs still use "
         "(S3 stubbed)", f"{ph['object references']:.1f} s",
         f"{o['objects_deleted']:,} keys to delete, {o['objects_kept_shared']:,} kept (shared)",
         f"{o['s3_requests']:,} batch delete requests would go to S3"],
        ["ours, whole run (Retention.run)", f"{o['total_s']:.1f} s", "", o["report"]],
        ["ours, stats service: prune_ledger of one day (hourly, a DELETE)", f"{led['s']:.2f} s",
         f"{led['rows']:,} rows",
         f"ledger {mib(led['before']['heap'])} (14 days): dead {led['after']['dead_pct']:.1f}% after, free "
         f"{led['after_vacuum']['free_pct']:.1f}% after VACUUM ({led['vacuum_s']:.1f} s), reused by the next day"],
        ["baseline: DELETE image_tags, then DELETE jobs (design)", f"{b['total_s']:.1f} s",
         f"{b['delete_tags']['status']}; {b['delete_jobs']['status']}",
         f"jobs heap {mib(bj['heap'])} -> {mib(bd['heap'])}: dead {bd['dead_pct']:.1f}% + free "
         f"{bd['free_pct']:.1f}%; image_tags {mib(bt['heap'])} -> {mib(btd['heap'])}: dead {btd['dead_pct']:.1f}% + "
         f"free {btd['free_pct']:.1f}% (pages the RI checks visited were pruned on access)"],
        ["baseline: the VACUUM it then needs", f"{b['vacuum_s']:.1f} s", "",
         f"jobs heap still {mib(bv['heap'])}, {bv['free_pct']:.1f}% of it free space (bloat); image_tags "
         f"{mib(b['after_vacuum']['image_tags']['heap'])}, {b['after_vacuum']['image_tags']['free_pct']:.1f}% free"],
    ]
    out += _table(["operation", "time", "rows", "afterwards"], rows)
    out += ["", f"Baseline primary key leaf density: {b['pkey_before']['avg_leaf_density']:.1f}% before, "
            f"{b['pkey_after']['avg_leaf_density']:.1f}% after the DELETE and VACUUM.", ""]
    out += ["Ours after retention: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in o["checks"].items()),
            ""]
    out += ["Ours, time by statement:", ""]
    out += [f"- `{name}`: {v['s']:.2f} s in {v['calls']} calls" for name, v in
            sorted(o["statements"].items(), key=lambda kv: -kv[1]["s"])]
    out += [""]
    return out


def _goals_section(r: dict[str, Any]) -> list[str]:
    out = ["## Goals", ""]
    misses = []
    for spec in r["specs"]:
        o = r["queries"][spec["key"]].get("ours")
        if o is None or spec["goal_ms"] is None or spec["key"].startswith("p"):
            continue
        if o["p95_ms"] >= spec["goal_ms"]:
            misses.append(f"{spec['title']}: p95 {ms(o['p95_ms'])} (goal {ms(spec['goal_ms'])}, "
                          f"x{o['p95_ms'] / spec['goal_ms']:.1f})")
    jobs = r["data"]["jobs"]
    out.append(f"- Every query p95 under {GOAL_QUERY_MS:.0f} ms at {jobs:,} jobs: "
               + ("met." if not misses else "missed: " + "; ".join(misses) + "."))
    d = r["queries"]["q2"]["ours"]
    out.append(f"- Daily totals for 30 days under {GOAL_DAILY_MS:.0f} ms from processing_stats: "
               f"p95 {ms(d['p95_ms'])}, " + ("met." if d["p95_ms"] < GOAL_DAILY_MS else "missed."))
    ret = r.get("retention")
    if ret:
        o = ret["ours"]
        dead = o["after"]["image_process_jobs"]["dead_tuple_count"] + o["after"]["image_tags"]["dead_tuple_count"]
        ph = o["phases"]
        ok = o["total_s"] < GOAL_RETENTION_S and dead == 0
        out.append(f"- A month's retention under {GOAL_RETENTION_S:.0f} s with no bloat: "
                   + ("met" if ok else "missed" if dead == 0 else "missed (bloat)")
                   + f". Whole run {o['total_s']:.1f} s "
                     f"({'x' + format(o['total_s'] / GOAL_RETENTION_S, '.1f') + ' the goal; ' if not ok else ''}"
                     f"partitions {ph['partitions']:.2f} s, object-reference checks "
                     f"{ph['object references']:.1f} s), {dead} dead tuples left in jobs and image_tags.")
    out.append("- Stored bytes per 1024x1024 job: measured by the cut-out format benchmark, not here; "
               "the database's share is the bytes per job in the sizes above.")
    out.append("")
    return out


def render(r: dict[str, Any]) -> str:
    m = r["meta"]
    data = r["data"]
    lines = [
        f"# Storage benchmark: {data['jobs']:,} jobs, ours against the seed design",
        "",
        f"- Command: `{m['command']}`",
        f"- Date: {m['date']}; machine: {m['machine']}",
        f"- PostgreSQL: {', '.join(f'{k}={v}' for k, v in m['settings'].items())}",
        f"- Time: generate {m['generate_s']:.0f} s, load both {m['load_s']:.0f} s, "
        f"queries {m['queries_s']:.0f} s, retention {m['retention_s']:.0f} s",
        f"- Timing: {m['runs']} runs per query after {m['warmup']} warm-up runs, at most {m['budget_s']:.0f} s "
        "per query and side; client-side (asyncpg, prepared, loopback); parameters drawn at random from the data.",
        "",
        "## Data (identical in both databases)",
        "",
    ]
    st = data["status"]
    us = data["users_shape"]
    lines += [
        f"- jobs {data['jobs']:,} from {data['span']['first']:%Y-%m-%d %H:%M} to {data['span']['last']:%Y-%m-%d %H:%M} "
        f"UTC; by status: " + ", ".join(f"{k} {v:,} ({100 * v / data['jobs']:.2f}%)" for k, v in st.items()),
        "- per month: " + ", ".join(f"{k}: {v:,}" for k, v in data["per_month"].items()),
        f"- users {data['users']:,} ({us['active_users']:,} with jobs): busiest {us['top_user_jobs']:,} jobs, median "
        f"{us['median_jobs']}, p99 {us['p99_jobs']:,}; the top 1% (500) hold {100 * us['top500_share']:.0f}% of jobs",
        f"- tags {data['tags']:,} ({data['product_tags']:,} = {100 * data['product_tags'] / data['tags']:.0f}% match "
        f"`% 'product'`), image_tags {data['image_tags']:,} ({data['image_tags'] / data['jobs']:.2f} per job)",
        f"- params threshold 0.9: {data['threshold_09']:,} jobs; file_size_kb > 4096: {data['large_files']:,}; "
        f"distinct images {data['distinct_content']:,}; reused results {data['reused']:,}",
        f"- ours only: processing_stats {data['processing_stats']} days, stats_ledger {data['stats_ledger']:,} rows",
        "",
        "Load steps over 5 s: " + "; ".join(
            f"{side}: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if v >= 5)
            for side, t in r["load_timings"].items()),
        "",
        "## Queries (p50 / p95; goal applies to ours)",
        "",
    ]
    lines += _table(["query", "ours p50 / p95", "baseline p50 / p95", "baseline/ours p50", "runs",
                     "design measured", "goal"], _query_rows(r))
    lines += ["", "Per value (p50 / max), where a query cycles through a few values:", ""]
    for spec in r["specs"]:
        for side in ("ours", "baseline"):
            t = r["queries"][spec["key"]].get(side)
            if t and t.get("by_arg"):
                lines.append(f"- {spec['key']} {side}: " + "; ".join(
                    f"`{label}` {ms(p50)} / {ms(mx)}" for label, p50, mx in t["by_arg"]))
    lines += ["", "Query sources:", ""]
    for spec in r["specs"]:
        lines.append(f"- {spec['key']}: ours = {spec['ours_source']}; baseline = {spec['baseline_source']}")
    lines += ["", "Cross-checks (same data, so the answers must agree): "
              + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r["checks"].items()), ""]
    p = r.get("proposals") or {}
    if p:
        lines += [f"The p4h prototype's index (params_hash, created_at DESC, job_id DESC) took "
                  f"{p['params_hash_index_build_s']:.0f} s to build and {mib(p['params_hash_index_bytes'])}; it was "
                  "dropped right after its step.", ""]
    lines += _goals_section(r)
    lines += _sizes_section(r)
    lines += _retention_section(r)
    lines += _plans_section(r)
    return "\n".join(lines) + "\n"
