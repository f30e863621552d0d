"""`rmbg retention`: remove jobs older than a cutoff, with their objects, leaving nothing orphaned.

Whole months older than the cutoff are retired as partitions (DROP of the tags partition, DETACH of the
jobs partition, then DROP once its objects are gone): no DELETE, so no bloat and no VACUUM debt. Only
the cutoff's own month is trimmed row by row, in bounded batches.

An object is deleted only when no remaining job has the same content: keys derive from content, so a
newer job of the same image still owns its original, mask and cut-out. The reference check and the
delete run under an exclusive advisory lock that intake takes shared while it stores an original and
inserts its row, so an upload racing the retention is either seen by the check or stored again after
the delete. Rows go first and objects second: a crash in between leaves orphan objects (which
`rmbg fsck --repair` removes), never a row pointing at a deleted object. A retired month that was
detached but not yet dropped is finished by the next run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import asyncpg

from shared.db import Database
from shared.db.models import ContentObjects
from shared.db.partitions import month_start
from shared.storage import ObjectStore

log = logging.getLogger(__name__)

# Rows read per round trip from a retired month, and deleted per batch from the cutoff's month.
_BATCH = 5000


@dataclass
class RetentionReport:
    cutoff: datetime
    dry_run: bool
    months_retired: list[str] = field(default_factory=list)
    jobs_removed: int = 0
    objects_deleted: int = 0
    objects_kept_shared: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (
            f"retention before {self.cutoff.isoformat()}: {verb} {self.jobs_removed} jobs "
            f"(whole months: {', '.join(self.months_retired) or 'none'}), "
            f"{'would delete' if self.dry_run else 'deleted'} {self.objects_deleted} objects, kept "
            f"{self.objects_kept_shared} still used by newer jobs "
            f"in {self.seconds:.2f} s"
        )


def _next_month(month: date) -> date:
    return date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def _month_of(partition: str) -> date:
    # image_process_jobs_y2026m05 -> 2026-05-01
    tail = partition.rsplit("_y", 1)[1]
    return date(int(tail[:4]), int(tail[5:7]), 1)


class Retention:
    def __init__(self, db: Database, store: ObjectStore) -> None:
        self._db = db
        self._store = store

    async def run(self, *, cutoff: datetime, dry_run: bool = False) -> RetentionReport:
        if cutoff.tzinfo is None:
            raise ValueError("cutoff must be timezone-aware")
        started = time.perf_counter()
        report = RetentionReport(cutoff=cutoff, dry_run=dry_run)
        boundary = month_start(cutoff)
        async with self._db.pool.acquire() as conn:
            leftovers = await self._db.retention.retired_months(conn)
            partitions = await self._db.retention.job_partitions(conn)
        expired = [_month_of(p) for p in partitions if _next_month(_month_of(p)) <= boundary]
        for month in leftovers:  # detached by an interrupted run: finish it first
            if not dry_run:
                await self._finish_retired(month, report)
        for month in expired:
            await self._retire(month, report, dry_run=dry_run)
        await self._trim_boundary(cutoff, boundary, report, dry_run=dry_run)
        if not dry_run:
            # Per-parameter counts answer "how many jobs" questions, so they follow the jobs: days wholly
            # before the cutoff go. processing_stats stays as history (one row per day).
            async with self._db.pool.acquire() as conn:
                await self._db.stats.prune_params_counts(conn, before=cutoff.astimezone(UTC).date())
                # Webhooks have no foreign key to their jobs (partitions are detached whole): they go here.
                await self._db.webhooks.prune(conn, before=cutoff)
        report.seconds = time.perf_counter() - started
        log.info(report.summary())
        return report

    async def _retire(self, month: date, report: RetentionReport, *, dry_run: bool) -> None:
        name = f"{month:%Y-%m}"
        if dry_run:
            async with self._db.pool.acquire() as conn:
                count = await self._db.retention.count_month(
                    conn, month_from=_utc(month), month_to=_utc(_next_month(month))
                )
            report.jobs_removed += count
            report.months_retired.append(name)
            return
        async with self._db.pool.acquire() as conn, conn.transaction():
            count = await self._db.retention.retire_month(conn, month=month)
        report.jobs_removed += count
        report.months_retired.append(name)
        await self._finish_retired(month, report)

    async def _finish_retired(self, month: date, report: RetentionReport) -> None:
        """Delete the objects of a detached month that no remaining job uses, then drop it.

        Each batch is read, checked against the remaining jobs and its keys deleted under one hold of the
        objects lock (the check and the keys to delete are one statement, retention.sql
        retired_unreferenced), so the kept keys never reach Python. A key is kept when a remaining job
        derives it, or while a job of its content is unfinished."""
        after = b""
        while True:
            async with self._db.pool.acquire() as conn, conn.transaction():
                await self._db.jobs.lock_objects_exclusive(conn)
                batch = await self._db.retention.retired_unreferenced(conn, month=month, after_sha=after, limit=_BATCH)
                if batch.last_sha is None:
                    break
                report.objects_kept_shared += batch.kept
                await self._delete_locked(conn, list(batch.doomed), report)
            after = batch.last_sha
        async with self._db.pool.acquire() as conn:
            await self._db.retention.drop_retired(conn, month=month)

    async def _trim_boundary(self, cutoff: datetime, boundary: date, report: RetentionReport, *, dry_run: bool) -> None:
        month_from = _utc(boundary)
        if dry_run:
            async with self._db.pool.acquire() as conn:
                report.jobs_removed += await self._db.retention.count_before(conn, cutoff=cutoff, month_from=month_from)
            return
        while True:
            async with self._db.pool.acquire() as conn, conn.transaction():
                rows = await self._db.retention.delete_before(conn, cutoff=cutoff, month_from=month_from, limit=_BATCH)
            if not rows:
                return
            report.jobs_removed += len(rows)
            await self._delete_unreferenced(rows, report)

    async def _delete_unreferenced(self, rows: Iterable[ContentObjects], report: RetentionReport) -> None:
        keys_by_sha: dict[bytes, set[str]] = {}
        for row in rows:
            keys = keys_by_sha.setdefault(row.content_sha256, set())
            # A failed upload's original_path names the upstream's object: not ours to delete.
            keys.update(p for p in row.paths if not p.startswith("s3://"))
        async with self._db.pool.acquire() as conn, conn.transaction():
            await self._db.jobs.lock_objects_exclusive(conn)
            used = await self._db.objects.referenced_contents(conn, shas=sorted(keys_by_sha))
            # As retired_unreferenced decides, asked only for the contents a remaining job has.
            in_use = await self._db.objects.keys_in_use(conn, shas=sorted(used))
            doomed = sorted({k for sha, keys in keys_by_sha.items() for k in keys if not in_use.keeps(sha, k)})
            report.objects_kept_shared += sum(in_use.keeps(sha, k) for sha, keys in keys_by_sha.items() for k in keys)
            await self._delete_locked(conn, doomed, report)

    async def _delete_locked(self, conn: asyncpg.Connection, doomed: list[str], report: RetentionReport) -> None:
        """Delete objects whose references were just checked, in the transaction that holds the objects lock."""
        # Deleted while the lock is held: an intake of the same content waits, then stores again.
        # The epoch moves *after* the delete (also when it fails half-way): an intake that read it
        # before then, and may have found the object still there, sees the change and stores it again.
        try:
            report.objects_deleted += await self._store.delete_many(doomed)
        finally:
            if doomed:
                await self._db.jobs.bump_object_deletion_epoch(conn)


def _utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def parse_age(text: str) -> int:
    """'180d' -> 180 days; plain integers are days too."""
    value = text.strip().lower().removesuffix("d")
    days = int(value)
    if days < 1:
        raise ValueError("the age must be at least 1 day")
    return days
