"""Running a chaos plan the way `make chaos` does, on a fresh embedded stack in the test's folder."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from rmbg.drills.chaos import ChaosPlan, ChaosReport, run_chaos
from rmbg.drills.pipeline import DrillOptions
from tests.support.tiny_rmbg import build_tiny_rmbg


async def run_plan(tmp_path: Path, plan: ChaosPlan, name: str) -> tuple[ChaosReport, str]:
    """The drill's report and its lines (printed, as the command prints them, for the test's log)."""
    model = build_tiny_rmbg(tmp_path / "tiny_rmbg")
    opts = DrillOptions(state_dir=tmp_path / name, model_source=str(model))
    console = Console(width=200)
    report = await run_chaos(opts, plan, console)
    lines = report.lines()
    for line in lines:
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    return report, "\n".join(lines)
