"""Object keys derived from a job row (migration 0014): the SQL functions agree with ObjectKeys, and rows
written through the repository store no key they can derive."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import asyncpg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shared.contracts.events import CutoutFormat, ProcessingParams
from shared.db.models import JobRecord
from shared.db.repositories import Repositories
from shared.ids import uuid7
from shared.storage.keys import ObjectKeys
from tests.shared.db.conftest import sha_of, unique_user

_DERIVE = """
SELECT rmbg_original_key(NULL, $1, $2) AS original,
       rmbg_mask_key(NULL, $3, $2, $4, $5, $6) AS mask,
       rmbg_cutout_key(NULL, $3, $2, $4, $5, $7) AS cutout
"""

# Text PostgreSQL can store (no NUL, no lone surrogate), including characters the slug replaces.
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model_name=_TEXT.filter(bool),
    model_revision=st.none() | _TEXT,
    threshold=st.none() | st.floats(min_value=0.0, max_value=1.0),
    fmt=st.sampled_from(list(CutoutFormat)),
    ext=st.sampled_from(["jpg", "png", "webp", "tif"]),
)
# Half-way thresholds: Python's round and PostgreSQL's round(float8) both round half to even.
@example(model_name="briaai/RMBG-2.0", model_revision=None, threshold=0.0125, fmt=CutoutFormat.WEBP, ext="jpg")
@example(model_name="a b", model_revision="", threshold=0.0025, fmt=CutoutFormat.PNG, ext="png")
@example(model_name="__x__", model_revision="0123456789abcdef0123", threshold=1.0, fmt=CutoutFormat.WEBP, ext="jpg")
@example(model_name="/models/ünïcode 模型/", model_revision="rév/1", threshold=0.5125, fmt=CutoutFormat.PNG, ext="png")
async def test_sql_keys_match_object_keys(
    conn: asyncpg.Connection,
    model_name: str,
    model_revision: str | None,
    threshold: float | None,
    fmt: CutoutFormat,
    ext: str,
) -> None:
    params = ProcessingParams(threshold=threshold, cutout_format=fmt)
    sha = hashlib.sha256(f"{model_name}{threshold}".encode()).hexdigest()
    row = await conn.fetchrow(
        _DERIVE, ext, bytes.fromhex(sha), fmt.value, model_name, model_revision, params.canonical(), params.digest()
    )
    assert row is not None
    assert row["original"] == ObjectKeys.original(sha, ext)
    assert row["mask"] == ObjectKeys.job_mask(
        sha, model_name=model_name, model_revision=model_revision, threshold=params.threshold
    )
    assert row["cutout"] == ObjectKeys.cutout(
        sha, model_name=model_name, model_revision=model_revision, params_hash=params.digest(), fmt=fmt
    )


async def test_stored_keys_override_and_unfinished_jobs_have_no_result_keys(conn: asyncpg.Connection) -> None:
    sha = bytes.fromhex(sha_of("x"))
    row = await conn.fetchrow(
        "SELECT rmbg_original_key('s3://up/in.png', NULL, $1) AS original,"
        " rmbg_mask_key('mask/old.png', 'webp', $1, 'm', NULL, '{}') AS stored_mask,"
        " rmbg_mask_key(NULL, NULL, $1, 'm', NULL, '{}') AS pending_mask,"
        " rmbg_cutout_key(NULL, NULL, $1, 'm', NULL, 'h') AS pending_cutout",
        sha,
    )
    assert row is not None
    assert dict(row) == {
        "original": "s3://up/in.png",
        "stored_mask": "mask/old.png",
        "pending_mask": None,
        "pending_cutout": None,
    }


def _job(user: str, **over: Any) -> dict[str, Any]:
    params = ProcessingParams(threshold=0.35)
    args: dict[str, Any] = {
        "job_id": uuid7(),
        "user_id": user,
        "original_ext": "jpg",
        "content_sha256": sha_of(user),
        "original_bytes": 5000,
        "image_width": 640,
        "image_height": 480,
        "params": params.canonical(),
        "params_hash": params.digest(),
        "model_name": "briaai/RMBG-2.0",
        "source": "http",
        "tags": [],
    }
    args.update(over)
    return args


async def test_rows_store_no_derivable_key(conn: asyncpg.Connection, repos: Repositories) -> None:
    user = unique_user()
    args = _job(user)
    assert await repos.jobs.insert_job(conn, **args)
    pending = await repos.jobs.get_job(conn, job_id=args["job_id"])
    assert pending is not None
    assert pending.original_path == ObjectKeys.original(sha_of(user), "jpg")
    assert (pending.mask_path, pending.processed_path, pending.cutout_format) == (None, None, None)

    done = await repos.jobs.mark_completed(
        conn,
        job_id=args["job_id"],
        cutout_format=CutoutFormat.PNG,
        mask_bytes=10,
        processed_bytes=20,
        model_name="briaai/RMBG-2.0",
        model_revision="abc123",
        processing_time_ms=5,
        completed_at=datetime.now(UTC),
        reused=False,
    )
    assert done is not None
    assert done.mask_path == ObjectKeys.job_mask(
        sha_of(user), model_name="briaai/RMBG-2.0", model_revision="abc123", threshold=0.35
    )
    assert done.processed_path == ObjectKeys.cutout(
        sha_of(user),
        model_name="briaai/RMBG-2.0",
        model_revision="abc123",
        params_hash=args["params_hash"],
        fmt=CutoutFormat.PNG,
    )
    stored = await conn.fetchrow(
        "SELECT original_path, mask_path, processed_path, original_ext, cutout_format,"
        " rmbg_mask_key(mask_path, cutout_format, content_sha256, model_name, model_revision, params) AS mask,"
        " rmbg_cutout_key(processed_path, cutout_format, content_sha256, model_name, model_revision, params_hash)"
        " AS cutout FROM image_process_jobs WHERE job_id = $1",
        args["job_id"],
    )
    assert stored is not None
    assert (stored["original_path"], stored["mask_path"], stored["processed_path"]) == (None, None, None)
    assert (stored["original_ext"], stored["cutout_format"]) == ("jpg", "png")
    assert (stored["mask"], stored["cutout"]) == (done.mask_path, done.processed_path)


async def test_an_original_is_named_one_way(conn: asyncpg.Connection, repos: Repositories) -> None:
    user = unique_user()
    rejected = _job(user, original_ext=None, original_path="s3://upstream/in/bad.png", status="failed",
                    error_message="not an image")
    assert await repos.jobs.insert_job(conn, **rejected)
    record = await repos.jobs.get_job(conn, job_id=rejected["job_id"])
    assert record is not None and record.original_path == "s3://upstream/in/bad.png"
    for both_or_neither in ({"original_path": "original/x.png"}, {"original_ext": None}):
        try:
            await repos.jobs.insert_job(conn, **_job(user, **both_or_neither))
        except ValueError as exc:
            assert "original_ext" in str(exc)
        else:  # pragma: no cover - the assertion below reports it
            raise AssertionError(f"accepted {both_or_neither}")


def test_from_row_derives_what_the_row_does_not_store() -> None:
    sha = sha_of("row")
    row = {
        "job_id": uuid7(),
        "created_at": datetime.now(UTC),
        "user_id": "u",
        "original_path": None,
        "original_ext": "png",
        "mask_path": "mask/kept.png",  # a row written before 0014 keeps its stored key
        "processed_path": None,
        "cutout_format": "webp",
        "status": "completed",
        "updated_at": datetime.now(UTC),
        "started_at": None,
        "completed_at": datetime.now(UTC),
        "processing_time_ms": 1,
        "image_width": 1,
        "image_height": 1,
        "file_size_kb": 1,
        "params": {},
        "params_hash": "h",
        "error_message": None,
        "content_sha256": bytes.fromhex(sha),
        "model_name": "m",
        "model_revision": None,
        "original_bytes": 1,
        "mask_bytes": 1,
        "processed_bytes": 1,
        "source": "http",
        "attempts": 1,
        "reused_result": False,
    }
    record = JobRecord.from_row(row)
    assert record.original_path == ObjectKeys.original(sha, "png")
    assert record.mask_path == "mask/kept.png"
    assert record.processed_path == ObjectKeys.cutout(
        sha, model_name="m", model_revision=None, params_hash="h", fmt=CutoutFormat.WEBP
    )
