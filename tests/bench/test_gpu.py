"""bench/gpu.py without a GPU: its arguments, its refusal without CUDA, and the stand-in's shapes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu
from services.inference.backends import recipe

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    args = gpu.parse_args([])
    assert args.model_dir is None
    assert args.batch_sizes == [1, 2, 4, 8, 16]
    assert args.dtypes == ["bf16", "fp16"]
    assert args.compile == "both"
    assert args.size == 1024
    assert args.total_budget_s < 600  # the whole run fits a 10-minute slot


def test_arguments_parsed() -> None:
    args = gpu.parse_args(
        [
            "--model-dir",
            "/m/RMBG-2.0",
            "--batch-sizes",
            "1",
            "8",
            "--dtypes",
            "fp16",
            "--compile",
            "off",
            "--repeats",
            "4",
            "--config-budget-s",
            "30",
            "--total-budget-s",
            "200",
        ]
    )
    assert (args.model_dir, args.batch_sizes, args.dtypes, args.compile) == ("/m/RMBG-2.0", [1, 8], ["fp16"], "off")
    assert (args.repeats, args.config_budget_s, args.total_budget_s) == (4, 30.0, 200.0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch-sizes", "0"],
        ["--dtypes", "fp32"],
        ["--compile", "maybe"],
        ["--total-budget-s", "0"],
        ["--repeats", "x"],
    ],
)
def test_bad_arguments_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        gpu.parse_args(argv)
    assert exc.value.code == 2


def test_plan_runs_eager_rows_before_compiled_ones() -> None:
    rows = gpu.plan(gpu.parse_args(["--batch-sizes", "1", "16"]))
    assert [(r.compiled, r.dtype, r.batch) for r in rows] == [
        (False, "bf16", 1), (False, "bf16", 16), (False, "fp16", 1), (False, "fp16", 16),
        (True, "bf16", 1), (True, "bf16", 16), (True, "fp16", 1), (True, "fp16", 16),
    ]  # fmt: skip
    assert [r.compiled for r in gpu.plan(gpu.parse_args(["--compile", "off"]))] == [False] * 10


def test_refuses_without_cuda(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err
    assert "nothing was measured" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the command would run")
def test_command_exits_2_without_cuda() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr
    assert done.stdout == ""


def test_time_limit_interrupts() -> None:
    with pytest.raises(gpu.BudgetExceeded), gpu.time_limit(0.05):
        time.sleep(2)


def test_standin_forward_shape_on_cpu() -> None:
    """A scaled-down stand-in (same code, fewer channels and blocks) on a tiny, non-window-multiple input."""
    torch.manual_seed(0)
    model = gpu.build_standin(embed_dim=16, depths=(2, 2, 2, 2), heads=(1, 2, 2, 4), window=4, head_dim=8)
    x = torch.randn(2, 3, 72, 88)
    with torch.inference_mode():
        outputs = model(x)
    assert isinstance(outputs, list)
    logits = recipe.select_logits(outputs, 2)  # what the pipeline takes: model(x)[-1], (N, 1, H, W)
    assert logits.shape == (2, 1, 72, 88)
    assert bool(torch.isfinite(logits).all())
    mattes = recipe.postprocess(logits, [(50, 40), (30, 20)])
    assert [m.shape for m in mattes] == [(40, 50), (20, 30)]


def test_standin_is_swin_l_sized_at_1024() -> None:
    """The default stand-in has Swin-L's size, and runs at 1024x1024 (shapes only: the meta device, no compute)."""
    with torch.device("meta"):
        model = gpu.build_standin()
        outputs = model(torch.empty(1, 3, 1024, 1024))
    assert 194e6 < gpu.count_parameters(model.backbone) < 197e6  # timm's swin_large: 196.5M with its classifier
    assert model.backbone.dims == [192, 384, 768, 1536]
    assert outputs[-1].shape == (1, 1, 1024, 1024)


def test_run_plan_keeps_to_its_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's bookkeeping with the GPU parts replaced: a failing row is reported, a slow one stopped at its
    budget, and the rows that no longer fit in the total budget are skipped and returned."""

    def fake_measure(run_model: object, row: gpu.Row, args: object) -> None:
        if row.batch == 2:
            raise RuntimeError("boom")
        if row.batch == 4:
            time.sleep(5)  # over the 1 s per-configuration budget
        row.first_call_s, row.ms_per_image, row.repeats = 0.0, 1.0, 3

    monkeypatch.setattr(gpu, "measure_config", fake_measure)
    monkeypatch.setattr(gpu, "cpu_overhead", lambda batch, repeats: (1.5, 2.5, 0.5, 0.25))
    args = gpu.parse_args(["--batch-sizes", "1", "2", "4", "8", "--compile", "off", "--config-budget-s", "1"])
    args.total_budget_s = 1.9  # a row needs its 1 s budget left to start: after the stopped one, 0.9 s is
    rows = gpu.plan(args)
    skipped = gpu.run_plan(torch.nn.Identity(), rows, args, time.monotonic())
    status = {(r.dtype, r.batch): r.status for r in rows}
    assert status[("bf16", 1)] == "ok"
    first = rows[0]
    assert (first.cpu_pre_ms, first.cpu_post_ms, first.device_pre_ms, first.device_post_ms) == (1.5, 2.5, 0.5, 0.25)
    assert status[("bf16", 2)] == "failed: RuntimeError: boom"
    assert status[("bf16", 4)].startswith("stopped: over its 1 s budget")
    assert [(r.dtype, r.batch) for r in skipped] == [("bf16", 8), ("fp16", 1), ("fp16", 2), ("fp16", 4), ("fp16", 8)]
    assert all(r.status.startswith("skipped") for r in skipped)
    assert "skipped" in gpu.render(rows)
