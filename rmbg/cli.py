"""The `rmbg` command line (Typer: typed options, help text and completion for free)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from shared.config import BaseServiceSettings, TelemetrySettings
from shared.telemetry import configure_logging

app = typer.Typer(
    help="rmbg-pipeline: background removal with RMBG-2.0 over Kafka, PostgreSQL and S3.", no_args_is_help=True
)


def _run_until_signal(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main(stop)``; Ctrl+C and SIGTERM only set ``stop``, so everything closes in order."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="process the bundled sample photos end to end")] = False,
    state_dir: Annotated[Path, typer.Option(help="where embedded servers keep their data")] = Path(".state"),
    backend: Annotated[str, typer.Option(help="rmbg (transformers model) or classic (GrabCut, no weights)")] = "",
    model_source: Annotated[str, typer.Option(help="hub id or local folder of the model")] = "briaai/RMBG-2.0",
    model_name: Annotated[str | None, typer.Option(help="name stored with results (default: the source)")] = None,
    api_port: Annotated[int | None, typer.Option(help="HTTP port of the ingest API")] = None,
) -> None:
    """Start the stack (servers not configured in the environment, then the four services)."""
    from rmbg.up import UpOptions, run_up

    configure_logging(TelemetrySettings(log_level="WARNING"))
    chosen = backend or ("classic" if demo else "rmbg")
    if chosen not in ("rmbg", "classic"):
        raise typer.BadParameter("backend must be rmbg or classic")
    kind: Literal["rmbg", "classic"] = "classic" if chosen == "classic" else "rmbg"
    opts = UpOptions(
        state_dir=state_dir,
        demo=demo,
        backend=kind,
        model_source=model_source,
        model_name=model_name,
        api_port=api_port,
    )
    console = Console()
    raise typer.Exit(_run_until_signal(lambda stop: run_up(opts, stop, console)))


@app.command()
def migrate(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply database migrations (Alembic) up to REVISION."""
    from shared.db.migrate import current, upgrade

    dsn = BaseServiceSettings().postgres.dsn.get_secret_value()
    upgrade(dsn, revision)
    typer.echo(f"database at revision {current(dsn)}")


@app.command()
def serve(service: Annotated[str, typer.Argument(help="ingest | inference | persister | stats")]) -> None:
    """Run one service in the foreground (what a Kubernetes pod runs)."""
    import importlib

    if service not in ("ingest", "inference", "persister", "stats"):
        raise typer.BadParameter(f"unknown service {service}")
    importlib.import_module(f"services.{service}.main").main()


@app.command("stats-reconcile")
def stats_reconcile(
    day: Annotated[str, typer.Argument(help="YYYY-MM-DD (UTC)")],
) -> None:
    """Recompute one day of processing_stats from the jobs table (repair after an outage)."""
    from datetime import date

    from rmbg.admin import reconcile_day

    configure_logging(TelemetrySettings())
    result = asyncio.run(reconcile_day(BaseServiceSettings(), date.fromisoformat(day)))
    typer.echo(result)


@app.command("retention")
def retention_cmd(
    older_than: Annotated[str, typer.Option("--older-than", help="age like 180d")] = "180d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report only, change nothing")] = False,
) -> None:
    """Remove jobs older than the age: whole monthly partitions dropped, their objects deleted
    unless a newer job still uses the same content."""
    from rmbg.admin import retention
    from rmbg.maintenance.retention import parse_age

    configure_logging(TelemetrySettings(log_level="WARNING"))
    report = asyncio.run(retention(BaseServiceSettings(), older_than_days=parse_age(older_than), dry_run=dry_run))
    typer.echo(report.summary())


@app.command("fsck")
def fsck_cmd(
    repair: Annotated[bool, typer.Option("--repair", help="delete orphans, rebuild missing cut-outs")] = False,
    grace_s: Annotated[int, typer.Option(help="ignore objects younger than this (in-flight intakes)")] = 3600,
) -> None:
    """Find rows whose objects are missing and objects no row references."""
    from rmbg.admin import fsck

    configure_logging(TelemetrySettings(log_level="WARNING"))
    report = asyncio.run(fsck(BaseServiceSettings(), repair=repair, grace_s=grace_s))
    typer.echo(report.summary())
    for job_id, key in report.missing[:50]:
        typer.echo(f"missing  {job_id}  {key}")
    for key in report.orphans[:50]:
        typer.echo(f"orphan   {key}")
    raise typer.Exit(0 if report.clean or repair else 1)


def main() -> None:
    logging.captureWarnings(True)
    app()


if __name__ == "__main__":
    main()
