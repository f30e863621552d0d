"""The object side of `rmbg backup` / `rmbg restore-verify`, without pgBackRest: the manifest's listing and
hashing, the lifecycle rule, and restore-verify, on the session's SeaweedFS and a migrated database of
the test's own (the drill, tests/rmbg/test_backup_restore.py, runs them after real backups)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from rmbg.maintenance.backup import (
    LIFECYCLE_RULE_ID,
    BackupSet,
    BucketAdmin,
    Manifest,
    ObjectEntry,
    hash_objects,
    list_objects,
    open_bucket_admin,
    verify_restore,
)
from rmbg.stack import StackEndpoints
from shared.config import S3Settings
from shared.contracts import ProcessingParams
from shared.db import Database
from shared.ids import uuid7
from shared.storage import ObjectKeys, ObjectStore
from tests.support.jobs import insert_rejected_upload

MODEL = "backup-model"


@pytest.fixture
def s3(stack: StackEndpoints) -> S3Settings:
    return S3Settings(
        endpoint_url=stack.s3_endpoint, access_key=stack.s3_access_key, secret_key=SecretStr(stack.s3_secret_key),
        bucket=f"backup-{secrets.token_hex(4)}",
    )


@pytest.fixture
async def admin(s3: S3Settings) -> AsyncIterator[BucketAdmin]:
    """A versioned bucket of its own, as `rmbg backup` leaves it."""
    async with open_bucket_admin(s3) as bucket:
        await bucket._c.create_bucket(Bucket=s3.bucket)
        assert await bucket.enable_versioning(noncurrent_days=35) == "Enabled"
        yield bucket


async def _put(bucket: BucketAdmin, key: str, data: bytes) -> str:
    """Store ``data`` under ``key``; the version id the store gave it."""
    resp = await bucket._c.put_object(Bucket=bucket.bucket, Key=key, Body=data)
    return str(resp["VersionId"])


async def _delete(bucket: BucketAdmin, key: str, version_id: str | None = None) -> None:
    """A delete marker (a plain DELETE of a versioned key), or with ``version_id`` that version for good."""
    await bucket._c.delete_object(Bucket=bucket.bucket, Key=key, **({"VersionId": version_id} if version_id else {}))


def _manifest(bucket: str, objects: list[ObjectEntry]) -> Manifest:
    now = datetime.now(UTC)
    backup = BackupSet(label="20260101-000000F", type="full", started_at=now, stopped_at=now, size=0, delta=0,
                       repo_size=0, repo_delta=0)
    return Manifest(created_at=now, stanza="rmbg", backup=backup, bucket=bucket, versioning="Enabled",
                    job_counts={}, stats_totals={}, objects=objects, object_bytes=sum(o.size for o in objects),
                    seconds={})


async def _pending_job(db: Database, bucket: BucketAdmin, data: bytes) -> str:
    """A job under way, as intake leaves it: its original stored, then its row; the original's key."""
    sha = hashlib.sha256(data).hexdigest()
    key = ObjectKeys.original(sha, "png")
    await _put(bucket, key, data)
    params = ProcessingParams()
    async with db.pool.acquire() as conn:
        assert await db.jobs.insert_job(
            conn, job_id=uuid7(), user_id="u1", original_ext="png", content_sha256=sha, original_bytes=len(data),
            image_width=4, image_height=4, params=params.canonical(), params_hash=params.digest(),
            model_name=MODEL, source="http", tags=[],
        )
    return key



async def test_restore_verify_skips_an_upstream_original(
    maint_dsn: str, db: Database, admin: BucketAdmin, s3: S3Settings
) -> None:
    ours = await _pending_job(db, admin, b"a photo")
    await insert_rejected_upload(db, model_name=MODEL)
    manifest = _manifest(s3.bucket, await list_objects(admin, versioned=True))

    report = await verify_restore(maint_dsn, s3, manifest, content=True, repair=True)

    assert report.clean, (report.summary(), report.missing)
    assert (report.rows, report.keys, report.in_manifest, report.foreign) == (2, 1, 1, 1)
    assert report.repaired == [] and ours in manifest.by_key()
    assert "1 upstream s3:// names skipped" in report.summary()


async def test_a_key_deleted_after_the_backup_began_is_in_the_manifest_and_repaired(
    maint_dsn: str, db: Database, admin: BucketAdmin, s3: S3Settings
) -> None:
    key = await _pending_job(db, admin, b"first bytes")
    await _put(admin, key, b"second bytes")  # an overwrite: the newest version is the one a restore needs
    kept = await _put(admin, "mask/kept.png", b"kept")
    began = datetime.now(UTC) - timedelta(minutes=5)
    # By retention (DeleteObjects, as it deletes), after the backup began and before its listing.
    assert await ObjectStore(admin._c, s3.bucket).delete_many([key]) == 1

    objects = {o.key: o for o in await list_objects(admin, versioned=True, deleted_since=began)}

    entry = objects[key]
    assert entry.deleted_at is not None and entry.version_id and entry.size == len(b"second bytes")
    got = await admin._c.get_object(Bucket=s3.bucket, Key=key, VersionId=entry.version_id)
    async with got["Body"] as body:
        assert await body.read() == b"second bytes"
    assert objects["mask/kept.png"].version_id == kept and objects["mask/kept.png"].deleted_at is None
    # A key deleted before the backup began (less the margin run_backup adds) is named by no row of it.
    later = await list_objects(admin, versioned=True, deleted_since=datetime.now(UTC) + timedelta(minutes=5))
    assert key not in {o.key for o in later}

    # The restored row names it: restore-verify finds it missing and --repair copies that version back.
    manifest = _manifest(s3.bucket, list(objects.values()))
    found = await verify_restore(maint_dsn, s3, manifest)
    assert found.missing == [(found.missing[0][0], key)] and found.in_manifest == 1
    repaired = await verify_restore(maint_dsn, s3, manifest, content=True, repair=True)
    assert repaired.clean and repaired.repaired == [key], repaired.summary()
    assert (await admin.digests(key)) == (hashlib.md5(b"second bytes").hexdigest(),
                                          hashlib.sha256(b"second bytes").hexdigest())


async def test_hashing_reads_the_listed_version_and_survives_an_object_gone_since(admin: BucketAdmin) -> None:
    await _put(admin, "original/overwritten.png", b"listed bytes")
    gone = await _put(admin, "original/gone.png", b"soon gone")
    await _put(admin, "processed/still.webp", b"still here")
    listed = await list_objects(admin, versioned=True)
    await _put(admin, "original/overwritten.png", b"written after the listing")
    await _delete(admin, "original/gone.png", gone)  # the listed version itself, for good (expired)

    hashed, vanished = await hash_objects(admin, listed, concurrency=4)

    by_key = {o.key: o for o in hashed}
    assert by_key["original/overwritten.png"].sha256 == hashlib.sha256(b"listed bytes").hexdigest()
    assert by_key["processed/still.webp"].sha256 == hashlib.sha256(b"still here").hexdigest()
    assert vanished == ["original/gone.png"] and by_key["original/gone.png"].sha256 is None


async def test_hashing_an_unversioned_bucket_survives_an_object_deleted_since(s3: S3Settings) -> None:
    async with open_bucket_admin(s3) as bucket:
        await bucket._c.create_bucket(Bucket=s3.bucket)
        for key in ("original/a.png", "original/b.png"):
            await bucket._c.put_object(Bucket=s3.bucket, Key=key, Body=key.encode())
        listed = await list_objects(bucket, versioned=False)
        await _delete(bucket, "original/a.png")

        hashed, vanished = await hash_objects(bucket, listed, concurrency=4)

    assert vanished == ["original/a.png"]
    assert [o.sha256 for o in hashed] == [None, hashlib.sha256(b"original/b.png").hexdigest()]


async def _rules(bucket: BucketAdmin) -> dict[str, dict[str, Any]]:
    resp = await bucket._c.get_bucket_lifecycle_configuration(Bucket=bucket.bucket)
    return {r["ID"]: r for r in resp["Rules"]}


async def test_the_lifecycle_rule_keeps_the_operators_rules(s3: S3Settings) -> None:
    operators: list[dict[str, Any]] = [
        {"ID": "abort-multipart", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}},
        {"ID": "tmp-expiry", "Status": "Enabled", "Filter": {"Prefix": "tmp/"}, "Expiration": {"Days": 3}},
    ]
    async with open_bucket_admin(s3) as bucket:
        await bucket._c.create_bucket(Bucket=s3.bucket)
        # No configuration yet: ours alone.
        assert await bucket.enable_versioning(noncurrent_days=35) == "Enabled"
        assert list(await _rules(bucket)) == [LIFECYCLE_RULE_ID]
        ours = (await _rules(bucket))[LIFECYCLE_RULE_ID]
        assert ours["NoncurrentVersionExpiration"] == {"NoncurrentDays": 35}
        assert ours["Expiration"] == {"ExpiredObjectDeleteMarker": True}

        # An operator's rules, and ours from an earlier run with another window: theirs kept, ours updated.
        await bucket._c.put_bucket_lifecycle_configuration(
            Bucket=s3.bucket, LifecycleConfiguration={"Rules": [*operators, {**ours, "NoncurrentVersionExpiration": {
                "NoncurrentDays": 10}}]},
        )
        assert await bucket.enable_versioning(noncurrent_days=42) == "Enabled"
        rules = await _rules(bucket)
        assert sorted(rules) == sorted(["abort-multipart", "tmp-expiry", LIFECYCLE_RULE_ID])
        assert [rules[r["ID"]] for r in operators] == operators
        assert rules[LIFECYCLE_RULE_ID]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 42}

        # Run again unchanged: still the same three rules.
        await bucket.enable_versioning(noncurrent_days=42)
        assert await _rules(bucket) == rules
