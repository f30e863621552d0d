"""Retention on real PostgreSQL and S3: fill, expire, prove with fsck that nothing is orphaned or lost
(fsck itself: test_fsck.py)."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import numpy as np
import pytest
from PIL import Image

import rmbg.maintenance.retention as retention_module
from rmbg.maintenance.fsck import Fsck
from rmbg.maintenance.retention import Retention
from shared.contracts import CutoutFormat, ProcessingParams
from shared.db import Database
from shared.db.partitions import list_partitions
from shared.ids import uuid7
from shared.imaging import encode_mask_png, make_cutout
from shared.storage import ObjectKeys, ObjectStore

MODEL = "test-model"


@dataclass(frozen=True)
class Made:
    job_id: UUID
    keys: tuple[str, str, str]


def _photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


async def _make_job(db: Database, store: ObjectStore, data: bytes, at: datetime, *, revision: str = "r1") -> Made:
    """A completed job with its three objects, as the pipeline leaves it (``revision``: the model's)."""
    sha = hashlib.sha256(data).hexdigest()
    params = ProcessingParams()
    original = ObjectKeys.original(sha, "png")
    mask_key = ObjectKeys.mask(sha, model_name=MODEL, model_revision=revision, threshold_tag="soft")
    processed = ObjectKeys.processed(
        sha, model_name=MODEL, model_revision=revision, params_hash=f"{params.digest()}-webp", extension="webp"
    )
    mask = encode_mask_png(np.full((48, 64), 200, dtype=np.uint8))
    await store.put(original, data, content_type="image/png")
    await store.put(mask_key, mask, content_type="image/png")
    await store.put(processed, make_cutout(data, mask, CutoutFormat.WEBP, 90), content_type="image/webp")
    job_id = uuid7(at)
    async with db.pool.acquire() as conn:
        assert await db.jobs.insert_job(
            conn, job_id=job_id, user_id="u1", original_ext="png", content_sha256=sha, original_bytes=len(data),
            image_width=64, image_height=48, params=params.canonical(), params_hash=params.digest(),
            model_name=MODEL, source="http", tags=["t"],
        )
        assert await db.jobs.mark_completed(
            conn, job_id=job_id, cutout_format=CutoutFormat.WEBP, mask_bytes=len(mask),
            processed_bytes=1, model_name=MODEL, model_revision=revision, processing_time_ms=5,
            completed_at=at + timedelta(seconds=1), reused=False,
        )
    return Made(job_id, (original, mask_key, processed))


async def _make_pending(db: Database, store: ObjectStore, data: bytes, at: datetime) -> Made:
    """A job still under way: its original and its row (its mask and cut-out keys are not known yet)."""
    sha = hashlib.sha256(data).hexdigest()
    params = ProcessingParams()
    original = ObjectKeys.original(sha, "png")
    await store.put(original, data, content_type="image/png")
    job_id = uuid7(at)
    async with db.pool.acquire() as conn:
        assert await db.jobs.insert_job(
            conn, job_id=job_id, user_id="u1", original_ext="png", content_sha256=sha, original_bytes=len(data),
            image_width=64, image_height=48, params=params.canonical(), params_hash=params.digest(),
            model_name=MODEL, source="http", tags=[],
        )
    return Made(job_id, (original,))


async def _exists(store: ObjectStore, key: str) -> bool:
    return await store.head(key) is not None


@pytest.mark.parametrize("batch", [5000, 1], ids=["one-batch", "a-content-per-batch"])
async def test_retention_drops_months_and_deletes_only_unreferenced_objects(
    db: Database, store: ObjectStore, executor: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    # Batches of one row: each retired content is checked, and its keys deleted, in a batch of its own.
    monkeypatch.setattr(retention_module, "_BATCH", batch)
    now = datetime.now(UTC)
    cutoff = now - timedelta(days=180)
    shared_photo = _photo(1)
    old_shared = await _make_job(db, store, shared_photo, now - timedelta(days=250))
    # The same content made by another model revision: its mask and cut-out are no remaining job's, so they
    # go although the content stays (kept per key, not per content); the original is the content's own.
    old_other_revision = await _make_job(db, store, shared_photo, now - timedelta(days=250, minutes=-1), revision="r0")
    # A content whose remaining job is still under way keeps every key: that job may reuse the stored mask.
    pending_photo = _photo(7)
    old_of_pending = await _make_job(db, store, pending_photo, now - timedelta(days=245), revision="r0")
    old_only = await _make_job(db, store, _photo(2), now - timedelta(days=245))
    older = await _make_job(db, store, _photo(3), now - timedelta(days=215))
    # The cutoff's own month: one job just before the cutoff, one just after.
    before_cut = await _make_job(db, store, _photo(4), cutoff - timedelta(hours=1))
    # Trimmed row by row too, and decided per key the same way: the shared original stays, r2's results go.
    cut_other_revision = await _make_job(db, store, shared_photo, cutoff - timedelta(hours=2), revision="r2")
    after_cut = await _make_job(db, store, _photo(5), cutoff + timedelta(hours=1))
    recent_shared = await _make_job(db, store, shared_photo, now - timedelta(days=2))
    recent = await _make_job(db, store, _photo(6), now - timedelta(days=1))
    under_way = await _make_pending(db, store, pending_photo, now - timedelta(hours=1))
    expired = [old_shared, old_other_revision, old_of_pending, old_only, older, before_cut, cut_other_revision]
    kept = [after_cut, recent_shared, recent, under_way]

    dry = await Retention(db, store).run(cutoff=cutoff, dry_run=True)
    assert dry.jobs_removed == len(expired) and dry.objects_deleted == 0
    for made in expired:
        async with db.pool.acquire() as conn:
            assert await db.jobs.get_job(conn, job_id=made.job_id) is not None

    report = await Retention(db, store).run(cutoff=cutoff)
    assert report.jobs_removed == len(expired)
    async with db.pool.acquire() as conn:
        for made in expired:
            assert await db.jobs.get_job(conn, job_id=made.job_id) is None
        for made in kept:
            assert await db.jobs.get_job(conn, job_id=made.job_id) is not None
        partitions = await list_partitions(conn, table="image_process_jobs")
    old_month = f"y{(now - timedelta(days=250)):%Y}m{(now - timedelta(days=250)):%m}"
    assert not any(old_month in p for p in partitions), "whole expired months are dropped, not deleted from"
    # Objects: the shared content survives through its newer job; everything else expired is gone.
    for made in kept:
        for key in made.keys:
            assert await _exists(store, key), f"referenced object {key} was lost"
    for made in (old_only, older, before_cut):
        for key in made.keys:
            assert not await _exists(store, key), f"expired object {key} was left behind"
    for other in (old_other_revision, cut_other_revision):
        original, *results = other.keys
        assert await _exists(store, original)
        for key in results:
            assert not await _exists(store, key), f"{key} of another revision outlived every row naming it"
    for key in old_of_pending.keys:
        assert await _exists(store, key), f"{key} went while a job of its content is under way"
    assert report.objects_deleted == 9 + 2 + 2 and report.objects_kept_shared == 3 + 3 + 1

    # What the job under way may not need is left to fsck, which sees it unreferenced but keeps it while the
    # job is unfinished, and deletes it once the job has ended.
    fsck = await Fsck(db, store, executor).run(repair=True, grace=timedelta(0))
    assert not fsck.missing and sorted(fsck.orphans) == sorted(old_of_pending.keys[1:]), fsck.summary()
    assert fsck.orphans_deleted == 0
    async with db.pool.acquire() as conn:
        assert await db.jobs.mark_failed(conn, job_id=under_way.job_id, error_message="x", completed_at=now)
    assert (await Fsck(db, store, executor).run(repair=True, grace=timedelta(0))).orphans_deleted == 2
    fsck = await Fsck(db, store, executor).run(repair=False, grace=timedelta(0))
    assert fsck.clean, fsck.summary()


async def test_an_interrupted_retirement_is_finished_by_the_next_run(
    db: Database, store: ObjectStore, executor: ThreadPoolExecutor
) -> None:
    now = datetime.now(UTC)
    month_ago = now - timedelta(days=240)
    made = await _make_job(db, store, _photo(10), month_ago)
    async with db.pool.acquire() as conn, conn.transaction():
        # What a crash right after the detach leaves behind.
        month = month_ago.date().replace(day=1)
        assert await conn.fetchval("SELECT rmbg_retire_month($1)", month) == 1
    report = await Retention(db, store).run(cutoff=now - timedelta(days=180))
    assert report.objects_deleted == 3
    for key in made.keys:
        assert not await _exists(store, key)
    async with db.pool.acquire() as conn:
        assert await conn.fetch("SELECT * FROM rmbg_retired_months()") == []
    assert (await Fsck(db, store, executor).run(repair=False, grace=timedelta(0))).clean
