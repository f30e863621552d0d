"""`make load`: a steady rate for a bounded time, then throughput, latency and memory of every service.

On loopback only, on a fresh embedded stack and the four services as child processes (the same pipeline
as `make chaos`, without faults):

- jobs are submitted at ``rate_per_s`` for ``duration_s`` (over HTTP and the upload topic);
- every ``sample_s`` the resident memory (RSS) of each service is read; the first reading after
  ``warmup_s`` is the baseline (the model, pools and caches are allocated by then), the last the end;
- then it waits for every accepted job to end and reads, from PostgreSQL, the latency of each from
  acceptance (the UUIDv7 time) to completion, and checks the rows and objects as the chaos drill does.

    python -m rmbg.drills.load --model-source DIR [--duration 600] [--rate 1.5] [--side 1024]

Exit status 0 when every accepted job completed, every check held, and no service's memory grew by
more than ``max_rss_growth`` between the baseline and the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
import psutil
from rich.console import Console

from rmbg.drills.pipeline import DrillOptions, drill_arguments, drill_options, open_pipeline, run_drill, service_pid
from rmbg.drills.submit import Submitter, Tally
from rmbg.drills.verify import Verdict, drain, verify
from rmbg.supervisor import SERVICES

_MIB = 1024 * 1024


@dataclass(frozen=True)
class LoadPlan:
    """How fast and for how long; ``short()`` is the test-suite variant."""

    duration_s: float = 600.0
    rate_per_s: float = 1.5
    upload_share: float = 0.2
    concurrency: int = 16
    # 1024 px, the model's input size: what a catalogue photo costs (issue figures: ~430 ms CPU per job here).
    image_side: int = 1024
    seed: int = 1
    sample_s: float = 5.0
    warmup_s: float = 60.0
    drain_timeout_s: float = 600.0
    # Growth allowed from the baseline to the end: allocator slack and a cache filling up, not a leak.
    max_rss_growth: float = 0.25

    @property
    def jobs(self) -> int:
        return round(self.duration_s * self.rate_per_s)

    @classmethod
    def short(cls) -> LoadPlan:
        return cls(duration_s=30.0, rate_per_s=2.0, image_side=256, sample_s=2.0, warmup_s=5.0, drain_timeout_s=180.0)


@dataclass
class MemoryLog:
    """RSS readings per service: (seconds since the start, bytes)."""

    readings: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def add(self, service: str, at_s: float, rss: int) -> None:
        self.readings.setdefault(service, []).append((at_s, rss))

    def baseline(self, service: str, warmup_s: float) -> int | None:
        after = [rss for at, rss in self.readings.get(service, []) if at >= warmup_s]
        return after[0] if after else None

    def end(self, service: str) -> int | None:
        readings = self.readings.get(service, [])
        return readings[-1][1] if readings else None


async def sample_memory(log: MemoryLog, stop: asyncio.Event, *, interval_s: float) -> None:
    began = time.monotonic()
    while not stop.is_set():
        for name in SERVICES:
            pid = service_pid(name)
            if pid is not None:
                with contextlib.suppress(psutil.Error):
                    log.add(name, time.monotonic() - began, psutil.Process(pid).memory_info().rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


@dataclass(frozen=True)
class Latency:
    completed: int
    p50_s: float
    p95_s: float
    p99_s: float
    max_s: float
    # From the first acceptance to the last completion: what the pipeline sustained.
    throughput_per_s: float


async def latency(dsn: str, job_ids: list[str]) -> Latency | None:
    """Acceptance (created_at, the UUIDv7 time) to completion, over the completed jobs, from PostgreSQL."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await conn.fetchrow(
            """
            SELECT count(*) AS n,
                   percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY seconds) AS p,
                   max(seconds) AS worst,
                   extract(epoch FROM max(completed_at) - min(created_at)) AS span
            FROM (SELECT created_at, completed_at, extract(epoch FROM completed_at - created_at) AS seconds
                  FROM image_process_jobs WHERE job_id = ANY($1::uuid[]) AND status = 'completed') j
            """,
            [uuid.UUID(j) for j in job_ids],
        )
    finally:
        await conn.close()
    if row is None or not row["n"]:
        return None
    p50, p95, p99 = (float(v) for v in row["p"])
    span = float(row["span"]) or 1.0
    return Latency(int(row["n"]), p50, p95, p99, float(row["worst"]), int(row["n"]) / span)


@dataclass
class LoadReport:
    plan: LoadPlan
    tally: Tally
    memory: MemoryLog
    latency: Latency | None
    verdict: Verdict
    drained: bool
    elapsed_s: float
    state_dir: Path

    def growth(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in SERVICES:
            start, end = self.memory.baseline(name, self.plan.warmup_s), self.memory.end(name)
            if start and end:
                out[name] = end / start - 1
        return out

    @property
    def ok(self) -> bool:
        statuses = set(self.verdict.rows.values())
        grew = [g for g in self.growth().values() if g > self.plan.max_rss_growth]
        return self.drained and not self.verdict.problems and statuses <= {"completed"} and not grew

    def lines(self) -> list[str]:
        t, lat, p = self.tally, self.latency, self.plan
        out = [
            f"load: {p.rate_per_s}/s for {p.duration_s:.0f} s, {p.image_side}x{p.image_side} PNGs; submitted "
            f"{t.submitted_http + t.submitted_upload} (http {t.submitted_http}, upload {t.submitted_upload}); "
            f"accepted {len(t.accepted)}; retries {dict(t.retries) or 'none'}",
        ]
        if lat is not None:
            out.append(
                f"completed {lat.completed}; throughput {lat.throughput_per_s:.2f} jobs/s; latency from acceptance "
                f"to completed: p50 {lat.p50_s:.2f} s, p95 {lat.p95_s:.2f} s, p99 {lat.p99_s:.2f} s, "
                f"max {lat.max_s:.2f} s"
            )
        growth = self.growth()
        for name in SERVICES:
            start, end = self.memory.baseline(name, p.warmup_s), self.memory.end(name)
            peak = max((rss for _, rss in self.memory.readings.get(name, [])), default=0)
            if start and end:
                out.append(
                    f"rss {name}: {start / _MIB:.0f} MiB after warm-up, {end / _MIB:.0f} MiB at the end "
                    f"({growth[name]:+.1%}), peak {peak / _MIB:.0f} MiB"
                )
        out.append(f"checks: {self.verdict.fsck_summary}")
        out.append(f"elapsed {self.elapsed_s:.0f} s; state and logs in {self.state_dir}")
        out += [f"PROBLEM: {problem}" for problem in self.verdict.problems]
        out += [
            f"PROBLEM: {name} grew {g:+.1%} (limit {p.max_rss_growth:.0%})"
            for name, g in growth.items()
            if g > p.max_rss_growth
        ]
        if not self.drained:
            out.append("PROBLEM: not every accepted job ended within the drain timeout")
        return out


async def run_load(opts: DrillOptions, plan: LoadPlan, console: Console) -> LoadReport:
    began = time.monotonic()
    memory = MemoryLog()
    async with open_pipeline(opts, console) as (_stack, settings, svc):
        console.print(f"pipeline up in {time.monotonic() - began:.0f} s; {plan.jobs} jobs at {plan.rate_per_s}/s")
        stop_sampling = asyncio.Event()
        sampling = asyncio.create_task(sample_memory(memory, stop_sampling, interval_s=plan.sample_s))
        # The submitter gets twice the planned time: a pipeline slower than the rate still receives every job.
        submitter = Submitter(plan, settings, svc.api_url, time.monotonic() + 2 * plan.duration_s + 60)
        await submitter.run()
        dsn = settings.postgres.dsn.get_secret_value()
        drained = await drain(dsn, submitter.tally.accepted, plan.drain_timeout_s)
        stop_sampling.set()
        await sampling
        measured = await latency(dsn, submitter.tally.accepted)
        verdict = await verify(settings, submitter.tally.accepted)
    return LoadReport(
        plan=plan,
        tally=submitter.tally,
        memory=memory,
        latency=measured,
        verdict=verdict,
        drained=drained,
        elapsed_s=time.monotonic() - began,
        state_dir=opts.state_dir,
    )


def _parse(argv: list[str] | None) -> tuple[DrillOptions, LoadPlan]:
    p = drill_arguments(
        "python -m rmbg.drills.load",
        __doc__,
        state_dir=".state/load",
        short_help="the test-suite variant: 30 s at 2 jobs/s, 256 px",
    )
    p.add_argument("--duration", type=float, help="seconds of steady load")
    p.add_argument("--rate", type=float, help="jobs per second")
    p.add_argument("--side", type=int, help="image side in pixels")
    p.add_argument(
        "--max-queue-wait", type=float, help="ingest's backpressure limit in seconds (an overload run sets it low)"
    )
    args = p.parse_args(argv)
    plan = LoadPlan.short() if args.short else LoadPlan()
    if args.duration is not None:
        plan = replace(plan, duration_s=args.duration)
    if args.rate is not None:
        plan = replace(plan, rate_per_s=args.rate)
    if args.side is not None:
        plan = replace(plan, image_side=args.side)
    extra = (("RMBG_INGEST__MAX_QUEUE_WAIT_S", str(args.max_queue_wait)),) if args.max_queue_wait else ()
    return drill_options(args, extra), plan


def main(argv: list[str] | None = None) -> int:
    opts, plan = _parse(argv)
    return run_drill("load", lambda console: run_load(opts, plan, console))


if __name__ == "__main__":
    raise SystemExit(main())
