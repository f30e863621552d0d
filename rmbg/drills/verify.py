"""After a drill, checked in PostgreSQL and S3 directly (not through the API): one terminal row per accepted
job, a completed job's objects with the sizes its row records, stats equal to counts over the rows, fsck clean."""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, timedelta
from typing import Any

import asyncpg

from rmbg.drills.pipeline import until
from rmbg.maintenance.fsck import Fsck
from shared.config import BaseServiceSettings
from shared.contracts import ResultKind, Topics
from shared.db import open_database
from shared.db.models import TERMINAL_STATUSES
from shared.messaging import read_topic
from shared.storage import ObjectStore, open_object_store


@dataclass
class Verdict:
    rows: dict[str, str] = field(default_factory=dict)  # job id -> status, for accepted ids
    unknown_rows: int = 0  # rows whose id the submitter never got (a 202 lost with a killed ingest)
    problems: list[str] = field(default_factory=list)
    fsck_summary: str = ""


async def _fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()


async def drain(dsn: str, job_ids: list[str], timeout_s: float) -> bool:
    """Wait until every accepted job has a terminal row (read from PostgreSQL)."""
    ids = [uuid.UUID(j) for j in job_ids]

    async def done() -> bool:
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            rows = await _fetch(
                dsn,
                "SELECT count(DISTINCT job_id) AS n FROM image_process_jobs "
                "WHERE job_id = ANY($1::uuid[]) AND status IN ('completed', 'failed')",
                ids,
            )
            return int(rows[0]["n"]) == len(ids)
        return False

    return await until(done, timeout_s, interval_s=1.0)


_ROWS_SQL = """
SELECT job_id::text AS job_id, status::text AS status, created_at,
       rmbg_original_key(original_path, original_ext, content_sha256) AS original_path,
       rmbg_mask_key(mask_path, cutout_format, content_sha256, model_name, model_revision, params) AS mask_path,
       rmbg_cutout_key(processed_path, cutout_format, content_sha256, model_name, model_revision, params_hash)
           AS processed_path,
       original_bytes, mask_bytes, processed_bytes
FROM image_process_jobs"""


async def _listing(store: ObjectStore) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for prefix in ("original/", "mask/", "processed/"):
        async for obj in store.iter_keys(prefix):
            sizes[obj.key] = obj.size
    return sizes


def check_rows(rows: list[asyncpg.Record], accepted: list[str], sizes: dict[str, int], verdict: Verdict) -> None:
    """One terminal row per accepted id; a completed job's objects exist with the sizes recorded."""
    per_id = Counter(r["job_id"] for r in rows)
    known = set(accepted)
    verdict.unknown_rows = sum(1 for j in per_id if j not in known)
    for job_id in accepted:
        if per_id[job_id] != 1:
            verdict.problems.append(f"job {job_id}: {per_id[job_id]} rows")
    for r in rows:
        if r["job_id"] not in known:
            continue
        verdict.rows[r["job_id"]] = r["status"]
        if r["status"] not in TERMINAL_STATUSES:
            verdict.problems.append(f"job {r['job_id']}: status {r['status']}")
        elif r["status"] == "completed":
            for kind in ("original", "mask", "processed"):
                key, expect = r[f"{kind}_path"], r[f"{kind}_bytes"]
                if sizes.get(key) != expect:
                    verdict.problems.append(
                        f"job {r['job_id']}: {kind} {key} is {sizes.get(key, 'missing')} bytes, row says {expect}"
                    )


async def check_stats(settings: BaseServiceSettings, days: set[date], verdict: Verdict, timeout_s: float) -> None:
    """processing_stats per day and user_job_counts equal counts over the jobs table (waits for the lag)."""
    async with open_database(settings.postgres) as db:

        async def differences() -> list[str]:
            found: list[str] = []
            async with db.pool.acquire() as conn:
                for day in sorted(days):
                    truth = await db.stats.totals_from_jobs(conn, stat_date=day)
                    kept = await db.stats.daily_totals(conn, days=1, today=day)
                    fields = ("total_jobs", "completed_jobs", "failed_jobs", "sum_processing_time_ms")
                    want = {f: getattr(truth, f) for f in fields}
                    got = {f: getattr(kept[0], f) for f in fields}
                    if want != got:
                        found.append(f"processing_stats {day}: {got}, the jobs say {want}")
                users = await conn.fetch(
                    "SELECT j.user_id, j.n, coalesce(u.jobs, 0) AS kept FROM "
                    "(SELECT user_id, count(*) AS n FROM image_process_jobs GROUP BY 1) j "
                    "LEFT JOIN user_job_counts u USING (user_id) WHERE j.n <> coalesce(u.jobs, 0)"
                )
                found += [f"user_job_counts {u['user_id']}: {u['kept']}, the jobs say {u['n']}" for u in users]
            return found

        diffs: list[str] = []

        async def agree() -> bool:
            nonlocal diffs
            diffs = await differences()
            return not diffs

        await until(agree, timeout_s, interval_s=1.0)
        verdict.problems += diffs


async def check_fsck(settings: BaseServiceSettings, verdict: Verdict) -> None:
    async with open_database(settings.postgres) as db, open_object_store(settings.s3) as store:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="drill-fsck") as executor:
            report = await Fsck(db, store, executor).run(repair=False, grace=timedelta(0))
    verdict.fsck_summary = report.summary()
    verdict.problems += [f"fsck: job {job} misses {key}" for job, key in report.missing[:20]]
    verdict.problems += [f"fsck: orphan object {key}" for key in report.orphans[:20]]
    if len(report.missing) + len(report.orphans) > 40:
        verdict.problems.append(f"fsck: {len(report.missing)} missing, {len(report.orphans)} orphans in all")


async def check_done_once(settings: BaseServiceSettings, accepted: list[str], verdict: Verdict) -> None:
    """Nothing was done twice: each accepted job was requested once on the jobs topic (intake did not
    publish it again, the sweeper did not re-queue it) and has one completed result on the results topic
    (inference did not redo it after a redelivery). Holds only when every stop was clean."""
    topics = Topics.from_settings(settings.topics, settings.kafka)
    requests = Counter(str(m.job_id) for m in await read_topic(settings.kafka, topics.jobs))
    results = Counter(
        str(m.job_id) for m in await read_topic(settings.kafka, topics.results) if m.kind is ResultKind.COMPLETED
    )
    for job_id in accepted:
        if verdict.rows.get(job_id) != "completed":
            continue
        if requests[job_id] != 1:
            verdict.problems.append(f"job {job_id}: requested {requests[job_id]} times on {topics.jobs.name}")
        if results[job_id] != 1:
            verdict.problems.append(f"job {job_id}: {results[job_id]} completed results on {topics.results.name}")


async def verify(settings: BaseServiceSettings, accepted: list[str], stats_timeout_s: float = 60.0) -> Verdict:
    verdict = Verdict()
    dsn = settings.postgres.dsn.get_secret_value()
    rows = await _fetch(dsn, _ROWS_SQL)
    async with open_object_store(settings.s3) as store:
        sizes = await _listing(store)
    check_rows(rows, accepted, sizes, verdict)
    days = {r["created_at"].astimezone(UTC).date() for r in rows}
    await check_stats(settings, days, verdict, stats_timeout_s)
    await check_fsck(settings, verdict)
    return verdict
