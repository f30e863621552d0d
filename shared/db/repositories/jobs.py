"""Jobs: intake, state transitions guarded by status, and the design's read queries.

Every method takes the connection first and keyword-only arguments after it; the caller owns the
connection and any surrounding transaction. Transitions are idempotent: each UPDATE names the states
it may leave in its WHERE clause and returns the new row, or None when nothing moved (already there,
or further on). The BEFORE UPDATE trigger of migration 0001 backs this up for any other writer.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple, TypedDict, TypeVar, cast
from uuid import UUID

import asyncpg

from shared.contracts.events import CutoutFormat
from shared.db.models import JobRecord, JobSource, JobStatus, UserJobCount
from shared.db.partitions import ensure_partitions, month_start
from shared.db.queryset import Queries, default_queries
from shared.exceptions import RmbgError
from shared.failures import clean_text
from shared.ids import uuid7_time

# by_params' rare-value path (migration 0012). At 10M jobs the created_at walk took at most 1.3 ms p50 for
# values above ~1% of the jobs and 4-10 ms below; per hash, 0.5-0.9 ms for values on few hashes.
RARE_PARAMS_SHARE = 0.01
RARE_PARAMS_MAX_HASHES = 16
MAX_PAGE = 1000  # a larger page is a scan in disguise; callers page with the cursor instead
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_V1 = struct.Struct(">Bq16s")  # version, microseconds since epoch, job id: 25 bytes, 34 chars


class _NewJob(TypedDict):
    # insert_job's parameters, built once and sent twice when a month's partition was missing. A TypedDict,
    # so that mypy checks the keys against the statement's method as it would check keyword arguments.
    job_id: UUID
    created_at: datetime
    user_id: str
    original_path: str | None
    original_ext: str | None
    status: JobStatus
    error_message: str | None
    image_width: int | None
    image_height: int | None
    file_size_kb: int
    params: dict[str, Any]
    params_hash: str
    content_sha256: bytes
    model_name: str
    original_bytes: int
    source: JobSource


class _ListFilters(TypedDict):
    # The filters the list_jobs statements share (see list_jobs); the walks also take params, the per-hash
    # read has the params in its hashes.
    status: str | None
    created_from: datetime | None
    created_to: datetime | None
    cursor_created_at: datetime | None
    cursor_job_id: UUID | None
    limit: int


class Started(NamedTuple):
    """One pending -> processing transition for :meth:`JobsRepository.mark_processing_many`."""

    job_id: UUID
    started_at: datetime
    attempt: int


class Completion(NamedTuple):
    """One -> completed transition for :meth:`JobsRepository.mark_completed_many` (mark_completed's arguments)."""

    job_id: UUID
    cutout_format: CutoutFormat  # the mask and cut-out keys derive from the row and this (ObjectKeys)
    mask_bytes: int | None
    processed_bytes: int | None
    model_name: str
    model_revision: str | None
    processing_time_ms: int
    completed_at: datetime
    reused: bool


class Failure(NamedTuple):
    """One -> failed transition for :meth:`JobsRepository.mark_failed_many`."""

    job_id: UUID
    error_message: str
    completed_at: datetime


_T = TypeVar("_T", Started, Completion, Failure)


def _unique(items: list[_T]) -> list[_T]:
    """The first item per job id, in job_id order (see the batched transitions)."""
    first: dict[UUID, _T] = {}
    for item in items:
        first.setdefault(item.job_id, item)
    return [first[k] for k in sorted(first)]


class InvalidCursor(RmbgError, ValueError):
    """A pagination cursor that this code did not make (or a newer, incompatible one)."""


def _by_id(rows: list[asyncpg.Record]) -> dict[UUID, JobRecord]:
    records = (JobRecord.from_row(row) for row in rows)
    return {record.job_id: record for record in records}


def encode_cursor(created_at: datetime, job_id: UUID) -> str:
    """An opaque, URL-safe cursor for the position just after (created_at, job_id) in newest-first order."""
    micros = (_aware(created_at) - _EPOCH) // timedelta(microseconds=1)
    raw = _CURSOR_V1.pack(1, micros, job_id.bytes)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The (created_at, job_id) position an :func:`encode_cursor` string stands for."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, micros, id_bytes = _CURSOR_V1.unpack(raw)
        if version != 1:
            raise InvalidCursor(f"unsupported cursor version {version}")
        return _EPOCH + timedelta(microseconds=micros), UUID(bytes=id_bytes)
    except (binascii.Error, struct.error, ValueError, OverflowError) as exc:
        if isinstance(exc, InvalidCursor):
            raise
        raise InvalidCursor("malformed cursor") from exc


class JobsRepository:
    """SQL in shared/db/queries/jobs.sql. Construct once per process and share."""

    def __init__(self, queries: Queries | None = None) -> None:
        self._q = queries or default_queries()

    # -- intake -----------------------------------------------------------------------------------

    async def insert_job(
        self,
        conn: asyncpg.Connection,
        *,
        job_id: UUID,
        user_id: str,
        content_sha256: str,
        original_bytes: int,
        image_width: int | None,
        image_height: int | None,
        params: dict[str, Any],
        params_hash: str,
        model_name: str,
        source: JobSource,
        tags: list[str],
        status: Literal[JobStatus.PENDING, JobStatus.FAILED] = JobStatus.PENDING,
        error_message: str | None = None,
        original_ext: str | None = None,
        original_path: str | None = None,
    ) -> bool:
        """Insert the job once; True when this call inserted it, False when the id already existed.

        The user row (username = user_id when new), the tags and image_tags go in the same
        transaction. ``status='failed'`` records a job refused at intake: completed_at is now() and
        ``error_message`` is required. Only 'pending' and 'failed' can be inserted: a completed row
        needs its results, which mark_completed writes.

        The original's key derives from the content hash and ``original_ext`` (ObjectKeys.original); only an
        original stored elsewhere names ``original_path`` instead (a rejected upload: the upstream's object).
        """
        if (original_ext is None) == (original_path is None):
            raise ValueError("name the original by original_ext (its derived key) or by original_path, not both")
        if status not in (JobStatus.PENDING, JobStatus.FAILED):
            raise ValueError(f"a job is inserted pending or failed, not {status!r}")
        if status == JobStatus.FAILED and not error_message:
            raise ValueError("a failed job needs its error_message")
        if original_bytes < 0:
            raise ValueError("original_bytes must be >= 0")
        created_at = uuid7_time(job_id)  # raises ValueError for an id that is not a UUIDv7
        names = normalise_tags(tags)
        args: _NewJob = {
            "job_id": job_id,
            "created_at": created_at,
            "user_id": user_id,
            "original_path": original_path,
            "original_ext": original_ext,
            "status": status,
            "error_message": clean_text(error_message) if error_message else None,
            "image_width": image_width,
            "image_height": image_height,
            "file_size_kb": math.ceil(original_bytes / 1024),
            "params": params,
            "params_hash": params_hash,
            "content_sha256": sha256_bytes(content_sha256),
            "model_name": model_name,
            "original_bytes": original_bytes,
            "source": source,
        }
        try:
            return await self._insert_once(conn, args, names)
        except asyncpg.CheckViolationError as exc:
            # "no partition of relation ... found for row" is SQLSTATE 23514 with no constraint name;
            # a real CHECK violation names its constraint and is re-raised as is.
            if exc.constraint_name is not None:
                raise
        await ensure_partitions(conn, start=month_start(created_at), months=1, queries=self._q)
        return await self._insert_once(conn, args, names)

    async def _insert_once(self, conn: asyncpg.Connection, args: _NewJob, names: list[str]) -> bool:
        if not names and not conn.is_in_transaction():
            # One statement is atomic by itself: no BEGIN/COMMIT round trips for an untagged job.
            return bool(await self._q.insert_job(conn, **args))
        # Inside a caller's transaction this is a savepoint, so a missing-partition failure can be
        # retried without aborting the caller's work.
        async with conn.transaction():
            inserted = bool(await self._q.insert_job(conn, **args))
            if inserted and names:
                await self._q.create_tags(conn, names=names)
                await self._q.link_tags(
                    conn,
                    job_id=args["job_id"],
                    created_at=args["created_at"],
                    user_id=args["user_id"],
                    names=names,
                )
        return inserted

    async def lock_objects_shared(self, conn: asyncpg.Connection) -> None:
        """Hold (until the caller's transaction ends) the lock retention takes exclusively while it
        checks content references and deletes objects: call before inserting a job row whose original
        was stored since :meth:`object_deletion_epoch` was read, then compare the epoch again."""
        if not conn.is_in_transaction():
            raise RuntimeError("lock_objects_shared must run inside a transaction")
        await self._q.lock_objects_shared(conn)

    async def backlog(self, conn: asyncpg.Connection, *, rank: int) -> tuple[int, datetime | None]:
        """(unfinished jobs, the last update of the ``rank``-th longest-waiting one, None if fewer)."""
        row = await self._q.backlog(conn, rank=max(1, rank))
        if row is None:
            return 0, None
        return int(row["jobs"]), row["waiting_since"]

    async def object_deletion_epoch(self, conn: asyncpg.Connection) -> int:
        """A number that changes whenever retention deletes objects (migration 0007)."""
        return int(await self._q.object_deletion_epoch(conn))

    async def bump_object_deletion_epoch(self, conn: asyncpg.Connection) -> None:
        """Move the epoch on, after objects were deleted and while :meth:`lock_objects_exclusive` is held: an
        intake that read it before (and may have found its original still there) sees the change."""
        if not conn.is_in_transaction():
            raise RuntimeError("bump_object_deletion_epoch must run under lock_objects_exclusive, in a transaction")
        await self._q.bump_object_deletion_epoch(conn)

    async def mark_queued(self, conn: asyncpg.Connection, *, job_id: UUID, partition: int, offset: int) -> None:
        """Record where the broker acknowledged the job's latest request (the sweeper judges by it)."""
        await self._q.mark_queued(
            conn,
            job_id=job_id,
            created_at=uuid7_time(job_id),
            queue_partition=partition,
            queue_offset=offset,
        )

    # -- reads by id ------------------------------------------------------------------------------

    async def get_job(self, conn: asyncpg.Connection, *, job_id: UUID) -> JobRecord | None:
        """The job with its tags, or None. Probes one partition (created_at comes from the id)."""
        if job_id.version != 7:
            return None  # no job has any other kind of id
        row = await self._q.get_job(conn, job_id=job_id, created_at=uuid7_time(job_id))
        return JobRecord.from_row(row) if row is not None else None

    # -- transitions ------------------------------------------------------------------------------

    async def mark_processing(
        self, conn: asyncpg.Connection, *, job_id: UUID, started_at: datetime, attempt: int
    ) -> JobRecord | None:
        """pending -> processing; attempts becomes max(attempts, attempt). None when not pending."""
        row = await self._q.mark_processing(
            conn,
            job_id=job_id,
            created_at=uuid7_time(job_id),
            started_at=started_at,
            attempt=attempt,
        )
        return JobRecord.from_row(row) if row is not None else None

    async def mark_completed(
        self,
        conn: asyncpg.Connection,
        *,
        job_id: UUID,
        cutout_format: CutoutFormat,
        mask_bytes: int | None,
        processed_bytes: int | None,
        model_name: str,
        model_revision: str | None,
        processing_time_ms: int,
        completed_at: datetime,
        reused: bool,
    ) -> JobRecord | None:
        """pending|processing -> completed with its results. None when already finished."""
        row = await self._q.mark_completed(
            conn,
            job_id=job_id,
            created_at=uuid7_time(job_id),
            cutout_format=cutout_format.value,
            mask_bytes=mask_bytes,
            processed_bytes=processed_bytes,
            model_name=model_name,
            model_revision=model_revision,
            processing_time_ms=processing_time_ms,
            completed_at=completed_at,
            reused=reused,
        )
        return JobRecord.from_row(row) if row is not None else None

    async def mark_failed(
        self, conn: asyncpg.Connection, *, job_id: UUID, error_message: str, completed_at: datetime
    ) -> JobRecord | None:
        """pending|processing -> failed with the reason. None when already finished."""
        if not error_message:
            raise ValueError("a failed job needs its error_message")
        row = await self._q.mark_failed(
            conn,
            job_id=job_id,
            created_at=uuid7_time(job_id),
            # Reasons quote what was sent (a tag, a file name): PostgreSQL refuses NUL in text.
            error_message=clean_text(error_message),
            completed_at=completed_at,
        )
        return JobRecord.from_row(row) if row is not None else None

    # -- batched transitions (transitions.sql) -----------------------------------------------------
    # The same guards as the single transitions above, many jobs per round trip. Each returns the rows
    # that moved, with their tags, keyed by job id; the others were not in a state they may leave (a
    # repeat, or late). Input is deduplicated by job id (the first occurrence wins, as the first of two
    # single calls would) and sent in job_id order, so concurrent batches lock their rows in one order.

    async def get_jobs(self, conn: asyncpg.Connection, *, job_ids: list[UUID]) -> dict[UUID, JobRecord]:
        """get_job for many ids in one round trip: the jobs found, keyed by id."""
        ids = sorted({job_id for job_id in job_ids if job_id.version == 7})
        if not ids:
            return {}
        rows = await self._q.get_jobs(conn, job_ids=ids, created_ats=[uuid7_time(i) for i in ids])
        return _by_id(rows)

    async def mark_processing_many(self, conn: asyncpg.Connection, items: list[Started]) -> dict[UUID, JobRecord]:
        """pending -> processing for each item; the rows that moved."""
        rows = _unique(items)
        if not rows:
            return {}
        moved = await self._q.mark_processing_many(
            conn,
            job_ids=[r.job_id for r in rows],
            created_ats=[uuid7_time(r.job_id) for r in rows],
            started_ats=[r.started_at for r in rows],
            attempts=[r.attempt for r in rows],
        )
        return _by_id(moved)

    async def mark_completed_many(self, conn: asyncpg.Connection, items: list[Completion]) -> dict[UUID, JobRecord]:
        """pending|processing -> completed with each item's results; the rows that moved."""
        rows = _unique(items)
        if not rows:
            return {}
        moved = await self._q.mark_completed_many(
            conn,
            job_ids=[r.job_id for r in rows],
            created_ats=[uuid7_time(r.job_id) for r in rows],
            cutout_formats=[r.cutout_format.value for r in rows],
            # Elements may be None (unknown size): asyncpg sends NULL; the generated type only names the element.
            mask_bytes=cast(list[int], [r.mask_bytes for r in rows]),
            processed_bytes=cast(list[int], [r.processed_bytes for r in rows]),
            model_names=[r.model_name for r in rows],
            model_revisions=cast(list[str], [r.model_revision for r in rows]),
            processing_times_ms=[r.processing_time_ms for r in rows],
            completed_ats=[r.completed_at for r in rows],
            reused=[r.reused for r in rows],
        )
        return _by_id(moved)

    async def mark_failed_many(self, conn: asyncpg.Connection, items: list[Failure]) -> dict[UUID, JobRecord]:
        """pending|processing -> failed with each item's reason; the rows that moved."""
        rows = _unique(items)
        if not rows:
            return {}
        if any(not r.error_message for r in rows):
            raise ValueError("a failed job needs its error_message")
        moved = await self._q.mark_failed_many(
            conn,
            job_ids=[r.job_id for r in rows],
            created_ats=[uuid7_time(r.job_id) for r in rows],
            error_messages=[clean_text(r.error_message) for r in rows],
            completed_ats=[r.completed_at for r in rows],
        )
        return _by_id(moved)

    async def mask_wanted(
        self, conn: asyncpg.Connection, *, content_sha256: str, mask_path: str, except_job_id: UUID
    ) -> bool:
        """Whether a job other than ``except_job_id`` completed with ``mask_path`` or may still use it."""
        return bool(
            await self._q.mask_wanted(
                conn,
                content_sha256=sha256_bytes(content_sha256),
                mask_path=mask_path,
                except_job_id=except_job_id,
            )
        )

    async def lock_objects_exclusive(self, conn: asyncpg.Connection) -> None:
        """Hold (until the transaction ends) the objects lock alone, as retention does to delete objects."""
        if not conn.is_in_transaction():
            raise RuntimeError("lock_objects_exclusive must run inside a transaction")
        await self._q.lock_objects_exclusive(conn)

    async def record_retry(self, conn: asyncpg.Connection, *, job_id: UUID, seen_updated_at: datetime) -> int | None:
        """One more attempt for an unfinished job; the new attempt count, or None if finished/unknown."""
        value = await self._q.record_retry(
            conn, job_id=job_id, created_at=uuid7_time(job_id), seen_updated_at=seen_updated_at
        )
        return int(value) if value is not None else None

    async def find_stuck(self, conn: asyncpg.Connection, *, updated_before: datetime, limit: int) -> list[JobRecord]:
        """Unfinished jobs not updated since ``updated_before``, longest-waiting first."""
        rows = await self._q.find_stuck(conn, updated_before=_aware(updated_before), limit=_check_limit(limit))
        return [JobRecord.from_row(row) for row in rows]

    async def find_reusable_result(
        self, conn: asyncpg.Connection, *, content_sha256: str, model_name: str, params_hash: str
    ) -> JobRecord | None:
        """The newest completed job with the same image bytes, model and parameters, if any."""
        row = await self._q.find_reusable_result(
            conn,
            content_sha256=sha256_bytes(content_sha256),
            model_name=model_name,
            params_hash=params_hash,
        )
        return JobRecord.from_row(row) if row is not None else None

    # -- the design's queries ---------------------------------------------------------------------

    async def recent_completed(self, conn: asyncpg.Connection, *, user_id: str, limit: int = 10) -> list[JobRecord]:
        """Design query 1: the user's newest completed jobs."""
        rows = await self._q.recent_completed(conn, user_id=user_id, limit=_check_limit(limit))
        return [JobRecord.from_row(row) for row in rows]

    async def page_completed(
        self, conn: asyncpg.Connection, *, before: tuple[datetime, UUID] | None, limit: int = 20
    ) -> list[JobRecord]:
        """Design query 3: completed jobs newest first, strictly after position ``before``.

        Pass the last row's (created_at, job_id) as ``before`` for the next page; rows sharing a
        timestamp are neither skipped nor repeated.
        """
        if before is None:
            rows = await self._q.page_completed_first(conn, limit=_check_limit(limit))
        else:
            rows = await self._q.page_completed_after(
                conn,
                before_created_at=_aware(before[0]),
                before_job_id=before[1],
                limit=_check_limit(limit),
            )
        return [JobRecord.from_row(row) for row in rows]

    async def by_params(
        self, conn: asyncpg.Connection, *, contains: dict[str, Any], limit: int = 20
    ) -> list[JobRecord]:
        """Design query 4: jobs whose params contain ``contains`` (JSONB @>), newest first.

        The path is chosen per request, in the one round trip (params.sql by_params_chosen, migration 0016),
        from params_daily_counts: a value on under RARE_PARAMS_SHARE of the last 7 days' jobs, spread over
        at most RARE_PARAMS_MAX_HASHES combinations, is read per matching params_hash from
        ix_jobs_params_hash_created (migration 0012); a common one walks the jobs newest first and stops at
        ``limit``; one the counts cannot judge runs jobs.sql by_params planned for the call. The counts come
        from the stats service, so a combination accepted for the first time moments ago can be missing
        from the rare path until it is counted.
        """
        limit = _check_limit(limit)
        rows = await self._q.by_params_chosen(
            conn, contains=contains, limit=limit, rare_share=RARE_PARAMS_SHARE, max_hashes=RARE_PARAMS_MAX_HASHES
        )
        return [JobRecord.from_row(row) for row in rows]

    async def user_job_quartiles(
        self, conn: asyncpg.Connection, *, since: datetime | None = None
    ) -> list[UserJobCount]:
        """Design query 6: (user_id, job count, quartile 1-4) for jobs created since ``since``."""
        if since is None:
            # All time: one row per user from user_job_counts instead of a GROUP BY over every job.
            rows = await self._q.user_job_quartiles_all(conn)
        else:
            rows = await self._q.user_job_quartiles(conn, since=_aware(since))
        return [UserJobCount(str(r["user_id"]), int(r["job_count"]), int(r["quartile"])) for r in rows]

    async def _rare_hashes(self, conn: asyncpg.Connection, contains: dict[str, Any]) -> list[str] | None:
        """The params_hash of every combination containing ``contains`` when the value is rare
        (:func:`is_rare_share`), else None. As for by_params, a combination first accepted moments ago may be
        missing from the counts (the stats service fills them)."""
        share = await self._q.params_share(conn, contains=contains)
        assert share is not None  # an aggregate: one row
        hashes = list(share["hashes"])
        if is_rare_share(hashes=len(hashes), jobs=int(share["jobs"]), all_jobs=int(share["all_jobs"])):
            return hashes
        return None

    async def list_jobs(
        self,
        conn: asyncpg.Connection,
        *,
        user_id: str | None = None,
        status: str | None = None,
        tag: str | None = None,
        params: dict[str, Any] | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> tuple[list[JobRecord], str | None]:
        """Jobs newest first with optional filters; returns (page, cursor of the next page or None).

        ``created_from`` is inclusive, ``created_to`` exclusive; naive datetimes are taken as UTC.
        Raises ValueError (InvalidCursor for a bad cursor) on invalid arguments.
        """
        if status is not None and status not in JobStatus.__members__.values():
            raise ValueError(f"unknown status {status!r}")
        limit = _check_limit(limit)
        position = decode_cursor(cursor) if cursor else None
        args: _ListFilters = {
            "status": status,
            "created_from": _aware(created_from) if created_from is not None else None,
            "created_to": _aware(created_to) if created_to is not None else None,
            "cursor_created_at": position[0] if position else None,
            "cursor_job_id": position[1] if position else None,
            # One row more than asked tells whether a next page exists without a COUNT.
            "limit": limit + 1,
        }
        tag_name = tag.strip().lower() if tag is not None else ""
        # One statement per shape, so each keeps a plan that uses its index (see jobs.sql).
        if tag_name:
            rows = await self._q.list_jobs_by_tag(conn, tag=tag_name, user_id=user_id, params=params, **args)
        elif user_id is not None:
            rows = await self._q.list_jobs_for_user(conn, user_id=user_id, params=params, **args)
        elif params and (hashes := await self._rare_hashes(conn, params)) is not None:
            # A rare value read per params_hash: the walk below filters every job for it (0.5-0.9 s warm at
            # 10M jobs, and past the 30 s statement timeout with a status filter). The extra round trip
            # costs a common value about 2 ms (BENCHMARKS.md, "list_jobs for a rare params value").
            rows = await self._q.list_jobs_by_hashes(conn, hashes=hashes, **args)
        else:
            rows = await self._q.list_jobs(conn, params=params, **args)
        records = [JobRecord.from_row(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = records[-1]
            next_cursor = encode_cursor(last.created_at, last.job_id)
        return records, next_cursor


def is_rare_share(*, hashes: int, jobs: int, all_jobs: int) -> bool:
    """Whether params.sql params_share's answer makes a value rare: on under RARE_PARAMS_SHARE of the last
    7 days' jobs, over at most RARE_PARAMS_MAX_HASHES combinations. No counts for the week (all_jobs 0)
    judge nothing. Migration 0016's rmbg_jobs_by_params applies the same rule in SQL."""
    return hashes <= RARE_PARAMS_MAX_HASHES and jobs < RARE_PARAMS_SHARE * all_jobs


def normalise_tags(tags: list[str]) -> list[str]:
    """Trimmed, lower-case, unique, sorted (the event contract lower-cases too; this is the last word)."""
    names = sorted({t.strip().lower() for t in tags if t and t.strip()})
    too_long = [n for n in names if len(n) > 64]
    if too_long:
        raise ValueError(f"tag names are at most 64 characters: {too_long[0][:80]!r}")
    return names


def sha256_bytes(hex_digest: str) -> bytes:
    """The 32 bytes of a hex SHA-256 (the schema stores bytes: 32 instead of 64 per row and index entry)."""
    try:
        raw = bytes.fromhex(hex_digest)
    except ValueError as exc:
        raise ValueError("content_sha256 must be 64 hex characters") from exc
    if len(raw) != 32:
        raise ValueError("content_sha256 must be 64 hex characters")
    return raw


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1..{MAX_PAGE}, got {limit}")
    return limit


def _aware(moment: datetime) -> datetime:
    # Naive datetimes are taken as UTC; asyncpg would otherwise send them as-is for timestamptz.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
