"""GPU inference by batch size, precision and torch.compile: the real model if given, else a labelled stand-in.

Run (on a machine with a CUDA GPU): ``python -m bench.gpu`` (the stand-in) or
``python -m bench.gpu --model-dir /models/RMBG-2.0`` (the real architecture, loaded through
``load_backend("rmbg", model_source=DIR, device="cuda")``, i.e. ``from_pretrained(DIR, trust_remote_code=True)``).
Prints a Markdown table. Refuses to run without CUDA (exit 2).

What each row is: one (precision, torch.compile on/off, batch size N) configuration. The network runs on a
random (N, 3, 1024, 1024) batch under ``torch.inference_mode()`` and ``torch.autocast("cuda", dtype)`` (bf16
or fp16; the weights stay float32, as autocast expects); after WARMUP untimed runs (which include the
compilation when compile is on, timed separately as "first call s"; one compiled module per precision,
shared by its batch sizes), REPEATS runs are each timed with
``torch.cuda.synchronize()`` on both sides; the row gives the median as images/s and ms/image and the peak
``torch.cuda.max_memory_allocated()`` since the configuration began. Beside it, the pipeline's own CPU cost
per image at that batch size, measured with ``recipe.py`` on the same machine: ``preprocess_batch`` of N
1600x1200 photos to the GPU, and ``postprocess`` of (N, 1, 1024, 1024) GPU logits back to 8-bit mattes at
1600x1200 (both wall-clock, medians).

Time budget: every configuration gets at most ``--config-budget-s`` (an alarm interrupts it, the row says
"over budget") and the whole run ``--total-budget-s``; configurations that do not fit in what is left are
skipped and listed. Eager configurations run first, so a slow compile costs only compiled rows.

The stand-in (no ``--model-dir``): a Swin-L backbone (embed 192, depths 2-2-18-2, heads 6-12-24-48, window
12, patch 4; about 197M parameters) with random weights, written here in plain torch (neither timm nor
torchvision is needed), run at 1024x1024 as BiRefNet runs it (windows padded, plus the half-scale input whose
features are concatenated, BiRefNet's ``mul_scl_ipt="cat"``), with a light FPN-style head to an (N, 1, H, W)
logit. It has the backbone's shape and cost but not BiRefNet's decoder (deformable convolutions, gradient
refiners), so it is *not* RMBG-2.0 and its figures are never RMBG-2.0's speed; every line printed says which
model ran.
"""

# ruff: noqa: SLF001

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

EXIT_NO_CUDA = 2
NO_CUDA_MESSAGE = (
    "bench.gpu needs a CUDA GPU: torch.cuda.is_available() is False here (torch {version}). "
    "Run it on a machine with an NVIDIA GPU and a CUDA build of torch; nothing was measured."
)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16)
STANDIN_LABEL = (
    "STAND-IN, not RMBG-2.0: Swin-L backbone (random weights) at 1024x1024 with BiRefNet's half-scale input "
    "and a light head; no BiRefNet decoder"
)
PUBLISHED_REFERENCE = (
    "Published reference (BiRefNet README, reported by its authors at 1024x1024, NOT measured here): "
    "RTX 4090 fp16 57.7 ms/image (fp32 95.8); A100 fp16 69.4 ms/image (fp32 86.8); GPU memory 3.5 GB fp16."
)


# --------------------------------------------------------------------------------------------------------------
# The stand-in: Swin-L (Swin Transformer v1, as in BiRefNet's swin_v1_l) in plain torch.
# --------------------------------------------------------------------------------------------------------------


def _windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, w * w, C)."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _unwindows(x: torch.Tensor, w: int, b: int, h: int, wd: int) -> torch.Tensor:
    c = x.shape[-1]
    x = x.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, c)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.bias_index: torch.Tensor
        self.register_buffer("bias_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # Explicit q @ k^T + bias (+ shift mask), softmax, @ v: what BiRefNet's swin_v1 (the original Swin code)
        # computes, so the stand-in pays the same attention cost.
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // self.heads) ** -0.5, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.bias_table[self.bias_index.view(-1)].view(n, n, self.heads).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0).to(attn.dtype)
        if mask is not None:  # (nW, n, n); the batch is the outer factor of bw
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask.to(attn.dtype)[None, :, None]
            attn = attn.view(bw, self.heads, n, n)
        out = attn.softmax(dim=-1) @ v
        projected: torch.Tensor = self.proj(out.transpose(1, 2).reshape(bw, n, c))
        return projected


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def _shift_mask(self, hp: int, wp: int, device: torch.device) -> torch.Tensor:
        w, s = self.window, self.shift
        img = torch.zeros(1, hp, wp, 1, device=device)
        region = 0
        for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
                img[:, hs, ws, :] = region
                region += 1
        ids = _windows(img, w).squeeze(-1)
        diff = ids.unsqueeze(1) - ids.unsqueeze(2)
        return diff.ne(0).float() * -100.0

    def forward(self, x: torch.Tensor, h: int, wd: int) -> torch.Tensor:
        b, _, c = x.shape
        w = self.window
        shortcut = x
        y = self.norm1(x).view(b, h, wd, c)
        pad_h, pad_w = (w - h % w) % w, (w - wd % w) % w
        y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))  # as BiRefNet's swin_v1: pad the right and bottom
        hp, wp = h + pad_h, wd + pad_w
        mask = None
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = self._shift_mask(hp, wp, x.device)
        y = _unwindows(self.attn(_windows(y, w), mask), w, b, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        y = y[:, :h, :wd, :].reshape(b, h * wd, c)
        x = shortcut + y
        mixed: torch.Tensor = x + self.mlp(self.norm2(x))
        return mixed


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, h: int, wd: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, wd, c)
        x = F.pad(x, (0, 0, 0, wd % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        reduced: torch.Tensor = self.reduction(self.norm(x.view(b, -1, 4 * c)))
        return reduced


class SwinBackbone(nn.Module):
    """Swin Transformer v1 returning the four stages' feature maps (B, C_i, H/4/2^i, W/4/2^i)."""

    def __init__(
        self,
        embed_dim: int = 192,
        depths: Sequence[int] = (2, 2, 18, 2),
        heads: Sequence[int] = (6, 12, 24, 48),
        window: int = 12,
        patch: int = 4,
    ) -> None:
        super().__init__()
        self.patch = patch
        self.patch_embed = nn.Conv2d(3, embed_dim, patch, stride=patch)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.dims = [embed_dim * 2**i for i in range(len(depths))]
        for i, (depth, head) in enumerate(zip(depths, heads, strict=True)):
            dim = self.dims[i]
            blocks = [SwinBlock(dim, head, window, 0 if j % 2 == 0 else window // 2) for j in range(depth)]
            self.stages.append(nn.ModuleList(blocks))
            self.norms.append(nn.LayerNorm(dim))
            self.downs.append(PatchMerging(dim) if i < len(depths) - 1 else nn.Identity())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        b, _, h, wd = x.shape
        x = self.embed_norm(x.flatten(2).transpose(1, 2))
        feats = []
        for i, blocks in enumerate(self.stages):
            for block in blocks:  # type: ignore[attr-defined]  # an nn.ModuleList of SwinBlocks
                x = block(x, h, wd)
            feats.append(self.norms[i](x).view(b, h, wd, -1).permute(0, 3, 1, 2).contiguous())
            if i < len(self.stages) - 1:
                x = self.downs[i](x, h, wd)
                h, wd = (h + 1) // 2, (wd + 1) // 2
        return feats


class SwinStandIn(nn.Module):
    """Swin-L at full and half scale (features concatenated, BiRefNet's ``mul_scl_ipt="cat"``) + a light head.

    ``forward(x)`` returns a list of logits, coarse to fine, the last (N, 1, H, W) at input size, as the hub
    BiRefNet does in eval mode, so ``recipe.select_logits`` and ``recipe.postprocess`` apply unchanged.
    """

    def __init__(self, *, head_dim: int = 64, **backbone: Any) -> None:
        super().__init__()
        self.backbone = SwinBackbone(**backbone)
        self.laterals = nn.ModuleList(nn.Conv2d(2 * d, head_dim, 1) for d in self.backbone.dims)
        self.fuse = nn.Sequential(nn.Conv2d(head_dim, head_dim, 3, padding=1), nn.ReLU(inplace=True))
        self.coarse = nn.Conv2d(head_dim, 1, 1)
        self.out = nn.Conv2d(head_dim, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, wd = x.shape[-2:]
        full = self.backbone(x)
        half = self.backbone(F.interpolate(x, size=(h // 2, wd // 2), mode="bilinear", align_corners=True))
        feats = [
            torch.cat([f, F.interpolate(g, size=f.shape[-2:], mode="bilinear", align_corners=True)], 1)
            for f, g in zip(full, half, strict=True)
        ]
        y = self.laterals[-1](feats[-1])
        coarse = self.coarse(y)
        laterals = list(self.laterals)[:-1]
        for lateral, f in zip(reversed(laterals), reversed(feats[:-1]), strict=True):
            y = lateral(f) + F.interpolate(y, size=f.shape[-2:], mode="bilinear", align_corners=False)
        y = self.fuse(y)
        fine = F.interpolate(self.out(y), size=(h, wd), mode="bilinear", align_corners=False)
        return [F.interpolate(coarse, size=(h, wd), mode="bilinear", align_corners=False), fine]


def build_standin(**kwargs: Any) -> SwinStandIn:
    """The Swin-L-sized stand-in with random weights (defaults: Swin-L); kwargs shrink it for tests."""
    return SwinStandIn(**kwargs).eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------------------------
# The benchmark.
# --------------------------------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="a model folder with the hub layout (else the stand-in)")
    parser.add_argument("--batch-sizes", type=_positive, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp16"])
    parser.add_argument("--compile", choices=("both", "off", "on"), default="both", help="torch.compile rows")
    parser.add_argument("--size", type=_positive, default=1024, help="model input side (the card: 1024)")
    parser.add_argument("--warmup", type=_positive, default=3)
    parser.add_argument("--repeats", type=_positive, default=10)
    parser.add_argument("--config-budget-s", type=_positive_float, default=90.0)
    parser.add_argument("--total-budget-s", type=_positive_float, default=540.0, help="keep under 600 s")
    parser.add_argument("--cpu-repeats", type=_positive, default=3, help="runs per CPU-overhead figure")
    return parser.parse_args(argv)


class BudgetExceeded(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``BudgetExceeded`` in the main thread after ``seconds`` (SIGALRM; checked between Python ops)."""

    def on_alarm(signum: int, frame: object) -> None:
        raise BudgetExceeded(f"over its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Row:
    dtype: str
    compiled: bool
    batch: int
    status: str = "ok"
    ms_per_image: float = math.nan
    images_per_s: float = math.nan
    peak_gib: float = math.nan
    first_call_s: float = math.nan
    repeats: int = 0
    cpu_pre_ms: float = math.nan
    cpu_post_ms: float = math.nan
    device_pre_ms: float = math.nan
    device_post_ms: float = math.nan
    notes: list[str] = field(default_factory=list)


def _sync_time(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def load_model(model_dir: str | None) -> tuple[nn.Module, str]:
    """The network to time (float32 weights on CUDA) and its label."""
    if model_dir is None:
        with torch.device("cuda"):  # random weights made on the GPU: seconds faster than on the CPU
            standin = build_standin()
        return standin, f"{STANDIN_LABEL}; {count_parameters(standin) / 1e6:.1f}M parameters"
    from services.inference.backends.factory import load_backend

    backend = load_backend("rmbg", model_source=model_dir, device="cuda", dtype="float32")
    model: nn.Module = getattr(backend, "_model")  # noqa: B009 (RmbgBackend's network, as predict calls it)
    return model, (
        f"the model in {model_dir} (name {backend.name}, revision {backend.revision}), loaded through "
        f"load_backend('rmbg') / from_pretrained; {count_parameters(model) / 1e6:.1f}M parameters"
    )


def measure_config(run_model: Callable[[torch.Tensor], Any], row: Row, args: argparse.Namespace) -> None:
    from services.inference.backends import recipe

    dtype = DTYPES[row.dtype]
    x = torch.randn(row.batch, 3, args.size, args.size, device="cuda")

    def step() -> object:
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
            out = run_model(x)
        recipe.select_logits(out, row.batch)  # the card's model(x)[-1], checked
        return out

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    row.first_call_s = _sync_time(step)
    for _ in range(args.warmup - 1):
        _sync_time(step)
    times = []
    for _ in range(args.repeats):
        times.append(_sync_time(step))
        row.repeats = len(times)
    median = statistics.median(times)
    row.ms_per_image = median * 1000 / row.batch
    row.images_per_s = row.batch / median
    row.peak_gib = torch.cuda.max_memory_allocated() / 2**30


def cpu_overhead(batch: int, repeats: int) -> tuple[float, float, float, float]:
    """The pipeline's own per-image cost around the network, wall-clock ms: preprocess and postprocess the
    card's way on the host (RMBG_INFERENCE__PREPROCESS=host), then both on the GPU (=device)."""
    from PIL import Image

    from services.inference.backends import recipe

    gen = torch.Generator().manual_seed(batch)
    base = (torch.rand(1200, 1600, 3, generator=gen) * 255).to(torch.uint8).numpy()
    images = [Image.fromarray(base) for _ in range(batch)]
    logits = torch.randn(batch, 1, 1024, 1024, device="cuda")
    sizes = [image.size for image in images]
    pre, post, dev_pre, dev_post = [], [], [], []
    for _ in range(repeats):
        pre.append(_sync_time(lambda: recipe.preprocess_batch(images, device="cuda", dtype=torch.float32)))
        post.append(_sync_time(lambda: recipe.postprocess(logits, sizes)))
        dev_pre.append(_sync_time(lambda: recipe.preprocess_on_device(images, device="cuda", dtype=torch.float32)))
        dev_post.append(_sync_time(lambda: recipe.postprocess_on_device(logits, sizes)))
    return (
        statistics.median(pre) * 1000 / batch,
        statistics.median(post) * 1000 / batch,
        statistics.median(dev_pre) * 1000 / batch,
        statistics.median(dev_post) * 1000 / batch,
    )


def _fmt(value: float, spec: str) -> str:
    return "" if math.isnan(value) else format(value, spec)


def render(rows: list[Row]) -> str:
    lines = [
        "| precision | torch.compile | batch | images/s | ms/image | peak GPU GiB | first call s | runs "
        "| host pre ms/image | host post ms/image | device pre ms/image | device post ms/image | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.dtype} (autocast) | {'on' if r.compiled else 'off'} | {r.batch} | {_fmt(r.images_per_s, '.1f')} "
            f"| {_fmt(r.ms_per_image, '.2f')} | {_fmt(r.peak_gib, '.2f')} | {_fmt(r.first_call_s, '.1f')} "
            f"| {r.repeats} | {_fmt(r.cpu_pre_ms, '.1f')} | {_fmt(r.cpu_post_ms, '.1f')} "
            f"| {_fmt(r.device_pre_ms, '.1f')} | {_fmt(r.device_post_ms, '.1f')} | {r.status} |"
        )
    return "\n".join(lines)


def plan(args: argparse.Namespace) -> list[Row]:
    """Eager rows first (cheap), then compiled ones, each by precision then batch size."""
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    return [Row(d, c, n) for c in modes for d in args.dtypes for n in args.batch_sizes]


def run_plan(model: nn.Module, rows: list[Row], args: argparse.Namespace, started: float) -> list[Row]:
    """Measure ``rows`` in order within the budgets; return those skipped for the total budget."""
    overhead: dict[int, tuple[float, float, float, float]] = {}
    skipped: list[Row] = []
    last_compile_s = 0.0
    # One torch.compile per precision, shared by its batch sizes: after the second shape dynamo compiles a
    # batch-dynamic graph that the larger sizes reuse ("first call s" shows which rows paid a compile).
    compiled: dict[str, Callable[[torch.Tensor], Any]] = {}
    for row in rows:
        left = args.total_budget_s - (time.monotonic() - started)
        # A compiled row needs about as long as the previous compile; never start what cannot finish.
        need = min(args.config_budget_s, max(10.0, last_compile_s * 1.2 if row.compiled else 10.0))
        if left < need:
            row.status = f"skipped: {left:.0f} s of the total budget left"
            skipped.append(row)
            continue
        budget = min(args.config_budget_s, left)
        try:
            with time_limit(budget):
                if row.batch not in overhead:
                    overhead[row.batch] = cpu_overhead(row.batch, args.cpu_repeats)
                if row.compiled and row.dtype not in compiled:
                    torch._dynamo.reset()  # a fresh cache for each precision
                    compiled.clear()
                    compiled[row.dtype] = torch.compile(model)
                measure_config(compiled[row.dtype] if row.compiled else model, row, args)
        except BudgetExceeded as exc:
            row.status = f"stopped: {exc} after {row.repeats} timed runs"
        except torch.cuda.OutOfMemoryError:
            row.status = "out of GPU memory"
        except Exception as exc:  # a failed configuration must not lose the others' figures
            row.status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        finally:
            if row.compiled:
                last_compile_s = row.first_call_s if not math.isnan(row.first_call_s) else budget
                if row.status != "ok":  # an interrupted compile leaves nothing worth reusing
                    torch._dynamo.reset()
                    compiled.clear()
            torch.cuda.empty_cache()
        row.cpu_pre_ms, row.cpu_post_ms, row.device_pre_ms, row.device_post_ms = overhead.get(
            row.batch, (math.nan,) * 4
        )
        print(
            f"  {row.dtype} compile={'on' if row.compiled else 'off'} batch={row.batch}: {row.status} "
            f"{_fmt(row.ms_per_image, '.2f')} ms/image",
            flush=True,
        )
    return skipped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE.format(version=torch.__version__), file=sys.stderr)
        return EXIT_NO_CUDA
    started = time.monotonic()
    when = datetime.now(UTC)
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")  # as the card and RmbgBackend.load do
    model, label = load_model(args.model_dir)
    model.eval()
    card = torch.cuda.get_device_name(0)
    print(
        f"GPU: {card} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), CUDA "
        f"{torch.version.cuda}, torch {torch.__version__}; host {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} CPUs, Python {platform.python_version()}. Run {when:%Y-%m-%d %H:%M} UTC."
    )
    print(f"Model: {label}.")
    print(
        f"Input {args.size}x{args.size}, random; {args.warmup} warm-up runs, median of {args.repeats}; "
        f"budget {args.config_budget_s:.0f} s per configuration, {args.total_budget_s:.0f} s in all.\n"
    )
    rows = plan(args)
    skipped = run_plan(model, rows, args, started)
    print()
    print(f"Model: {label}. GPU: {card}.\n")
    print(render(rows))
    if skipped:
        print(
            f"\nSkipped for the time budget ({len(skipped)}): "
            + ", ".join(f"{r.dtype}/compile {'on' if r.compiled else 'off'}/batch {r.batch}" for r in skipped)
        )
    print(
        "\nHost pre/post: recipe.preprocess_batch of 1600x1200 photos to the GPU and recipe.postprocess of GPU "
        "logits to 1600x1200 mattes, wall-clock per image on this host; device pre/post: preprocess_on_device and "
        "postprocess_on_device (RMBG_INFERENCE__PREPROCESS=device); the pipeline pays them beside the network."
    )
    if args.model_dir is None:
        print("These figures are a stand-in's (the Swin-L backbone's shape and cost), never RMBG-2.0's speed.")
    print(PUBLISHED_REFERENCE)
    print(f"Total {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
