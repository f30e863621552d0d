"""Live status: ``GET /v1/jobs/{id}/events`` streams each transition of the caller's job as Server-Sent Events.

Each event is ``event: <status>``, ``id: <status>`` and ``data:`` the job as ``GET /v1/jobs/{id}`` shows it;
the stream ends after a terminal state, so a client that connects after the end gets the final state at
once. Transitions come from the job-events topic through the process's hub (services/ingest/live.py), not
from polling the database.

sse-starlette rather than Starlette's StreamingResponse: it already does what a long-lived stream needs
and StreamingResponse leaves to the caller, each a place to get wrong: keep-alive comments on a timer
beside the generator, a send timeout that cuts off a client that stopped reading, cancelling the
generator when the client disconnects (so its subscription is freed at once, not at the next event), and
ending the streams when uvicorn shuts down (otherwise every open stream holds the graceful shutdown for
its whole 30 s). What it costs: it patches uvicorn's exit handler when imported.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from fastapi import APIRouter
from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse

from services.ingest.auth import CurrentUser, PresentedKey, Resources
from services.ingest.errors import ERROR_RESPONSES, ErrorResponse
from services.ingest.jobviews import job_detail, owned_job, parse_job_id
from services.ingest.live import JobEventHub, SubscriptionDropped, event_status
from services.ingest.settings import LiveOptions
from shared.contracts import JobEvent
from shared.db.models import STATUS_RANK, TERMINAL_STATUSES, JobStatus
from shared.exceptions import Unauthenticated
from shared.failures import describe

log = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)

class Reader(Protocol):
    """The job's view as GET /v1/jobs/{id} answers it, read afresh (Redis, then PostgreSQL); ``fresh``
    reads PostgreSQL whatever Redis holds."""

    def __call__(self, *, fresh: bool = False) -> Awaitable[dict[str, Any]]: ...


# Raises Unauthenticated when the stream's API key no longer holds (revoked since the request).
Authorize = Callable[[], Awaitable[None]]


def _status(job: dict[str, Any]) -> JobStatus:
    return JobStatus(job["status"])


def job_sse(job: dict[str, Any]) -> ServerSentEvent:
    status = _status(job).value
    return ServerSentEvent(data=json.dumps(job, separators=(",", ":")), event=status, id=status)


async def _read_after(read: Reader, authorize: Authorize, event: JobEvent | None) -> dict[str, Any]:
    """The state after ``event``, once the key has held; None (a quiet period, the time limit, a dropped
    subscription) reads PostgreSQL itself: those reads are the safety net for anything missed, a failed
    cache write as much as a lost event, and come at most once per quiet period (30 s and longer)."""
    await authorize()
    if event is None:
        return await read(fresh=True)
    job = await read()
    if STATUS_RANK[_status(job)] < STATUS_RANK[event_status(event.kind)]:
        # The cached view is behind the event: its write-through failed, which leaves it stale for
        # RMBG_REDIS__JOB_TTL_S (an hour). PostgreSQL has the state (events are sent after the commit),
        # and this read writes it through for every other reader.
        job = await read(fresh=True)
    return job


async def follow_job(
    hub: JobEventHub, job_id: str, read: Reader, options: LiveOptions, *, authorize: Authorize
) -> AsyncIterator[ServerSentEvent]:
    """The job's state now, then each newer state the hub hears of, until a terminal one.

    A stream that ends before the job does (its time is up, it fell behind, the server stops) sends the
    job's current state last, so the client knows where it stands when it reconnects. A read that fails
    ends the stream: the client reconnects, as it would after any cut connection. So does a key that no
    longer holds: ``authorize`` runs before every read and at least every ``reauth_s``, so a revoked key's
    stream ends within that (60 s) instead of running for the stream's whole hour.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.max_stream_s

    try:
        # Subscribe before reading: an event sent between the read and the subscription would be lost,
        # while one sent before the read is in the state read, and its replay is ignored by rank.
        with hub.subscribe(job_id) as sub:
            job = await read()  # the request itself was just authorized
            yield job_sse(job)
            sent = STATUS_RANK[_status(job)]
            quiet = options.quiet_s
            started = loop.time()
            quiet_until, recheck_at = started + quiet, started + options.reauth_s
            while _status(job) not in TERMINAL_STATUSES:
                now = loop.time()
                if now >= deadline:
                    yield job_sse(await _read_after(read, authorize, None))
                    return
                if now >= recheck_at:
                    await authorize()
                    recheck_at = now + options.reauth_s
                try:
                    event = await sub.next(min(deadline, quiet_until, recheck_at) - now)
                except SubscriptionDropped:
                    yield job_sse(await _read_after(read, authorize, None))
                    return
                if event is None:
                    if loop.time() < quiet_until:
                        continue  # woken for the deadline or the key's check: the loop's head does them
                    # A safety net, not polling: no event for a quiet period (30 s, then 60, 120... up to
                    # 300 s) may mean the hub is down or lagging, or missed the event (it starts at an end
                    # the broker may misreport), and a missed terminal event would leave the client
                    # waiting for the stream's whole hour. One read per quiet period bounds that wait.
                    quiet = min(quiet * 2, options.max_quiet_s)
                else:
                    quiet = options.quiet_s
                quiet_until = loop.time() + quiet
                if event is not None and STATUS_RANK[event_status(event.kind)] <= sent:
                    continue  # a replay, or the `accepted` the persister repeats before an end
                fresh = await _read_after(read, authorize, event)
                if STATUS_RANK[_status(fresh)] > sent:
                    job, sent = fresh, STATUS_RANK[_status(fresh)]
                    yield job_sse(job)
    except Unauthenticated:
        log.info("event stream of job %s ended: its API key no longer holds", job_id)
    except Exception as exc:  # not CancelledError/GeneratorExit: a disconnect still unwinds the subscription
        log.warning("event stream of job %s ended: %s", job_id, describe(exc, limit=300))


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: <status>`, `id: <status>`, `data: <job as GET /v1/jobs/{id}>` per transition; "
            "ends after completed or failed",
        },
        503: {"model": ErrorResponse, "description": "too many streams open on this server; see Retry-After"},
    },
)
async def job_events(res: Resources, principal: CurrentUser, key: PresentedKey, job_id: str) -> EventSourceResponse:
    """Follow one of the caller's jobs live, as Server-Sent Events, until it completes or fails."""
    # Answered before the stream starts, so they are real statuses: 404 for another user's job as for a
    # missing one, 503 when this process serves as many streams as it may. The stream reads the job once
    # more after subscribing (one Redis read): this read decides the status code, that one what is sent.
    await owned_job(res, principal, job_id)
    res.hub.check_capacity()
    canonical = str(parse_job_id(job_id))

    async def read(*, fresh: bool = False) -> dict[str, Any]:
        return await job_detail(res, await owned_job(res, principal, canonical, fresh=fresh))

    async def authorize() -> None:
        # The key as the request presented it, verified again (a cached Redis read): revoked, it raises.
        await res.keys.verify(key)

    options = res.settings.live
    return EventSourceResponse(
        follow_job(res.hub, canonical, read, options, authorize=authorize),
        ping=options.keepalive_s,
        send_timeout=options.send_timeout_s,
    )
