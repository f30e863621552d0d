"""Graceful shutdown: each service is SIGTERMed mid-stream while jobs flow. Each must stop taking work,
finish or hand back what it holds, commit, and exit 0 within its bound; afterwards no job is lost
(one terminal row each, objects, stats exact, fsck clean) and none was done twice (one request on the
jobs topic and one completed result on the results topic per job).

The same code as `make chaos` (rmbg/drills/chaos.py, ``ChaosPlan.graceful()``), on its own embedded stack.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rmbg.drills.chaos import ChaosPlan, fault_schedule
from tests.support.drills import run_plan

pytestmark = pytest.mark.slow

SERVICES = ("ingest", "inference", "persister", "stats")


def test_graceful_plan_stops_each_service_once_and_nothing_else() -> None:
    plan = ChaosPlan.graceful()
    assert plan.only_clean_stops
    assert sorted((f.kind, f.target) for f in fault_schedule(plan)) == sorted(("term-service", s) for s in SERVICES)


@pytest.mark.timeout(900)
async def test_sigterm_mid_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    plan = ChaosPlan.graceful()
    report, lines = await run_plan(tmp_path, plan, "shutdown")
    assert report.ok, lines
    assert all(report.faults.restarts[s] == 1 for s in SERVICES), lines
    assert set(report.faults.stop_s) == set(SERVICES), lines
    statuses = list(report.verdict.rows.values())
    assert len(report.tally.accepted) >= 0.95 * plan.jobs and statuses.count("completed") == len(statuses), lines
    assert report.verdict.unknown_rows == 0, "a retried POST made a second job"
