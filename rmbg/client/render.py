"""Rich tables and the submit progress bar: what a person reads (``--json`` bypasses all of it)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from rmbg.client.api import Job
from rmbg.client.submit import Outcome

STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "refused": "red",
    "not sent": "red",
    "processing": "yellow",
    "pending": "cyan",
}


def human_bytes(n: object) -> str:
    if not isinstance(n, int):
        return ""
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024 or unit == "MB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def human_seconds(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return ""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def human_ms(ms: object) -> str:
    """Milliseconds as the API gives them: a number, or a decimal as text (averages come as Decimal)."""
    if isinstance(ms, bool) or not isinstance(ms, int | float | str):
        return ""
    try:
        return human_seconds(float(ms) / 1000)
    except ValueError:
        return ""


def when(iso: object) -> str:
    """An API timestamp in local time to the second (the API sends UTC ISO 8601)."""
    if not isinstance(iso, str):
        return ""
    try:
        return f"{datetime.fromisoformat(iso).astimezone():%Y-%m-%d %H:%M:%S}"
    except ValueError:
        return iso


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def cutout_summary(job: Job) -> str:
    """``1024×768 png, 312.4 KB``: the cut-out's sides, format and size, as far as the job tells."""
    parts = []
    if job.get("image_width") and job.get("image_height"):
        parts.append(f"{job['image_width']}×{job['image_height']}")
    path = job.get("processed_path")
    if isinstance(path, str) and PurePosixPath(path).suffix:
        parts.append(PurePosixPath(path).suffix.lstrip("."))
    size = human_bytes(job.get("processed_bytes"))
    text = " ".join(parts)
    return f"{text}, {size}" if text and size else text or size


def submit_progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def progress_line(counts: Mapping[str, int]) -> str:
    """``3 completed · 1 failed · 2 processing``: how the files stand, for the bar's description."""
    counts = {s: n for s, n in counts.items() if n > 0}
    order = ["completed", "failed", "refused", "not sent", "processing", "pending", "uploading", "queued"]
    shown = [s for s in order if s in counts] + sorted(s for s in counts if s not in order)
    return " · ".join(f"{counts[s]} {s}" for s in shown)


def submit_table(outcomes: list[Outcome]) -> Table:
    ok = sum(o.ok for o in outcomes)
    table = Table(title=f"{ok} of {len(outcomes)} files ok", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("job id", no_wrap=True)
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("cut-out / error", overflow="fold")
    for o in outcomes:
        status = o.status + (" (earlier job)" if o.created is False else "")
        detail: Text | str
        if o.error:
            detail = Text(o.error, style="red")
        else:
            detail = cutout_summary(o.job) if o.job and o.status == "completed" else ""
        table.add_row(str(o.path), o.job_id or "", status_text(status), human_seconds(o.seconds), detail)
    return table


def jobs_table(jobs: list[Job], *, more: bool) -> Table:
    caption = "more: rerun with --all or a larger --limit" if more else None
    table = Table(title=f"{len(jobs)} jobs, newest first", title_justify="left", caption=caption)
    table.add_column("job id", no_wrap=True)
    table.add_column("status")
    table.add_column("created")
    table.add_column("took", justify="right")
    table.add_column("tags", overflow="fold")
    table.add_column("cut-out / error", overflow="fold")
    for job in jobs:
        status = str(job.get("status", ""))
        detail: Text | str = (
            Text(str(job.get("error_message") or ""), style="red") if status == "failed" else cutout_summary(job)
        )
        table.add_row(
            str(job.get("job_id", "")),
            status_text(status),
            when(job.get("created_at")),
            human_ms(job.get("processing_time_ms")),
            ", ".join(job.get("tags") or []),
            detail,
        )
    return table


def _value(name: str, value: Any) -> str | Text:
    if value is None or value == [] or value == {}:
        return ""
    if name == "status":
        return status_text(str(value))
    if name.endswith("_at"):
        return when(value)
    if name.endswith("_bytes"):
        return f"{human_bytes(value)} ({value} bytes)"
    if name == "processing_time_ms":
        return human_ms(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def job_table(job: Job) -> Table:
    """One job, a row per field, links (presigned URLs) last since they are long."""
    table = Table(show_header=False, title=f"job {job.get('job_id', '')}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    urls = job.get("urls")
    for name, value in job.items():
        if name in ("job_id", "urls"):
            continue
        if name == "error_message" and value:
            table.add_row(name, Text(str(value), style="red"))
        else:
            table.add_row(name, _value(name, value))
    if isinstance(urls, dict):
        for kind, url in urls.items():
            if url:
                table.add_row(f"url {kind}", _value(kind, url))
    return table


def stats_table(stats: dict[str, Any], days: int) -> Table:
    table = Table(show_header=False, title=f"jobs of the last {days} days", title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("user", str(stats.get("user_id", "")))
    table.add_row("since", when(stats.get("since")))
    for name in ("total", "pending", "processing", "completed", "failed"):
        value = stats.get(f"{name}_jobs")
        table.add_row(status_text(name), "" if value is None else str(value))
    table.add_row("average processing time", human_ms(stats.get("avg_processing_time_ms")))
    return table


def tags_table(text: str, items: list[dict[str, Any]]) -> Table:
    table = Table(title=f"tags like {text!r}", title_justify="left", caption=None if items else "no match")
    table.add_column("tag")
    table.add_column("similarity", justify="right")
    for item in items:
        similarity = item.get("similarity")
        table.add_row(str(item.get("name", "")), f"{similarity:.2f}" if isinstance(similarity, float) else "")
    return table
