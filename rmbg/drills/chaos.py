"""`make chaos`: jobs in over HTTP and the upload topic while every process of the pipeline is killed.

On loopback only, on a fresh embedded stack (SeaweedFS, Tansu, embedded PostgreSQL, Redis) and the four
services as supervised child processes, bounded in jobs and time:

- jobs are submitted at a steady rate with bounded concurrency: POST /v1/jobs (retrying 429/503 after
  Retry-After, and connection errors while ingest is down) and upload events (the image put in the
  bucket, then published on the uploads topic until the broker acknowledges it);
- meanwhile each service is SIGTERMed (it must drain, commit and exit 0 within its grace period) and
  SIGKILLed (its supervisor restarts it either way), the broker is SIGKILLed and restarted, PostgreSQL
  is restarted and SeaweedFS is frozen with SIGSTOP, then SIGCONT;
- then it waits for every accepted job to end and checks PostgreSQL and S3 directly (not the API):
  exactly one terminal row per accepted job, a completed job's three objects with the sizes its row
  records, processing_stats and user_job_counts equal to counts over the rows, and fsck clean.
  With SIGTERMs only (``ChaosPlan.graceful()``, tests/rmbg/drills/test_shutdown.py) it also checks that
  nothing was done twice: each job's request and its result appear once on their topics.

    python -m rmbg.drills.chaos --model-source DIR [--jobs 2000] [--short]

Exit status 0 when every check held. The state folder (logs of every process) is kept for inspection.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import psutil
from rich.console import Console

from rmbg.drills.metrics import MetricsWatch
from rmbg.drills.pipeline import (
    DrillOptions,
    answers,
    drill_arguments,
    drill_options,
    open_pipeline,
    run_drill,
    service_pid,
    until,
)
from rmbg.drills.submit import Submitter, Tally
from rmbg.drills.verify import Verdict, check_done_once, drain, verify
from rmbg.stack.stack import EmbeddedStack
from rmbg.supervisor import RunningServices

FaultKind = Literal["term-service", "kill-service", "kill-broker", "restart-postgres", "pause-s3"]
SERVICE_NAMES = ("ingest", "inference", "persister", "stats")


@dataclass(frozen=True)
class ChaosPlan:
    """How many jobs, how fast, and which faults; ``short()`` is the test-suite variant."""

    jobs: int = 2000
    upload_share: float = 0.2  # the rest go over HTTP
    rate_per_s: float = 3.0
    concurrency: int = 8
    service_terms: int = 1  # SIGTERMs of each of the four services: a clean stop, exit 0, nothing redone
    # A SIGTERMed service must have exited within this: the longest drain (inference's batch + grace_s,
    # uvicorn's 30 s for ingest) plus closing its clients; the k8s grace periods allow as much.
    term_exit_timeout_s: float = 60.0
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

    @property
    def only_clean_stops(self) -> bool:
        """No fault that legitimately makes work be redone (a kill loses uncommitted offsets)."""
        return not (self.service_kills or self.broker_kills or self.postgres_restarts or self.s3_pauses)

    @classmethod
    def short(cls) -> ChaosPlan:
        return cls(
            jobs=200,
            rate_per_s=2.0,
            service_terms=0,
            service_kills=1,
            broker_kills=1,
            postgres_restarts=0,
            s3_pauses=0,
            first_fault_s=8.0,
            fault_gap_s=12.0,
            drain_timeout_s=300.0,
            deadline_s=720.0,
        )

    @classmethod
    def graceful(cls) -> ChaosPlan:
        """Each service SIGTERMed once mid-stream and nothing else: every stop must be clean (exit 0 in
        time) and lose and redo nothing (tests/rmbg/drills/test_shutdown.py)."""
        return cls(
            jobs=150,
            rate_per_s=2.0,
            service_terms=1,
            service_kills=0,
            broker_kills=0,
            postgres_restarts=0,
            s3_pauses=0,
            first_fault_s=8.0,
            fault_gap_s=8.0,
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
    rounds = max(plan.service_terms, plan.service_kills, plan.broker_kills, plan.postgres_restarts, plan.s3_pauses)
    for r in range(rounds):
        if r < plan.service_terms:
            faults += [Fault("term-service", s) for s in SERVICE_NAMES]
        if r < plan.service_kills:
            faults += [Fault("kill-service", s) for s in SERVICE_NAMES]
        if r < plan.broker_kills:
            faults.append(Fault("kill-broker", "tansu"))
        if r < plan.postgres_restarts:
            faults.append(Fault("restart-postgres", "postgres"))
        if r < plan.s3_pauses:
            faults.append(Fault("pause-s3", "seaweedfs"))
    return faults


@dataclass
class FaultLog:
    kills: Counter[str] = field(default_factory=Counter)  # SIGKILLs, restarts of postgres, SIGSTOPs
    restarts: Counter[str] = field(default_factory=Counter)  # came back and answered
    recovery_s: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    last_fault_end: float = 0.0
    stop_s: dict[str, list[float]] = field(default_factory=dict)  # SIGTERM to exit, per service


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
            "SIGTERM to exit s: "
            + (", ".join(f"{p} max {max(s):.1f}" for p, s in sorted(self.faults.stop_s.items())) or "none sent"),
            "recovery s: " + ", ".join(f"{p} max {max(s):.1f}" for p, s in sorted(self.faults.recovery_s.items()) if s),
            "retries: "
            + (", ".join(f"{k} {n}" for k, n in sorted(t.retries.items())) or "none")
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
        if fault.kind == "term-service":
            return await self._stop_service(fault.target, signal.SIGTERM)
        if fault.kind == "kill-service":
            return await self._stop_service(fault.target, signal.SIGKILL)
        if fault.kind == "kill-broker":
            await self.stack.kill_and_restart("tansu", down_s=self.plan.broker_down_s)
            return True
        if fault.kind == "restart-postgres":
            await self.stack.restart_postgres(down_s=self.plan.postgres_down_s)
            return True
        await self._pause_s3()
        return True

    async def _stop_service(self, name: str, sig: signal.Signals) -> bool:
        pid = service_pid(name)
        if pid is None:
            self.log.errors.append(f"no running {name} to stop")
            return False
        before = self.svc.supervisor.restarts[name]
        sent = time.monotonic()
        os.kill(pid, sig)
        if sig == signal.SIGTERM and not await self._exited_cleanly(name, pid, sent, before):
            return False

        async def back() -> bool:
            return self.svc.supervisor.restarts[name] > before and await answers(self._probe_url(name))

        if not await until(back, self.plan.recover_timeout_s):
            self.log.errors.append(f"{name} did not come back within {self.plan.recover_timeout_s:.0f} s of SIGKILL")
            return False
        return True

    async def _exited_cleanly(self, name: str, pid: int, sent: float, before: int) -> bool:
        """A SIGTERMed service drains, commits and exits 0 within the plan's bound."""

        async def gone() -> bool:
            return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

        if not await until(gone, self.plan.term_exit_timeout_s, interval_s=0.05):
            self.log.errors.append(f"{name} still running {self.plan.term_exit_timeout_s:.0f} s after SIGTERM")
            return False
        self.log.stop_s.setdefault(name, []).append(time.monotonic() - sent)

        async def restarted() -> bool:
            return self.svc.supervisor.restarts[name] > before

        if not await until(restarted, 30.0):
            self.log.errors.append(f"{name} was not restarted after it exited")
            return False
        code = self.svc.supervisor.exit_codes[name][-1]
        if code != 0:
            self.log.errors.append(f"{name} exited with code {code} after SIGTERM, not 0")
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


async def run_chaos(opts: DrillOptions, plan: ChaosPlan, console: Console) -> ChaosReport:
    """The whole drill; returns the figures and every problem found (``report.ok`` when none)."""
    began = time.monotonic()
    deadline = began + plan.deadline_s
    async with open_pipeline(opts, console) as (stack, settings, svc):
        console.print(f"pipeline up in {time.monotonic() - began:.0f} s; state in {opts.state_dir}")
        # Submitting stops in time to leave the drain and the checks their share of the run's bound.
        submit_deadline = deadline - plan.drain_timeout_s - 60.0
        submitter = Submitter(plan, settings, svc.api_url, submit_deadline)
        injector = FaultInjector(plan, stack, svc)
        watch = MetricsWatch(svc.metrics_urls)
        stop_watch = asyncio.Event()
        watching = asyncio.create_task(watch.run(stop_watch), name="drill-metrics")
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
        if plan.only_clean_stops:
            await check_done_once(settings, submitter.tally.accepted, verdict)
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


def _parse(argv: list[str] | None) -> tuple[DrillOptions, ChaosPlan]:
    p = drill_arguments(
        "python -m rmbg.drills.chaos",
        __doc__,
        state_dir=".state/chaos",
        short_help="the test-suite variant: ~200 jobs, one kill of each",
    )
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
    return drill_options(args), plan


def main(argv: list[str] | None = None) -> int:
    opts, plan = _parse(argv)
    return run_drill("chaos", lambda console: run_chaos(opts, plan, console))


if __name__ == "__main__":
    raise SystemExit(main())
