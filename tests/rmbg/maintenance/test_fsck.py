"""`rmbg fsck` on real PostgreSQL and S3, a database and a bucket per test: what it reports, and each branch
of what ``--repair`` does (rebuild a cut-out from its original and mask; report what cannot be rebuilt;
delete orphans past the grace, re-checked under the objects lock) and never does (touch a referenced
object, a young object, or anything outside original/, mask/ and processed/)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import secrets
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import numpy as np
from PIL import Image

from rmbg.maintenance.fsck import Fsck, FsckReport, cutout_format_of
from rmbg.stack import StackEndpoints
from shared.contracts import CutoutFormat, ProcessingParams
from shared.db import Database
from shared.ids import uuid7
from shared.imaging import CUTOUT_CONTENT_TYPES, DEFAULT_WEBP_QUALITY, encode_mask_png, make_cutout
from shared.storage import ObjectKeys, ObjectStore
from shared.storage.objects import StoredObject
from tests.support.jobs import insert_rejected_upload

MODEL = "fsck-model"
REVISION = "r1"


@dataclass(frozen=True)
class Job:
    job_id: UUID
    original: str
    mask: str | None = None
    processed: str | None = None

    @property
    def keys(self) -> list[str]:
        return [k for k in (self.original, self.mask, self.processed) if k is not None]


def _photo() -> bytes:
    pixels = np.random.default_rng(secrets.randbits(64)).integers(0, 255, (36, 52, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _mask() -> bytes:
    return encode_mask_png(np.tile(np.linspace(0, 255, 52, dtype=np.uint8), (36, 1)))


async def _insert(db: Database, job_id: UUID, data: bytes, original_path: str, params: ProcessingParams) -> None:
    async with db.pool.acquire() as conn:
        assert await db.jobs.insert_job(
            conn,
            job_id=job_id,
            user_id="u1",
            original_path=original_path,
            content_sha256=hashlib.sha256(data).hexdigest(),
            original_bytes=len(data),
            image_width=52,
            image_height=36,
            params=params.canonical(),
            params_hash=params.digest(),
            model_name=MODEL,
            source="http",
            tags=[],
        )


async def _pending(db: Database, store: ObjectStore, data: bytes | None = None) -> Job:
    """A job still under way: its original and its row."""
    data = data or _photo()
    original = ObjectKeys.original(hashlib.sha256(data).hexdigest(), "png")
    await store.put(original, data, content_type="image/png")
    job = Job(uuid7(), original)
    await _insert(db, job.job_id, data, original, ProcessingParams())
    return job


async def _completed(
    db: Database, store: ObjectStore, params: ProcessingParams | None = None, data: bytes | None = None
) -> Job:
    """A completed job with its three objects, as the persister leaves it."""
    params = params or ProcessingParams()
    data = data or _photo()
    sha = hashlib.sha256(data).hexdigest()
    fmt = params.cutout_format or CutoutFormat.WEBP
    extension, content_type = CUTOUT_CONTENT_TYPES[fmt]
    original = ObjectKeys.original(sha, "png")
    mask_key = ObjectKeys.mask(sha, model_name=MODEL, model_revision=REVISION, threshold_tag="soft")
    processed = ObjectKeys.processed(
        sha, model_name=MODEL, model_revision=REVISION, params_hash=f"{params.digest()}-{fmt.value}",
        extension=extension,
    )
    mask = _mask()
    cutout = make_cutout(data, mask, fmt, params.webp_quality or DEFAULT_WEBP_QUALITY)
    await store.put(original, data, content_type="image/png")
    await store.put(mask_key, mask, content_type="image/png")
    await store.put(processed, cutout, content_type=content_type)
    job_id = uuid7()
    await _insert(db, job_id, data, original, params)
    async with db.pool.acquire() as conn:
        assert await db.jobs.mark_completed(
            conn, job_id=job_id, cutout_format=fmt, mask_bytes=len(mask),
            processed_bytes=len(cutout), model_name=MODEL, model_revision=REVISION, processing_time_ms=5,
            completed_at=datetime.now(UTC),
            reused=False,
        )
    return Job(job_id, original, mask_key, processed)



async def _exists(store: ObjectStore, key: str) -> bool:
    return await store.head(key) is not None


async def _fsck(db: Database, store: ObjectStore, *, repair: bool, grace: timedelta = timedelta(0)) -> FsckReport:
    with ThreadPoolExecutor(2) as executor:
        return await Fsck(db, store, executor).run(repair=repair, grace=grace)


async def test_a_consistent_system_is_clean(db: Database, store: ObjectStore) -> None:
    done = [await _completed(db, store, ProcessingParams(cutout_format=fmt)) for fmt in CutoutFormat]
    pending = await _pending(db, store)
    await insert_rejected_upload(db, model_name=MODEL)

    report = await _fsck(db, store, repair=False)

    assert report.clean, report.summary()
    assert (report.rows_checked, report.objects_checked) == (5, 3 * 3 + 1)
    assert (report.missing, report.orphans, report.unrecoverable) == ([], [], [])
    # Repairing a clean system changes nothing.
    repaired = await _fsck(db, store, repair=True)
    assert (repaired.orphans_deleted, repaired.cutouts_rebuilt) == (0, 0)
    for job in [*done, pending]:
        for key in job.keys:
            assert await _exists(store, key)


async def test_a_missing_cutout_is_reported_then_rebuilt_in_the_format_its_key_names(
    db: Database, store: ObjectStore
) -> None:
    jobs = {
        fmt: await _completed(db, store, ProcessingParams(cutout_format=fmt, webp_quality=60)) for fmt in CutoutFormat
    }
    before = {fmt: await store.get(job.processed) for fmt, job in jobs.items() if job.processed}
    lost = [job.processed for job in jobs.values() if job.processed]
    await store.delete_many(lost)

    found = await _fsck(db, store, repair=False)
    assert not found.clean
    assert sorted(found.missing) == sorted((str(j.job_id), j.processed) for j in jobs.values())
    assert found.cutouts_rebuilt == 0 and not any([await _exists(store, k) for k in lost]), "reporting repairs nothing"

    repaired = await _fsck(db, store, repair=True)
    assert repaired.cutouts_rebuilt == 3 and repaired.unrecoverable == []
    for fmt, job in jobs.items():
        assert job.processed is not None
        assert cutout_format_of(job.processed) is fmt
        head = await store.head(job.processed)
        assert head is not None and head.content_type == CUTOUT_CONTENT_TYPES[fmt][1]
        assert await store.get(job.processed) == before[fmt], f"{fmt}: the same bytes the persister wrote"
    assert (await _fsck(db, store, repair=False)).clean


async def test_a_missing_mask_or_original_is_reported_and_left_for_a_person(db: Database, store: ObjectStore) -> None:
    no_mask = await _completed(db, store)
    no_mask_nor_cutout = await _completed(db, store)
    no_original = await _completed(db, store)
    assert no_mask.mask and no_mask_nor_cutout.mask and no_mask_nor_cutout.processed
    await store.delete_many([no_mask.mask, no_mask_nor_cutout.mask, no_mask_nor_cutout.processed, no_original.original])

    report = await _fsck(db, store, repair=True)

    want = sorted([
        (str(no_mask.job_id), no_mask.mask),
        (str(no_mask_nor_cutout.job_id), no_mask_nor_cutout.mask),
        (str(no_mask_nor_cutout.job_id), no_mask_nor_cutout.processed),
        (str(no_original.job_id), no_original.original),
    ])
    assert sorted(report.missing) == want
    # A cut-out needs both its original and its mask; masks and originals cannot be made here.
    assert sorted(report.unrecoverable) == want and report.cutouts_rebuilt == 0
    assert not await _exists(store, no_mask_nor_cutout.processed)
    assert report.orphans == [], "the others' objects are still referenced"
    for key in (no_mask.original, no_mask.processed, no_original.mask, no_original.processed):
        assert key is not None and await _exists(store, key), f"{key} of a damaged job was deleted"


async def test_orphans_past_the_grace_are_deleted_and_young_ones_kept(db: Database, store: ObjectStore) -> None:
    kept = await _completed(db, store)
    sha = "ab" * 32
    orphans = [
        ObjectKeys.original(sha, "png"),
        ObjectKeys.mask(sha, model_name=MODEL, model_revision=REVISION, threshold_tag="soft"),
        f"processed/{sha[:2]}/not-a-content-hash.webp",
    ]
    foreign = ["incoming/upstream-upload.png", "notes/readme.txt"]  # not fsck's prefixes: never looked at
    for key in orphans + foreign:
        await store.put(key, b"nobody references me", content_type="application/octet-stream")

    # Younger than the grace: an intake may be storing its original right now. Kept, even with repair.
    young = await _fsck(db, store, repair=True, grace=timedelta(hours=1))
    assert young.clean and young.orphans == [] and young.orphans_deleted == 0
    assert all([await _exists(store, k) for k in orphans])

    found = await _fsck(db, store, repair=False)
    assert sorted(found.orphans) == sorted(orphans) and found.orphans_deleted == 0
    assert all([await _exists(store, k) for k in orphans]), "reporting deletes nothing"

    repaired = await _fsck(db, store, repair=True)
    assert repaired.orphans_deleted == 3
    assert not any([await _exists(store, k) for k in orphans])
    for key in kept.keys + foreign:
        assert await _exists(store, key), f"{key} was deleted"
    assert (await _fsck(db, store, repair=False)).clean


class _RacingStore(ObjectStore):
    """The real store, but an intake lands while fsck lists: once the listing of ``prefix`` ends, ``land``
    runs (it inserts a job referencing an object fsck has just listed as unreferenced)."""

    def __init__(self, inner: ObjectStore, prefix: str, land: Any) -> None:
        super().__init__(inner._client, inner.bucket)
        self._prefix = prefix
        self._land = land

    async def iter_keys(self, prefix: str) -> AsyncIterator[StoredObject]:
        async for obj in super().iter_keys(prefix):
            yield obj
        if prefix == self._prefix and self._land is not None:
            land, self._land = self._land, None
            await land()


async def test_an_object_referenced_meanwhile_is_never_deleted(db: Database, store: ObjectStore) -> None:
    data = _photo()
    sha = hashlib.sha256(data).hexdigest()
    original = ObjectKeys.original(sha, "png")
    await store.put(original, data, content_type="image/png")  # stored, its row not yet written
    other = f"original/{sha[:2]}/{'cd' * 32}.png"
    await store.put(other, b"a real orphan in the same shard", content_type="image/png")

    async def land() -> None:
        await _insert(db, uuid7(), data, original, ProcessingParams())

    racing = _RacingStore(store, f"processed/{sha[:2]}/", land)
    with ThreadPoolExecutor(2) as executor:
        report = await Fsck(db, racing, executor).run(repair=True, grace=timedelta(0))

    assert sorted(report.orphans) == sorted([original, other]), "both were unreferenced when listed"
    assert report.orphans_deleted == 1, "re-checked under the lock: the one a job now uses is kept"
    assert await _exists(store, original)
    assert not await _exists(store, other)
    assert (await _fsck(db, store, repair=False)).clean


async def _cli(stack: StackEndpoints, dsn: str, bucket: str, *args: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "RMBG_ENVIRONMENT": "test",
        "RMBG_POSTGRES__DSN": dsn,
        "RMBG_S3__ENDPOINT_URL": stack.s3_endpoint,
        "RMBG_S3__ACCESS_KEY": stack.s3_access_key,
        "RMBG_S3__SECRET_KEY": stack.s3_secret_key,
        "RMBG_S3__BUCKET": bucket,
        "COLUMNS": "250",
        "NO_COLOR": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rmbg.cli", "fsck", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_the_cli_reports_exits_1_and_repairs_with_repair(
    stack: StackEndpoints, maint_dsn: str, db: Database, store: ObjectStore
) -> None:
    job = await _completed(db, store)
    assert job.processed is not None
    await store.delete_many([job.processed])
    stray = ObjectKeys.original("ef" * 32, "png")
    await store.put(stray, b"stray", content_type="image/png")

    code, out = await _cli(stack, maint_dsn, store.bucket)
    assert code == 1, out
    assert "1 missing objects, 0 orphan objects" in out, "the default grace (an hour) hides the new stray"
    assert f"missing  {job.job_id}  {job.processed}" in out

    code, out = await _cli(stack, maint_dsn, store.bucket, "--grace-s", "0")
    assert code == 1, out
    assert "1 missing objects, 1 orphan objects" in out
    assert f"missing  {job.job_id}  {job.processed}" in out and f"orphan   {stray}" in out
    assert "Traceback" not in out
    assert not await _exists(store, job.processed) and await _exists(store, stray), "no --repair: no change"

    code, out = await _cli(stack, maint_dsn, store.bucket, "--repair")
    assert code == 0, out
    assert "1 cut-outs rebuilt" in out and "0 orphans deleted" in out
    assert await _exists(store, job.processed) and await _exists(store, stray)

    code, out = await _cli(stack, maint_dsn, store.bucket, "--repair", "--grace-s", "0")
    assert code == 0 and "1 orphans deleted" in out, out
    assert not await _exists(store, stray)

    assert (await _fsck(db, store, repair=False)).clean

    # What --repair cannot rebuild (a lost original) is not a success: exit 1, so a script stops.
    lost = await _completed(db, store)
    await store.delete_many([lost.original])
    code, out = await _cli(stack, maint_dsn, store.bucket, "--repair", "--grace-s", "0")
    assert code == 1 and "1 unrecoverable" in out, out


async def test_a_mask_under_an_unfinished_jobs_content_is_kept_and_deleting_moves_the_epoch(
    db: Database, store: ObjectStore
) -> None:
    """A pending job may be about to use a stored mask of its content (inference reuses one it finds, the
    persister reads it back) and its own keys are not derivable before its result: fsck keeps every object
    under its content. Deleting any orphan moves the deletion epoch, as retention does, so an intake that
    found the object still there before stores it again."""
    data = _photo()
    pending = await _pending(db, store, data)
    sha = hashlib.sha256(data).hexdigest()
    reusable = ObjectKeys.mask(sha, model_name=MODEL, model_revision=REVISION, threshold_tag="soft")
    await store.put(reusable, _mask(), content_type="image/png")
    stray = ObjectKeys.original("cd" * 32, "png")
    await store.put(stray, b"nobody references me", content_type="image/png")
    async with db.pool.acquire() as conn:
        before = await db.jobs.object_deletion_epoch(conn)

    report = await _fsck(db, store, repair=True)

    assert sorted(report.orphans) == sorted([reusable, stray]), "both unreferenced by any derivable key"
    assert report.orphans_deleted == 1
    assert await _exists(store, reusable) and await _exists(store, pending.original)
    assert not await _exists(store, stray)
    async with db.pool.acquire() as conn:
        assert await db.jobs.object_deletion_epoch(conn) > before
