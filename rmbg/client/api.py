"""A small typed wrapper of httpx.AsyncClient for the ingest API.

Every refusal becomes a ``ClientError`` carrying the API's ``error.message``; 429 and 503 are retried as
their Retry-After says, a bounded number of times. The key is sent only to the API: a download that is
redirected to the object store follows the redirect itself, without the Authorization header, even when
both share an origin (a presigned URL already authenticates, and S3 refuses two ways at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from rmbg.client.errors import KEY_HINT, ClientError
from rmbg.client.sse import parse_events

Job = dict[str, Any]
ObjectKind = Literal["original", "mask", "cutout"]
TERMINAL = frozenset({"completed", "failed"})

# Longest wait one Retry-After may impose: a server asking for more is better answered by giving up
# with its message than by a client that looks hung.
MAX_RETRY_AFTER_S = 60.0
# Statuses that mean "not now, same request later" (rate limit, overload, a dependency down).
RETRYABLE = frozenset({429, 503})
# Tries when the connection does not even open: a wrong URL or a stopped API is told within seconds,
# while a restarting one (rmbg up's supervisor) gets a moment.
CONNECT_TRIES = 3


@dataclass(frozen=True)
class Connection:
    url: str
    key: str
    timeout_s: float = 60.0
    tries: int = 5


@dataclass(frozen=True)
class Accepted:
    job_id: str
    status: str
    created: bool


@dataclass(frozen=True)
class Downloaded:
    path: Path
    bytes: int
    content_type: str | None


class EventsUnavailable(Exception):
    """The API has no event stream for this job (an older API): the caller polls instead."""


def backoff_s(attempt: int) -> float:
    """Seconds to wait before try ``attempt + 1`` when the server named none: 0.5 s doubling, at most 8 s."""
    return min(0.5 * 2.0 ** (attempt - 1), 8.0)


def retry_after_s(header: str | None, attempt: int, *, now: datetime | None = None) -> float | None:
    """Seconds to wait before try ``attempt + 1``: the header's (seconds or an HTTP date), else backoff;
    None when the header asks for longer than MAX_RETRY_AFTER_S (give up now, with the server's message)."""
    backoff = backoff_s(attempt)
    if not header:
        return backoff
    header = header.strip()
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return backoff
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    # Capped and retried, a quota's "until 00:00 UTC" (hours) cost 4 minutes of early retries per request.
    return None if seconds > MAX_RETRY_AFTER_S else max(seconds, 0.0)


def error_of(resp: httpx.Response) -> ClientError:
    """The API's ``{"error": {"code", "message"}}`` as an exception; a plain status line for other bodies."""
    code = f"http_{resp.status_code}"
    message = f"HTTP {resp.status_code} {resp.reason_phrase}".strip()
    with contextlib.suppress(ValueError):
        body = resp.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            code = str(error.get("code") or code)
            message = error["message"]
    if resp.status_code == 401:
        message = f"the API refused the key ({message}); {KEY_HINT}"
    return ClientError(message, code=code, status=resp.status_code)


def _unreachable(url: str, exc: httpx.TransportError) -> ClientError:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return ClientError(f"cannot reach the API at {url}: {reason}", code="unreachable")
    if isinstance(exc, httpx.TimeoutException):
        reason = f"no answer in time ({type(exc).__name__})"
    return ClientError(f"lost the connection to the API at {url}: {reason}", code="unreachable")


class ApiClient:
    """One connection pool to the API; use as ``async with ApiClient(conn) as api``."""

    def __init__(
        self,
        conn: Connection,
        *,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
        on_retry: Callable[[str], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.conn = conn
        self._on_retry = on_retry
        self._sleep = sleep or asyncio.sleep
        # Learnt once per run: an API without the event stream is polled for every job after the first.
        self.events_supported: bool | None = None
        self._http = httpx.AsyncClient(
            base_url=conn.url.rstrip("/"),
            timeout=httpx.Timeout(conn.timeout_s, connect=min(conn.timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            headers={"User-Agent": "rmbg-cli"},
        )

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._http.aclose()

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.conn.key}"}

    async def _send(
        self, request: httpx.Request, *, replay_safe: bool, stream: bool = False, wait_when_busy: bool = True
    ) -> httpx.Response:
        """Send with retries: 429/503 after their Retry-After; a connection that failed to open a few
        times (nothing was sent); a connection lost mid-request only when a repeat is harmless (a GET, or
        a submit with its Idempotency-Key)."""
        tries = max(self.conn.tries, 1)
        for attempt in range(1, tries + 1):
            try:
                resp = await self._http.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt >= min(tries, CONNECT_TRIES):
                    raise _unreachable(self.conn.url, exc) from None
                await self._wait(backoff_s(attempt), f"cannot connect ({exc}); retrying")
                continue
            except httpx.TransportError as exc:
                if attempt == tries or not replay_safe:
                    raise _unreachable(self.conn.url, exc) from None
                await self._wait(backoff_s(attempt), f"connection lost ({exc}); retrying")
                continue
            if resp.status_code in RETRYABLE and attempt < tries and wait_when_busy:
                delay = retry_after_s(resp.headers.get("Retry-After"), attempt)
                if delay is None:
                    return resp  # asked to wait longer than a client should look hung: the caller raises
                await resp.aread()
                await resp.aclose()
                await self._wait(delay, f"{error_of(resp).message}; retrying")
                continue
            return resp
        raise AssertionError("unreachable: the last try returns or raises")

    async def _wait(self, delay_s: float, why: str) -> None:
        if self._on_retry is not None:
            self._on_retry(f"{why} in {delay_s:.1f} s")
        await self._sleep(delay_s)

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        request = self._http.build_request(
            method, path, params=query, data=data, files=files, headers={**self._auth, **(headers or {})}
        )
        replay_safe = method == "GET" or "Idempotency-Key" in (headers or {})
        resp = await self._send(request, replay_safe=replay_safe)
        if resp.status_code >= 400:
            raise error_of(resp)
        try:
            return resp.status_code, resp.json()
        except ValueError:
            raise ClientError(
                f"the API answered {resp.status_code} with a body that is not JSON", code="bad_response"
            ) from None

    async def submit(
        self,
        *,
        filename: str,
        data: bytes,
        content_type: str,
        tags: list[str],
        params: dict[str, Any],
        callback_url: str | None,
        idempotency_key: str,
    ) -> Accepted:
        form: dict[str, str] = {}
        if tags:
            form["tags"] = ",".join(tags)
        if params:
            form["params"] = json.dumps(params)
        if callback_url:
            form["callback_url"] = callback_url
        _, body = await self._json(
            "POST",
            "/v1/jobs",
            data=form,
            files={"image": (filename, data, content_type)},
            headers={"Idempotency-Key": idempotency_key},
        )
        return Accepted(job_id=str(body["job_id"]), status=str(body["status"]), created=bool(body.get("created", True)))

    async def job(self, job_id: str) -> Job:
        _, body = await self._json("GET", f"/v1/jobs/{job_id}")
        return dict(body)

    async def jobs_page(
        self, *, status: str | None, tag: str | None, cursor: str | None, limit: int
    ) -> tuple[list[Job], str | None]:
        _, body = await self._json(
            "GET", "/v1/jobs", params={"status": status, "tag": tag, "cursor": cursor, "limit": limit}
        )
        return list(body.get("items") or []), body.get("next_cursor")

    async def stats(self, *, days: int) -> dict[str, Any]:
        _, body = await self._json("GET", "/v1/stats", params={"days": days})
        return dict(body)

    async def search_tags(self, text: str, *, limit: int) -> list[dict[str, Any]]:
        _, body = await self._json("GET", "/v1/tags", params={"q": text, "limit": limit})
        return list(body.get("items") or [])

    async def events(self, job_id: str) -> AsyncGenerator[Job, None]:
        """The job's states as the API pushes them (Server-Sent Events), ending at a terminal one.

        Raises ``EventsUnavailable`` when the API answers anything but an event stream (an API without
        the route); a stream that breaks simply ends, and the caller polls for the rest."""
        if self.events_supported is False:
            raise EventsUnavailable(job_id)
        # Reads wait longer than the server's keep-alive pings (15 s by sse-starlette's default).
        request = self._http.build_request(
            "GET",
            f"/v1/jobs/{job_id}/events",
            headers={**self._auth, "Accept": "text/event-stream"},
            timeout=httpx.Timeout(self.conn.timeout_s, read=60.0),
        )
        # A server with all its streams taken (503) is no reason to wait: polling serves as well.
        resp = await self._send(request, replay_safe=True, stream=True, wait_when_busy=False)
        try:
            kind = resp.headers.get("content-type", "")
            if resp.status_code != 200 or not kind.startswith("text/event-stream"):
                # A 404 from an API without the route looks like one for a missing job: polling tells.
                if resp.status_code in (404, 405, 406, 501) or resp.status_code < 400:
                    self.events_supported = False
                raise EventsUnavailable(job_id)
            self.events_supported = True
            with contextlib.suppress(httpx.TransportError):
                async for _, data in parse_events(resp.aiter_lines()):
                    try:
                        job = json.loads(data)
                    except ValueError:
                        continue
                    if isinstance(job, dict) and "status" in job:
                        yield job
                        if job["status"] in TERMINAL:
                            return
        finally:
            await resp.aclose()

    async def download(
        self, job_id: str, kind: ObjectKind, choose_path: Callable[[httpx.Response], Path]
    ) -> Downloaded:
        """Stream the job's ``kind`` object to ``choose_path(response)`` (told the final response, so a
        default name can take the object's extension); written beside and renamed, never left half."""
        request = self._http.build_request("GET", f"/v1/jobs/{job_id}/{kind}", headers=self._auth)
        resp = await self._send(request, replay_safe=True, stream=True)
        for _ in range(5):
            if not resp.is_redirect:
                break
            target = resp.headers["Location"]
            await resp.aclose()
            # Built by hand without the key: only the API ever sees it (see the module's docstring).
            redirect = self._http.build_request("GET", resp.url.join(target))
            redirect.headers.pop("Authorization", None)
            resp = await self._send(redirect, replay_safe=True, stream=True)
        try:
            if resp.status_code >= 400:
                await resp.aread()
                raise error_of(resp)
            if resp.is_redirect:
                raise ClientError(f"{kind} of job {job_id}: too many redirects", code="bad_response")
            path = choose_path(resp)
            return await _save(resp, path)
        finally:
            await resp.aclose()


async def _save(resp: httpx.Response, path: Path) -> Downloaded:
    partial = path.with_name(f".{path.name}.part")
    written = 0
    try:
        with partial.open("wb") as out:
            async for chunk in resp.aiter_bytes(1 << 16):
                out.write(chunk)
                written += len(chunk)
        partial.replace(path)
    except httpx.TransportError as exc:
        raise ClientError(f"download interrupted after {written} bytes: {exc}", code="unreachable") from None
    except OSError as exc:
        raise ClientError(f"cannot write {path}: {exc.strerror or exc}", code="io") from None
    finally:
        partial.unlink(missing_ok=True)
    return Downloaded(path=path, bytes=written, content_type=resp.headers.get("content-type"))
