"""`rmbg fsck`: rows whose objects are missing, and objects no row references.

Walks the 256 shards of the content hash (object keys fan out by its first byte; the jobs table has an
index on content_sha256), comparing one shard's rows with one shard's listing at a time, so memory stays
bounded at any table size. With ``repair``:
- orphan objects older than ``grace`` are deleted (intake stores an original a moment before its row
  exists, so a young object without a row is normal), after re-checking references under the same
  lock retention uses;
- a missing cut-out whose original and mask exist is rebuilt (the key names its format);
- a missing original or mask cannot be rebuilt here and is reported with the job ids.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shared.contracts import CutoutFormat, ProcessingParams
from shared.db import Database
from shared.db.models import ShardJob
from shared.db.repositories.objects import SHARDS
from shared.imaging import CUTOUT_CONTENT_TYPES, DEFAULT_WEBP_QUALITY, make_cutout
from shared.storage import ObjectKeys, ObjectStore

log = logging.getLogger(__name__)

PREFIXES = ("original", "mask", "processed")


@dataclass
class FsckReport:
    rows_checked: int = 0
    objects_checked: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (job_id, key)
    orphans: list[str] = field(default_factory=list)
    orphans_deleted: int = 0
    cutouts_rebuilt: int = 0
    unrecoverable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.missing and not self.orphans

    def summary(self) -> str:
        return (
            f"fsck: {self.rows_checked} rows, {self.objects_checked} objects; {len(self.missing)} missing objects, "
            f"{len(self.orphans)} orphan objects; repaired: {self.orphans_deleted} orphans deleted, "
            f"{self.cutouts_rebuilt} cut-outs rebuilt; {len(self.unrecoverable)} unrecoverable"
        )


def cutout_format_of(key: str) -> CutoutFormat:
    """The format a cut-out key names (shared/storage/keys.py writes and parses it)."""
    parsed = ObjectKeys.parse(key)
    if parsed is None or parsed.cutout_format is None:
        raise ValueError(f"not a cut-out key: {key}")
    return parsed.cutout_format


class Fsck:
    def __init__(self, db: Database, store: ObjectStore, executor: Executor) -> None:
        self._db = db
        self._store = store
        self._executor = executor

    async def run(self, *, repair: bool, grace: timedelta = timedelta(hours=1)) -> FsckReport:
        report = FsckReport()
        now = datetime.now(UTC)
        for shard in range(SHARDS):
            await self._shard(shard, report, repair=repair, older_than=now - grace)
        log.info(report.summary())
        return report

    async def _shard(self, shard: int, report: FsckReport, *, repair: bool, older_than: datetime) -> None:
        async with self._db.pool.acquire() as conn:
            rows = await self._db.objects.jobs_in_shard(conn, shard=shard)
        listed: dict[str, datetime | None] = {}
        for prefix in PREFIXES:
            async for obj in self._store.iter_keys(f"{prefix}/{shard:02x}/"):
                listed[obj.key] = obj.last_modified
        report.rows_checked += len(rows)
        report.objects_checked += len(listed)
        referenced: set[str] = set()
        for row in rows:
            paths = {"original": row.original_path, "mask": row.mask_path, "processed": row.processed_path}
            for kind, key in paths.items():
                if not key or key.startswith("s3://"):
                    continue
                referenced.add(key)
                if key not in listed:
                    report.missing.append((str(row.job_id), key))
                    if repair:
                        await self._repair_missing(row, kind, key, listed, report)
        orphans = [
            key for key, modified in listed.items()
            if key not in referenced and (modified is None or modified < older_than)
        ]
        report.orphans.extend(orphans)
        if repair and orphans:
            await self._delete_orphans(orphans, report)

    async def _repair_missing(
        self, row: ShardJob, kind: str, key: str, listed: dict[str, datetime | None], report: FsckReport
    ) -> None:
        original, mask = row.original_path, row.mask_path
        if kind != "processed" or original not in listed or mask is None or mask not in listed:
            report.unrecoverable.append((str(row.job_id), key))
            return
        params = ProcessingParams.model_validate(row.params)
        fmt = cutout_format_of(key)
        quality = params.webp_quality or DEFAULT_WEBP_QUALITY
        original_bytes = await self._store.get(original)
        mask_bytes = await self._store.get(mask)
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(self._executor, make_cutout, original_bytes, mask_bytes, fmt, quality)
        await self._store.put(key, data, content_type=CUTOUT_CONTENT_TYPES[fmt][1])
        listed[key] = datetime.now(UTC)
        report.cutouts_rebuilt += 1

    async def _delete_orphans(self, orphans: list[str], report: FsckReport) -> None:
        content = {k: bytes.fromhex(p.content_sha256) for k in orphans if (p := ObjectKeys.parse(k)) is not None}
        shas = sorted(set(content.values()))
        async with self._db.pool.acquire() as conn, conn.transaction():
            await self._db.jobs.lock_objects_exclusive(conn)
            # Re-check under the lock: a job may have started using one of these keys since the listing, and
            # a pending or processing job may be about to reuse a stored mask of its content.
            in_use = await self._db.objects.keys_in_use(conn, shas=shas)
            doomed = [k for k in orphans if not in_use.keeps(content.get(k), k)]
            # As retention does: the epoch moves after the delete (also when it fails half-way), so an
            # intake that found one of these objects still there before stores it again.
            try:
                report.orphans_deleted += await self._store.delete_many(doomed)
            finally:
                if doomed:
                    await self._db.jobs.bump_object_deletion_epoch(conn)
