"""The `rmbg` command line (Typer: typed options, help text and completion for free)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from shared.config import BaseServiceSettings, TelemetrySettings
from shared.telemetry import configure_logging

app = typer.Typer(
    help="rmbg-pipeline: background removal with RMBG-2.0 over Kafka, PostgreSQL and S3.", no_args_is_help=True
)


def _run_until_signal(coro_factory: object) -> int:
    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        result: int = await coro_factory(stop)  # type: ignore[operator]
        return result

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


def main() -> None:
    logging.captureWarnings(True)
    app()


if __name__ == "__main__":
    main()
