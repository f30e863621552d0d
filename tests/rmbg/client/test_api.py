"""The API wrapper against a fake transport: retries, error lines, the key kept from redirects, SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from rmbg.client.api import ApiClient, Connection, retry_after_s
from rmbg.client.commands import target_path
from rmbg.client.errors import ClientError
from rmbg.client.follow import follow
from rmbg.client.sse import parse_events

JOB = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
Handler = Callable[[httpx.Request], httpx.Response]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _client(handler: Handler, slept: list[float] | None = None) -> ApiClient:
    async def sleep(seconds: float) -> None:
        if slept is not None:
            slept.append(seconds)

    return ApiClient(
        Connection(url="http://api.test", key="rk_test"), transport=httpx.MockTransport(handler), sleep=sleep
    )


def _error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


async def test_429_and_503_wait_as_retry_after_says_then_succeed() -> None:
    answers = [
        _error(429, "rate_limited", "slow down", **{"Retry-After": "2"}),
        _error(503, "overloaded", "busy", **{"Retry-After": "3"}),
        httpx.Response(200, json={"total_jobs": 1}),
    ]
    slept: list[float] = []
    async with _client(lambda _: answers.pop(0), slept) as api:
        assert await api.stats(days=1) == {"total_jobs": 1}
    assert slept == [2.0, 3.0]


async def test_a_wait_past_the_cap_is_not_retried_early() -> None:
    # The daily quota answers "until 00:00 UTC": hours. Capped at 60 s and retried, each request spent four
    # minutes on retries that could only be refused again.
    calls: list[httpx.Request] = []
    slept: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return _error(429, "quota_exceeded", "the daily quota is used up", **{"Retry-After": "36000"})

    async with _client(handler, slept) as api:
        with pytest.raises(ClientError) as caught:
            await api.stats(days=1)
    assert len(calls) == 1 and slept == []
    assert (caught.value.status, caught.value.message) == (429, "the daily quota is used up")


async def test_retries_are_bounded_and_end_with_the_apis_message() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return _error(503, "unavailable", "a dependency is unavailable, retry later", **{"Retry-After": "1"})

    async with _client(handler, []) as api:
        with pytest.raises(ClientError) as caught:
            await api.job(JOB)
    assert len(calls) == 5
    assert (caught.value.status, caught.value.message) == (503, "a dependency is unavailable, retry later")


async def test_refusals_carry_the_message_and_a_refused_key_says_how_to_get_one() -> None:
    async with _client(lambda _: _error(404, "not_found", f"no job {JOB}")) as api:
        with pytest.raises(ClientError, match=f"^no job {JOB}$"):
            await api.job(JOB)
    async with _client(lambda _: _error(401, "unauthenticated", "unknown key")) as api:
        with pytest.raises(ClientError, match="rmbg keys create --user U"):
            await api.job(JOB)
    async with _client(lambda _: httpx.Response(502, text="<html>bad gateway</html>")) as api:
        with pytest.raises(ClientError, match=r"^HTTP 502 Bad Gateway$"):
            await api.job(JOB)


async def test_a_submit_sends_the_idempotency_key_and_the_form() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"job_id": JOB, "status": "completed", "created": False})

    async with _client(handler) as api:
        accepted = await api.submit(
            filename="a.png",
            data=b"\x89PNG",
            content_type="image/png",
            tags=["x", "y"],
            params={"threshold": 0.5},
            callback_url=None,
            idempotency_key="k1",
        )
    assert (accepted.job_id, accepted.created) == (JOB, False)
    body = seen[0].read()
    assert seen[0].headers["Idempotency-Key"] == "k1"
    assert seen[0].headers["Authorization"] == "Bearer rk_test"
    assert b'name="tags"\r\n\r\nx,y' in body and b'{"threshold": 0.5}' in body


@pytest.mark.parametrize("target", ["http://s3.test/bucket/results/ab/cutout.webp?X-Amz-Signature=s", "/bucket/c.webp"])
async def test_a_download_follows_the_redirect_without_the_key(tmp_path: Path, target: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == f"/v1/jobs/{JOB}/cutout":
            return httpx.Response(307, headers={"Location": target})
        return httpx.Response(200, content=b"RIFF....WEBP", headers={"content-type": "application/octet-stream"})

    async with _client(handler) as api:
        got = await api.download(JOB, "cutout", lambda resp: target_path(tmp_path, JOB, "cutout", resp))
    assert seen[0].headers["Authorization"] == "Bearer rk_test"
    assert "Authorization" not in seen[1].headers
    assert got.path == tmp_path / f"{JOB}.webp"
    assert got.path.read_bytes() == b"RIFF....WEBP"
    assert _names(tmp_path) == [got.path.name]


async def test_a_refused_download_leaves_no_file(tmp_path: Path) -> None:
    async with _client(lambda _: _error(409, "not_ready", "the job is still pending")) as api:
        with pytest.raises(ClientError, match="still pending"):
            await api.download(JOB, "mask", lambda resp: target_path(tmp_path, JOB, "mask", resp))
    assert _names(tmp_path) == []


def test_default_names_take_the_objects_extension() -> None:
    def resp(url: str, **headers: str) -> httpx.Response:
        return httpx.Response(200, headers=headers, request=httpx.Request("GET", url))

    assert target_path(None, JOB, "mask", resp("http://s/k/mask.png?sig=1")) == Path(f"{JOB}.mask.png")
    named = resp("http://api/v1/jobs/x/original", **{"content-disposition": 'attachment; filename="x.JPG"'})
    assert target_path(None, JOB, "original", named) == Path(f"{JOB}.original.jpg")
    typed = resp("http://api/v1/jobs/x/cutout", **{"content-type": "image/png"})
    assert target_path(None, JOB, "cutout", typed) == Path(f"{JOB}.png")
    assert target_path(Path("out.bin"), JOB, "cutout", typed) == Path("out.bin")


def _job(status: str) -> dict[str, object]:
    return {"job_id": JOB, "status": status}


async def test_follow_reads_the_event_stream_and_ends_with_the_full_job() -> None:
    stream = "".join(
        f"event: {s}\ndata: {json.dumps(_job(s))}\n\n: ping\n\n" for s in ("pending", "processing", "completed")
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, text=stream, headers={"content-type": "text/event-stream; charset=utf-8"})
        return httpx.Response(200, json={**_job("completed"), "processed_bytes": 10})

    changes: list[str] = []
    async with _client(handler) as api:
        job = await follow(api, JOB, on_change=lambda j: changes.append(str(j["status"])), poll_interval_s=0)
        assert api.events_supported is True
    assert changes == ["pending", "processing", "completed"]
    assert job["processed_bytes"] == 10


async def test_follow_polls_when_the_api_has_no_event_stream_and_remembers() -> None:
    states = ["pending", "processing", "processing", "failed"]
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path.endswith("/events"):
            return _error(404, "not_found", "Not Found")
        return httpx.Response(200, json=_job(states.pop(0) if states else "failed"))

    async with _client(handler) as api:
        assert (await follow(api, JOB, poll_interval_s=0))["status"] == "failed"
        assert (await follow(api, JOB, poll_interval_s=0))["status"] == "failed"
    assert [p for p in paths if p.endswith("/events")] == [f"/v1/jobs/{JOB}/events"]


async def test_a_stream_that_ends_early_leaves_the_rest_to_polling() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            body = f"event: processing\ndata: {json.dumps(_job('processing'))}\n\nevent: compl"
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=_job("completed"))

    changes: list[str] = []
    async with _client(handler) as api:
        await follow(api, JOB, on_change=lambda j: changes.append(str(j["status"])), poll_interval_s=0)
    assert changes == ["processing", "completed"]


async def test_sse_parsing_follows_the_rules_a_job_stream_needs() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [
            ": hello",
            "event: a",
            "data: 1",
            "data:2",
            "id: 7",
            "",
            "",
            "data: x",
            "",
            "event: cut",
            "data: y",
        ]:
            yield line

    assert [e async for e in parse_events(lines())] == [("a", "1\n2"), ("message", "x")]


def test_retry_after_reads_seconds_and_dates_and_is_bounded() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_s("7", 1) == 7.0
    assert retry_after_s("Thu, 01 Jan 2026 00:00:05 GMT", 1, now=now) == 5.0
    assert retry_after_s("60", 1) == 60.0
    assert retry_after_s("99999", 1) is None  # longer than a client should look hung: give up
    assert retry_after_s(None, 3) == 2.0
    assert retry_after_s("soon", 1) == 0.5
