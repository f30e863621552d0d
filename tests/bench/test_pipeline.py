"""bench/pipeline.py, tiny: one step of 8 s at 2 jobs/s with 256 px photos against the real servers.

The same code as `make bench-pipeline`; the figures are checked for sanity (every job counted and completed,
percentiles ordered, a stage table with rows, CPU counted for every process), not for their size. The
histogram quantile and the argument parsing are checked without servers.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from rich.console import Console

from bench import pipeline
from bench.pipeline import Histo, SweepPlan, parse_args, photo_source, run_sweep
from rmbg.drills.pipeline import DrillOptions
from rmbg.supervisor import SERVICES
from shared.contracts import ProcessingParams
from shared.imaging import decode_rgb
from tests.support.tiny_rmbg import build_tiny_rmbg


def test_quantile_interpolates_within_buckets() -> None:
    h = Histo(count=10, total=3.0, buckets={0.1: 2, 0.5: 8, 1.0: 10, math.inf: 10})
    assert h.mean == pytest.approx(0.3)
    assert h.quantile(0.5) == pytest.approx(0.1 + 0.4 * (3 / 6))
    assert h.quantile(0.95) == pytest.approx(0.5 + 0.5 * (1.5 / 2))
    assert Histo().quantile(0.95) is None
    assert Histo(count=1, total=200.0, buckets={120.0: 0, math.inf: 1}).quantile(0.5) == 120.0


def test_arguments() -> None:
    opts, plan, json_path = parse_args(["--model-source", "m", "--rates", "1", "3", "--duration", "20", "--no-stop"])
    assert (plan.rates, plan.duration_s, plan.stop_early, json_path) == ((1.0, 3.0), 20.0, False, None)
    assert opts.model_source == "m" and plan.images == "photos"
    assert parse_args(["--model-source", "m", "--images", "drill"])[1].images == "drill"
    binary = parse_args(["--model-source", "m", "--params", '{"threshold": 0.5}'])[1]
    assert binary.params == ProcessingParams(threshold=0.5)
    with pytest.raises(SystemExit):  # argparse's error: a param the contract does not know
        parse_args(["--model-source", "m", "--params", '{"treshold": 0.5}'])
    _, default, _ = parse_args(["--model-source", "m"])
    assert default.params == ProcessingParams()
    assert default.rates == (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0, 12.0, 16.0, 20.0) and default.image_side == 1024
    # The default run stays bounded: at most every step and its drain, far under the Makefile's timeout.
    assert len(default.rates) * default.duration_s + default.warmup_s < 15 * 60


def test_photos_are_distinct_jpegs() -> None:
    images = photo_source(64, "t")
    a, b, again = images(0), images(5), images(0)
    assert a.content_type == "image/jpeg" and a.data[:2] == b"\xff\xd8"
    assert a.data != b.data and a.data == again.data  # same photo, distinct bytes per job
    assert decode_rgb(a.data).size == decode_rgb(b.data).size == (64, 64)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_one_short_step_against_the_real_servers(tmp_path: Path) -> None:
    model = build_tiny_rmbg(tmp_path / "tiny_rmbg")
    opts = DrillOptions(state_dir=tmp_path / "bench", model_source=str(model))
    # With params, so the run also checks that every job stored them (a problem, and not ok, otherwise).
    plan = dataclasses.replace(SweepPlan.short(), params=ProcessingParams(threshold=0.5))
    console = Console(width=200)
    report = await run_sweep(opts, plan, console)
    text = report.tables()
    console.print(text, soft_wrap=True, markup=False, highlight=False)
    assert report.ok, text
    [step] = report.steps
    assert step.accepted == step.planned == 16
    assert step.latency is not None and step.latency.completed == 16
    assert 0 < step.latency.p50_s <= step.latency.p95_s <= step.latency.p99_s <= step.latency.max_s
    assert 0 < step.completions_per_s <= 2 * plan.rates[0]
    stages = {s.stage: s for s in step.stages}
    assert {"queue_wait", "inference", "encode_cutout", "persist", "end_to_end"} <= set(stages), stages
    assert stages["end_to_end"].count == 16
    for s in stages.values():
        assert s.mean_s is not None and s.mean_s >= 0 and s.p95_s is not None
    assert step.model_mean_s is not None and step.model_mean_s > 0
    assert set(step.db_wait) == {"created_at -> started_at", "started_at -> completed_at"}
    assert {*SERVICES, "tansu", "seaweedfs", "postgres", "bench"} <= set(step.cpu_s)
    assert all(v >= 0 for v in step.cpu_s.values()) and step.cpu_s["inference"] > 0
    assert set(step.cpu_loop_s) == set(SERVICES) == set(step.rss_mib)
    assert all(v > 10 for v in step.rss_mib.values()), step.rss_mib  # MiB: a Python service, at least
    # Clock ticks: a thread and its process are read at slightly different times.
    assert all(0 <= step.cpu_loop_s[n] <= step.cpu_s[n] + 0.05 for n in SERVICES), (step.cpu_loop_s, step.cpu_s)
    assert 'params {"threshold": 0.5}' in text and "| persister: RSS at the step's end, MiB |" in text
    assert "| end_to_end |" in text and "| inference |" in text and "p95 ms" in text
    assert pipeline.GOAL_S == 0.5
