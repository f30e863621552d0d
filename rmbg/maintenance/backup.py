"""`rmbg backup`, `rmbg restore`, `rmbg restore-verify`: backups of the jobs database that restore, and the
objects they point at (docs/backups.md).

- The database: pgBackRest (deploy/postgres/pgbackrest.conf). PostgreSQL archives every WAL segment with
  ``archive_command = 'pgbackrest --stanza=rmbg archive-push %p'`` (deploy/postgres/postgresql.conf);
  ``rmbg backup`` takes a full, differential or incremental backup; ``rmbg restore`` restores the newest
  backup and replays the archive to its end or to ``--target-time`` (point-in-time recovery).
- The objects: the store keeps them; each backup writes a manifest of every object key (size, ETag, and
  with ``--sha256`` the SHA-256 of the bytes, and the version id where the bucket is versioned) next to
  the backup in the repository, and turns versioning on for the result bucket (where the store supports
  it), so an object deleted or overwritten after the backup can be brought back to the version the
  manifest names.
- ``rmbg restore-verify`` reads every job of a restored database and checks that each object it names
  exists with the manifest's size and checksum; ``--repair`` copies a missing or changed object back from
  the manifest's version.

Why the manifest is taken after the backup: objects are written before the row that names them
(docs/storage.md, "Object keys"), so every row in the backup names an object that existed when the backup
ended, and the listing taken after it covers them; an object retention deleted in between survives as a
noncurrent version (versioning) under a delete marker, and its manifest entry names that version
(``deleted_at`` set). Upstream originals of rejected uploads (``s3://bucket/key``) are not ours: never
listed, never checked.

pgBackRest must run as the cluster's owner, never as root (it refuses most commands as root, and files it
made as root would be unreadable to the postgres user's archive-push). Run as root, these commands run
pgBackRest through ``runuser -u $RMBG_BACKUP__RUN_AS``.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import asyncpg
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import S3Settings
from shared.db.pool import init_connection
from shared.db.queryset import Queries, default_queries
from shared.exceptions import RmbgError

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
PREFIXES = ("original/", "mask/", "processed/")  # the three kinds of object (shared/storage/keys.py)
BackupType = Literal["full", "diff", "incr"]
_NIL_UUID = UUID(int=0)
_RESTORED_SET = re.compile(r"restore backup set (\S+)")
_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
LIFECYCLE_RULE_ID = "rmbg-noncurrent-expiry"  # the one lifecycle rule of the bucket that backups own
# Keys deleted this long before the backup began, or later, go into its manifest as their last version.
# No row of the backup names an object deleted before the backup began (retention deletes rows first,
# objects second: rmbg/maintenance/retention.py); the hour covers the database host's clock (pgBackRest's
# start time) and the store's (the marker's LastModified) disagreeing, and keeps an object lost by mistake
# just before the backup repairable, for the cost of one hour of retention's deletions in the manifest.
DELETED_MARGIN = timedelta(hours=1)


class BackupError(RmbgError):
    """pgBackRest failed, or the configuration cannot work; the message says what to change."""


class BackupSettings(BaseSettings):
    """Where pgBackRest is and how to call it (``RMBG_BACKUP__<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="RMBG_BACKUP__", frozen=True, extra="ignore")

    stanza: str = "rmbg"  # the [rmbg] section of deploy/postgres/pgbackrest.conf
    config: Path = Path("/etc/pgbackrest/pgbackrest.conf")
    pgbackrest: str = "pgbackrest"
    # Run as root, pgBackRest is run as this user (the cluster's owner) through runuser.
    run_as: str | None = None
    # Where manifests go; default: <repo1-path>/rmbg-manifests/<stanza>/ (next to the backups).
    manifest_dir: Path | None = None
    # Objects hashed (--sha256) at once: reading is the cost, the store serves this many in parallel.
    concurrency: int = Field(default=16, ge=1, le=256)
    # Noncurrent object versions (deleted or overwritten since) expire after this many days, by a lifecycle
    # rule: at least the point-in-time window (4 weekly full backups in pgbackrest.conf, 28 days) plus margin.
    noncurrent_days: int = Field(default=35, ge=1)


# -- pgBackRest -------------------------------------------------------------------------------------------


class BackupSet(BaseModel):
    """One backup as `pgbackrest info --output=json` describes it."""

    model_config = ConfigDict(frozen=True)

    label: str
    type: str
    started_at: datetime
    stopped_at: datetime
    size: int  # the database's size as backed up
    delta: int  # what this backup copied (an incremental copies only the changed files)
    repo_size: int  # in the repository, compressed
    repo_delta: int
    lsn_start: str | None = None
    lsn_stop: str | None = None
    wal_start: str | None = None
    wal_stop: str | None = None

    @classmethod
    def from_info(cls, b: dict[str, Any]) -> BackupSet:
        info, lsn, archive = b.get("info", {}), b.get("lsn") or {}, b.get("archive") or {}
        return cls(
            label=b["label"],
            type=b["type"],
            started_at=datetime.fromtimestamp(b["timestamp"]["start"], UTC),
            stopped_at=datetime.fromtimestamp(b["timestamp"]["stop"], UTC),
            size=int(info.get("size", 0)),
            delta=int(info.get("delta", 0)),
            repo_size=int(info.get("repository", {}).get("size", 0)),
            repo_delta=int(info.get("repository", {}).get("delta", 0)),
            lsn_start=lsn.get("start"),
            lsn_stop=lsn.get("stop"),
            wal_start=archive.get("start"),
            wal_stop=archive.get("stop"),
        )


class PgBackRest:
    """Runs pgBackRest commands for one stanza, as the cluster's owner."""

    def __init__(self, settings: BackupSettings) -> None:
        self._s = settings

    def argv(self, *args: str) -> list[str]:
        binary = shutil.which(self._s.pgbackrest)
        if binary is None:
            raise BackupError(
                f"{self._s.pgbackrest} not found: install pgBackRest (make dbtools, or apt-get install pgbackrest)"
            )
        command = [binary, f"--config={self._s.config}", f"--stanza={self._s.stanza}", *args]
        if os.geteuid() != 0:
            return command
        if not self._s.run_as:
            raise BackupError(
                "pgBackRest must run as the cluster's owner, not root: set RMBG_BACKUP__RUN_AS=postgres "
                "(or run this command as that user)"
            )
        return ["runuser", "-u", self._s.run_as, "--", *command]

    async def run(self, *args: str, timeout_s: float = 3600.0) -> str:
        """Run one command; its console output (stdout and stderr), or BackupError with its tail."""
        argv = self.argv(*args)
        log.info("running %s", " ".join(argv))
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BackupError(f"pgbackrest {args[-1]} ran past {timeout_s:.0f} s and was killed") from None
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise BackupError(f"pgbackrest {args[-1]} failed (exit {proc.returncode}):\n{text[-4000:]}")
        return text

    async def info(self) -> list[BackupSet]:
        out = await self.run("--output=json", "info")
        stanzas = json.loads(out)
        if not stanzas or stanzas[0].get("status", {}).get("code") not in (0, 2):  # 2: no backup yet
            raise BackupError(f"pgbackrest info: {stanzas[0].get('status') if stanzas else 'no stanza'}")
        return [BackupSet.from_info(b) for b in stanzas[0].get("backup", [])]

    def config_value(self, option: str) -> str | None:
        """An option of pgbackrest.conf, from the stanza's section first, then [global]."""
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read_string(self._s.config.read_text())
        except OSError as exc:
            raise BackupError(f"cannot read {self._s.config}: {exc}") from exc
        for section in (self._s.stanza, "global"):
            if parser.has_option(section, option):
                return parser.get(section, option).strip()
        return None

    def manifest_dir(self) -> Path:
        if self._s.manifest_dir is not None:
            return self._s.manifest_dir
        if (self.config_value("repo1-type") or "posix") != "posix":
            raise BackupError("repo1 is not a local path: set RMBG_BACKUP__MANIFEST_DIR to where manifests go")
        repo = self.config_value("repo1-path") or "/var/lib/pgbackrest"
        return Path(repo) / "rmbg-manifests" / self._s.stanza


# -- the object store -------------------------------------------------------------------------------------


class ObjectEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    size: int
    etag: str | None = None  # as the store lists it, quotes removed; the MD5 of the bytes for a plain PUT
    sha256: str | None = None  # of the bytes, with --sha256
    version_id: str | None = None  # where the bucket is versioned: the version this manifest saw
    # Set when the key's current entry was a delete marker, made at this time (after the backup began, less
    # DELETED_MARGIN): version_id then names the newest version before it, the one a restored row needs back.
    deleted_at: datetime | None = None


class Manifest(BaseModel):
    """What a backup covers: its pgBackRest set, the rows it had, every object key of the bucket."""

    format: int = MANIFEST_FORMAT
    created_at: datetime
    stanza: str
    backup: BackupSet
    bucket: str
    versioning: str  # what the store answered: Enabled, Suspended, or why it could not
    job_counts: dict[str, int]  # by status, read when the manifest was made (after the backup)
    stats_totals: dict[str, int]
    objects: list[ObjectEntry]
    object_bytes: int
    # Listed, then gone (404) before --sha256 could read them: kept in ``objects`` without a digest.
    vanished: list[str] = Field(default_factory=list)
    seconds: dict[str, float]  # backup, listing, hashing

    def by_key(self) -> dict[str, ObjectEntry]:
        return {o.key: o for o in self.objects}


class BucketAdmin:
    """The bucket operations backups need and services never make: versioning, lifecycle, version listing,
    copying a version back. A client of its own, configured as shared/storage/objects.py configures its."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._c = client
        self.bucket = bucket

    async def enable_versioning(self, *, noncurrent_days: int) -> str:
        """Turn versioning on (S3 PutBucketVersioning) and expire noncurrent versions after the window;
        the store's answer, as GetBucketVersioning reports it, or why it refused."""
        try:
            await self._c.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        except (ClientError, BotoCoreError) as exc:
            return f"refused: {_error(exc)}"
        try:
            status = (await self._c.get_bucket_versioning(Bucket=self.bucket)).get("Status") or "not enabled"
        except (ClientError, BotoCoreError) as exc:
            return f"unknown: GetBucketVersioning failed: {_error(exc)}"
        if status == "Enabled":
            await self._put_lifecycle_rule(noncurrent_days)
        return str(status)

    async def _put_lifecycle_rule(self, noncurrent_days: int) -> None:
        """Add or update the project's rule (by its ID), keeping every other rule of the bucket:
        PutBucketLifecycleConfiguration replaces the whole configuration, and an operator's rules (aborting
        incomplete multipart uploads, say) must survive every backup run."""
        rule = {
            "ID": LIFECYCLE_RULE_ID,
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "NoncurrentVersionExpiration": {"NoncurrentDays": noncurrent_days},
            # A delete marker left with no version under it (every version expired by the rule above, 35
            # days on) names nothing a restore could copy back: removing it keeps version listings short.
            # A marker with a version under it is never removed, so restores and the manifest's listing
            # still find the previous version.
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        }
        try:
            current = (await self._c.get_bucket_lifecycle_configuration(Bucket=self.bucket)).get("Rules", [])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                log.warning("lifecycle rules unreadable, left as they are: %s", _error(exc))
                return  # writing ours alone would delete rules we could not read
            current = []
        except BotoCoreError as exc:
            log.warning("lifecycle rules unreadable, left as they are: %s", _error(exc))
            return
        if rule in current:
            return  # already there, as the store stored it: no write
        rules = [r for r in current if r.get("ID") != LIFECYCLE_RULE_ID] + [rule]
        try:
            await self._c.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": rules}
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning("lifecycle rule for noncurrent versions refused: %s", _error(exc))

    async def versioning(self) -> str | None:
        try:
            status = (await self._c.get_bucket_versioning(Bucket=self.bucket)).get("Status")
        except (ClientError, BotoCoreError):
            return None
        return str(status) if status else None

    async def list_current(
        self, prefix: str, *, versioned: bool, deleted_since: datetime | None = None
    ) -> AsyncIterator[ObjectEntry]:
        """The current object of every key under ``prefix`` (with its version id when versioned). Versioned,
        also every key whose current entry is a delete marker made at or after ``deleted_since`` (None:
        any), as its newest version before the marker (``deleted_at`` set): a row restored from a backup
        that began before the delete still names it, and --repair copies that version back."""
        if not versioned:
            paginator = self._c.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectEntry(key=item["Key"], size=int(item["Size"]), etag=_etag(item.get("ETag")))
            return
        deleted: dict[str, datetime] = {}  # key -> its current delete marker's time
        before: dict[str, dict[str, Any]] = {}  # key -> its newest version under that marker, so far
        paginator = self._c.get_paginator("list_object_versions")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            # S3 lists a key's entries newest first, the current delete marker ahead of (on this page or an
            # earlier one) the versions under it; a page holds markers and versions in separate lists.
            for marker in page.get("DeleteMarkers", []):
                if marker.get("IsLatest") and (deleted_since is None or marker["LastModified"] >= deleted_since):
                    deleted[marker["Key"]] = marker["LastModified"]
            for item in page.get("Versions", []):
                if item.get("IsLatest"):
                    yield _entry(item)
                elif item["Key"] in deleted:
                    seen = before.get(item["Key"])
                    # LastModified has 1 s resolution (SeaweedFS): on a tie the first listed is the newest.
                    if seen is None or item["LastModified"] > seen["LastModified"]:
                        before[item["Key"]] = item
        for key, item in before.items():
            yield _entry(item, deleted_at=deleted[key])

    async def head(self, key: str) -> ObjectEntry | None:
        try:
            resp = await self._c.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise BackupError(f"HEAD {key}: {_error(exc)}") from exc
        return ObjectEntry(key=key, size=int(resp["ContentLength"]), etag=_etag(resp.get("ETag")),
                           version_id=resp.get("VersionId"))

    async def digests(self, key: str, version_id: str | None = None) -> tuple[str, str] | None:
        """(MD5, SHA-256) of the object's bytes (of ``version_id`` where given), read in chunks; None when
        it is gone (404: the key deleted, or the version expired)."""
        md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        version = {"VersionId": version_id} if version_id else {}
        try:
            resp = await self._c.get_object(Bucket=self.bucket, Key=key, **version)
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise BackupError(f"GET {key}: {_error(exc)}") from exc
        async with resp["Body"] as body:
            while chunk := await body.read(1 << 20):
                md5.update(chunk)
                sha.update(chunk)
        return md5.hexdigest(), sha.hexdigest()

    async def restore_version(self, key: str, version_id: str) -> None:
        """Make ``version_id`` the current object of ``key`` again (a copy onto itself: a new version)."""
        await self._c.copy_object(
            Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key, "VersionId": version_id}
        )


def _entry(item: dict[str, Any], *, deleted_at: datetime | None = None) -> ObjectEntry:
    """A manifest entry from one Versions item of ListObjectVersions."""
    return ObjectEntry(key=item["Key"], size=int(item["Size"]), etag=_etag(item.get("ETag")),
                       version_id=item.get("VersionId"), deleted_at=deleted_at)


def _not_found(exc: ClientError) -> bool:
    """A 404: no such key, or (GET with VersionId) no such version."""
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound", "NoSuchVersion")


def _etag(raw: str | None) -> str | None:
    return raw.strip('"') if raw else None


def _error(exc: ClientError | BotoCoreError) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()
    return str(exc)


@contextlib.asynccontextmanager
async def open_bucket_admin(settings: S3Settings) -> AsyncIterator[BucketAdmin]:
    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},
        max_pool_connections=settings.max_pool_connections,
        retries={"max_attempts": 4, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    async with get_session().create_client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key.get_secret_value(),
        config=config,
    ) as client:
        yield BucketAdmin(client, settings.bucket)


async def _bounded(items: list[Any], limit: int, fn: Callable[[Any], Awaitable[Any]]) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(item: Any) -> Any:
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


# -- backup -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupReport:
    manifest_path: Path
    manifest: Manifest

    def summary(self) -> str:
        b, m = self.manifest.backup, self.manifest
        return (
            f"backup {b.label} ({b.type}): database {b.size / 2**20:.1f} MiB, copied {b.delta / 2**20:.1f} MiB, "
            f"{b.repo_delta / 2**20:.1f} MiB in the repository, in {m.seconds['backup']:.1f} s; "
            f"manifest: {len(m.objects)} objects, {m.object_bytes / 2**20:.1f} MiB, in {m.seconds['listing']:.1f} s"
            + (f" + {m.seconds['hashing']:.1f} s hashing" if m.seconds.get("hashing") else "")
            + (f" ({len(m.vanished)} gone before they were read: no digest)" if m.vanished else "")
            + f"; versioning: {m.versioning}; {self.manifest_path}"
        )


async def run_backup(
    dsn: str,
    s3: S3Settings,
    settings: BackupSettings,
    *,
    kind: BackupType = "incr",
    create_stanza: bool = False,
    sha256: bool = False,
    versioning: bool = True,
    queries: Queries | None = None,
) -> BackupReport:
    """Versioning on, a pgBackRest backup, then the manifest of rows and objects written next to it."""
    pgbr = PgBackRest(settings)
    manifest_dir = pgbr.manifest_dir()
    async with open_bucket_admin(s3) as bucket:
        answer = (await bucket.enable_versioning(noncurrent_days=settings.noncurrent_days) if versioning
                  else (await bucket.versioning()) or "not enabled")
        if create_stanza:
            await pgbr.run("stanza-create")
            await pgbr.run("check")  # forces a WAL switch and waits for it in the archive
        started = time.monotonic()
        await pgbr.run(f"--type={kind}", "backup")
        backup_s = time.monotonic() - started
        sets = await pgbr.info()
        if not sets:
            raise BackupError("pgbackrest reported no backup after a successful backup command")
        newest = sets[-1]

        q = queries or default_queries()
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await init_connection(conn)
            job_counts = {r["status"]: int(r["jobs"]) for r in await q.backup_job_counts(conn)}
            stats_row = await q.backup_stats_totals(conn)
            stats_totals = {k: int(v) for k, v in dict(stats_row or {}).items()}
        finally:
            await conn.close()

        started = time.monotonic()
        objects = await list_objects(
            bucket, versioned=answer == "Enabled", deleted_since=newest.started_at - DELETED_MARGIN
        )
        listing_s = time.monotonic() - started
        hashing_s = 0.0
        vanished: list[str] = []
        if sha256:
            started = time.monotonic()
            objects, vanished = await hash_objects(bucket, objects, concurrency=settings.concurrency)
            hashing_s = time.monotonic() - started

    manifest = Manifest(
        created_at=datetime.now(UTC),
        stanza=settings.stanza,
        backup=newest,
        bucket=s3.bucket,
        versioning=answer,
        job_counts=job_counts,
        stats_totals=stats_totals,
        objects=sorted(objects, key=lambda o: o.key),
        object_bytes=sum(o.size for o in objects),
        vanished=vanished,
        seconds={"backup": round(backup_s, 3), "listing": round(listing_s, 3), "hashing": round(hashing_s, 3)},
    )
    path = _write_manifest(manifest_dir, manifest, owner=settings.run_as if os.geteuid() == 0 else None)
    return BackupReport(path, manifest)


async def list_objects(
    bucket: BucketAdmin, *, versioned: bool, deleted_since: datetime | None = None
) -> list[ObjectEntry]:
    """Every key under the three prefixes, as BucketAdmin.list_current lists it."""
    return [o for prefix in PREFIXES
            async for o in bucket.list_current(prefix, versioned=versioned, deleted_since=deleted_since)]


async def hash_objects(
    bucket: BucketAdmin, objects: list[ObjectEntry], *, concurrency: int
) -> tuple[list[ObjectEntry], list[str]]:
    """The entries with the SHA-256 of the version each names (the current object where unversioned), and
    the keys gone since the listing, kept without a digest: hashing a large bucket takes hours, and one
    object deleted meanwhile (retention) must not cost the backup its manifest."""

    async def hashed(o: ObjectEntry) -> ObjectEntry:
        found = await bucket.digests(o.key, o.version_id)
        return o if found is None else o.model_copy(update={"sha256": found[1]})

    done: list[ObjectEntry] = await _bounded(objects, concurrency, hashed)
    vanished = [o.key for o in done if o.sha256 is None]
    if vanished:
        log.warning("%d listed objects were gone when hashed (kept without a digest), e.g. %s",
                    len(vanished), vanished[0])
    return done, vanished


def _write_manifest(directory: Path, manifest: Manifest, *, owner: str | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{manifest.backup.label}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.model_dump_json(indent=1))
    os.replace(tmp, path)  # a reader never sees half a manifest
    if owner:  # next to the backups, which the cluster's owner manages
        for made in (directory.parent, directory, path) if directory.parent.name == "rmbg-manifests" else (
            directory, path
        ):
            shutil.chown(made, owner, owner)
    return path


def load_manifest(path: Path) -> Manifest:
    return Manifest.model_validate_json(path.read_text())


def manifest_path_for(settings: BackupSettings, label: str) -> Path:
    return PgBackRest(settings).manifest_dir() / f"{label}.json"


# -- restore ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreReport:
    pg_path: Path
    backup_set: str | None
    target_time: datetime | None
    seconds: float
    manifest_path: Path | None

    def summary(self) -> str:
        target = f"to {self.target_time.isoformat()}" if self.target_time else "to the end of the archive"
        return (f"restored backup set {self.backup_set} into {self.pg_path} in {self.seconds:.1f} s; recovery {target} "
                "runs when PostgreSQL starts on it, then promotes")


async def run_restore(
    settings: BackupSettings,
    *,
    target_time: datetime | None = None,
    backup_set: str | None = None,
    pg_path: Path | None = None,
    delta: bool = False,
    archive_mode: Literal["preserve", "off"] = "preserve",
) -> RestoreReport:
    """pgBackRest restore into ``pg_path`` (default: the stanza's pg1-path), to the archive's end or to
    ``target_time``; PostgreSQL replays and promotes when started on it."""
    if target_time is not None and target_time.tzinfo is None:
        raise BackupError("--target-time needs a time zone (e.g. 2026-05-01T12:00:00+00:00): it is ambiguous without")
    pgbr = PgBackRest(settings)
    args = ["--log-level-console=info", f"--archive-mode={archive_mode}"]
    if pg_path is not None:
        _prepare_data_dir(pg_path, owner=settings.run_as if os.geteuid() == 0 else None)
        args.append(f"--pg1-path={pg_path}")
    if backup_set:
        args.append(f"--set={backup_set}")
    if delta:
        args.append("--delta")
    if target_time is not None:
        stamp = target_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        args += ["--type=time", f"--target={stamp}", "--target-action=promote"]
    started = time.monotonic()
    out = await pgbr.run(*args, "restore")
    seconds = time.monotonic() - started
    found = _RESTORED_SET.search(out)
    label = found.group(1).rstrip(",") if found else backup_set
    manifest = manifest_path_for(settings, label) if label else None
    return RestoreReport(
        pg_path=pg_path or Path(pgbr.config_value("pg1-path") or ""),
        backup_set=label,
        target_time=target_time,
        seconds=seconds,
        manifest_path=manifest if manifest and manifest.exists() else None,
    )


def _prepare_data_dir(path: Path, *, owner: str | None) -> None:
    """PostgreSQL wants its data directory owned by its user with mode 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    if owner:
        shutil.chown(path, owner, owner)


# -- verify -----------------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    rows: int = 0
    keys: int = 0
    in_manifest: int = 0
    newer_than_manifest: int = 0  # named by rows written after the manifest: checked for existence only
    # s3://bucket/key originals of rejected uploads name the upstream's object: not ours, not checked
    # (retention and fsck skip them too).
    foreign: int = 0
    content_checked: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (job_id, key)
    mismatched: list[tuple[str, str, str]] = field(default_factory=list)  # (job_id, key, what differs)
    repaired: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.missing and not self.mismatched

    def summary(self) -> str:
        return (
            f"restore-verify: {self.rows} rows, {self.keys} object keys ({self.in_manifest} in the manifest, "
            f"{self.newer_than_manifest} newer; {self.foreign} upstream s3:// names skipped), "
            f"{self.content_checked} contents hashed; {len(self.missing)} missing, "
            f"{len(self.mismatched)} differ from the manifest; {len(self.repaired)} restored from their version; "
            f"{self.seconds:.1f} s"
        )


async def verify_restore(
    dsn: str,
    s3: S3Settings,
    manifest: Manifest,
    *,
    content: bool = False,
    repair: bool = False,
    concurrency: int = 16,
    page_rows: int = 2000,
    queries: Queries | None = None,
) -> VerifyReport:
    """Every object key of every job in the database at ``dsn``: present, with the manifest's size (and with
    ``content`` its checksum); ``repair`` copies the manifest's version back where it is missing or differs."""
    q = queries or default_queries()
    entries = manifest.by_key()
    report = VerifyReport()
    started = time.monotonic()
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await init_connection(conn)
        async with open_bucket_admin(s3.model_copy(update={"bucket": manifest.bucket})) as bucket:
            after: tuple[datetime, UUID] = (datetime.min.replace(tzinfo=UTC), _NIL_UUID)
            while True:
                rows = await q.restore_object_page(
                    conn, after_created=after[0], after_job=after[1], max_rows=page_rows
                )
                if not rows:
                    break
                after = (rows[-1]["created_at"], rows[-1]["job_id"])
                report.rows += len(rows)
                named = [(str(r["job_id"]), k) for r in rows
                         for k in (r["original_path"], r["mask_path"], r["processed_path"]) if k]
                pairs = [(job_id, k) for job_id, k in named if not k.startswith("s3://")]
                report.foreign += len(named) - len(pairs)
                results = await _bounded(
                    pairs, concurrency, lambda p: _check_key(bucket, entries.get(p[1]), p[1], content=content)
                )
                for (job_id, key), problem in zip(pairs, results, strict=True):
                    report.keys += 1
                    entry = entries.get(key)
                    if entry is None:
                        report.newer_than_manifest += 1
                    else:
                        report.in_manifest += 1
                    if content and entry is not None and problem != "missing":
                        report.content_checked += 1
                    if problem is None:
                        continue
                    if repair and entry is not None and entry.version_id:
                        await bucket.restore_version(key, entry.version_id)
                        if await _check_key(bucket, entry, key, content=content) is None:
                            report.repaired.append(key)
                            continue
                    if problem == "missing":
                        report.missing.append((job_id, key))
                    else:
                        report.mismatched.append((job_id, key, problem))
    finally:
        await conn.close()
    report.seconds = time.monotonic() - started
    return report


async def _check_key(bucket: BucketAdmin, entry: ObjectEntry | None, key: str, *, content: bool) -> str | None:
    """None when the object is as the manifest says; else "missing" or what differs."""
    found = await bucket.head(key)
    if found is None:
        return "missing"
    if entry is None:
        return None
    if found.size != entry.size:
        return f"size {found.size} != {entry.size}"
    if not content:
        return None
    found_digests = await bucket.digests(key)
    if found_digests is None:
        return "missing"  # deleted between the HEAD and the GET
    md5, sha = found_digests
    if entry.sha256 and sha != entry.sha256:
        return f"sha256 {sha[:12]}... != {entry.sha256[:12]}..."
    if entry.etag and _PLAIN_MD5.match(entry.etag) and md5 != entry.etag:
        return f"md5 {md5} != etag {entry.etag}"
    return None
