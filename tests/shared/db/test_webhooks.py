"""Webhooks outbox (migration 0009): the trigger makes a row due once, whoever ends the job; claims skip
locked rows and lease them; a lapsed lease frees the row and its old holder can no longer move it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from shared.contracts.events import CutoutFormat
from shared.db.models import JobStatus, WebhookRecord
from shared.db.repositories import Repositories
from shared.db.repositories.jobs import Completion, Failure, Started
from shared.db.repositories.webhooks import AttemptResult
from shared.ids import uuid7, uuid7_time
from tests.shared.db.conftest import JobFactory, sha_of, unique_user

URL = "https://hooks.example.com/rmbg"


async def _job(conn: asyncpg.Connection, raw_job: JobFactory, user: str, status: str = "pending") -> UUID:
    return await raw_job(conn, at=datetime.now(UTC), user_id=user, status=status)


async def _fail(conn: asyncpg.Connection, repos: Repositories, job_id: UUID) -> None:
    assert await repos.jobs.mark_failed(conn, job_id=job_id, error_message="boom", completed_at=datetime.now(UTC))


async def _register(conn: asyncpg.Connection, repos: Repositories, job_id: UUID, user: str) -> str | None:
    return await repos.webhooks.register(conn, job_id=job_id, created_at=uuid7_time(job_id), user_id=user, url=URL)


async def _release(conn: asyncpg.Connection, job_id: UUID) -> None:
    """Make a due row owed now (tests do not wait out the schedule); other tests' rows stay as they are."""
    await conn.execute("UPDATE webhooks SET next_attempt_at = now() - interval '1 s' WHERE job_id = $1", job_id)


# The production schedule's bounds (services/persister/settings.py WebhookOptions): 9 waits, so 10 attempts,
# none starting later than a day after the job ended.
MAX_ATTEMPTS = 10
MAX_AGE_S = 86_400.0


async def _claim(
    conn: asyncpg.Connection,
    repos: Repositories,
    *,
    lease_s: float,
    max_attempts: int = MAX_ATTEMPTS,
    max_age_s: float = MAX_AGE_S,
) -> list[WebhookRecord]:
    # Other tests of the session leave due rows too; claiming a few hundred finds ours among them.
    return await repos.webhooks.claim_due(
        conn, limit=500, lease_s=lease_s, max_attempts=max_attempts, max_age_s=max_age_s
    )


async def _claim_only(
    conn: asyncpg.Connection, repos: Repositories, job_id: UUID, *, lease_s: float = 60
) -> list[UUID]:
    claimed = await _claim(conn, repos, lease_s=lease_s)
    return [c.job_id for c in claimed if c.job_id == job_id]


async def test_a_job_ending_makes_its_webhook_due_once(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    user = unique_user("wh")
    job_id = await _job(conn, raw_job, user)
    assert await _register(conn, repos, job_id, user) == "pending"
    assert await _register(conn, repos, job_id, user) is None  # a retried intake keeps the first
    assert await repos.jobs.mark_processing(conn, job_id=job_id, started_at=datetime.now(UTC), attempt=1)
    row = await repos.webhooks.get(conn, job_id=job_id)
    assert row is not None and row.state == "pending" and row.next_attempt_at is None

    await _fail(conn, repos, job_id)
    row = await repos.webhooks.get(conn, job_id=job_id)
    assert row is not None and row.state == "due" and row.event_type == "job.failed"
    assert row.due_at is not None and row.next_attempt_at is not None
    first_due = row.due_at

    # An operator's repair rewrites the terminal row (status named in SET): the trigger fires again and
    # finds nothing pending, so the webhook is not owed twice.
    async with conn.transaction():
        await conn.execute("SET LOCAL rmbg.allow_terminal_update = on")
        await conn.execute(
            "UPDATE image_process_jobs SET status = status, error_message = 'fixed' WHERE job_id = $1", job_id
        )
    row = await repos.webhooks.get(conn, job_id=job_id)
    assert row is not None and row.due_at == first_due and row.attempts == 0


async def test_registering_on_an_ended_job_is_due_at_once(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    user = unique_user("wh")
    job_id = await _job(conn, raw_job, user, status="completed")
    assert await _register(conn, repos, job_id, user) == "due"
    row = await repos.webhooks.get(conn, job_id=job_id)
    assert row is not None and row.event_type == "job.completed" and row.next_attempt_at is not None


async def test_registered_before_a_rejected_insert_in_one_transaction(
    conn: asyncpg.Connection, repos: Repositories
) -> None:
    """Intake's order does not matter: a job inserted failed after the row makes it due (AFTER INSERT)."""
    user = unique_user("wh")
    job_id = uuid7()
    async with conn.transaction():
        await conn.execute("INSERT INTO users (user_id, username) VALUES ($1, $1)", user)
        assert await _register(conn, repos, job_id, user) == "pending"
        inserted = await repos.jobs.insert_job(
            conn,
            job_id=job_id,
            user_id=user,
            original_path="original/x",
            content_sha256=sha_of("rejected"),
            original_bytes=10,
            image_width=None,
            image_height=None,
            params={},
            params_hash="p0",
            model_name="m",
            source="upload",
            tags=[],
            status=JobStatus.FAILED,
            error_message="not an image",
        )
        assert inserted
    row = await repos.webhooks.get(conn, job_id=job_id)
    assert row is not None and row.state == "due" and row.event_type == "job.failed"


async def test_register_and_a_concurrent_ending_never_miss_each_other(
    pool: asyncpg.Pool, repos: Repositories, raw_job: JobFactory
) -> None:
    """The ending commits while register waits on the job row (FOR SHARE): the row is inserted due."""
    user = unique_user("wh")
    async with pool.acquire() as a, pool.acquire() as b:
        job_id = await _job(a, raw_job, user, status="processing")
        ending = b.transaction()
        await ending.start()
        await _fail(b, repos, job_id)  # holds the job row's lock, not yet committed
        register = asyncio.create_task(_register(a, repos, job_id, user))
        await asyncio.sleep(0.2)
        assert not register.done()  # waits for the ending to commit or roll back
        await ending.commit()
        assert await register == "due"


async def test_trigger_covers_partitions_created_later(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    user = unique_user("wh")
    at = datetime(2031, 7, 14, tzinfo=UTC)  # a month no migration created: raw_job creates it now
    job_id = await raw_job(conn, at=at, user_id=user, status="pending")
    assert await _register(conn, repos, job_id, user) == "pending"
    await _fail(conn, repos, job_id)
    row = await repos.webhooks.get(conn, job_id=job_id)
    assert row is not None and row.state == "due"


async def test_claims_skip_locked_rows_and_lease_them(
    pool: asyncpg.Pool, repos: Repositories, raw_job: JobFactory
) -> None:
    user = unique_user("wh")
    async with pool.acquire() as a, pool.acquire() as b:
        job_id = await _job(a, raw_job, user, status="completed")
        await _register(a, repos, job_id, user)
        await _release(a, job_id)
        tx = a.transaction()
        await tx.start()
        assert await _claim_only(a, repos, job_id) == [job_id]  # locked until a commits
        started = asyncio.get_running_loop().time()
        assert await _claim_only(b, repos, job_id) == []  # skipped, not waited for
        assert asyncio.get_running_loop().time() - started < 1
        await tx.commit()
        assert await _claim_only(b, repos, job_id) == []  # committed: leased for 60 s
        row = await repos.webhooks.get(b, job_id=job_id)
        assert row is not None and row.attempts == 1 and row.lease_token is not None
        assert row.next_attempt_at is not None and row.next_attempt_at > datetime.now(UTC) + timedelta(seconds=50)


async def test_a_lapsed_lease_frees_the_row_and_fences_its_old_holder(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    user = unique_user("wh")
    job_id = await _job(conn, raw_job, user, status="completed")
    await _register(conn, repos, job_id, user)
    await _release(conn, job_id)
    first = [c for c in await _claim(conn, repos, lease_s=0.2) if c.job_id == job_id]
    assert len(first) == 1 and first[0].attempts == 1
    await asyncio.sleep(0.4)  # the holder "crashed": its lease lapses
    second = [c for c in await _claim(conn, repos, lease_s=60) if c.job_id == job_id]
    assert len(second) == 1 and second[0].attempts == 2 and second[0].lease_token != first[0].lease_token

    now = datetime.now(UTC)
    late = AttemptResult(at=now, status_code=200, latency_ms=12, error=None)
    # The old holder's answer is kept as an attempt, but it no longer moves the row.
    assert not await repos.webhooks.record_attempt(
        conn, claimed=first[0], result=late, state="delivered", next_attempt_at=None
    )
    failed = AttemptResult(at=now, status_code=503, latency_ms=40, error="HTTP 503")
    assert await repos.webhooks.record_attempt(
        conn, claimed=second[0], result=failed, state="due", next_attempt_at=now + timedelta(seconds=30)
    )
    row = await repos.webhooks.get(conn, job_id=job_id)
    assert row is not None and row.state == "due" and row.last_status == 503 and row.lease_token is None
    assert await _claim_only(conn, repos, job_id) == []  # scheduled 30 s out

    await _release(conn, job_id)
    third = [c for c in await _claim(conn, repos, lease_s=60) if c.job_id == job_id]
    ok = AttemptResult(at=datetime.now(UTC), status_code=204, latency_ms=8, error=None)
    assert await repos.webhooks.record_attempt(
        conn, claimed=third[0], result=ok, state="delivered", next_attempt_at=None
    )

    found = await repos.webhooks.attempts_for_job(conn, job_id=job_id, user_id=user)
    assert found is not None
    hook, attempts = found
    assert hook.state == "delivered" and hook.delivered_at is not None and hook.next_attempt_at is None
    assert [(a.attempt, a.status_code, a.latency_ms) for a in attempts] == [(1, 200, 12), (2, 503, 40), (3, 204, 8)]
    assert await _claim_only(conn, repos, job_id) == []
    # Another user's job answers nothing, as a job without a webhook does.
    assert await repos.webhooks.attempts_for_job(conn, job_id=job_id, user_id=unique_user("other")) is None


async def test_the_claim_never_draws_past_the_cap_nor_claims_past_max_age(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    # Attempts whose holder never recorded them (it crashed, or failed before it could) leave rows due that
    # come back every lease_s. The claim bounds them: it gives such a row up with the reason, draws no
    # number past the cap, and one row at the smallint's end (32,767) no longer fails every claim (22003).
    user = unique_user("wh")
    last, spent, old, wedged = [await _job(conn, raw_job, user, status="completed") for _ in range(4)]
    for job_id, attempts, due_days_ago in ((last, 9, 0), (spent, 10, 0), (old, 2, 2), (wedged, 32_767, 0)):
        await _register(conn, repos, job_id, user)
        await conn.execute(
            "UPDATE webhooks SET attempts = $2, due_at = now() - make_interval(days => $3),"
            " next_attempt_at = now() - interval '1 s' WHERE job_id = $1",
            job_id,
            attempts,
            due_days_ago,
        )
    claimed = {c.job_id: c for c in await _claim(conn, repos, lease_s=60) if c.job_id in (last, spent, old, wedged)}
    assert list(claimed) == [last] and claimed[last].attempts == MAX_ATTEMPTS  # the last number, drawn once
    reasons = {  # no number drawn for any of them
        spent: (10, "gave up: all 10 attempts drawn, the last never recorded"),
        old: (2, "gave up: no attempt starts later than 86400 s after the job ended"),
        wedged: (32_767, "gave up: all 32767 attempts drawn, the last never recorded"),
    }
    for job_id, (attempts, reason) in reasons.items():
        row = await repos.webhooks.get(conn, job_id=job_id)
        assert row is not None and (row.state, row.attempts, row.last_error) == ("gave_up", attempts, reason)
        assert row.next_attempt_at is None and row.lease_token is None and row.delivered_at is None
    assert await conn.fetchval("SELECT count(*) FROM webhook_attempts WHERE job_id = ANY($1)", list(reasons)) == 0

    # A configured cap beyond the smallint is held inside it: the row at 32,767 is given up, not overflowed.
    await _register(conn, repos, beyond := await _job(conn, raw_job, user, status="completed"), user)
    await conn.execute(
        "UPDATE webhooks SET attempts = 32767, next_attempt_at = now() - interval '1 s' WHERE job_id = $1", beyond
    )
    assert [c for c in await _claim(conn, repos, lease_s=60, max_attempts=100_000) if c.job_id == beyond] == []
    row = await repos.webhooks.get(conn, job_id=beyond)
    assert row is not None and row.state == "gave_up" and row.attempts == 32_767


async def test_signing_secret_get_or_create_and_rotate(pool: asyncpg.Pool, repos: Repositories) -> None:
    user = unique_user("wh")
    async with pool.acquire() as a, pool.acquire() as b:
        await a.execute("INSERT INTO users (user_id, username) VALUES ($1, $1)", user)
        assert await repos.webhooks.get_secret(a, user_id=user) is None
        one, two = await asyncio.gather(
            repos.webhooks.get_or_create_secret(a, user_id=user, candidate_encrypted=b"one"),
            repos.webhooks.get_or_create_secret(b, user_id=user, candidate_encrypted=b"two"),
        )
        assert one.secret_encrypted == two.secret_encrypted  # one winner, both see it
        until = datetime.now(UTC) + timedelta(hours=24)
        rotated = await repos.webhooks.rotate_secret(a, user_id=user, secret_encrypted=b"three", previous_until=until)
        assert rotated.secret_encrypted == b"three" and rotated.previous_encrypted == one.secret_encrypted
        assert rotated.previous_until == until and rotated.rotated_at is not None
        again = await repos.webhooks.get_or_create_secret(a, user_id=user, candidate_encrypted=b"four")
        assert again.secret_encrypted == b"three"


async def test_prune_removes_old_jobs_webhooks_with_their_attempts(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    months_old = 7  # past the 6-month retention
    user = unique_user("wh")
    old = await raw_job(conn, at=datetime.now(UTC) - timedelta(days=31 * months_old), user_id=user, status="failed")
    await _register(conn, repos, old, user)
    await _release(conn, old)
    claimed = [c for c in await _claim(conn, repos, lease_s=60) if c.job_id == old]
    result = AttemptResult(at=datetime.now(UTC), status_code=None, latency_ms=3, error="refused")
    await repos.webhooks.record_attempt(conn, claimed=claimed[0], result=result, state="gave_up", next_attempt_at=None)
    cutoff = datetime.now(UTC) - timedelta(days=31 * (months_old - 1))
    assert await repos.webhooks.prune(conn, before=cutoff) >= 1
    assert await repos.webhooks.get(conn, job_id=old) is None
    assert await conn.fetchval("SELECT count(*) FROM webhook_attempts WHERE job_id = $1", old) == 0


async def test_a_batch_of_endings_makes_each_webhook_due_once(
    conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    # One statement ends several jobs (transitions.sql): the statement trigger of 0018 makes each of their
    # webhooks due with its own event, leaves the others alone, and a repeated batch owes nothing twice.
    user = unique_user("wh")
    done, failed, started, unhooked = [await _job(conn, raw_job, user) for _ in range(4)]
    for job_id in (done, failed, started):
        assert await _register(conn, repos, job_id, user) == "pending"
    now = datetime.now(UTC)
    completion = Completion(
        job_id=done, cutout_format=CutoutFormat.WEBP, mask_bytes=10, processed_bytes=None,
        model_name="briaai/RMBG-2.0", model_revision=None, processing_time_ms=5, completed_at=now, reused=False,
    )
    assert (await repos.jobs.mark_processing_many(conn, [Started(started, now, 1)])).keys() == {started}
    assert (await repos.jobs.mark_completed_many(conn, [completion, completion._replace(job_id=unhooked)])).keys() == {
        done, unhooked}
    assert (await repos.jobs.mark_failed_many(conn, [Failure(failed, "boom", now)])).keys() == {failed}
    rows = {j: await repos.webhooks.get(conn, job_id=j) for j in (done, failed, started)}
    assert {j: (r.state, r.event_type) for j, r in rows.items() if r is not None} == {
        done: ("due", "job.completed"), failed: ("due", "job.failed"), started: ("pending", None)}
    assert await repos.webhooks.get(conn, job_id=unhooked) is None
    # Once delivered, a webhook is not owed again by any later statement on its ended job: a repeated batch
    # (which moves nothing) nor an operator's repair that rewrites the row (it reaches the trigger).
    await conn.execute("UPDATE webhooks SET state = 'delivered', delivered_at = now() WHERE job_id = $1", done)
    assert not (await repos.jobs.mark_completed_many(conn, [completion])).keys()
    async with conn.transaction():
        await conn.execute("SET LOCAL rmbg.allow_terminal_update = on")
        await conn.execute("UPDATE image_process_jobs SET status = status, mask_bytes = 11 WHERE job_id = $1", done)
    again = await repos.webhooks.get(conn, job_id=done)
    assert again is not None and again.state == "delivered"
