"""`make chaos`: jobs in over HTTP and the upload topic while every process of the pipeline is killed.

On loopback only, on a fresh embedded stack (SeaweedFS, Tansu, embedded PostgreSQL, Redis) and the four
services as supervised child processes, bounded in jobs and time:

- jobs are submitted at a steady rate with bounded concurrency: POST /v1/jobs (retrying 429/503 after
  Retry-After, and connection errors while ingest is down) and upload events (the image put in the
  bucket, then published on the uploads topic until the broker acknowledges it);
- meanwhile each service is SIGKILLed (its supervisor restarts it), the broker is SIGKILLed and
  restarted, PostgreSQL is restarted and SeaweedFS is frozen with SIGSTOP, then SIGCONT;
- then it waits for every accepted job to end and checks PostgreSQL and S3 directly (not the API):
  exactly one terminal row per accepted job, a completed job's three objects with the sizes its row
  records, processing_stats and user_job_counts equal to counts over the rows, and fsck clean.

    python -m rmbg.chaos --model-source DIR [--jobs 2000] [--short]

Exit status 0 when every check held. The state folder (logs of every process) is kept for inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import asyncpg
import httpx
import numpy as np
import psutil
from aiokafka import AIOKafkaProducer
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from rich.console import Console

from rmbg.maintenance.fsck import Fsck
from rmbg.services import RunningServices, run_services
from rmbg.stack.stack import EmbeddedStack, StackEndpoints
from rmbg.up import provision
from shared.config import (
    DEV_S3_ACCESS_KEY,
    DEV_S3_SECRET_KEY,
    BaseServiceSettings,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    S3Settings,
)
from shared.contracts import Topics, UploadEvent
from shared.database import open_database
from shared.messaging import open_producer, publish
from shared.storage import ObjectStore, open_object_store

FaultKind = Literal["kill-service", "kill-broker", "restart-postgres", "pause-s3"]
TERMINAL = ("completed", "failed")
CHAOS_MODEL = "tiny-rmbg-chaos"
_COUNTERS = ("rmbg_records_total", "rmbg_dead_letters_total", "rmbg_record_failures_total")


@dataclass(frozen=True)
class ChaosPlan:
    """How many jobs, how fast, and which faults; ``short()`` is the test-suite variant."""

    jobs: int = 2000
    upload_share: float = 0.2  # the rest go over HTTP
    rate_per_s: float = 3.0
    concurrency: int = 8
    service_kills: int = 3  # of each of the four services
    broker_kills: int = 2
    postgres_restarts: int = 1
    s3_pauses: int = 1
    s3_pause_s: float = 15.0
    broker_down_s: float = 2.0
    postgres_down_s: float = 3.0
    first_fault_s: float = 10.0
    fault_gap_s: float = 35.0  # after a fault has recovered, before the next
    recover_timeout_s: float = 180.0
    drain_timeout_s: float = 300.0
    deadline_s: float = 1200.0  # the whole run, start to report
    image_side: int = 256
    seed: int = 0

    @classmethod
    def short(cls) -> ChaosPlan:
        return cls(
            jobs=200,
            rate_per_s=2.0,
            service_kills=1,
            broker_kills=1,
            postgres_restarts=0,
            s3_pauses=0,
            first_fault_s=8.0,
            fault_gap_s=12.0,
            drain_timeout_s=300.0,
            deadline_s=720.0,
        )


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    target: str


def fault_schedule(plan: ChaosPlan) -> list[Fault]:
    """Faults interleaved round by round, so one process's restarts are spread over the run."""
    faults: list[Fault] = []
    rounds = max(plan.service_kills, plan.broker_kills, plan.postgres_restarts, plan.s3_pauses)
    for r in range(rounds):
        if r < plan.service_kills:
            faults += [Fault("kill-service", s) for s in ("ingest", "inference", "persister", "stats")]
        if r < plan.broker_kills:
            faults.append(Fault("kill-broker", "tansu"))
        if r < plan.postgres_restarts:
            faults.append(Fault("restart-postgres", "postgres"))
        if r < plan.s3_pauses:
            faults.append(Fault("pause-s3", "seaweedfs"))
    return faults


@dataclass
class Tally:
    """What the submitter did: only jobs it holds an id for count as accepted."""

    submitted_http: int = 0
    submitted_upload: int = 0
    accepted_http: list[str] = field(default_factory=list)
    accepted_upload: list[str] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)  # "503", "429", "connection", "publish", "s3-put"
    refused: Counter[str] = field(default_factory=Counter)  # answers not retried: status code -> count
    gave_up: int = 0
    last_accept: float = 0.0

    @property
    def accepted(self) -> list[str]:
        return self.accepted_http + self.accepted_upload


@dataclass
class FaultLog:
    kills: Counter[str] = field(default_factory=Counter)  # SIGKILLs, restarts of postgres, SIGSTOPs
    restarts: Counter[str] = field(default_factory=Counter)  # came back and answered
    recovery_s: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    last_fault_end: float = 0.0


@dataclass
class Verdict:
    rows: dict[str, str] = field(default_factory=dict)  # job id -> status, for accepted ids
    unknown_rows: int = 0  # rows whose id the submitter never got (a 202 lost with a killed ingest)
    problems: list[str] = field(default_factory=list)
    fsck_summary: str = ""


@dataclass
class ChaosReport:
    plan: ChaosPlan
    tally: Tally
    faults: FaultLog
    metrics: dict[str, float]
    verdict: Verdict
    drain_s: float | None
    elapsed_s: float
    state_dir: Path

    @property
    def ok(self) -> bool:
        return not self.verdict.problems and not self.faults.errors and self.drain_s is not None

    def lines(self) -> list[str]:
        t, v = self.tally, self.verdict
        statuses = Counter(v.rows.values())
        procs = sorted(set(self.faults.kills) | set(self.faults.restarts))
        m = self.metrics
        out = [
            f"jobs: submitted {t.submitted_http + t.submitted_upload} (http {t.submitted_http}, "
            f"upload {t.submitted_upload}); accepted {len(t.accepted)} (http {len(t.accepted_http)}, "
            f"upload {len(t.accepted_upload)}); completed {statuses['completed']}; failed {statuses['failed']}; "
            f"not terminal {len(t.accepted) - statuses['completed'] - statuses['failed']}; "
            f"given up by the submitter {t.gave_up}; rows without a known id {v.unknown_rows}",
            "faults (kills / restarts): "
            + ", ".join(f"{p} {self.faults.kills[p]}/{self.faults.restarts[p]}" for p in procs),
            "recovery s: "
            + ", ".join(f"{p} max {max(s):.1f}" for p, s in sorted(self.faults.recovery_s.items()) if s),
            "retries: " + (", ".join(f"{k} {n}" for k, n in sorted(t.retries.items())) or "none")
            + (f"; refused without retry: {dict(t.refused)}" if t.refused else ""),
            f"duplicates: stats absorbed {m.get('stats.duplicate', 0):.0f} of "
            f"{m.get('stats.duplicate', 0) + m.get('stats.applied', 0):.0f} job events (at least; counters "
            f"scraped every 2 s); inference reused {m.get('inference.reused', 0):.0f}; dead letters "
            f"{m.get('dead_letters', 0):.0f}; record failures (retried) {m.get('record_failures', 0):.0f}"
            + "".join(f", {k[16:]} {n:.0f}" for k, n in sorted(m.items()) if k.startswith("record_failures.") and n),
            "drain after the last fault: " + (f"{self.drain_s:.1f} s" if self.drain_s is not None else "did not drain"),
            f"checks: {v.fsck_summary}",
            f"elapsed {self.elapsed_s:.0f} s; state and logs in {self.state_dir}",
        ]
        out += [f"PROBLEM: {p}" for p in v.problems + self.faults.errors]
        return out


# ---------------------------------------------------------------------------------------------- setup


class _ExplicitSettings(BaseServiceSettings):
    """Settings from the arguments only: the harness must see exactly what the children are given."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def harness_settings(endpoints: StackEndpoints) -> BaseServiceSettings:
    return _ExplicitSettings(
        postgres=PostgresSettings(dsn=SecretStr(endpoints.postgres_dsn), max_pool=4),
        redis=RedisSettings(url=endpoints.redis_url),
        kafka=KafkaSettings(
            bootstrap_servers=endpoints.kafka_bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=1000
        ),
        s3=S3Settings(
            endpoint_url=endpoints.s3_endpoint,
            access_key=endpoints.s3_access_key,
            secret_key=SecretStr(endpoints.s3_secret_key),
        ),
    )


def service_env(endpoints: StackEndpoints, model_source: str, backend: str) -> dict[str, str]:
    """The children's environment: no inherited RMBG_* variable, only what this run chose."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RMBG_")}
    model = "classic-grabcut" if backend == "classic" else CHAOS_MODEL
    env.update(endpoints.as_env())
    env.update(
        {
            "RMBG_INFERENCE__BACKEND": backend,
            "RMBG_INFERENCE__MODEL_SOURCE": model_source,
            "RMBG_INFERENCE__MODEL_NAME": model,
            "RMBG_INGEST__MODEL": model,
            "RMBG_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "RMBG_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "RMBG_PERSISTER__SWEEP_INTERVAL_S": "5",
        }
    )
    return env


def chaos_image(index: int, seed: int, side: int) -> bytes:
    """A small PNG, distinct per (seed, index): a plain background, a blob, the index in the first pixels."""
    rng = np.random.default_rng([seed, index])
    img = np.empty((side, side, 3), dtype=np.uint8)
    img[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    yy, xx = np.mgrid[:side, :side]
    cy, cx = rng.integers(side // 4, 3 * side // 4, 2)
    ry, rx = rng.integers(side // 8, side // 3, 2)
    img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.integers(0, 256, 3, dtype=np.uint8)
    img[0, :4, 0] = list(index.to_bytes(4, "big"))
    img[0, :4, 1] = list((seed % 2**32).to_bytes(4, "big"))
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ submitting


class Submitter:
    """Jobs at a steady rate, at most ``concurrency`` at a time, each retried until accepted or the deadline."""

    def __init__(self, plan: ChaosPlan, settings: BaseServiceSettings, api_url: str, deadline: float) -> None:
        self.plan = plan
        self.settings = settings
        self.api_url = api_url
        self.deadline = deadline
        self.tally = Tally()
        self.run_id = uuid.uuid4().hex[:8]
        self._topics = Topics.from_settings(settings.topics, settings.kafka)
        self._producer: AIOKafkaProducer | None = None
        self._producer_exit = contextlib.AsyncExitStack()
        self._producer_lock = asyncio.Lock()

    def is_upload(self, index: int) -> bool:
        share = self.plan.upload_share
        return int((index + 1) * share) > int(index * share)

    async def run(self) -> None:
        sem = asyncio.Semaphore(self.plan.concurrency)
        began = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        async with (
            httpx.AsyncClient(base_url=self.api_url, timeout=30) as client,
            open_object_store(self.settings.s3) as store,
        ):
            try:
                for i in range(self.plan.jobs):
                    await asyncio.sleep(max(0.0, began + i / self.plan.rate_per_s - time.monotonic()))
                    await sem.acquire()
                    if time.monotonic() > self.deadline:
                        sem.release()
                        break
                    tasks.append(asyncio.create_task(self._one(i, client, store, sem)))
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await self._close_producer()

    async def _one(self, index: int, client: httpx.AsyncClient, store: ObjectStore, sem: asyncio.Semaphore) -> None:
        try:
            data = chaos_image(index, self.plan.seed, self.plan.image_side)
            upload = self.is_upload(index)
            job_id = await (self._upload(index, data, store) if upload else self._http(index, data, client))
            if job_id is None:
                self.tally.gave_up += 1
            else:
                self.tally.last_accept = time.monotonic()
        finally:
            sem.release()

    async def _http(self, index: int, data: bytes, client: httpx.AsyncClient) -> str | None:
        self.tally.submitted_http += 1
        form = {"user_id": f"chaos-{index % 7}", "tags": "chaos,http", "params": json.dumps({})}
        while time.monotonic() < self.deadline:
            try:
                resp = await client.post("/v1/jobs", files={"image": (f"{index}.png", data, "image/png")}, data=form)
            except httpx.TransportError:
                self.tally.retries["connection"] += 1
                await asyncio.sleep(1.0)
                continue
            if resp.status_code == 202:
                job_id: str = resp.json()["job_id"]
                self.tally.accepted_http.append(job_id)
                return job_id
            if resp.status_code in (429, 503):
                self.tally.retries[str(resp.status_code)] += 1
                await asyncio.sleep(min(5.0, float(resp.headers.get("Retry-After", "1"))))
                continue
            self.tally.refused[str(resp.status_code)] += 1
            return None
        return None

    async def _upload(self, index: int, data: bytes, store: ObjectStore) -> str | None:
        from services.ingest.intake import upload_job_id

        self.tally.submitted_upload += 1
        key = f"uploads/chaos/{self.run_id}/{index}.png"
        if not await self._retrying("s3-put", lambda: store.put(key, data, content_type="image/png")):
            return None
        event = UploadEvent(
            event_id=f"chaos-{self.run_id}-{index}",
            user_id=f"chaos-{index % 7}",
            key=key,
            tags=["chaos", "upload"],
            occurred_at=datetime.now(UTC),
        )
        if not await self._retrying("publish", lambda: self._publish(event)):
            return None
        job_id = str(upload_job_id(event.event_id, event.occurred_at))
        self.tally.accepted_upload.append(job_id)
        return job_id

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[Any]]) -> bool:
        while time.monotonic() < self.deadline:
            try:
                await asyncio.wait_for(attempt(), timeout=40)
                return True
            except Exception:  # the broker or the store is down: the same event again, same job id
                self.tally.retries[what] += 1
                await asyncio.sleep(1.0)
        return False

    async def _publish(self, event: UploadEvent) -> None:
        producer = await self._get_producer()
        try:
            await publish(producer, self._topics.uploads, event, key=event.event_id)
        except Exception:
            await self._close_producer()  # a fresh client after a broker restart
            raise

    async def _get_producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is None:
                exit_stack = contextlib.AsyncExitStack()
                self._producer = await exit_stack.enter_async_context(
                    open_producer(self.settings.kafka, client_id="chaos")
                )
                self._producer_exit = exit_stack
            return self._producer

    async def _close_producer(self) -> None:
        async with self._producer_lock:
            if self._producer is not None:
                self._producer = None
                with contextlib.suppress(Exception):
                    await self._producer_exit.aclose()


# ------------------------------------------------------------------------------------------ faults


def service_pid(name: str) -> int | None:
    """The live child process running ``services.<name>.main``."""
    for proc in psutil.Process().children(recursive=False):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and f"services.{name}.main" in proc.cmdline():
                return int(proc.pid)
    return None


async def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=2.0) as client:
            return (await client.get(url)).status_code == 200
    return False


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval_s)
    return False


class FaultInjector:
    def __init__(self, plan: ChaosPlan, stack: EmbeddedStack, svc: RunningServices) -> None:
        self.plan = plan
        self.stack = stack
        self.svc = svc
        self.log = FaultLog()

    async def run(self, faults: list[Fault], deadline: float) -> None:
        await asyncio.sleep(self.plan.first_fault_s)
        for i, fault in enumerate(faults):
            if time.monotonic() > deadline:
                self.log.errors.append(f"out of time: {len(faults) - i} faults not injected")
                return
            began = time.monotonic()
            try:
                ok = await self._inject(fault)
            except Exception as exc:
                ok = False
                self.log.errors.append(f"{fault.kind} {fault.target}: {exc!r}")
            self.log.last_fault_end = time.monotonic()
            if ok:
                self.log.restarts[fault.target] += 1
                self.log.recovery_s.setdefault(fault.target, []).append(self.log.last_fault_end - began)
            if i + 1 < len(faults):
                await asyncio.sleep(self.plan.fault_gap_s)

    async def _inject(self, fault: Fault) -> bool:
        self.log.kills[fault.target] += 1
        if fault.kind == "kill-service":
            return await self._kill_service(fault.target)
        if fault.kind == "kill-broker":
            await self.stack.kill_and_restart("tansu", down_s=self.plan.broker_down_s)
            return True
        if fault.kind == "restart-postgres":
            await self.stack.restart_postgres(down_s=self.plan.postgres_down_s)
            return True
        await self._pause_s3()
        return True

    async def _kill_service(self, name: str) -> bool:
        pid = service_pid(name)
        if pid is None:
            self.log.errors.append(f"no running {name} to kill")
            return False
        before = self.svc.supervisor.restarts[name]
        os.kill(pid, signal.SIGKILL)

        async def back() -> bool:
            return self.svc.supervisor.restarts[name] > before and await _answers(self._probe_url(name))

        if not await _until(back, self.plan.recover_timeout_s):
            self.log.errors.append(f"{name} did not come back within {self.plan.recover_timeout_s:.0f} s of SIGKILL")
            return False
        return True

    def _probe_url(self, name: str) -> str:
        return f"{self.svc.api_url}/healthz" if name == "ingest" else self.svc.metrics_urls[name]

    async def _pause_s3(self) -> None:
        pid = self.stack.child("seaweedfs").pid
        if pid is None:
            raise RuntimeError("seaweedfs is not running")
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.plan.s3_pause_s)
        finally:
            os.kill(pid, signal.SIGCONT)


# ------------------------------------------------------------------------------------------ metrics


class MetricsWatch:
    """Scrapes every service's counters; a restarted process starts from zero, so resets are carried."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self._last: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        self._carried: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}

    async def run(self, stop: asyncio.Event, interval_s: float = 2.0) -> None:
        async with httpx.AsyncClient(timeout=2.0) as client:
            while not stop.is_set():
                await self.scrape(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)
            await self.scrape(client)

    async def scrape(self, client: httpx.AsyncClient) -> None:
        for service, url in self.urls.items():
            try:
                text = (await client.get(url)).text
            except httpx.HTTPError:
                continue  # down right now
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in _COUNTERS:
                        self._observe((service, sample.name, tuple(sorted(sample.labels.items()))), sample.value)

    def _observe(self, key: tuple[str, str, tuple[tuple[str, str], ...]], value: float) -> None:
        last = self._last.get(key, 0.0)
        if value < last:
            self._carried[key] = self._carried.get(key, 0.0) + last
        self._last[key] = value

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, value in self._last.items():
            service, name, labels = key
            total = value + self._carried.get(key, 0.0)
            outcome = dict(labels).get("outcome")
            if name == "rmbg_records_total" and outcome is not None:
                bucket = f"{service}.{outcome}"
            elif name == "rmbg_dead_letters_total":
                bucket = "dead_letters"
            else:
                bucket = f"record_failures.{service}.{dict(labels).get('failure_class')}"
                out["record_failures"] = out.get("record_failures", 0.0) + total
            out[bucket] = out.get(bucket, 0.0) + total
        return out


# ------------------------------------------------------------------------------------------ checking


async def _fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()


async def drain(dsn: str, job_ids: list[str], timeout_s: float) -> bool:
    """Wait until every accepted job has a terminal row (read from PostgreSQL)."""
    ids = [uuid.UUID(j) for j in job_ids]

    async def done() -> bool:
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            rows = await _fetch(
                dsn,
                "SELECT count(DISTINCT job_id) AS n FROM image_process_jobs "
                "WHERE job_id = ANY($1::uuid[]) AND status IN ('completed', 'failed')",
                ids,
            )
            return int(rows[0]["n"]) == len(ids)
        return False

    return await _until(done, timeout_s, interval_s=1.0)


_ROWS_SQL = """
SELECT job_id::text AS job_id, status::text AS status, created_at, original_path::text AS original_path,
       mask_path::text AS mask_path, processed_path::text AS processed_path,
       original_bytes, mask_bytes, processed_bytes
FROM image_process_jobs"""


async def _listing(store: ObjectStore) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for prefix in ("original/", "mask/", "processed/"):
        async for obj in store.iter_keys(prefix):
            sizes[obj.key] = obj.size
    return sizes


def check_rows(rows: list[asyncpg.Record], accepted: list[str], sizes: dict[str, int], verdict: Verdict) -> None:
    """One terminal row per accepted id; a completed job's objects exist with the sizes recorded."""
    per_id = Counter(r["job_id"] for r in rows)
    known = set(accepted)
    verdict.unknown_rows = sum(1 for j in per_id if j not in known)
    for job_id in accepted:
        if per_id[job_id] != 1:
            verdict.problems.append(f"job {job_id}: {per_id[job_id]} rows")
    for r in rows:
        if r["job_id"] not in known:
            continue
        verdict.rows[r["job_id"]] = r["status"]
        if r["status"] not in TERMINAL:
            verdict.problems.append(f"job {r['job_id']}: status {r['status']}")
        elif r["status"] == "completed":
            for kind in ("original", "mask", "processed"):
                key, expect = r[f"{kind}_path"], r[f"{kind}_bytes"]
                if sizes.get(key) != expect:
                    verdict.problems.append(
                        f"job {r['job_id']}: {kind} {key} is {sizes.get(key, 'missing')} bytes, row says {expect}"
                    )


async def check_stats(settings: BaseServiceSettings, days: set[date], verdict: Verdict, timeout_s: float) -> None:
    """processing_stats per day and user_job_counts equal counts over the jobs table (waits for the lag)."""
    async with open_database(settings.postgres) as db:

        async def differences() -> list[str]:
            found: list[str] = []
            async with db.pool.acquire() as conn:
                for day in sorted(days):
                    truth = await db.stats.totals_from_jobs(conn, stat_date=day)
                    kept = await db.stats.daily_totals(conn, days=1, today=day)
                    fields = ("total_jobs", "completed_jobs", "failed_jobs", "sum_processing_time_ms")
                    want = {f: getattr(truth, f) for f in fields}
                    got = {f: getattr(kept[0], f) for f in fields}
                    if want != got:
                        found.append(f"processing_stats {day}: {got}, the jobs say {want}")
                users = await conn.fetch(
                    "SELECT j.user_id, j.n, coalesce(u.jobs, 0) AS kept FROM "
                    "(SELECT user_id, count(*) AS n FROM image_process_jobs GROUP BY 1) j "
                    "LEFT JOIN user_job_counts u USING (user_id) WHERE j.n <> coalesce(u.jobs, 0)"
                )
                found += [f"user_job_counts {u['user_id']}: {u['kept']}, the jobs say {u['n']}" for u in users]
            return found

        diffs: list[str] = []

        async def agree() -> bool:
            nonlocal diffs
            diffs = await differences()
            return not diffs

        await _until(agree, timeout_s, interval_s=1.0)
        verdict.problems += diffs


async def check_fsck(settings: BaseServiceSettings, verdict: Verdict) -> None:
    async with open_database(settings.postgres) as db, open_object_store(settings.s3) as store:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="chaos-fsck") as executor:
            report = await Fsck(db, store, executor).run(repair=False, grace=timedelta(0))
    verdict.fsck_summary = report.summary()
    verdict.problems += [f"fsck: job {job} misses {key}" for job, key in report.missing[:20]]
    verdict.problems += [f"fsck: orphan object {key}" for key in report.orphans[:20]]
    if len(report.missing) + len(report.orphans) > 40:
        verdict.problems.append(f"fsck: {len(report.missing)} missing, {len(report.orphans)} orphans in all")


async def verify(settings: BaseServiceSettings, accepted: list[str], stats_timeout_s: float = 60.0) -> Verdict:
    verdict = Verdict()
    dsn = settings.postgres.dsn.get_secret_value()
    rows = await _fetch(dsn, _ROWS_SQL)
    async with open_object_store(settings.s3) as store:
        sizes = await _listing(store)
    check_rows(rows, accepted, sizes, verdict)
    days = {r["created_at"].astimezone(UTC).date() for r in rows}
    await check_stats(settings, days, verdict, stats_timeout_s)
    await check_fsck(settings, verdict)
    return verdict


# ------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class ChaosOptions:
    plan: ChaosPlan
    state_dir: Path
    model_source: str
    backend: Literal["rmbg", "classic"] = "rmbg"


@contextlib.asynccontextmanager
async def _pipeline(
    opts: ChaosOptions, console: Console
) -> AsyncIterator[tuple[EmbeddedStack, BaseServiceSettings, RunningServices]]:
    stack = EmbeddedStack(
        opts.state_dir,
        s3_access_key=DEV_S3_ACCESS_KEY,
        s3_secret_key=DEV_S3_SECRET_KEY,
        use_local_servers=False,  # embedded PostgreSQL and Redis: restarting them disturbs nobody else
        ready_timeout_s=60.0,
    )
    async with stack as endpoints:
        settings = harness_settings(endpoints)
        await provision(settings)

        def restarted(name: str, restarts: int, code: int | None) -> None:
            console.print(f"[yellow]{name} exited (code {code}); supervisor restart {restarts}[/]")

        env = service_env(endpoints, opts.model_source, opts.backend)
        async with run_services(env=env, state_dir=endpoints.state_dir, api_port=None, on_restart=restarted) as svc:
            stop = asyncio.Event()
            supervising = asyncio.create_task(svc.supervisor.run(stop), name="chaos-supervisor")
            try:
                yield stack, settings, svc
            finally:
                stop.set()
                await supervising


async def run_chaos(opts: ChaosOptions, console: Console) -> ChaosReport:
    """The whole drill; returns the figures and every problem found (``report.ok`` when none)."""
    began = time.monotonic()
    plan = opts.plan
    deadline = began + plan.deadline_s
    async with _pipeline(opts, console) as (stack, settings, svc):
        console.print(f"pipeline up in {time.monotonic() - began:.0f} s; state in {opts.state_dir}")
        # Submitting stops in time to leave the drain and the checks their share of the run's bound.
        submit_deadline = deadline - plan.drain_timeout_s - 60.0
        submitter = Submitter(plan, settings, svc.api_url, submit_deadline)
        injector = FaultInjector(plan, stack, svc)
        watch = MetricsWatch(svc.metrics_urls)
        stop_watch = asyncio.Event()
        watching = asyncio.create_task(watch.run(stop_watch), name="chaos-metrics")
        faults = fault_schedule(plan)
        console.print(f"submitting {plan.jobs} jobs at {plan.rate_per_s}/s; {len(faults)} faults")
        await asyncio.gather(submitter.run(), injector.run(faults, submit_deadline))
        console.print(f"submitted; {len(submitter.tally.accepted)} accepted; draining...")
        dsn = settings.postgres.dsn.get_secret_value()
        remaining = max(10.0, min(plan.drain_timeout_s, deadline - time.monotonic()))
        drained = await drain(dsn, submitter.tally.accepted, remaining)
        drain_s = time.monotonic() - max(injector.log.last_fault_end, submitter.tally.last_accept) if drained else None
        stop_watch.set()
        await watching
        verdict = await verify(settings, submitter.tally.accepted)
    return ChaosReport(
        plan=plan,
        tally=submitter.tally,
        faults=injector.log,
        metrics=watch.totals(),
        verdict=verdict,
        drain_s=drain_s,
        elapsed_s=time.monotonic() - began,
        state_dir=opts.state_dir,
    )


def _parse(argv: list[str] | None) -> tuple[ChaosOptions, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m rmbg.chaos", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model-source", required=True, help="folder of an RMBG-layout model (e.g. the tiny test model)")
    p.add_argument("--backend", choices=("rmbg", "classic"), default="rmbg")
    p.add_argument("--state-dir", type=Path, default=Path(".state/chaos"), help="a fresh run-* folder is made in it")
    p.add_argument("--short", action="store_true", help="the test-suite variant: ~200 jobs, one kill of each")
    p.add_argument("--jobs", type=int)
    p.add_argument("--rate", type=float, help="jobs per second")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    plan = ChaosPlan.short() if args.short else ChaosPlan()
    plan = replace(plan, seed=args.seed)
    if args.jobs is not None:
        plan = replace(plan, jobs=args.jobs)
    if args.rate is not None:
        plan = replace(plan, rate_per_s=args.rate)
    state_dir = (args.state_dir / time.strftime("run-%Y%m%d-%H%M%S")).resolve()
    return ChaosOptions(plan=plan, state_dir=state_dir, model_source=args.model_source, backend=args.backend), args


def main(argv: list[str] | None = None) -> int:
    import logging

    opts, _ = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the submitter's producer while the broker is down
    console = Console()
    report = asyncio.run(run_chaos(opts, console))
    for line in report.lines():
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    console.print("chaos: every check held" if report.ok else "chaos: FAILED", style="green" if report.ok else "red")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
