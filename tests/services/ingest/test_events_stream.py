"""One event stream's rules (services/ingest/routes/events.py follow_job), with a hub fed by hand."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from sse_starlette.event import ServerSentEvent

from services.ingest.live import JobEventHub
from services.ingest.routes.events import follow_job
from services.ingest.settings import LiveOptions
from shared.contracts import JobEvent, JobEventKind
from shared.exceptions import Unauthenticated
from shared.ids import uuid7

JOB = uuid7()


class Store:
    """The job's stored state as the stream reads it, with a count of reads; ``stale`` is a cached state
    that stays behind it (a failed write-through), which only a fresh read gets past."""

    def __init__(self, status: str = "pending") -> None:
        self.status = status
        self.stale: str | None = None
        self.reads = 0
        self.fresh_reads = 0
        self.fail = False

    async def read(self, *, fresh: bool = False) -> dict[str, Any]:
        self.reads += 1
        self.fresh_reads += fresh
        if self.fail:
            raise ConnectionError("database down")
        status = self.stale if self.stale is not None and not fresh else self.status
        return {"job_id": str(JOB), "status": status, "urls": {"original": "u"}}


def _event(kind: JobEventKind) -> JobEvent:
    now = datetime.now(UTC)
    return JobEvent(job_id=JOB, created_at=now, kind=kind, occurred_at=now, user_id="u")


class Key:
    """The stream's API key as verify sees it, with a count of checks."""

    def __init__(self) -> None:
        self.revoked = False
        self.checks = 0

    async def authorize(self) -> None:
        self.checks += 1
        if self.revoked:
            raise Unauthenticated("invalid API key")


def _stream(hub: JobEventHub, store: Store, key: Key | None = None, **options: float) -> AsyncIterator[ServerSentEvent]:
    return follow_job(
        hub, str(JOB), store.read, LiveOptions(**options), authorize=(key or Key()).authorize  # type: ignore[arg-type]
    )


def _hub(queue_events: int = 32) -> JobEventHub:
    return JobEventHub(max_subscribers=10, queue_events=queue_events)


async def _rest(stream: AsyncIterator[ServerSentEvent], timeout_s: float = 5) -> list[str]:
    """The statuses of the events still to come, until the stream ends."""
    return [event.event or "" async for event in _bounded(stream, timeout_s)]


async def _bounded(stream: AsyncIterator[ServerSentEvent], timeout_s: float) -> AsyncIterator[ServerSentEvent]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            yield await asyncio.wait_for(anext(stream), deadline - time.monotonic())
        except StopAsyncIteration:
            return


async def test_the_state_first_then_each_newer_transition_until_the_end() -> None:
    hub, store = _hub(), Store("pending")
    stream = _stream(hub, store)
    first = await anext(stream)
    assert (first.event, first.id) == ("pending", "pending")
    assert json.loads(str(first.data)) == {"job_id": str(JOB), "status": "pending", "urls": {"original": "u"}}
    assert hub.subscribers == 1, "subscribed before the first read"
    store.status = "processing"
    hub.deliver(_event(JobEventKind.PROCESSING))
    assert (await anext(stream)).event == "processing"
    # A replay and the persister's repeated `accepted` are older than what was sent: no read, no event.
    reads = store.reads
    hub.deliver(_event(JobEventKind.ACCEPTED))
    hub.deliver(_event(JobEventKind.PROCESSING))
    store.status = "completed"
    hub.deliver(_event(JobEventKind.COMPLETED))
    assert await _rest(stream) == ["completed"]
    assert store.reads == reads + 1
    assert hub.subscribers == 0


async def test_a_finished_job_is_sent_once_and_the_stream_ends() -> None:
    hub, store = _hub(), Store("failed")
    assert await _rest(_stream(hub, store)) == ["failed"]
    assert store.reads == 1 and hub.subscribers == 0


async def test_a_missed_event_is_caught_by_the_quiet_period_read() -> None:
    hub, store = _hub(), Store("processing")
    stream = _stream(hub, store, quiet_s=0.2, max_quiet_s=0.2)
    assert (await anext(stream)).event == "processing"
    store.status = "completed"  # and its event never reaches the hub
    started = time.monotonic()
    assert await _rest(stream) == ["completed"]
    assert 0.15 < time.monotonic() - started < 2


async def test_quiet_period_reads_back_off() -> None:
    hub, store = _hub(), Store("pending")
    stream = _stream(hub, store, quiet_s=0.1, max_quiet_s=0.4, max_stream_s=1.0)
    assert await _rest(stream) == ["pending", "pending"]  # the state, then the state at the time limit
    # Reads: the first, quiet reads after 0.1, 0.3, 0.7 s (periods 0.1, 0.2, 0.4), the last at 1.0 s.
    assert store.reads == 5


async def test_the_stream_ends_at_its_time_limit_with_the_current_state() -> None:
    hub, store = _hub(), Store("pending")
    stream = _stream(hub, store, max_stream_s=0.3)
    assert (await anext(stream)).event == "pending"
    store.status = "processing"  # unannounced: the limit's read finds it
    started = time.monotonic()
    assert await _rest(stream) == ["processing"]
    assert time.monotonic() - started < 1 and hub.subscribers == 0


async def test_a_stream_that_falls_behind_resyncs_from_the_store_and_ends() -> None:
    hub, store = _hub(queue_events=1), Store("pending")
    stream = _stream(hub, store)
    assert (await anext(stream)).event == "pending"
    hub.deliver(_event(JobEventKind.PROCESSING))
    store.status = "processing"
    hub.deliver(_event(JobEventKind.PROCESSING))  # a second unread event: over the limit of 1
    assert hub.dropped == 1 and hub.subscribers == 0
    assert await _rest(stream) == ["processing"]


async def test_a_client_gone_mid_stream_frees_its_subscription() -> None:
    hub, store = _hub(), Store("pending")
    stream = _stream(hub, store)
    await anext(stream)

    async def next_event() -> ServerSentEvent:
        return await anext(stream)

    waiting = asyncio.create_task(next_event())
    await asyncio.sleep(0.05)
    assert hub.subscribers == 1
    waiting.cancel()  # what sse-starlette does when the client disconnects
    await asyncio.gather(waiting, return_exceptions=True)
    assert hub.subscribers == 0 and not hub.watches(str(JOB))


async def test_a_failed_read_ends_the_stream_quietly() -> None:
    hub, store = _hub(), Store("pending")
    stream = _stream(hub, store)
    await anext(stream)
    store.fail = True
    hub.deliver(_event(JobEventKind.PROCESSING))
    assert await _rest(stream) == []
    assert hub.subscribers == 0


async def test_a_revoked_key_ends_a_quiet_stream_at_its_next_check() -> None:
    hub, store, key = _hub(), Store("pending"), Key()
    stream = _stream(hub, store, key, reauth_s=0.2, quiet_s=60)
    assert (await anext(stream)).event == "pending"
    key.revoked = True  # no event comes, and the quiet read is a minute away
    started = time.monotonic()
    assert await _rest(stream) == []
    assert 0.15 < time.monotonic() - started < 2
    assert store.reads == 1 and hub.subscribers == 0


async def test_a_revoked_key_gets_no_further_state() -> None:
    hub, store, key = _hub(), Store("pending"), Key()
    stream = _stream(hub, store, key)
    assert (await anext(stream)).event == "pending"
    key.revoked = True
    store.status = "completed"
    hub.deliver(_event(JobEventKind.COMPLETED))
    assert await _rest(stream) == []  # the key is checked before the read the event triggers
    assert store.reads == 1 and key.checks == 1


async def test_key_checks_do_not_delay_the_quiet_period_read() -> None:
    hub, store, key = _hub(), Store("processing"), Key()
    stream = _stream(hub, store, key, reauth_s=0.05, quiet_s=0.3, max_quiet_s=0.3)
    assert (await anext(stream)).event == "processing"
    store.status = "completed"  # unannounced: only the quiet read finds it
    started = time.monotonic()
    assert await _rest(stream) == ["completed"]
    assert 0.25 < time.monotonic() - started < 1.5
    assert key.checks >= 4  # every 0.05 s while waiting, and once more before the read


async def test_a_cached_view_behind_the_event_is_read_again_from_the_database() -> None:
    hub, store = _hub(), Store("processing")
    stream = _stream(hub, store)
    assert (await anext(stream)).event == "processing"
    store.status, store.stale = "completed", "processing"  # the cache missed the completion's write
    hub.deliver(_event(JobEventKind.COMPLETED))
    assert await _rest(stream) == ["completed"]
    assert store.fresh_reads == 1


async def test_a_cached_view_that_keeps_up_is_never_read_past() -> None:
    hub, store = _hub(), Store("pending")
    stream = _stream(hub, store)
    await anext(stream)
    store.status = "processing"
    hub.deliver(_event(JobEventKind.PROCESSING))
    assert (await anext(stream)).event == "processing"
    store.status = "completed"
    hub.deliver(_event(JobEventKind.COMPLETED))
    assert await _rest(stream) == ["completed"]
    assert store.fresh_reads == 0


async def test_the_quiet_period_read_gets_past_a_stale_cache() -> None:
    hub, store = _hub(), Store("processing")
    stream = _stream(hub, store, quiet_s=0.2, max_quiet_s=0.2)
    assert (await anext(stream)).event == "processing"
    store.status, store.stale = "completed", "processing"  # cache write missed and the event already gone
    assert await _rest(stream) == ["completed"]
    assert store.fresh_reads == 1
