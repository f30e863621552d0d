"""The webhook dispatcher against real PostgreSQL and a real HTTP receiver on loopback (aiohttp).

Each test ends its own webhooks (delivered or given up) so that the next test's dispatcher, on the same
database, finds nothing of it due.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from aiohttp import web
from botocore.exceptions import EndpointConnectionError
from cryptography.fernet import Fernet
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.persister.settings import WebhookOptions
from services.persister.webhooks import WebhookDispatcher, WebhookMetrics
from shared.auth import SecretCipher
from shared.config import AuthSettings, OutboundSettings, PostgresSettings
from shared.contracts.events import CutoutFormat
from shared.db import Database, open_database
from shared.db.models import WebhookAttempt, WebhookRecord
from shared.ids import uuid7, uuid7_time
from shared.outbound import open_outbound
from shared.telemetry import PipelineMetrics
from shared.webhooks import WebhookSecrets
from tests.support.databases import migrated_database

# Fast schedule for tests: the production one waits 5 s, 30 s, 2 min...
FAST = WebhookOptions(
    poll_interval_s=0.05, timeout_s=0.5, lease_s=5, retry_delays_s=(0.05, 0.05, 0.05), jitter=0, url_ttl_s=0
)


@pytest.fixture(scope="module")
async def dsn() -> AsyncIterator[str]:
    async with migrated_database("rmbg_whtest") as dsn:
        yield dsn


@pytest.fixture(scope="module")
async def db(dsn: str) -> AsyncIterator[Database]:
    async with open_database(PostgresSettings(dsn=SecretStr(dsn), max_pool=8)) as database:
        yield database


def webhook_secrets(db: Database) -> WebhookSecrets:
    return WebhookSecrets(repo=db.webhooks, cipher=SecretCipher(AuthSettings().encryption_keys.get_secret_value()))


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers each request by the next scripted step and keeps what
    it got. A step is an HTTP status, or ("sleep", seconds) then 200."""

    script: list[Any] = field(default_factory=list)
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    concurrent: int = 0
    most_concurrent: int = 0
    redirect_hits: int = 0
    port: int = 0

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        return f"http://{host}:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            self.got.append((dict(request.headers), await request.read()))
            step = self.script.pop(0) if self.script else 200
            if isinstance(step, tuple):
                await asyncio.sleep(step[1])
                step = 200
            if 300 <= step < 400:
                return web.Response(status=step, headers={"Location": "/elsewhere"})
            return web.Response(status=step)
        finally:
            self.concurrent -= 1

    async def reached(self) -> bool:
        return bool(self.got)

    async def elsewhere(self, _: web.Request) -> web.StreamResponse:
        self.redirect_hits += 1
        return web.Response(status=200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    app.router.add_post("/elsewhere", rec.elsewhere)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    try:
        yield rec
    finally:
        await runner.cleanup()


Dispatch = Callable[..., contextlib.AbstractAsyncContextManager[WebhookDispatcher]]


@pytest.fixture
def dispatcher(db: Database) -> Dispatch:
    @contextlib.asynccontextmanager
    async def make(options: WebhookOptions = FAST, *, allow_private: bool = True) -> AsyncIterator[WebhookDispatcher]:
        policy = OutboundSettings(allow_private_targets=allow_private, allowed_ports=())
        async with open_outbound(policy, limit=options.concurrency) as session:
            yield WebhookDispatcher(
                options=options,
                policy=policy,
                db=db,
                store=None,
                session=session,
                secrets=webhook_secrets(db),
                metrics=WebhookMetrics.create(PipelineMetrics.create().registry),
            )

    return make


@pytest.fixture
async def db_dispatcher(db: Database) -> AsyncIterator[Callable[[WebhookOptions, Any], WebhookDispatcher]]:
    """A dispatcher with a given object store (``dispatcher`` has none), on one session closed after."""
    policy = OutboundSettings(allow_private_targets=True, allowed_ports=())
    async with open_outbound(policy, limit=FAST.concurrency) as session:

        def make(options: WebhookOptions, store: Any) -> WebhookDispatcher:
            return WebhookDispatcher(
                options=options,
                policy=policy,
                db=db,
                store=store,
                session=session,
                secrets=webhook_secrets(db),
                metrics=WebhookMetrics.create(PipelineMetrics.create().registry),
            )

        yield make


async def ended_job(db: Database, url: str, *, user: str | None = None, fail: bool = False) -> tuple[UUID, str]:
    """A job with a callback, registered in its intake transaction, then ended by the repository."""
    user = user or f"wh-{secrets.token_hex(5)}"
    job_id = uuid7()
    async with db.pool.acquire() as conn:
        async with conn.transaction():
            await db.jobs.insert_job(
                conn,
                job_id=job_id,
                user_id=user,
                original_path="original/x.png",
                content_sha256="ab" * 32,
                original_bytes=100,
                image_width=10,
                image_height=10,
                params={"threshold": 0.5},
                params_hash="p0",
                model_name="tiny",
                source="http",
                tags=["cat"],
            )
            await db.webhooks.register(conn, job_id=job_id, created_at=uuid7_time(job_id), user_id=user, url=url)
        now = datetime.now(UTC)
        if fail:
            await db.jobs.mark_failed(conn, job_id=job_id, error_message="model failed", completed_at=now)
        else:
            await db.jobs.mark_completed(
                conn,
                job_id=job_id,
                cutout_format=CutoutFormat.WEBP,
                mask_bytes=10,
                processed_bytes=20,
                model_name="tiny",
                model_revision=None,
                processing_time_ms=42,
                completed_at=now,
                reused=False,
            )
    return job_id, user


async def state(db: Database, job_id: UUID, user: str) -> tuple[WebhookRecord, list[WebhookAttempt]]:
    async with db.pool.acquire() as conn:
        found = await db.webhooks.attempts_for_job(conn, job_id=job_id, user_id=user)
    assert found is not None
    return found


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10) -> None:
    """Poll the database (what the dispatcher wrote) until ``check`` holds; nothing to wait on instead."""
    async with asyncio.timeout(timeout_s):
        for _ in range(int(timeout_s / 0.05) + 1):
            if await check():
                return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"not within {timeout_s} s")


@contextlib.asynccontextmanager
async def running(d: WebhookDispatcher) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_retries_until_delivered_signed_and_every_attempt_recorded(
    db: Database, receiver: Receiver, dispatcher: Dispatch
) -> None:
    receiver.script = [500, ("sleep", 1.5), 204]  # an error, a timeout (0.5 s), then accepted
    job_id, user = await ended_job(db, receiver.url())
    async with dispatcher() as d, running(d):

        async def delivered() -> bool:
            return (await state(db, job_id, user))[0].state == "delivered"

        await until(delivered)
    hook, attempts = await state(db, job_id, user)
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 500), (2, None), (3, 204)]
    assert attempts[0].error == "HTTP 500" and attempts[2].error is None
    assert attempts[1].error == "no answer within 0.5 s" and 450 <= attempts[1].latency_ms < 1500
    assert hook.delivered_at == attempts[2].at and hook.last_status == 204

    async with db.pool.acquire() as conn:
        secret = (await webhook_secrets(db).get(conn, user_id=user)).current
    ids = set()
    for headers, body in receiver.got:
        event = Webhook(secret).verify(body, headers)  # raises unless signed with the user's secret
        ids.add(headers["webhook-id"])
    assert ids == {f"msg_{job_id}"}  # one message id across retries: receivers drop repeats by it
    assert event["type"] == "job.completed"
    data = event["data"]
    assert data["job_id"] == str(job_id) and data["status"] == "completed" and data["processing_time_ms"] == 42
    assert data["tags"] == ["cat"] and data["params"] == {"threshold": 0.5} and "urls" not in data
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUJD" * 11).verify(receiver.got[-1][1], receiver.got[-1][0])


async def test_private_targets_are_refused_once_and_never_retried(
    db: Database, receiver: Receiver, dispatcher: Dispatch
) -> None:
    literal, user = await ended_job(db, receiver.url("127.0.0.1"))
    named, _ = await ended_job(db, receiver.url("localhost"))  # refused by the resolver, at connect time
    async with dispatcher(allow_private=False) as d:
        assert await d.dispatch_once() >= 2
        assert await d.dispatch_once() == 0
    assert receiver.got == []
    async with db.pool.acquire() as conn:
        for job_id in (literal, named):
            hook = await db.webhooks.get(conn, job_id=job_id)
            assert hook is not None and hook.state == "gave_up" and hook.attempts == 1
            assert hook.last_status is None and hook.last_error and hook.last_error.startswith("refused: ")
    hook, attempts = await state(db, literal, user)
    assert len(attempts) == 1 and attempts[0].error == "refused: 127.0.0.1 is not a public address"


async def test_a_redirect_is_a_failed_attempt_and_not_followed(
    db: Database, receiver: Receiver, dispatcher: Dispatch
) -> None:
    receiver.script = [302, 302, 302, 302]
    job_id, user = await ended_job(db, receiver.url(), fail=True)
    async with dispatcher() as d, running(d):

        async def given_up() -> bool:
            return (await state(db, job_id, user))[0].state == "gave_up"

        await until(given_up)
    _, attempts = await state(db, job_id, user)
    # Three waits in FAST's schedule: four attempts, then it gives up.
    assert [a.status_code for a in attempts] == [302, 302, 302, 302]
    assert attempts[0].error == "HTTP 302: redirects are not followed"
    assert receiver.redirect_hits == 0
    assert json.loads(receiver.got[0][1])["type"] == "job.failed"


async def test_max_age_bounds_the_schedule(db: Database, receiver: Receiver, dispatcher: Dispatch) -> None:
    receiver.script = [503, 503]
    job_id, user = await ended_job(db, receiver.url())
    options = FAST.model_copy(update={"retry_delays_s": (0.05, 30.0), "max_age_s": 5.0})
    async with dispatcher(options) as d, running(d):

        async def given_up() -> bool:
            return (await state(db, job_id, user))[0].state == "gave_up"

        await until(given_up)
    _, attempts = await state(db, job_id, user)
    assert [a.status_code for a in attempts] == [503, 503]  # the 30 s wait would end past the 5 s bound


async def test_concurrency_is_capped(db: Database, receiver: Receiver, dispatcher: Dispatch) -> None:
    receiver.script = [("sleep", 0.3)] * 6
    jobs = [await ended_job(db, receiver.url()) for _ in range(6)]
    options = FAST.model_copy(update={"concurrency": 2})
    async with dispatcher(options) as d, running(d):

        async def all_delivered() -> bool:
            states = [(await state(db, j, u))[0].state for j, u in jobs]
            return states == ["delivered"] * len(jobs)

        await until(all_delivered)
    assert receiver.most_concurrent == 2


async def test_stop_drains_sends_in_flight_within_the_grace(
    db: Database, receiver: Receiver, dispatcher: Dispatch
) -> None:
    receiver.script = [("sleep", 0.6)]
    job_id, user = await ended_job(db, receiver.url())
    options = FAST.model_copy(update={"timeout_s": 3.0, "grace_s": 3.0})
    async with dispatcher(options) as d, running(d) as stop:
        await until(receiver.reached)
        stop.set()
    hook, _ = await state(db, job_id, user)
    assert hook.state == "delivered"  # finished after the stop, within the grace


async def test_a_send_cut_at_stop_is_handed_on_by_its_lease(
    db: Database, receiver: Receiver, dispatcher: Dispatch
) -> None:
    receiver.script = [("sleep", 2.0)]
    job_id, user = await ended_job(db, receiver.url())
    options = FAST.model_copy(update={"timeout_s": 3.0, "lease_s": 4.0, "grace_s": 0.2})
    async with dispatcher(options) as d:
        async with running(d) as stop:
            await until(receiver.reached)
            stop.set()
        hook, attempts = await state(db, job_id, user)
        assert hook.state == "due" and hook.attempts == 1 and attempts == []  # cut: nothing recorded
        assert await d.dispatch_once() == 0  # still leased
        async with db.pool.acquire() as conn:  # the lease ends (instead of waiting 4 s)
            await conn.execute("UPDATE webhooks SET next_attempt_at = now() WHERE job_id = $1", job_id)
        assert await d.dispatch_once() == 1
    hook, attempts = await state(db, job_id, user)
    assert hook.state == "delivered" and [a.attempt for a in attempts] == [2]


async def test_a_rotated_secret_signs_beside_the_new_one_for_a_day(
    db: Database, receiver: Receiver, dispatcher: Dispatch
) -> None:
    job_id, user = await ended_job(db, receiver.url())
    async with db.pool.acquire() as conn:
        old = (await webhook_secrets(db).get(conn, user_id=user)).current
        new = (await webhook_secrets(db).rotate(conn, user_id=user)).current
    assert old != new and new.startswith("whsec_")
    async with dispatcher() as d:
        assert await d.dispatch_once() >= 1
    headers, body = receiver.got[-1]
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    assert (await state(db, job_id, user))[0].state == "delivered"


async def test_a_database_outage_does_not_end_the_loop(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """Claims against a closed pool fail; the loop backs off (0.1, 0.2, 0.4 s...), keeps going, and stops."""
    async with open_database(PostgresSettings(dsn=SecretStr(dsn), max_pool=1)) as gone:
        pass  # closed on exit: every acquire now fails
    policy = OutboundSettings(allow_private_targets=True)
    async with open_outbound(policy) as session:
        d = WebhookDispatcher(
            options=FAST,
            policy=policy,
            db=gone,
            store=None,
            session=session,
            secrets=webhook_secrets(gone),
            metrics=WebhookMetrics.create(PipelineMetrics.create().registry),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(d.run(stop))
        await asyncio.sleep(1.0)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 2)
    failed = [r for r in caplog.records if r.getMessage().startswith("webhook claim failed")]
    # 0.05 s poll doubling from 0.1 s: about 4 tries in a second, not 20.
    assert 2 <= len(failed) <= 6, [r.getMessage() for r in failed]


async def test_a_secret_that_does_not_decrypt_is_recorded_and_retried_on_the_schedule(
    db: Database, receiver: Receiver, dispatcher: Dispatch
) -> None:
    # The user's secret was written under a key RMBG_AUTH__ENCRYPTION_KEYS no longer holds (rotated out too
    # early): nothing can be signed until an operator puts the key back. Unrecorded, the row came back every
    # lease_s with one more number drawn; given up at once, putting the key back could not save it.
    job_id, user = await ended_job(db, receiver.url())
    rotated_out = WebhookSecrets(repo=db.webhooks, cipher=SecretCipher(Fernet.generate_key().decode()))
    async with db.pool.acquire() as conn:
        await rotated_out.get(conn, user_id=user)
    async with dispatcher() as d:
        assert await d.dispatch_once() >= 1
    hook, attempts = await state(db, job_id, user)
    assert hook.state == "due" and hook.attempts == 1 and receiver.got == []
    assert hook.next_attempt_at is not None and hook.next_attempt_at > datetime.now(UTC)
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, None)]
    assert attempts[0].error is not None and attempts[0].error.startswith("not sent: ")
    assert "does not decrypt with RMBG_AUTH__ENCRYPTION_KEYS" in attempts[0].error


async def test_a_secret_rotated_under_a_key_since_dropped_still_opens(db: Database) -> None:
    # Keys K1, then K2,K1 and a rotation (current under K2, previous under K1), then K1 dropped. The previous
    # secret signs for 24 h only; after that (or if K1 is gone within them) the row opens with the current.
    k1, k2 = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    user = f"rot-{secrets.token_hex(3)}"
    both = WebhookSecrets(repo=db.webhooks, cipher=SecretCipher(f"{k2},{k1}"))
    only_new = WebhookSecrets(repo=db.webhooks, cipher=SecretCipher(k2))
    async with db.pool.acquire() as conn:
        await conn.execute("INSERT INTO users (user_id, username) VALUES ($1, $1)", user)
        await WebhookSecrets(repo=db.webhooks, cipher=SecretCipher(k1)).get(conn, user_id=user)
        long_ago = datetime.now(UTC) - timedelta(days=7)
        rotated = await both.rotate(conn, user_id=user, now=long_ago)  # its overlap ended six days ago
        opened = await only_new.get(conn, user_id=user)
        assert opened.current == rotated.current and opened.previous is None
        assert opened.signing(datetime.now(UTC)) == [rotated.current]
        fresh = await both.rotate(conn, user_id=user)  # overlapping now, the previous one under K2: both sign
        assert (await only_new.get(conn, user_id=user)).signing(datetime.now(UTC)) == [fresh.current, rotated.current]


@dataclass
class DownStore:
    """An object store whose endpoint does not answer: presigning the payload's URLs fails (transient)."""

    calls: int = 0

    async def presigned_get(self, key: str, *, expires_s: int) -> str:
        self.calls += 1
        raise EndpointConnectionError(endpoint_url="http://s3.invalid")


async def test_a_transient_failure_before_the_post_follows_the_schedule_and_gives_up(
    db: Database, receiver: Receiver, db_dispatcher: Callable[[WebhookOptions, Any], WebhookDispatcher]
) -> None:
    job_id, user = await ended_job(db, receiver.url())
    store = DownStore()
    # url_ttl_s > 0: the payload carries presigned URLs, and the store is down for the whole schedule.
    d = db_dispatcher(FAST.model_copy(update={"url_ttl_s": 60}), store)
    async with running(d):

        async def given_up() -> bool:
            return (await state(db, job_id, user))[0].state == "gave_up"

        await until(given_up)  # FAST's lease (5 s) is longer than its whole schedule (3 x 0.05 s)
    hook, attempts = await state(db, job_id, user)
    # Three waits in FAST's schedule: four recorded attempts, none of them sent, then it gives up.
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, None), (2, None), (3, None), (4, None)]
    assert all(a.error and a.error.startswith("not sent: EndpointConnectionError") for a in attempts)
    assert hook.attempts == 4 and receiver.got == [] and store.calls == 4


async def test_an_attempt_never_recorded_is_bounded_by_the_claim(
    db: Database, receiver: Receiver, dispatcher: Dispatch
) -> None:
    # A row whose last drawn number was never recorded (its holder died each time) and whose lease
    # lapsed: the claim gives it up instead of drawing an 11th number, and the rows behind it still flow.
    spent, user = await ended_job(db, receiver.url())
    fresh, other = await ended_job(db, receiver.url())
    async with db.pool.acquire() as conn:
        await conn.execute(
            "UPDATE webhooks SET attempts = $2, next_attempt_at = now() - interval '1 s' WHERE job_id = $1",
            spent,
            len(FAST.retry_delays_s) + 1,
        )
    async with dispatcher() as d:
        assert await d.dispatch_once() >= 1
    hook, attempts = await state(db, spent, user)
    assert hook.state == "gave_up" and hook.attempts == 4 and attempts == []
    assert hook.last_error == "gave up: all 4 attempts drawn, the last never recorded"
    assert (await state(db, fresh, other))[0].state == "delivered" and len(receiver.got) == 1
