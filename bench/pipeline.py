"""End to end on the embedded stack with the tiny model: a sweep of offered rates, one stack started once.

Run: ``.venv/bin/python -m bench.pipeline --model-source DIR`` (``make bench-pipeline`` builds the tiny model
folder and runs it). Loopback only, the same pipeline as ``make load`` (rmbg/drills/pipeline.py: a fresh
embedded stack, the four services as supervised child processes) and the same submitter (rmbg/drills/
submit.py: HTTP and the upload topic, 20% uploads), here with 1024x1024 JPEG q90 photos (the five
scikit-image samples, each job's bytes made distinct by a JPEG comment so no two jobs share objects);
``--images drill`` sends the drills' synthetic PNGs instead (a flat background and a blob, as ``make load``).
``--params JSON`` gives every job those processing params (default none: the model's soft matte, which the
tiny model makes textured; ``'{"threshold": 0.5}'`` gives binary mattes, closer to what a real model's
near-binary matte costs to store).

Each step of the sweep offers one rate for ``--duration`` seconds, then waits for every job it submitted to
end (so a step starts on an empty pipeline and everything counted between its start and its end is its
own). Per step:

- offered rate, jobs accepted, achieved completions/s inside the submit window (completed_at, from
  PostgreSQL) and the backlog (accepted, not yet ended) when the window closed;
- latency p50/p95/p99/max from acceptance (created_at, the UUIDv7 time) to completed_at, from PostgreSQL,
  against the goal: p95 under 500 ms plus the model's time (the step's mean forward pass, rmbg_model_seconds);
- where the time goes: each stage of rmbg_stage_seconds (shared/telemetry.py) as the difference of every
  service's /metrics between the step's start and end: mean, and p95 interpolated within the histogram's
  buckets (coarse: buckets are 0.1, 0.25, 0.5, 1, 2.5 s ...); beside them, from PostgreSQL, created_at ->
  started_at (waiting for inference) and started_at -> completed_at; batch sizes (images per forward pass,
  records per consumed batch);
- CPU seconds per completed job of every process (psutil, user + system, reaped children included): the four
  services, the broker (Tansu), the S3 server (SeaweedFS), PostgreSQL (postmaster and its backends), Redis,
  this bench (the submitter), and the machine's busy CPU not accounted to any of them (other work); for each
  service also its main thread alone (the event loop: Kafka, S3 and PostgreSQL clients), the rest being its
  threads (the image pools' decode and encode, executors).

The sweep stops after a step the system could not keep up with: completions/s under ``--keep-up`` times the
offered rate, a backlog at the window's end of more than ``--backlog-s`` seconds of offered jobs, or a drain
that did not finish. At the end every accepted job must have completed and the drill checks
(rmbg/drills/verify.py: rows, objects, stats, fsck) must hold; otherwise the exit status is 1.
Prints Markdown tables; ``--json PATH`` also writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import math
import os
import platform
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from rmbg.demo import SAMPLES, sample_bytes
from rmbg.drills.load import Latency, latency
from rmbg.drills.pipeline import DrillOptions, drill_arguments, drill_options, open_pipeline, service_pid
from rmbg.drills.submit import ImageSource, Submitter, Upload
from rmbg.drills.verify import drain, verify
from rmbg.stack.processes import StackError
from rmbg.stack.stack import EmbeddedStack
from rmbg.supervisor import SERVICES
from shared.contracts import ProcessingParams
from shared.telemetry import STAGES

GOAL_S = 0.5  # p95 from acceptance to completed under this plus the model's time
SERVERS = ("tansu", "seaweedfs", "postgres", "redis")
_HISTOGRAMS = ("rmbg_stage_seconds", "rmbg_model_seconds", "rmbg_batch_images", "rmbg_batch_records")


@dataclass(frozen=True)
class SweepPlan:
    # From under what 2 shared cores sustain with 1024 px photos (about 1 job/s) up to the 20 jobs/s.
    rates: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0, 12.0, 16.0, 20.0)
    duration_s: float = 45.0
    # An unmeasured first step: the pools, the JIT-less torch's first batches, the broker's first segments.
    warmup_s: float = 10.0
    warmup_rate: float = 1.0
    image_side: int = 1024
    upload_share: float = 0.2
    concurrency: int = 64
    seed: int = 1
    # "photos": the sample photos as JPEG; "drill": the drills' synthetic PNGs (a flat background and a blob,
    # rmbg.drills.submit.drill_image, what `make load` sends), far cheaper to encode as a cut-out.
    images: str = "photos"
    # Every job's params (the submitter sends them over HTTP and in each upload event).
    params: ProcessingParams = field(default_factory=ProcessingParams)
    drain_timeout_s: float = 240.0
    keep_up: float = 0.8
    backlog_s: float = 5.0
    stop_early: bool = True
    verify: bool = True

    @classmethod
    def short(cls) -> SweepPlan:
        return cls(rates=(2.0,), duration_s=8.0, warmup_s=0.0, image_side=256, drain_timeout_s=120.0)


@dataclass(frozen=True)
class StepWorkload:
    """One step as the submitter sees it (rmbg.drills.submit.Workload)."""

    rate_per_s: float
    duration_s: float
    upload_share: float
    concurrency: int
    image_side: int
    seed: int

    @property
    def jobs(self) -> int:
        return max(1, round(self.duration_s * self.rate_per_s))


def photo_source(side: int, tag: str) -> ImageSource:
    """The five sample photos at side x side as JPEG q90; job i gets photo i % 5 with a comment naming it."""
    photos: list[bytes] = []
    for name in SAMPLES:
        with Image.open(io.BytesIO(sample_bytes(name))) as img:
            rgb = img.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=90)
        photos.append(buf.getvalue())

    def image(index: int) -> Upload:
        jpeg = photos[index % len(photos)]
        text = f"rmbg bench {tag} {index}".encode()
        comment = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text  # COM segment right after SOI
        return Upload(jpeg[:2] + comment + jpeg[2:], "image/jpeg", "jpg")

    return image


# --- /metrics histograms -------------------------------------------------------------------------------

_Key = tuple[str, str, tuple[tuple[str, str], ...]]  # (service, sample name, labels)


async def scrape(urls: dict[str, str]) -> dict[_Key, float]:
    """Every histogram sample the bench reads, from every service's /metrics."""
    out: dict[_Key, float] = {}
    async with httpx.AsyncClient(timeout=5.0) as client:
        for service, url in urls.items():
            try:
                text = (await client.get(url)).text
            except httpx.HTTPError:
                continue
            for family in text_string_to_metric_families(text):
                if family.name not in _HISTOGRAMS:
                    continue
                for s in family.samples:
                    out[(service, s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def delta(before: dict[_Key, float], after: dict[_Key, float]) -> dict[_Key, float]:
    """after - before; a counter that went down (its process restarted) counts from zero."""
    return {k: (v - before.get(k, 0.0) if v >= before.get(k, 0.0) else v) for k, v in after.items()}


@dataclass
class Histo:
    count: float = 0.0
    total: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """Linear interpolation within the bucket holding the q-th observation (Prometheus' way)."""
        if not self.count or not self.buckets:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for bound in sorted(self.buckets):
            cum = self.buckets[bound]
            if cum >= rank:
                if math.isinf(bound):
                    return lower
                inside = cum - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = bound, cum
        return lower


def histograms(d: dict[_Key, float], name: str, by: Callable[[str, dict[str, str]], str | None]) -> dict[str, Histo]:
    """The histogram ``name`` summed over services, grouped by ``by(service, labels)`` (None: skipped)."""
    out: dict[str, Histo] = {}
    for (service, sample, labels), value in d.items():
        if not sample.startswith(name + "_"):
            continue
        lab = dict(labels)
        group = by(service, lab)
        if group is None:
            continue
        h = out.setdefault(group, Histo())
        if sample == f"{name}_count":
            h.count += value
        elif sample == f"{name}_sum":
            h.total += value
        elif sample == f"{name}_bucket":
            bound = float(lab["le"])
            h.buckets[bound] = h.buckets.get(bound, 0.0) + value
    return out


# --- CPU ----------------------------------------------------------------------------------------------


def _busy(t: Any) -> float:
    return float(t.user + t.system)


def process_cpu(pid: int, *, reaped: bool = True) -> float:
    """User + system seconds of ``pid``, its live descendants and (``reaped``) its waited-for children."""
    proc = psutil.Process(pid)
    t = proc.cpu_times()
    seconds = _busy(t) + ((t.children_user + t.children_system) if reaped else 0.0)
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            seconds += _busy(child.cpu_times())
    return seconds


def postmaster_pid(state_dir: Path) -> int | None:
    for path in (state_dir / "postgres").rglob("postmaster.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(path.read_text().split()[0])
    return None


def process_pids(stack: EmbeddedStack, state_dir: Path) -> dict[str, int]:
    """The processes whose CPU the bench counts, by name."""
    pids: dict[str, int] = {}
    for name in SERVICES:
        pid = service_pid(name)
        if pid is not None:
            pids[name] = pid
    for name in ("tansu", "seaweedfs", "redis"):
        with contextlib.suppress(StackError):
            pid = stack.child(name).pid
            if pid is not None:
                pids[name] = pid
    pg = postmaster_pid(state_dir)
    if pg is not None:
        pids["postgres"] = pg
    return pids


def machine_busy() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


@dataclass
class CpuSnapshot:
    at: float
    machine: float
    processes: dict[str, tuple[int, float]]  # name -> (pid, seconds)
    # A service's main thread, where its event loop runs (Kafka, S3 and PostgreSQL clients, JSON); the rest
    # of its CPU is its threads: the image pools (decode, encode) and any executor.
    loops: dict[str, tuple[int, float]] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)  # a service's resident memory, bytes

    @classmethod
    def take(cls, stack: EmbeddedStack, state_dir: Path) -> CpuSnapshot:
        procs: dict[str, tuple[int, float]] = {}
        loops: dict[str, tuple[int, float]] = {}
        rss: dict[str, int] = {}
        for name, pid in process_pids(stack, state_dir).items():
            with contextlib.suppress(psutil.Error):
                if name in SERVICES:  # the thread first: the process, read after it, never counts less
                    process = psutil.Process(pid)
                    main = [t for t in process.threads() if t.id == pid]
                    if main:
                        loops[name] = (pid, main[0].user_time + main[0].system_time)
                    rss[name] = process.memory_info().rss
                procs[name] = (pid, process_cpu(pid))
        me = psutil.Process()
        procs["bench"] = (me.pid, _busy(me.cpu_times()))  # services are its children: not theirs
        return cls(time.monotonic(), machine_busy(), procs, loops, rss)

    def loops_since(self, before: CpuSnapshot) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, (pid, seconds) in self.loops.items():
            old = before.loops.get(name)
            out[name] = seconds - old[1] if old is not None and old[0] == pid else seconds
        return out

    def since(self, before: CpuSnapshot) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, (pid, seconds) in self.processes.items():
            old = before.processes.get(name)
            out[name] = seconds - old[1] if old is not None and old[0] == pid else seconds
        out["other"] = max(0.0, self.machine - before.machine - sum(out.values()))
        return out


# --- one step -------------------------------------------------------------------------------------------


@dataclass
class StageRow:
    stage: str
    count: float
    mean_s: float | None
    p95_s: float | None


@dataclass
class StepResult:
    rate: float
    planned: int
    accepted: int
    submit_s: float
    retries: dict[str, int]
    completions_per_s: float  # completed inside the submit window / its length
    backlog_at_end: int
    drained: bool
    drain_s: float
    latency: Latency | None
    model_mean_s: float | None
    stages: list[StageRow]
    db_wait: dict[str, tuple[float, float, float]]  # name -> (mean, p50, p95) seconds
    images_per_pass: float | None
    forward_passes: float
    records_per_batch: dict[str, float]
    cpu_s: dict[str, float]
    elapsed_s: float
    cores: int
    failed: int = 0
    job_ids: list[str] = field(default_factory=list, repr=False)
    cpu_loop_s: dict[str, float] = field(default_factory=dict)  # a service's main (event-loop) thread
    rss_mib: dict[str, float] = field(default_factory=dict)  # each service's resident memory at the step's end

    @property
    def goal_s(self) -> float:
        return GOAL_S + (self.model_mean_s or 0.0)

    @property
    def held(self) -> bool:
        return self.latency is not None and self.latency.p95_s < self.goal_s

    def reason_not_kept_up(self, plan: SweepPlan) -> str | None:
        if not self.drained:
            return "the drain did not finish"
        if self.completions_per_s < plan.keep_up * self.rate:
            return f"{self.completions_per_s:.2f} completions/s < {plan.keep_up:.0%} of {self.rate:g}/s"
        if self.backlog_at_end > max(5.0, plan.backlog_s * self.rate):
            return f"backlog {self.backlog_at_end} jobs at the window's end (> {plan.backlog_s:g} s of offered jobs)"
        if self.accepted < 0.9 * self.planned:
            return f"only {self.accepted} of {self.planned} jobs accepted"
        return None


_DB_SPLIT = """
SELECT status::text AS status,
       extract(epoch FROM started_at - created_at) AS waited,
       extract(epoch FROM completed_at - started_at) AS worked,
       completed_at >= $2 AND completed_at <= $3 AS in_window
FROM image_process_jobs WHERE job_id = ANY($1::uuid[])
"""


def _mean_p50_p95(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        pos = q * (len(ordered) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return sum(ordered) / len(ordered), at(0.5), at(0.95)


async def _unfinished(dsn: str, ids: list[str]) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        done = await conn.fetchval(
            "SELECT count(*) FROM image_process_jobs WHERE job_id = ANY($1::uuid[]) "
            "AND status IN ('completed', 'failed')",
            [uuid.UUID(j) for j in ids],
        )
    finally:
        await conn.close()
    return len(ids) - int(done)


async def run_step(
    rate: float,
    duration_s: float,
    plan: SweepPlan,
    *,
    stack: EmbeddedStack,
    opts: DrillOptions,
    settings: Any,
    api_url: str,
    metrics_urls: dict[str, str],
    step: int,
    tag: str,
) -> StepResult:
    dsn = settings.postgres.dsn.get_secret_value()
    # A seed per step: the drill's images repeat per (seed, index), and a repeated image shares its objects.
    seed = plan.seed * 1000 + step
    work = StepWorkload(rate, duration_s, plan.upload_share, plan.concurrency, plan.image_side, seed)
    source = photo_source(plan.image_side, tag) if plan.images == "photos" else None
    metrics_before = await scrape(metrics_urls)
    cpu_before = CpuSnapshot.take(stack, opts.state_dir)
    began, window_start = time.monotonic(), datetime.now(UTC)
    submitter = Submitter(
        work, settings, api_url, time.monotonic() + duration_s + 60, images=source, params=plan.params
    )
    await submitter.run()
    window_end, submit_s = datetime.now(UTC), time.monotonic() - began
    ids = submitter.tally.accepted
    backlog = await _unfinished(dsn, ids) if ids else 0
    drain_began = time.monotonic()
    drained = await drain(dsn, ids, plan.drain_timeout_s)
    drain_s = time.monotonic() - drain_began
    await asyncio.sleep(1.5)  # the persister's and stats' last observations
    cpu_after = CpuSnapshot.take(stack, opts.state_dir)
    d = delta(metrics_before, await scrape(metrics_urls))
    measured = await latency(dsn, ids) if ids else None

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(_DB_SPLIT, [uuid.UUID(j) for j in ids], window_start, window_end)
    finally:
        await conn.close()
    done = [r for r in rows if r["status"] == "completed"]
    in_window = sum(1 for r in done if r["in_window"])
    db_wait: dict[str, tuple[float, float, float]] = {}
    for name, column in (("created_at -> started_at", "waited"), ("started_at -> completed_at", "worked")):
        values = [float(r[column]) for r in done if r[column] is not None]
        if values:
            db_wait[name] = _mean_p50_p95(values)

    stage_h = histograms(d, "rmbg_stage_seconds", lambda _s, lab: lab.get("stage"))
    stages = [
        StageRow(s, stage_h[s].count, stage_h[s].mean, stage_h[s].quantile(0.95))
        for s in (*STAGES, *sorted(set(stage_h) - set(STAGES)))
        if s in stage_h and stage_h[s].count
    ]
    model = histograms(d, "rmbg_model_seconds", lambda _s, _lab: "model").get("model", Histo())
    images = histograms(d, "rmbg_batch_images", lambda _s, _lab: "images").get("images", Histo())
    records = histograms(d, "rmbg_batch_records", lambda s, lab: f"{s} <- {lab.get('topic', '?')}")
    cpu = cpu_after.since(cpu_before)
    return StepResult(
        rate=rate,
        planned=work.jobs,
        accepted=len(ids),
        submit_s=submit_s,
        retries=dict(submitter.tally.retries),
        completions_per_s=in_window / max(submit_s, 1e-9),
        backlog_at_end=backlog,
        drained=drained,
        drain_s=drain_s,
        latency=measured,
        model_mean_s=model.mean,
        stages=stages,
        db_wait=db_wait,
        images_per_pass=images.mean,
        forward_passes=images.count,
        records_per_batch={k: v.mean for k, v in sorted(records.items()) if v.mean is not None},
        cpu_s=cpu,
        cpu_loop_s=cpu_after.loops_since(cpu_before),
        rss_mib={k: v / 2**20 for k, v in cpu_after.rss.items()},
        elapsed_s=cpu_after.at - cpu_before.at,
        cores=psutil.cpu_count() or 1,
        failed=sum(1 for r in rows if r["status"] == "failed"),
        job_ids=list(ids),
    )


# --- the sweep ------------------------------------------------------------------------------------------


@dataclass
class SweepReport:
    plan: SweepPlan
    steps: list[StepResult]
    stopped: str | None
    lost: int
    failed: int
    problems: list[str]
    started_at: datetime
    elapsed_s: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    state_dir: Path
    stack_up_s: float

    @property
    def ok(self) -> bool:
        return not self.lost and not self.failed and not self.problems

    def sustained(self) -> list[StepResult]:
        return [s for s in self.steps if s.reason_not_kept_up(self.plan) is None]

    def tables(self) -> str:
        return "\n".join(render(self))

    def to_json(self) -> dict[str, Any]:
        steps = []
        for s in self.steps:
            item = asdict(s)
            item.pop("job_ids")
            item["goal_s"], item["held"] = s.goal_s, s.held
            item["kept_up"] = s.reason_not_kept_up(self.plan) is None
            steps.append(item)
        return {
            "plan": asdict(self.plan) | {"params": self.plan.params.canonical()},
            "steps": steps,
            "stopped": self.stopped,
            "lost": self.lost,
            "failed": self.failed,
            "problems": self.problems,
            "started_at": self.started_at.isoformat(),
            "elapsed_s": self.elapsed_s,
            "load_before": self.load_before,
            "load_after": self.load_after,
        }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _table(header: list[str], rows: list[list[str]]) -> Iterator[str]:
    yield "| " + " | ".join(header) + " |"
    yield "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    for row in rows:
        yield "| " + " | ".join(row) + " |"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _rss_rows(steps: list[StepResult]) -> list[list[str]]:
    return [
        [f"{name}: RSS at the step's end, MiB", *(_mib(s.rss_mib.get(name)) for s in steps)]
        for name in SERVICES[::-1]
    ]


def render(report: SweepReport) -> Iterator[str]:
    plan, steps = report.plan, report.steps
    yield (
        f"Sweep: {', '.join(f'{r:g}' for r in plan.rates)} jobs/s offered, {plan.duration_s:g} s each after a "
        f"{plan.warmup_s:g} s warm-up at {plan.warmup_rate:g}/s; {plan.image_side}x{plan.image_side} "
        f"{'JPEG q90 photos' if plan.images == 'photos' else 'synthetic PNGs (the drills)'}, "
        f"params {json.dumps(plan.params.canonical())}, "
        f"{plan.upload_share:.0%} by the upload topic; started {report.started_at:%Y-%m-%d %H:%M} UTC, "
        f"{report.elapsed_s:.0f} s in all (stack and services up in {report.stack_up_s:.0f} s); load average "
        f"before {' '.join(f'{x:.2f}' for x in report.load_before)}, after "
        f"{' '.join(f'{x:.2f}' for x in report.load_after)}; {psutil.cpu_count()} CPUs."
    )
    yield ""
    yield "#### Throughput and latency (acceptance to completed, from PostgreSQL)"
    yield ""
    rows = []
    for s in steps:
        lat = s.latency
        reason = s.reason_not_kept_up(plan)
        rows.append(
            [
                f"{s.rate:g}",
                f"{s.accepted}/{s.planned}",
                f"{s.accepted / max(s.submit_s, 1e-9):.2f}",
                f"{s.completions_per_s:.2f}",
                str(s.backlog_at_end),
                _ms(lat.p50_s if lat else None),
                _ms(lat.p95_s if lat else None),
                _ms(lat.p99_s if lat else None),
                _ms(lat.max_s if lat else None),
                _ms(s.goal_s),
                "yes" if s.held else "no",
                "yes" if reason is None else f"no: {reason}",
                ", ".join(f"{k} {v}" for k, v in sorted(s.retries.items())) or "-",
            ]
        )
    yield from _table(
        [
            "offered/s",
            "accepted/planned",
            "accepted/s",
            "completed/s in window",
            "backlog at end",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "goal ms (500 + model)",
            "p95 < goal",
            "kept up",
            "submit retries",
        ],
        rows,
    )
    yield ""
    yield "#### Where the time goes: mean / p95 ms per stage (rmbg_stage_seconds deltas; p95 within buckets)"
    yield ""
    names = [st.stage for s in steps for st in s.stages]
    ordered = list(dict.fromkeys(n for n in (*STAGES, *names) if n in names))
    rows = []
    for name in ordered:
        row = [name]
        for s in steps:
            st = next((x for x in s.stages if x.stage == name), None)
            row.append("-" if st is None else f"{_ms(st.mean_s)} / {_ms(st.p95_s)}")
        rows.append(row)
    for name in ("created_at -> started_at", "started_at -> completed_at"):
        row = [f"db: {name}"]
        for s in steps:
            v = s.db_wait.get(name)
            row.append("-" if v is None else f"{_ms(v[0])} / {_ms(v[2])}")
        rows.append(row)
    rows.append(["model forward pass (rmbg_model_seconds)"] + [f"{_ms(s.model_mean_s)} / -" for s in steps])
    rows.append(
        ["images per forward pass (mean)"]
        + [("-" if s.images_per_pass is None else f"{s.images_per_pass:.2f}") for s in steps]
    )
    batch_names = list(dict.fromkeys(k for s in steps for k in s.records_per_batch))
    for name in batch_names:
        rows.append(
            [f"records per batch, {name}"]
            + [("-" if name not in s.records_per_batch else f"{s.records_per_batch[name]:.1f}") for s in steps]
        )
    yield from _table(["stage", *(f"{s.rate:g}/s" for s in steps)], rows)
    yield ""
    yield (
        "#### CPU seconds per completed job, by process (psutil user + system over the step and its drain; "
        "other: the machine's busy CPU not in these processes)"
    )
    yield ""
    procs = [*SERVICES[::-1], *SERVERS, "bench", "other"]
    rows = []
    for name in procs:
        row = [name]
        for s in steps:
            done = s.latency.completed if s.latency else 0
            row.append("-" if name not in s.cpu_s or not done else f"{s.cpu_s[name] / done:.3f}")
        rows.append(row)
    totals = ["all (excluding other)"]
    busy = ["CPU busy, % of all cores (all processes)"]
    cores_ours = ["cores busy on average: the pipeline (all but other)"]
    cores_other = ["cores busy on average: other work"]
    for s in steps:
        done = s.latency.completed if s.latency else 0
        ours = sum(v for k, v in s.cpu_s.items() if k != "other")
        totals.append(f"{ours / done:.3f}" if done else "-")
        busy.append(f"{100 * sum(s.cpu_s.values()) / (s.elapsed_s * s.cores):.0f}%")
        cores_ours.append(f"{ours / s.elapsed_s:.2f}")
        cores_other.append(f"{s.cpu_s.get('other', 0.0) / s.elapsed_s:.2f}")
    for name in SERVICES[::-1]:
        row = [f"{name}: of which its event-loop thread"]
        for s in steps:
            done = s.latency.completed if s.latency else 0
            row.append("-" if name not in s.cpu_loop_s or not done else f"{s.cpu_loop_s[name] / done:.3f}")
        rows.append(row)
    rows += [totals, busy, cores_ours, cores_other, *_rss_rows(steps)]
    yield from _table(["process", *(f"{s.rate:g}/s" for s in steps)], rows)
    yield ""
    kept = report.sustained()
    best = max((s.completions_per_s for s in kept), default=0.0)
    yield (
        (
            f"Highest offered rate kept up with: {max(s.rate for s in kept):g} jobs/s ({best:.2f} completions/s). "
            if kept
            else "No offered rate was kept up with. "
        )
        + (f"Sweep stopped: {report.stopped}." if report.stopped else "")
    )
    yield (
        f"Jobs lost: {report.lost}; failed: {report.failed}; problems: "
        f"{'; '.join(report.problems[:10]) if report.problems else 'none'}. State and logs: {report.state_dir}"
    )


async def run_sweep(opts: DrillOptions, plan: SweepPlan, console: Console) -> SweepReport:
    started_at, began = datetime.now(UTC), time.monotonic()
    load_before = os.getloadavg()
    steps: list[StepResult] = []
    stopped: str | None = None
    problems: list[str] = []
    accepted: list[str] = []
    async with open_pipeline(opts, console) as (stack, settings, svc):
        stack_up_s = time.monotonic() - began
        console.print(f"pipeline up in {stack_up_s:.0f} s")
        common: dict[str, Any] = {
            "stack": stack,
            "opts": opts,
            "settings": settings,
            "api_url": svc.api_url,
            "metrics_urls": svc.metrics_urls,
        }
        if plan.warmup_s > 0:
            warm = await run_step(plan.warmup_rate, plan.warmup_s, plan, step=0, tag="warmup", **common)
            accepted += warm.job_ids
            console.print(f"warm-up: {warm.accepted} jobs, drained {warm.drained}")
        for i, rate in enumerate(plan.rates):
            step = await run_step(rate, plan.duration_s, plan, step=i + 1, tag=f"step{i}", **common)
            steps.append(step)
            accepted += step.job_ids
            lat = step.latency
            console.print(
                f"{rate:g}/s: accepted {step.accepted}, {step.completions_per_s:.2f} completed/s, backlog "
                f"{step.backlog_at_end}, p95 {_ms(lat.p95_s if lat else None)} ms, drain {step.drain_s:.0f} s"
            )
            reason = step.reason_not_kept_up(plan)
            if reason is not None and plan.stop_early:
                if i + 1 < len(plan.rates):
                    stopped = f"at {rate:g}/s, {reason}"
                break
        dsn = settings.postgres.dsn.get_secret_value()
        await drain(dsn, accepted, plan.drain_timeout_s)
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            ids = [uuid.UUID(j) for j in accepted]
            rows = await conn.fetch(
                "SELECT status::text AS status, count(*) AS n FROM image_process_jobs "
                "WHERE job_id = ANY($1::uuid[]) GROUP BY 1",
                ids,
            )
            # What was measured is what the header says: every job stored the plan's params.
            other_params = await conn.fetchval(
                "SELECT count(*) FROM image_process_jobs WHERE job_id = ANY($1::uuid[]) AND params <> $2::jsonb",
                ids,
                json.dumps(plan.params.canonical()),
            )
        finally:
            await conn.close()
        by_status = {r["status"]: int(r["n"]) for r in rows}
        failed = by_status.get("failed", 0)
        lost = len(accepted) - by_status.get("completed", 0) - failed
        if plan.verify:
            verdict = await verify(settings, accepted)
            problems = list(verdict.problems)
        if other_params:
            problems.append(f"{other_params} jobs stored params other than {json.dumps(plan.params.canonical())}")
        restarts = {k: v for k, v in svc.supervisor.restarts.items() if v}
        if restarts:
            problems.append(f"services restarted during the run: {restarts}")
    return SweepReport(
        plan=plan,
        steps=steps,
        stopped=stopped,
        lost=lost,
        failed=failed,
        problems=problems,
        started_at=started_at,
        elapsed_s=time.monotonic() - began,
        load_before=load_before,
        load_after=os.getloadavg(),
        state_dir=opts.state_dir,
        stack_up_s=stack_up_s,
    )


def _git_head() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return "unknown"


def _uncommitted() -> list[str]:
    """Tracked files of the code the services run that differ from HEAD (a shared checkout's work in progress)."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "diff", "--name-only", "HEAD", "--", "services", "shared", "rmbg"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.split()
    return []


def _job_params(text: str) -> ProcessingParams:
    try:
        return ProcessingParams.model_validate_json(text)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise argparse.ArgumentTypeError(f"not valid job params: {exc}") from None


def parse_args(argv: list[str] | None) -> tuple[DrillOptions, SweepPlan, Path | None]:
    p = drill_arguments(
        "python -m bench.pipeline",
        __doc__,
        state_dir=".state/bench-pipeline",
        short_help="the test-suite variant: one step of 8 s at 2 jobs/s, 256 px, no warm-up",
    )
    p.description, p.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--rates", type=float, nargs="+", help="offered jobs/s, one step each (default 0.5 1 1.5 2 3 4 8 12 16 20)"
    )
    p.add_argument("--duration", type=float, help="seconds per step (default 45)")
    p.add_argument("--warmup", type=float, help="seconds of unmeasured warm-up at 1 job/s first (default 10)")
    p.add_argument("--side", type=int, help="image side in pixels (default 1024)")
    p.add_argument("--concurrency", type=int, help="submissions in flight at most (default 64)")
    p.add_argument("--drain-timeout", type=float, help="seconds a step may wait for its jobs to end (default 240)")
    p.add_argument("--keep-up", type=float, help="completions/s below this share of the offered rate: not kept up")
    p.add_argument("--backlog-s", type=float, help="a backlog at the window's end over this many seconds of jobs")
    p.add_argument("--no-stop", action="store_true", help="run every rate even after one was not kept up with")
    p.add_argument("--no-verify", action="store_true", help="skip the drill checks (rows, objects, stats, fsck)")
    p.add_argument(
        "--images",
        choices=("photos", "drill"),
        help="photos: the sample photos as JPEG q90 (default); drill: the drills' synthetic PNGs, as make load",
    )
    p.add_argument(
        "--params",
        type=_job_params,
        help="every job's processing params as JSON, e.g. '{\"threshold\": 0.5}' (default {}: the soft matte)",
    )
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    plan = SweepPlan.short() if args.short else SweepPlan()
    changes: dict[str, Any] = {
        "rates": tuple(args.rates) if args.rates else None,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "image_side": args.side,
        "concurrency": args.concurrency,
        "drain_timeout_s": args.drain_timeout,
        "keep_up": args.keep_up,
        "backlog_s": args.backlog_s,
        "images": args.images,
        "params": args.params,
    }
    fields = {k: v for k, v in changes.items() if v is not None}
    if args.no_stop:
        fields["stop_early"] = False
    if args.no_verify:
        fields["verify"] = False
    if any(r <= 0 for r in fields.get("rates", (1,))):
        p.error("--rates must be positive")
    plan = SweepPlan(**{**asdict(plan), **fields})
    return drill_options(args), plan, args.json


def main(argv: list[str] | None = None) -> int:
    opts, plan, json_path = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    console = Console()
    head, dirty = _git_head(), _uncommitted()  # at the start: a shared checkout may move during the run
    report = asyncio.run(run_sweep(opts, plan, console))
    print(f"\nbench.pipeline, git {head} at the start, {platform.python_version()}, {platform.machine()}")
    print(f"uncommitted changes at the start: {', '.join(dirty) if dirty else 'none'}\n")
    print(report.tables())
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_json() | {"git": head, "uncommitted": dirty}, indent=2, default=str))
    if not report.ok:
        console.print("bench.pipeline: jobs lost or checks failed", style="red")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
