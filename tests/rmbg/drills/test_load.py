"""The load drill, short: 30 s at a steady rate; every job completes, latency and memory are reported.

The same code as `make load` (rmbg/drills/load.py). Memory growth is judged by the full run only: a
30-second run has no steady state to speak of, so this test checks the figures exist, not their size.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from rmbg.drills.load import LoadPlan, run_load
from rmbg.drills.pipeline import DrillOptions
from rmbg.supervisor import SERVICES
from tests.support.tiny_rmbg import build_tiny_rmbg

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
async def test_steady_load_completes_and_reports_latency_and_memory(tmp_path: Path) -> None:
    model = build_tiny_rmbg(tmp_path / "tiny_rmbg")
    opts = DrillOptions(state_dir=tmp_path / "load", model_source=str(model))
    plan = replace(LoadPlan.short(), max_rss_growth=10.0)  # see the module docstring
    console = Console(width=200)
    report = await run_load(opts, plan, console)
    lines = report.lines()
    for line in lines:
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    assert report.ok, "\n".join(lines)
    assert report.latency is not None and report.latency.completed == len(report.tally.accepted) == plan.jobs
    assert report.latency.p50_s <= report.latency.p95_s <= report.latency.p99_s <= report.latency.max_s
    assert set(report.growth()) == set(SERVICES), "every service's memory was read at warm-up and at the end"
