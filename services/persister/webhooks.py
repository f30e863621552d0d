"""The webhook dispatcher: the outbox relay that POSTs each ended job's signed event to its callback URL.

Rows become due in PostgreSQL itself (the trigger of migration 0009), so whichever writer ended the job,
the webhook is owed exactly once; this loop only sends what is owed (docs/access.md, Webhooks):

- It claims due rows every ``poll_interval_s`` (at once again while claims come back full), never more
  than its free slots (``concurrency``), each under a lease: other replicas skip it, and a replica that
  died holding it frees it when the lease ends. No database connection is held while a request is out.
- An attempt is one POST of the JSON event, signed with the user's secret (shared/webhooks.py), within
  ``timeout_s``, redirects not followed. 2xx delivers. Anything else (3xx, 4xx, 5xx, a timeout, a reset,
  a name that does not resolve) is retried after the next wait of ``retry_delays_s`` with jitter, until
  the schedule or ``max_age_s`` ends and the webhook gives up. A target the outbound policy refuses
  (loopback, private ranges, a forbidden port: shared/outbound.py) is permanent: recorded, given up at
  once.
- Every attempt is recorded (status code, latency, error) for ``GET /v1/jobs/{id}/webhooks``, one that
  failed before its POST too (the secret does not decrypt, a URL could not be presigned): judged like a
  POST without an answer, so it is retried on the schedule (putting back a key rotated out too early
  undoes an undecryptable secret). Only an attempt that cannot be recorded at all (the database is down)
  is left to its lease, and
  the claim itself never draws a number past the schedule's nor claims a row past ``max_age_s``: such a
  row is given up there, so no unrecorded attempt comes back forever.
- On stop, claiming ends and sends in flight get ``grace_s`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.persister.settings import WebhookOptions
from shared.config import OutboundSettings
from shared.db import Database
from shared.db.models import JobRecord, JobStatus, WebhookRecord, WebhookState
from shared.db.repositories.webhooks import AttemptResult
from shared.exceptions import ConfigError, FetchRefused
from shared.failures import FailureClass, classify, describe
from shared.outbound import check_url
from shared.storage import ObjectStore
from shared.telemetry import LATENCY_BUCKETS
from shared.webhooks import WebhookSecrets, message_id, signed_headers

log = logging.getLogger(__name__)

# The longest wait between failed claims: the consume loop's transient backoff tops out at 30 s too.
_MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class WebhookMetrics:
    # outcome: delivered | retry | gave_up (bounded: one series each).
    attempts: Counter
    attempt_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WebhookMetrics:
        return cls(
            attempts=Counter(
                "rmbg_webhook_attempts_total",
                "Webhook delivery attempts by what they led to: delivered, retry (scheduled again) or gave_up",
                ["outcome"],
                registry=registry,
            ),
            attempt_seconds=Histogram(
                "rmbg_webhook_attempt_seconds",
                "One webhook POST until its status line (or its failure)",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class Sent:
    """What one POST did, before it is judged."""

    result: AttemptResult
    # Permanent: the outbound policy refused the target, or the attempt failed before its POST for a
    # cause no retry fixes (a secret that does not decrypt). Given up at once.
    permanent: bool


def payload(record: WebhookRecord, job: JobRecord, urls: dict[str, str | None] | None) -> dict[str, Any]:
    """The event body: the type, when the job ended, and what a receiver needs without calling back."""
    data: dict[str, Any] = {
        "job_id": str(job.job_id),
        "status": job.status.value,
        "created_at": job.created_at.isoformat(),
        "completed_at": job.completed_at.isoformat() if job.completed_at else None,
        "processing_time_ms": job.processing_time_ms,
        "model_name": job.model_name,
        "error_message": job.error_message,
        "tags": list(job.tags),
        "params": job.params,
    }
    if urls is not None:
        data["urls"] = urls
    ended = job.completed_at or record.due_at or datetime.now(UTC)
    return {"type": record.event_type or f"job.{job.status.value}", "timestamp": ended.isoformat(), "data": data}


class WebhookDispatcher:
    def __init__(
        self,
        *,
        options: WebhookOptions,
        policy: OutboundSettings,
        db: Database,
        store: ObjectStore | None,
        session: aiohttp.ClientSession,
        secrets: WebhookSecrets,
        metrics: WebhookMetrics,
    ) -> None:
        self._options = options
        self._policy = policy
        self._db = db
        self._store = store
        self._session = session
        self._secrets = secrets
        self._metrics = metrics
        self._random = random.Random()  # noqa: S311 - jitter, not a secret

    async def run(self, stop: asyncio.Event) -> None:
        opts = self._options
        in_flight: set[asyncio.Task[None]] = set()
        slot_freed = asyncio.Event()

        def done(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            slot_freed.set()

        failures = 0  # consecutive failed claims: the wait doubles, so a database outage is not hammered
        while not stop.is_set():
            free = opts.concurrency - len(in_flight)
            claimed: list[WebhookRecord] = []
            if free > 0:
                try:
                    claimed = await self._claim(free)
                    failures = 0
                except Exception as exc:
                    failures += 1
                    wait_s = min(_MAX_BACKOFF_S, opts.poll_interval_s * 2**failures)
                    if classify(exc) is FailureClass.TRANSIENT:
                        log.warning("webhook claim failed (retry in %.1f s): %s", wait_s, describe(exc, limit=300))
                    else:  # a bug: logged loudly, but the persister's results keep flowing
                        log.exception("webhook claim failed (retry in %.1f s)", wait_s)
                    await _wait_any(stop, None, wait_s)
                    continue
                for record in claimed:
                    task = asyncio.create_task(self.attempt(record), name=f"webhook-{record.job_id}")
                    in_flight.add(task)
                    task.add_done_callback(done)
            slot_freed.clear()
            # Every slot busy, or a full claim (more is probably owed): go again as soon as a slot frees.
            busy = free <= 0 or len(claimed) == free
            await _wait_any(stop, slot_freed if busy else None, opts.poll_interval_s)
        if in_flight:
            _, cut = await asyncio.wait(set(in_flight), timeout=opts.grace_s)
            for task in cut:
                task.cancel()
            await asyncio.gather(*cut, return_exceptions=True)
            if cut:
                log.warning("stopped with %d webhook sends unfinished; their leases hand them on", len(cut))

    async def dispatch_once(self) -> int:
        """Claim what is owed now and attempt it all (tests and one-shot tools); returns how many."""
        claimed = await self._claim(self._options.concurrency)
        await asyncio.gather(*(self.attempt(r) for r in claimed))
        return len(claimed)

    async def _claim(self, limit: int) -> list[WebhookRecord]:
        # A claim that fails claimed nothing, or drew leases that lapse: either way the next one retries.
        async with self._db.pool.acquire() as conn:
            return await self._db.webhooks.claim_due(
                conn,
                limit=limit,
                lease_s=self._options.lease_s,
                max_attempts=len(self._options.retry_delays_s) + 1,  # _judge gives up after the last wait
                max_age_s=self._options.max_age_s,
            )

    async def attempt(self, record: WebhookRecord) -> None:
        """One attempt of one claimed row, recorded; never raises (a failure to record lets the lease
        lapse, and the row is attempted again while the claim's bounds allow)."""
        try:
            result, state, next_at = await self._send(record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Failed before an answer came (most often before the POST). Unrecorded, it came back every
            # lease_s with one more number drawn, never judged; recorded, it follows the schedule.
            result, state, next_at = self._unsent(record, exc)
        try:
            await self._record(record, result, state, next_at)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("webhook attempt %d of job %s not recorded: %s", record.attempts, record.job_id, describe(exc))

    async def _send(self, record: WebhookRecord) -> tuple[AttemptResult, WebhookState, datetime | None]:
        job, signing = await self._prepare(record)
        if job is None:
            gone = AttemptResult(at=datetime.now(UTC), status_code=None, latency_ms=0, error="the job no longer exists")
            return gone, "gave_up", None
        urls = await self._urls(job)
        body = json.dumps(payload(record, job, urls), separators=(",", ":"), ensure_ascii=False)
        sent = await self._post(record, body, signing)
        state, next_at = self._judge(record, sent)
        return sent.result, state, next_at

    def _unsent(self, record: WebhookRecord, exc: Exception) -> tuple[AttemptResult, WebhookState, datetime | None]:
        """The failed attempt for an exception raised before an answer, judged as one without an answer.

        Permanent when classified so. Everything else takes the schedule's waits, bounded like any attempt
        (10 attempts, 24 h by default): S3 or the database down, and a secret no key in
        RMBG_AUTH__ENCRYPTION_KEYS decrypts (ConfigError), an operator's mistake that putting the key back
        undoes within those hours, where giving up at once lost every due webhook of the user for good."""
        kind = classify(exc)
        permanent = kind is FailureClass.PERMANENT
        if permanent or kind is FailureClass.TRANSIENT or isinstance(exc, ConfigError):
            log.warning(
                "webhook attempt %d of job %s failed before its POST: %s",
                record.attempts,
                record.job_id,
                describe(exc, limit=300),
            )
        else:  # a bug: logged loudly, and still judged, so the row cannot come back unjudged
            log.exception("webhook attempt %d of job %s failed before its POST", record.attempts, record.job_id)
        result = AttemptResult(
            at=datetime.now(UTC), status_code=None, latency_ms=0, error=f"not sent: {describe(exc, limit=300)}"
        )
        state, next_at = self._judge(record, Sent(result, permanent=permanent))
        return result, state, next_at

    async def _prepare(self, record: WebhookRecord) -> tuple[JobRecord | None, list[str]]:
        async with self._db.pool.acquire() as conn:
            job = await self._db.jobs.get_job(conn, job_id=record.job_id)
            if job is None:
                return None, []
            secrets = await self._secrets.get(conn, user_id=record.user_id)
        return job, secrets.signing(datetime.now(UTC))

    async def _urls(self, job: JobRecord) -> dict[str, str | None] | None:
        ttl, store = self._options.url_ttl_s, self._store
        if not ttl or store is None:
            return None
        keys = {"original": job.original_path, "mask": job.mask_path, "cutout": job.processed_path}
        if job.status is not JobStatus.COMPLETED:
            keys["mask"] = keys["cutout"] = None
        return {kind: await store.presigned_get(key, expires_s=ttl) if key else None for kind, key in keys.items()}

    async def _post(self, record: WebhookRecord, body: str, signing: list[str]) -> Sent:
        at = datetime.now(UTC)
        loop = asyncio.get_running_loop()
        started = loop.time()

        def result(status: int | None, error: str | None) -> AttemptResult:
            latency = loop.time() - started
            self._metrics.attempt_seconds.observe(latency)
            return AttemptResult(at=at, status_code=status, latency_ms=round(latency * 1000), error=error)

        timeout_s = self._options.timeout_s
        try:
            check_url(record.url, self._policy)
            headers = signed_headers(signing, msg_id=message_id(record.job_id), timestamp=at, body=body)
            async with asyncio.timeout(timeout_s):
                async with self._session.post(
                    record.url, data=body.encode(), headers=headers, allow_redirects=False
                ) as resp:
                    status = resp.status
            if 200 <= status < 300:
                return Sent(result(status, None), permanent=False)
            if 300 <= status < 400:
                return Sent(result(status, f"HTTP {status}: redirects are not followed"), permanent=False)
            return Sent(result(status, f"HTTP {status}"), permanent=False)
        except FetchRefused as exc:
            refused = exc.code == "url_refused"  # a name that does not resolve (fetch_failed) may later
            return Sent(result(None, f"refused: {exc.reason}" if refused else exc.reason), permanent=refused)
        except TimeoutError:
            return Sent(result(None, f"no answer within {timeout_s:g} s"), permanent=False)
        except (aiohttp.ClientError, OSError) as exc:
            return Sent(result(None, describe(exc, limit=300)), permanent=False)

    def _judge(self, record: WebhookRecord, sent: Sent) -> tuple[WebhookState, datetime | None]:
        status = sent.result.status_code
        if status is not None and 200 <= status < 300:
            return "delivered", None
        if sent.permanent:
            return "gave_up", None
        opts = self._options
        failed = record.attempts  # this attempt's number: the n-th failure waits retry_delays_s[n - 1]
        if failed > len(opts.retry_delays_s):
            return "gave_up", None
        wait = opts.retry_delays_s[failed - 1] * self._random.uniform(1 - opts.jitter, 1 + opts.jitter)
        next_at = datetime.now(UTC) + timedelta(seconds=wait)
        first_due = record.due_at or record.registered_at
        if next_at > first_due + timedelta(seconds=opts.max_age_s):
            return "gave_up", None
        return "due", next_at

    async def _record(
        self, record: WebhookRecord, result: AttemptResult, state: WebhookState, next_at: datetime | None
    ) -> None:
        async with self._db.pool.acquire() as conn:
            applied = await self._db.webhooks.record_attempt(
                conn, claimed=record, result=result, state=state, next_attempt_at=next_at
            )
        outcome = "retry" if state == "due" else state
        self._metrics.attempts.labels(outcome=outcome).inc()
        if not applied:
            log.warning("webhook of job %s: lease lost before attempt %d was recorded", record.job_id, record.attempts)
        elif state == "gave_up":
            log.info("webhook of job %s gave up after %d attempts: %s", record.job_id, record.attempts, result.error)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event | None, timeout_s: float) -> None:
    """Until ``stop`` is set, ``wake`` is set, or ``timeout_s`` passes."""
    waits = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waits.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waits, return_exceptions=True)
