"""The backup drill: backups that restore, to a point in time, with every object their rows name.

A scratch PostgreSQL 15 of its own (tests/support/pgcluster.py: initdb in /tmp, its own port, the project's
settings profile included, archive_command = pgBackRest into a temporary repository made from the
project's pgbackrest.conf), migrated and filled with jobs whose objects go to the session's SeaweedFS; then,
through the `rmbg` command line as an operator would run it:

    rmbg backup --type full --create-stanza --sha256      (versioning on, full backup, manifest)
    ... more jobs, a noted time T, more jobs, an object deleted, rmbg backup --type incr ...
    rmbg restore --target-time T --pg-path <fresh dir>    (into a second cluster on another port)
    rmbg restore-verify --manifest M --content [--repair]

and the restored database must hold exactly the rows and stats committed by T, each of its objects present
with the manifest's size and checksum once the deleted one is copied back from its version.

Tests run as root here: every server and pgBackRest command runs as the postgres user (runuser), the CLI
through RMBG_BACKUP__RUN_AS=postgres.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import numpy as np
import pytest
from PIL import Image

from rmbg.maintenance.backup import Manifest, load_manifest
from rmbg.maintenance.doctor import DoctorSettings, Verdict, run_doctor
from rmbg.stack import StackEndpoints
from rmbg.stack.postgres import ensure_database
from shared.config import PostgresSettings, S3Settings
from shared.contracts import CutoutFormat, ProcessingParams
from shared.db import Database, open_database
from shared.db.migrate import upgrade
from shared.ids import uuid7
from shared.imaging import encode_mask_png, make_cutout
from shared.storage import ObjectKeys, ObjectStore, open_object_store
from tests.support.pgcluster import ScratchCluster, owner, pgbackrest_config, scratch_root
from tests.support.tools import require_tool

log = logging.getLogger(__name__)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DEPLOY = Path(__file__).parents[2] / "deploy" / "postgres"
STANZA = "rmbg"
MODEL = "drill-model"
# The profile is sized for a 16 GiB database server; the drill's cluster shares a small test machine.
SMALL_MACHINE = {
    "shared_buffers": "'128MB'",
    "effective_cache_size": "'512MB'",
    "maintenance_work_mem": "'64MB'",
    "autovacuum_work_mem": "'32MB'",
    "max_wal_size": "'1GB'",
    "min_wal_size": "'80MB'",
    "wal_keep_size": "0",
    "huge_pages": "off",
}


@dataclass(frozen=True)
class Made:
    job_id: UUID
    keys: tuple[str, ...]


def _photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


async def _make_job(db: Database, store: ObjectStore, seed: int, status: str) -> Made:
    """A job as the pipeline leaves it: its original stored first, then its row; a completed one with its
    mask and cut-out; the stats service's counts for it."""
    data = _photo(seed)
    sha = hashlib.sha256(data).hexdigest()
    params = ProcessingParams()
    original = ObjectKeys.original(sha, "png")
    await store.put(original, data, content_type="image/png")
    at = datetime.now(UTC)
    job_id = uuid7(at)
    keys: tuple[str, ...] = (original,)
    async with db.pool.acquire() as conn, conn.transaction():
        assert await db.jobs.insert_job(
            conn, job_id=job_id, user_id=f"u{seed % 5}", original_ext="png", content_sha256=sha,
            original_bytes=len(data), image_width=64, image_height=48, params=params.canonical(),
            params_hash=params.digest(), model_name=MODEL, source="http", tags=["drill"],
        )
        await db.stats.apply_event(conn, stat_date=at.date(), job_id=job_id, kind="accepted")
    if status == "completed":
        keys = await _complete(db, store, job_id, sha, data)
    elif status == "failed":
        async with db.pool.acquire() as conn, conn.transaction():
            assert await db.jobs.mark_failed(conn, job_id=job_id, error_message="drill", completed_at=at)
            await db.stats.apply_event(conn, stat_date=at.date(), job_id=job_id, kind="failed")
    return Made(job_id, keys)


async def _complete(db: Database, store: ObjectStore, job_id: UUID, sha: str, data: bytes) -> tuple[str, ...]:
    params = ProcessingParams()
    original = ObjectKeys.original(sha, "png")
    mask_key = ObjectKeys.mask(sha, model_name=MODEL, model_revision="r1", threshold_tag="soft")
    processed = ObjectKeys.processed(
        sha, model_name=MODEL, model_revision="r1", params_hash=f"{params.digest()}-webp", extension="webp"
    )
    mask = encode_mask_png(np.full((48, 64), 200, dtype=np.uint8))
    cutout = make_cutout(data, mask, CutoutFormat.WEBP, 90)
    await store.put(mask_key, mask, content_type="image/png")
    await store.put(processed, cutout, content_type="image/webp")
    done = datetime.now(UTC)
    async with db.pool.acquire() as conn, conn.transaction():
        assert await db.jobs.mark_completed(
            conn, job_id=job_id, cutout_format=CutoutFormat.WEBP, mask_bytes=len(mask),
            processed_bytes=len(cutout), model_name=MODEL, model_revision="r1", processing_time_ms=7,
            completed_at=done, reused=False,
        )
        await db.stats.apply_event(
            conn, stat_date=done.date(), job_id=job_id, kind="completed", processing_time_ms=7
        )
    return original, mask_key, processed


async def _fill(db: Database, store: ObjectStore, seeds: range, pattern: tuple[str, ...]) -> list[Made]:
    return [await _make_job(db, store, seed, pattern[i % len(pattern)]) for i, seed in enumerate(seeds)]


async def _snapshot(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        by_status = {r["status"]: r["n"] for r in await conn.fetch(
            "SELECT status, count(*) AS n FROM image_process_jobs GROUP BY status")}
        ids = {r["job_id"] for r in await conn.fetch("SELECT job_id FROM image_process_jobs")}
        stats = dict(await conn.fetchrow(
            "SELECT sum(total_jobs) AS total, sum(completed_jobs) AS completed, sum(failed_jobs) AS failed,"
            " sum(sum_processing_time_ms) AS time_ms FROM processing_stats"))
        tags = await conn.fetchval("SELECT count(*) FROM image_tags")
        users = {r["user_id"]: r["jobs"] for r in await conn.fetch("SELECT user_id, jobs FROM user_job_counts")}
    finally:
        await conn.close()
    return {"by_status": by_status, "ids": ids, "stats": stats, "tags": tags, "users": users}


async def _cli(*args: str, env: dict[str, str], limit_s: float = 300) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rmbg.cli", *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), time.monotonic() - started


async def _wait_archived(dsn: str, timeout_s: float = 90) -> str:
    """Switch to a new WAL segment and wait until the one just closed is in the archive."""
    conn = await asyncpg.connect(dsn)
    try:
        segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = await conn.fetchval("SELECT last_archived_wal FROM pg_stat_archiver")
            if last is not None and last >= segment:
                return str(segment)
            await asyncio.sleep(0.2)
        raise AssertionError(f"WAL segment {segment} not archived within {timeout_s} s")
    finally:
        await conn.close()


async def _wait_promoted(dsn: str, timeout_s: float = 120) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.2)
            continue
        try:
            if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                return time.monotonic() - started
        finally:
            await conn.close()
        await asyncio.sleep(0.2)
    raise AssertionError("the restored cluster did not finish recovery")


def _sha256_of(store_bytes: bytes) -> str:
    return hashlib.sha256(store_bytes).hexdigest()


async def test_backup_then_point_in_time_restore_with_every_object(
    stack: StackEndpoints, record_property: Callable[[str, object], None]
) -> None:
    require_tool("pgbackrest", package="pgbackrest")
    measured: dict[str, Any] = {}
    with scratch_root("rmbg-drill-") as root:
        primary = ScratchCluster(root, "primary")
        config = pgbackrest_config(DEPLOY / "pgbackrest.conf", root, stanza=STANZA, cluster=primary)
        primary.initdb(profile=DEPLOY / "postgresql.conf", settings={
            **SMALL_MACHINE,
            "archive_command": f"'pgbackrest --config={config} --stanza={STANZA} archive-push %p'",
        })
        restored = ScratchCluster(root, "restored")
        primary.start()
        try:
            await _drill(root, primary, restored, config, stack, measured)
        except BaseException:
            log.error("primary log:\n%s", primary.log_tail())
            log.error("restored log:\n%s", restored.log_tail())
            raise
        finally:
            restored.stop()
            primary.stop()
    # What the drill measured: in the JUnit report (pytest --junitxml) and the log (pytest -o log_cli=true).
    record_property("drill", json.dumps(measured, default=str))
    log.warning("drill measured: %s", json.dumps(measured, default=str))


async def _drill(
    root: Path, primary: ScratchCluster, restored: ScratchCluster, config: Path, stack: StackEndpoints,
    measured: dict[str, Any],
) -> None:
    await ensure_database(primary.dsn(), "rmbg")
    dsn = primary.dsn("rmbg")
    await asyncio.to_thread(upgrade, dsn)
    s3 = S3Settings(endpoint_url=stack.s3_endpoint, access_key=stack.s3_access_key,
                    secret_key=stack.s3_secret_key, bucket=f"drill-{secrets.token_hex(4)}")
    env = {
        "RMBG_POSTGRES__DSN": dsn,
        "RMBG_S3__ENDPOINT_URL": stack.s3_endpoint,
        "RMBG_S3__ACCESS_KEY": stack.s3_access_key,
        "RMBG_S3__SECRET_KEY": stack.s3_secret_key,
        "RMBG_S3__BUCKET": s3.bucket,
        "RMBG_BACKUP__CONFIG": str(config),
        "RMBG_BACKUP__STANZA": STANZA,
        **({"RMBG_BACKUP__RUN_AS": owner()} if os.geteuid() == 0 else {}),
    }
    # The project's profile is what the cluster runs with (included, memory lowered, archive pointed here).
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await conn.fetchval("SHOW wal_compression") == "lz4"
        assert await conn.fetchval("SHOW archive_mode") == "on"
    finally:
        await conn.close()

    async with open_database(PostgresSettings(dsn=dsn, max_pool=2)) as db, open_object_store(s3) as store:
        await store.ensure_bucket()
        # Phase A: before the full backup.
        before_backup = await _fill(db, store, range(0, 24), ("completed", "completed", "failed", "pending"))

        code, out, seconds = await _cli("backup", "--type", "full", "--create-stanza", "--sha256", env=env)
        assert code == 0, out
        assert "WARN" not in out and "ERROR" not in out, out
        manifests = sorted((root / "repo" / "rmbg-manifests" / STANZA).glob("*F.json"))
        assert len(manifests) == 1, out
        manifest: Manifest = load_manifest(manifests[0])
        assert manifest.versioning == "Enabled", f"the store answered {manifest.versioning!r} to PutBucketVersioning"
        entries = manifest.by_key()
        a_keys = {k for m in before_backup for k in m.keys}
        assert a_keys <= set(entries), "every object of the backed-up rows is in the manifest"
        for key in a_keys:
            assert entries[key].sha256 == _sha256_of(await store.get(key))
            assert entries[key].version_id
        assert manifest.job_counts == {"completed": 12, "failed": 6, "pending": 6}
        measured["full_backup"] = {"cli_s": round(seconds, 2), "pgbackrest_s": manifest.seconds["backup"],
                                   "db_bytes": manifest.backup.size, "repo_bytes": manifest.backup.repo_size,
                                   "objects": len(manifest.objects), "object_bytes": manifest.object_bytes,
                                   "listing_s": manifest.seconds["listing"], "hashing_s": manifest.seconds["hashing"]}

        # Phase B: after the backup, before the target; two pending jobs of phase A complete now.
        await _fill(db, store, range(100, 116), ("completed", "completed", "completed", "failed"))
        for made in [m for i, m in enumerate(before_backup) if i % 4 == 3][:2]:
            data = _photo(before_backup.index(made))
            await _complete(db, store, made.job_id, hashlib.sha256(data).hexdigest(), data)
        at_target = await _snapshot(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            target = await conn.fetchval("SELECT clock_timestamp()")
        finally:
            await conn.close()
        await asyncio.sleep(1.0)

        # Phase C: after the target: more jobs, an object deleted (as a retention or a mistake would),
        # an incremental backup, and the WAL of it all archived.
        after_target = await _fill(db, store, range(200, 212), ("completed", "failed"))
        victim = next(m for m in before_backup if len(m.keys) == 3).keys[2]
        assert await store.delete_many([victim]) == 1
        code, out, seconds = await _cli("backup", "--type", "incr", env=env)
        assert code == 0, out
        incr = load_manifest(next((root / "repo" / "rmbg-manifests" / STANZA).glob("*I.json")))
        measured["incr_backup"] = {"cli_s": round(seconds, 2), "pgbackrest_s": incr.seconds["backup"],
                                   "copied_bytes": incr.backup.delta, "repo_bytes": incr.backup.repo_delta}
        # Deleted seconds before this backup began (within backup.DELETED_MARGIN): the manifest keeps its last
        # version, marked deleted, so that a restore from this backup can still copy it back.
        assert incr.by_key()[victim].deleted_at is not None
        assert incr.by_key()[victim].version_id == entries[victim].version_id
        await _wait_archived(dsn)

        # The primary's doctor: archiving works, durability holds, partitions are ahead.
        report = await run_doctor(dsn, DoctorSettings(require_archiving=True))
        assert report.check("wal_archiving").verdict is Verdict.OK, report.check("wal_archiving")
        assert report.check("durability").verdict is Verdict.OK
        assert report.check("partitions_ahead").verdict is Verdict.OK

    # Restore to T into a fresh data directory; this copy must not archive into the primary's stanza.
    code, out, seconds = await _cli(
        "restore", "--target-time", target.isoformat(), "--pg-path", str(restored.data), "--archive-mode", "off",
        env=env,
    )
    assert code == 0, out
    assert manifests[0].stem in out, out  # T is before the incremental: the full backup is the one restored
    assert f"rmbg restore-verify --manifest {manifests[0]}" in out
    start_s = restored.start()
    recovery_s = await _wait_promoted(restored.dsn("rmbg"))
    measured["restore"] = {"pgbackrest_restore_s": round(seconds, 2), "start_s": round(start_s, 2),
                           "recovery_s": round(recovery_s, 2)}

    got = await _snapshot(restored.dsn("rmbg"))
    assert got["by_status"] == at_target["by_status"]
    assert got["ids"] == at_target["ids"]
    assert not got["ids"] & {m.job_id for m in after_target}
    assert got["stats"] == at_target["stats"]
    assert got["tags"] == at_target["tags"]
    assert got["users"] == at_target["users"]
    measured["rows"] = {"restored": len(got["ids"]), "by_status": got["by_status"],
                        "written_after_target_and_absent": len(after_target), "stats": got["stats"]}

    # Every restored row's objects, against the manifest: the deleted cut-out is found missing...
    verify_env = {**env, "RMBG_POSTGRES__DSN": restored.dsn("rmbg")}
    code, out, _ = await _cli("restore-verify", "--manifest", str(manifests[0]), "--content", env=verify_env)
    assert code == 1, out
    assert "missing" in out and victim in out, out
    # ... and copied back from the version the manifest names.
    code, out, seconds = await _cli(
        "restore-verify", "--manifest", str(manifests[0]), "--content", "--repair", env=verify_env
    )
    assert code == 0, out
    assert f"restored {victim}" in out, out
    code, out, seconds = await _cli("restore-verify", "--manifest", str(manifests[0]), "--content", env=verify_env)
    assert code == 0, out
    assert " 0 missing, 0 differ" in out, out
    measured["verify"] = {"s": round(seconds, 2), "summary": out.strip().splitlines()[0]}
    async with open_object_store(s3) as store:
        assert _sha256_of(await store.get(victim)) == entries[victim].sha256

    report = await run_doctor(restored.dsn("rmbg"), DoctorSettings())
    assert report.check("partitions_ahead").verdict is Verdict.OK
    assert report.check("durability").verdict is Verdict.OK
