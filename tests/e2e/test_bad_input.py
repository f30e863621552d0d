"""Bad input of every kind, over HTTP and over the upload topic, against the whole running pipeline.

The cases are tables: ``CASES`` (an upload, its tags, params and user; sent over HTTP as the API key's
user and, as an upload event naming the same bytes, over the upload topic) and ``EVENT_CASES`` (upload
events that are broken as events). Each row says how it must end: an HTTP status with a readable error
(``{"error": {"code", "message"}}``), or 202 and the job's final status; over the topic a completed job, a
failed job with its ``error_message``, or a dead letter with its reason. Nothing may end as a 500, a
stuck job or a lost record.

Everything is sent first and waited for once (the ``outcomes`` fixture); the tests then read their row's
outcome. The last test sends a good image after all of it: it must complete within 60 s.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Literal

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from PIL import Image

from rmbg.demo import sample_bytes
from shared.contracts import DeadLetter, Topics
from shared.ids import upload_job_id
from shared.storage import open_object_store
from tests.e2e.conftest import Pipeline
from tests.e2e.test_pipeline import _read_dead_letters
from tests.support.images import bomb_png

pytestmark = pytest.mark.slow

TERMINAL = frozenset({"completed", "failed"})
RUN = uuid.uuid4().hex[:8]
USER = f"bad-input-{RUN}"
ORIENTATION = 0x0112
SQL_TAG = "Robert'); DROP TABLE jobs;--"
QUOTED_TAG = 'say "cheese" o\'clock'

UploadOutcome = Literal["completed", "failed", "dead_letter"]


# --- images --------------------------------------------------------------------------------------------


def _noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    shape = (height, width) if channels == 1 else (height, width, channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def _save(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@cache
def _photo_jpeg() -> bytes:
    return sample_bytes("rocket.jpg")  # 640x427 baseline JPEG


@cache
def _photo_png() -> bytes:
    return sample_bytes("coffee.png")  # 600x400 RGB PNG


def _truncated_jpeg() -> bytes:
    data = _photo_jpeg()
    return data[: len(data) // 2]


def _truncated_png() -> bytes:
    data = _photo_png()
    return data[: len(data) // 2]


def _truncated_webp() -> bytes:
    data = _save(Image.open(io.BytesIO(_photo_png())), "WEBP", quality=80)
    return data[: len(data) // 2]


def _corrupt_middle_jpeg() -> bytes:
    """256 random bytes over the middle of the entropy-coded data (no marker, no header byte touched)."""
    data = bytearray(_photo_jpeg())
    mid = len(data) // 2
    garbage = bytearray(np.random.default_rng(5).integers(0, 255, 256, dtype=np.uint8).tobytes())
    data[mid : mid + 256] = garbage.replace(b"\xff", b"\x00")
    return bytes(data)


def _corrupt_header_jpeg() -> bytes:
    """The SOF0 frame header's component count overwritten: the decoder cannot even set up."""
    data = bytearray(_photo_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 9] = 0  # number of components
    return bytes(data)


def _bad_crc_png() -> bytes:
    data = bytearray(_save(_noise(32, 24), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 8] ^= 0xFF  # a byte of the compressed data: the chunk's CRC no longer matches
    return bytes(data)


def _text_file() -> bytes:
    return b"This is a plain text file that someone named holiday.jpg.\n" * 20


def _cmyk_jpeg() -> bytes:
    return _save(_noise(120, 80).convert("CMYK"), "JPEG", quality=90)


def _png16() -> bytes:
    ramp = np.linspace(0, 65535, 96 * 64, dtype=np.uint32).reshape(64, 96).astype(np.uint16)
    img = Image.frombytes("I;16", (96, 64), ramp.tobytes())
    return _save(img, "PNG")


def _palette_png_transparent() -> bytes:
    img = _noise(90, 60).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(img, "PNG", transparency=0)


def _frames(n: int, size: tuple[int, int]) -> list[Image.Image]:
    return [_noise(*size, seed=i) for i in range(n)]


def _animated_gif() -> bytes:
    first, *rest = _frames(3, (64, 48))
    return _save(first, "GIF", save_all=True, append_images=rest, duration=100, loop=0)


def _animated_webp() -> bytes:
    first, *rest = _frames(3, (80, 56))
    return _save(first, "WEBP", save_all=True, append_images=rest, duration=100, loop=0, quality=80)


def _exif_rotated_jpeg() -> bytes:
    """Stored 160x90 (landscape) with orientation 6: a viewer shows it 90x160 (portrait)."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return _save(_noise(160, 90, seed=9), "JPEG", quality=90, exif=exif)


def _png(width: int, height: int, seed: int = 0) -> Callable[[], bytes]:
    return lambda: _save(_noise(width, height, seed=seed), "PNG")


def _deep_json(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# --- the table -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad (or merely unusual) upload and how it must end on each path."""

    name: str
    image: Callable[[], bytes]
    status: int  # HTTP status of POST /v1/jobs
    detail: str = ""  # in the 4xx error message (case-insensitive), or in a failed job's error_message
    code: str = ""  # the 4xx error code, when the row names one
    final: Literal["completed", "failed"] | None = None  # a 202 job's final status
    upright: tuple[int, int] | None = None  # (width, height) a completed job and its mask must have
    filename: str = "image.png"
    tags: str = ""
    params: str = "{}"
    user_id: str = USER  # of the upload event; over HTTP the user is the API key's
    http: bool = True  # also sent as POST /v1/jobs (False: a field the HTTP API does not take)
    upload: UploadOutcome | None = None  # the same upload as an upload event; None: not sent there
    upload_reason: str = ""  # in the failed job's error_message or the dead letter's reason
    expect_tags: tuple[str, ...] | None = None
    xfail: str | None = None  # a known bug (strict xfail): the reason
    opaque: bool = False  # a fully opaque result: its WebP cut-out has no alpha plane


CASES: list[Case] = [
    # Broken files.
    Case(
        "truncated-jpeg",
        _truncated_jpeg,
        422,
        "truncated",
        code="corrupt",
        filename="a.jpg",
        upload="failed",
        upload_reason="truncated",
    ),
    Case("truncated-png", _truncated_png, 422, "truncated", upload="failed", upload_reason="truncated"),
    Case(
        "truncated-webp", _truncated_webp, 422, "corrupt", filename="a.webp", upload="failed", upload_reason="corrupt"
    ),
    # libjpeg conceals damaged entropy-coded data (as every viewer does): the photo is decodable, garbled
    # in places, so it is accepted and cut out; a damaged frame header is refused.
    Case(
        "corrupt-middle-jpeg",
        _corrupt_middle_jpeg,
        202,
        final="completed",
        upright=(640, 427),
        filename="a.jpg",
        upload="completed",
    ),
    Case(
        "corrupt-header-jpeg",
        _corrupt_header_jpeg,
        422,
        "not a recognised image",
        filename="a.jpg",
        upload="failed",
        upload_reason="not a recognised image",
    ),
    Case("png-bad-crc", _bad_crc_png, 422, "corrupt", upload="failed", upload_reason="corrupt"),
    Case("empty-file", lambda: b"", 422, "empty", code="empty", upload="failed", upload_reason="empty"),
    Case(
        "text-named-jpg",
        _text_file,
        422,
        "not a recognised image",
        filename="holiday.jpg",
        upload="failed",
        upload_reason="not a recognised image",
    ),
    # Sizes.
    Case(
        "bomb-30000x30000",
        lambda: bomb_png(30_000),
        422,
        "pixels",
        code="too_many_pixels",
        upload="failed",
        upload_reason="pixels",
    ),
    Case(
        "width-17000",
        _png(17_000, 2),
        422,
        "16383",
        code="too_large_dimensions",
        upload="failed",
        upload_reason="16383",
    ),
    Case("ratio-16000x2", _png(16_000, 2), 202, final="completed", upright=(16_000, 2), upload="completed"),
    Case("one-pixel", _png(1, 1, seed=3), 202, final="completed", upright=(1, 1), upload="completed"),
    # Modes and formats.
    Case("cmyk-jpeg", _cmyk_jpeg, 202, final="completed", upright=(120, 80), filename="a.jpg", upload="completed"),
    Case("png-16-bit", _png16, 202, final="completed", upright=(96, 64), upload="completed"),
    Case(
        "palette-png-transparency",
        _palette_png_transparent,
        202,
        final="completed",
        upright=(90, 60),
        upload="completed",
    ),
    Case(
        "animated-gif",
        _animated_gif,
        415,
        "GIF",
        code="unsupported_format",
        filename="a.gif",
        upload="failed",
        upload_reason="GIF",
    ),
    Case(
        "animated-webp", _animated_webp, 202, final="completed", upright=(80, 56), filename="a.webp", upload="completed"
    ),
    Case(
        "exif-rotated-jpeg",
        _exif_rotated_jpeg,
        202,
        final="completed",
        upright=(90, 160),
        filename="a.jpg",
        upload="completed",
    ),
    # Tags.
    Case(
        "tags-sql-and-quotes",
        _png(40, 30, seed=11),
        202,
        final="completed",
        upright=(40, 30),
        tags=f"{SQL_TAG},{QUOTED_TAG}",
        upload="completed",
        expect_tags=tuple(sorted({SQL_TAG.lower(), QUOTED_TAG.lower()})),
    ),
    Case(
        "tag-nul",
        _png(40, 30),
        422,
        "control character",
        code="invalid_tags",
        tags="ok,a\x00b",
        upload="dead_letter",
        upload_reason="tags",
    ),
    Case(
        "tag-control-chars",
        _png(40, 30),
        422,
        "control character",
        tags="bell\x07,esc\x1b[2J",
        upload="dead_letter",
        upload_reason="tags",
    ),
    Case("tag-65-chars", _png(40, 30), 422, "64", tags="x" * 65, upload="dead_letter", upload_reason="tags"),
    Case(
        "tags-33",
        _png(40, 30),
        422,
        "at most 32 tags",
        tags=",".join(f"t{i}" for i in range(33)),
        upload="dead_letter",
        upload_reason="tags",
    ),
    # Params.
    Case(
        "params-not-json",
        _png(40, 30),
        422,
        "invalid params",
        code="invalid_params",
        params="{threshold: 0.5",
        upload="dead_letter",
        upload_reason="malformed UploadEvent",
    ),
    Case(
        "params-deeply-nested",
        _png(40, 30),
        422,
        "invalid params",
        params=_deep_json(5000),
        upload="dead_letter",
        upload_reason="malformed UploadEvent",
    ),
    Case(
        "params-unknown-field",
        _png(40, 30),
        422,
        "colour",
        params='{"threshold": 0.5, "colour": "red"}',
        upload="dead_letter",
        upload_reason="colour",
    ),
    Case(
        "params-threshold-out-of-range",
        _png(40, 30),
        422,
        "threshold",
        params='{"threshold": -0.1}',
        upload="dead_letter",
        upload_reason="threshold",
    ),
    # Users: a field of upload events only (over HTTP the user comes from the API key, and a user_id form
    # field is ignored: tests/e2e/test_pipeline.py).
    Case(
        "user-id-invalid-chars",
        _png(40, 30),
        422,
        "user_id",
        http=False,
        user_id="robert'); drop",
        upload="dead_letter",
        upload_reason="user_id",
    ),
    Case(
        "user-id-too-long",
        _png(40, 30),
        422,
        "user_id",
        http=False,
        user_id="u" * 65,
        upload="dead_letter",
        upload_reason="user_id",
    ),
    # threshold 0.0 is a valid parameter: every mask pixel becomes 255, and the default WebP cut-out is then
    # stored without an alpha plane (WebP's rule for an all-opaque image; README, cut-out format).
    Case(
        "threshold-zero-fully-opaque",
        _png(40, 30, seed=12),
        202,
        final="completed",
        upright=(40, 30),
        params='{"threshold": 0.0}',
        opaque=True,
    ),
]


@dataclass(frozen=True)
class EventCase:
    """An upload event broken as an event; it must end as a dead letter whose reason says why."""

    name: str
    reason: str  # in the dead letter's reason (case-insensitive)
    value: Callable[[str], bytes | None]  # record value, given a fresh key under uploads/ in the bucket
    store_object: bool = True  # put a good image at that key first
    large: bool = False  # send with a producer allowing requests over 1 MB


def _event(key: str, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": f"bad-event-{uuid.uuid4()}",
        "user_id": USER,
        "key": key,
        "tags": ["upstream"],
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    event.update(changes)
    return event


def _json(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


EVENT_CASES: list[EventCase] = [
    EventCase("not-json", "malformed UploadEvent", lambda key: b"\xff\xfe{this is not json", store_object=False),
    EventCase("empty-record", "empty record", lambda key: None, store_object=False),
    EventCase("json-array", "malformed UploadEvent", lambda key: b"[1, 2, 3]", store_object=False),
    EventCase("unknown-field", "colour", lambda key: _json(_event(key, colour="red"))),
    EventCase("missing-field", "user_id", lambda key: _json({k: v for k, v in _event(key).items() if k != "user_id"})),
    EventCase("schema-version-2", "schema_version", lambda key: _json(_event(key, schema_version=2))),
    EventCase("missing-object", "not found", lambda key: _json(_event(key)), store_object=False),
    EventCase("foreign-bucket", "not an upload bucket", lambda key: _json(_event(key, bucket="someone-elses-bucket"))),
    EventCase("oversized-event", "exceeds", lambda key: _json(_event(key, padding="x" * 1_200_000)), large=True),
    EventCase("nul-in-tag", "tags", lambda key: _json(_event(key, tags=["ok", "a\x00b"]))),
    EventCase("nul-in-key", "key", lambda key: _json(_event(key + "\x00.png")), store_object=False),
    EventCase(
        "occurred-in-the-future",
        "in the future",
        lambda key: _json(_event(key, occurred_at=(datetime.now(UTC) + timedelta(days=3)).isoformat())),
    ),
]


# --- sending and collecting ----------------------------------------------------------------------------


@dataclass
class Outcomes:
    http: dict[str, httpx.Response] = field(default_factory=dict)
    http_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # case -> final job view
    upload_ids: dict[str, str] = field(default_factory=dict)  # case -> job id of its upload event
    upload_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    letters: dict[str, DeadLetter] = field(default_factory=dict)  # record key -> dead letter
    # job id -> (mode, size) of the stored mask and of the stored cut-out
    stored: dict[str, tuple[tuple[str, tuple[int, int]], tuple[str, tuple[int, int]]]] = field(default_factory=dict)


def _case_key(kind: str, name: str) -> str:
    return f"{kind}-{name}-{RUN}"


def _error(resp: httpx.Response) -> dict[str, Any]:
    """The 4xx body's ``error`` object (``{}`` when the body is not the API's error shape)."""
    try:
        error = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return {}
    return error if isinstance(error, dict) else {}


def _upload_event_bytes(case: Case, key: str, event_id: str, occurred_at: datetime) -> bytes:
    event = {
        "schema_version": 1,
        "event_id": event_id,
        "user_id": case.user_id,
        "key": key,
        "tags": [t for t in case.tags.split(",") if t] if case.tags else [],
        "params": "__PARAMS__",
        "occurred_at": occurred_at.isoformat(),
    }
    # The params text goes in as sent over HTTP (not JSON, too deep for a JSON encoder...): spliced in.
    return json.dumps(event).replace('"__PARAMS__"', case.params).encode()


async def _send_all(pipeline: Pipeline, client: httpx.AsyncClient, out: Outcomes) -> set[str]:
    """Every case over HTTP and over the topic; returns the record keys expected on the dead-letter topic."""
    settings = pipeline.settings
    topics = Topics.from_settings(settings.topics, settings.kafka)
    expect_letters: set[str] = set()
    records: list[tuple[str, bytes | None]] = []  # (record key, value) for the upload topic
    large: list[tuple[str, bytes | None]] = []

    async with open_object_store(settings.s3) as store:
        for case in CASES:
            data = case.image()
            if case.http:
                out.http[case.name] = await client.post(
                    "/v1/jobs",
                    files={"image": (case.filename, data, "application/octet-stream")},
                    data={"tags": case.tags, "params": case.params},
                )
            if case.upload is None:
                continue
            key = f"uploads/{RUN}/{case.name}/{uuid.uuid4()}-{case.filename}"
            await store.put(key, data, content_type="application/octet-stream")
            record_key = _case_key("upload", case.name)
            occurred_at = datetime.now(UTC)
            records.append((record_key, _upload_event_bytes(case, key, record_key, occurred_at)))
            if case.upload == "dead_letter":
                expect_letters.add(record_key)
            else:
                out.upload_ids[case.name] = str(upload_job_id(record_key, occurred_at))
        for ev in EVENT_CASES:
            key = f"uploads/{RUN}/event-{ev.name}/{uuid.uuid4()}.png"
            if ev.store_object:
                await store.put(key, _photo_png(), content_type="image/png")
            record_key = _case_key("event", ev.name)
            (large if ev.large else records).append((record_key, ev.value(key)))
            expect_letters.add(record_key)

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=False,
        # Over Kafka's 1 MB default, so the oversized event reaches the broker and the consumer must judge it.
        max_request_size=4 * 1024 * 1024,
        request_timeout_ms=settings.kafka.request_timeout_ms,
    )
    await producer.start()
    try:
        for record_key, value in records + large:
            await producer.send_and_wait(topics.uploads.name, value, key=record_key.encode())
    finally:
        await producer.stop()
    return expect_letters


async def _poll_jobs(client: httpx.AsyncClient, job_ids: set[str], deadline: float) -> dict[str, dict[str, Any]]:
    """Every job's latest view, until all are terminal or the deadline passes (whatever was seen then)."""
    loop = asyncio.get_running_loop()
    jobs: dict[str, dict[str, Any]] = {}
    while True:
        for job_id in job_ids:
            if jobs.get(job_id, {}).get("status") in TERMINAL:
                continue
            resp = await client.get(f"/v1/jobs/{job_id}")
            if resp.status_code == 200:
                jobs[job_id] = resp.json()
        if (len(jobs) == len(job_ids) and all(j["status"] in TERMINAL for j in jobs.values())) or (
            loop.time() > deadline
        ):
            return jobs
        await asyncio.sleep(0.3)


async def _dead_letters(pipeline: Pipeline, keys: set[str], deadline: float) -> dict[str, DeadLetter]:
    """The dead letters whose record key is one of ``keys`` (the topic also holds other tests' letters)."""
    timeout_s = max(1.0, deadline - asyncio.get_running_loop().time())
    return {letter.key or "": letter for letter in await _read_dead_letters(pipeline, keys=keys, timeout_s=timeout_s)}


@pytest.fixture(scope="module")
async def outcomes(pipeline: Pipeline) -> Outcomes:
    out = Outcomes()
    loop = asyncio.get_running_loop()
    # Every job here is USER's: the key's over HTTP, the event's over the topic.
    async with pipeline.client(USER) as client:
        expect_letters = await _send_all(pipeline, client, out)
        deadline = loop.time() + 150
        http_ids = {name: resp.json()["job_id"] for name, resp in out.http.items() if resp.status_code == 202}
        letters_task = asyncio.create_task(_dead_letters(pipeline, expect_letters, deadline))
        jobs = await _poll_jobs(client, set(http_ids.values()) | set(out.upload_ids.values()), deadline)
        out.letters = await letters_task
    out.http_jobs = {name: jobs[job_id] for name, job_id in http_ids.items() if job_id in jobs}
    out.upload_jobs = {name: jobs[job_id] for name, job_id in out.upload_ids.items() if job_id in jobs}
    async with open_object_store(pipeline.settings.s3) as store:
        for job in jobs.values():
            if job["status"] != "completed":
                continue
            with Image.open(io.BytesIO(await store.get(job["mask_path"]))) as mask:
                mask_info = (mask.mode, mask.size)
            with Image.open(io.BytesIO(await store.get(job["processed_path"]))) as cut:
                cut.load()
                cut_info = (cut.mode, cut.size)
            out.stored[job["job_id"]] = (mask_info, cut_info)
    return out


def _marks(case: Case) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []


def _check_completed(out: Outcomes, case: Case, job: dict[str, Any]) -> None:
    assert job["status"] == "completed", job
    assert job["error_message"] is None
    if case.upright is not None:
        assert (job["image_width"], job["image_height"]) == case.upright
        (mask_mode, mask_size), (cut_mode, cut_size) = out.stored[job["job_id"]]
        assert mask_mode == "L" and mask_size == case.upright, "the mask has the upright size"
        assert cut_size == case.upright
        expected_mode = "RGB" if case.opaque else "RGBA"
        assert cut_mode == expected_mode, "the cut-out carries the mask as its alpha channel"
    if case.expect_tags is not None:
        assert tuple(job["tags"]) == case.expect_tags, "tags stored verbatim, lower-cased"


# --- the tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=_marks(c)) for c in CASES if c.http])
def test_over_http(outcomes: Outcomes, case: Case) -> None:
    resp = outcomes.http[case.name]
    assert resp.status_code == case.status, f"{case.name}: {resp.status_code} {resp.text[:500]}"
    if case.status != 202:
        error = _error(resp)
        message = str(error.get("message", ""))
        assert message.strip(), f"{case.name}: a 4xx needs a readable error message, got {resp.text[:300]}"
        assert str(error.get("code", "")).strip(), f"{case.name}: a 4xx needs an error code, got {resp.text[:300]}"
        assert "detail" not in resp.json(), "one error shape: no FastAPI 'detail'"
        assert case.detail.lower() in message.lower(), f"{case.name}: {message!r}"
        if case.code:
            assert error["code"] == case.code, f"{case.name}: {error!r}"
        return
    assert case.name in outcomes.http_jobs, f"{case.name}: accepted job never readable"
    job = outcomes.http_jobs[case.name]
    if case.final == "failed":
        assert job["status"] == "failed" and case.detail.lower() in (job["error_message"] or "").lower(), job
    else:
        _check_completed(outcomes, case, job)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=_marks(c)) for c in CASES if c.upload is not None])
def test_over_the_upload_topic(outcomes: Outcomes, case: Case) -> None:
    if case.upload == "dead_letter":
        key = _case_key("upload", case.name)
        assert key in outcomes.letters, f"{case.name}: no dead letter for the event"
        letter = outcomes.letters[key]
        assert letter.service == "ingest" and letter.failure_class == "permanent"
        assert case.upload_reason.lower() in letter.reason.lower(), letter.reason
        return
    assert case.name in outcomes.upload_jobs, f"{case.name}: the upload event made no job"
    job = outcomes.upload_jobs[case.name]
    if case.upload == "failed":
        assert job["status"] == "failed", job
        assert case.upload_reason.lower() in (job["error_message"] or "").lower(), job["error_message"]
    else:
        _check_completed(outcomes, case, job)


@pytest.mark.parametrize("ev", [pytest.param(e, id=e.name) for e in EVENT_CASES])
def test_broken_event_is_dead_lettered_with_its_reason(outcomes: Outcomes, ev: EventCase) -> None:
    key = _case_key("event", ev.name)
    assert key in outcomes.letters, f"{ev.name}: no dead letter"
    letter = outcomes.letters[key]
    assert letter.service == "ingest" and letter.failure_class == "permanent"
    assert ev.reason.lower() in letter.reason.lower(), letter.reason
    assert letter.reason.isprintable(), "the reason is safe to log"


async def test_sql_tag_is_searchable_verbatim(pipeline: Pipeline, outcomes: Outcomes) -> None:
    job_id = outcomes.http["tags-sql-and-quotes"].json()["job_id"]
    async with pipeline.client(USER, timeout=30) as client:
        resp = await client.get("/v1/jobs", params={"tag": SQL_TAG.lower()})
    assert resp.status_code == 200, resp.text
    assert job_id in [item["job_id"] for item in resp.json()["items"]]


async def test_good_image_completes_after_all_the_bad_input(pipeline: Pipeline, outcomes: Outcomes) -> None:
    """Nothing stalled: a fresh image (never seen, so really processed) completes within 60 s."""
    assert outcomes.http, "the bad input was sent first"
    data = _save(_noise(320, 240, seed=int(RUN, 16) % 1000), "PNG")
    loop = asyncio.get_running_loop()
    async with pipeline.client(USER, timeout=30) as client:
        start = loop.time()
        resp = await client.post(
            "/v1/jobs", files={"image": ("good.png", data, "image/png")}, data={"tags": "after-bad-input"}
        )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        job = (await _poll_jobs(client, {job_id}, start + 60))[job_id]
    assert job["status"] == "completed", job
    assert job["reused_result"] is False
