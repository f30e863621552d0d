"""The chaos drill, short: ~200 jobs over HTTP and the upload topic while each service and the broker is
SIGKILLed once; afterwards every accepted job has one terminal row, its objects, and the stats agree.

The same code as `make chaos` (rmbg/drills/chaos.py), on its own embedded stack (PostgreSQL included), so the
restarts disturb no other test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rmbg.drills.chaos import ChaosPlan, fault_schedule
from tests.support.drills import run_plan

pytestmark = pytest.mark.slow


def test_short_plan_kills_each_service_and_the_broker_once() -> None:
    kinds = [(f.kind, f.target) for f in fault_schedule(ChaosPlan.short())]
    assert sorted(kinds) == sorted(
        [("kill-service", s) for s in ("ingest", "inference", "persister", "stats")] + [("kill-broker", "tansu")]
    )


def test_full_plan_covers_every_fault() -> None:
    plan = ChaosPlan()
    faults = [(f.kind, f.target) for f in fault_schedule(plan)]
    assert plan.jobs >= 2000
    assert {k: faults.count(k) for k in set(faults)} == {
        **{("term-service", s): 1 for s in ("ingest", "inference", "persister", "stats")},
        **{("kill-service", s): 3 for s in ("ingest", "inference", "persister", "stats")},
        ("kill-broker", "tansu"): 2, ("restart-postgres", "postgres"): 1, ("pause-s3", "seaweedfs"): 1,
    }  # fmt: skip


@pytest.mark.timeout(900)
async def test_every_accepted_job_ends_once_under_kills(tmp_path: Path) -> None:
    plan = ChaosPlan.short()
    report, lines = await run_plan(tmp_path, plan, "chaos")
    assert len(report.tally.accepted) >= 0.95 * plan.jobs, lines
    assert all(report.faults.restarts[p] == 1 for p in ("ingest", "inference", "persister", "stats", "tansu")), lines
    assert report.ok, lines
