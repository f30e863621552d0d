"""`rmbg up`: the whole product on one machine, from one command.

Starts every dependency the environment does not already point to (RMBG_POSTGRES__DSN, RMBG_REDIS__URL,
RMBG_KAFKA__BOOTSTRAP_SERVERS, RMBG_S3__ENDPOINT_URL), applies migrations, creates topics and the
bucket, starts the four services, prints where everything is, and stops it all in reverse on Ctrl+C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

from rmbg.demo import run_demo
from rmbg.stack.stack import EmbeddedStack, StackEndpoints
from rmbg.stack.urls import redact_url
from rmbg.supervisor import RunningServices, Stopped, run_services, until_stopped
from shared.config import BaseServiceSettings
from shared.db.migrate import upgrade
from shared.messaging import ensure_topics
from shared.models import DEFAULT_MODEL, ModelSettings
from shared.storage import open_object_store

CLASSIC_MODEL = "classic-grabcut"


@dataclass(frozen=True)
class UpOptions:
    state_dir: Path
    demo: bool
    backend: Literal["rmbg", "classic"]
    model_source: str
    model_name: str | None
    api_port: int | None


def _catalogue_name(opts: UpOptions) -> str:
    """The stable name of what --model-source loads: a hub id's catalogue entry, or for a local folder
    the default model (a folder's path is never a stored name; --model-name says which model it holds)."""
    if Path(opts.model_source).exists():
        return DEFAULT_MODEL
    return ModelSettings().resolve(opts.model_source)


async def provision(settings: BaseServiceSettings) -> list[str]:
    """Migrations, topics and the bucket; each step is idempotent."""
    await asyncio.to_thread(upgrade, settings.postgres.dsn.get_secret_value())
    created = await ensure_topics(settings.kafka, settings.topics, settings.models)
    async with open_object_store(settings.s3) as store:
        await store.ensure_bucket()
    return created


async def run_up(opts: UpOptions, stop: asyncio.Event, console: Console) -> int:
    """Start, serve until ``stop``, stop in reverse. ``stop`` (Ctrl+C, SIGTERM) is heeded in every phase:
    a server or service still starting, provisioning, the demo; what had started is then stopped."""
    async with contextlib.AsyncExitStack() as running:
        try:
            await _up(opts, stop, console, running)
        except Stopped:
            pass
        finally:
            console.print("stopping services and servers...")
    return 0


async def _up(opts: UpOptions, stop: asyncio.Event, console: Console, running: contextlib.AsyncExitStack) -> None:
    base = BaseServiceSettings()
    stack = EmbeddedStack(
        opts.state_dir,
        s3_access_key=base.s3.access_key,
        s3_secret_key=base.s3.secret_key.get_secret_value(),
        want_postgres=os.environ.get("RMBG_POSTGRES__DSN"),
        want_redis=os.environ.get("RMBG_REDIS__URL"),
        want_kafka=os.environ.get("RMBG_KAFKA__BOOTSTRAP_SERVERS"),
        want_s3=os.environ.get("RMBG_S3__ENDPOINT_URL"),
    )
    endpoints = await until_stopped(stop, running.enter_async_context(stack))
    os.environ.update(endpoints.as_env())
    model_name = CLASSIC_MODEL if opts.backend == "classic" else (opts.model_name or _catalogue_name(opts))
    os.environ.update(
        {
            "RMBG_INFERENCE__BACKEND": opts.backend,
            "RMBG_INFERENCE__MODEL_SOURCE": opts.model_source,
            "RMBG_INFERENCE__MODEL_NAME": model_name,
            "RMBG_INGEST__MODEL": model_name,
        }
    )
    settings = BaseServiceSettings()
    started = ", ".join(endpoints.started) or "none"
    console.print(f"[bold]state folder[/] {endpoints.state_dir}; started here: {started}")
    created = await until_stopped(stop, provision(settings))
    if created:
        console.print(f"created topics: {', '.join(created)}")

    def restarted(name: str, restarts: int, code: int | None) -> None:
        console.print(f"[yellow]{name} exited (code {code}) and was restarted (restart {restarts})[/]")

    services = run_services(
        env=dict(os.environ), state_dir=endpoints.state_dir, api_port=opts.api_port, on_restart=restarted
    )
    svc = await until_stopped(stop, running.enter_async_context(services))
    supervising = asyncio.create_task(svc.supervisor.run(stop), name="supervisor")
    try:
        await _serve(opts, settings, svc, model_name, endpoints, console, stop)
    finally:
        stop.set()  # also when the demo failed: no restart while the services are being stopped
        await supervising


async def _serve(
    opts: UpOptions,
    settings: BaseServiceSettings,
    svc: RunningServices,
    model_name: str,
    endpoints: StackEndpoints,
    console: Console,
    stop: asyncio.Event,
) -> None:
    """The table of endpoints, the demo if asked for, then serve until ``stop``."""
    table = Table(title="rmbg-pipeline is up", show_header=False)
    table.add_row("API", f"{svc.api_url}  (POST /v1/jobs, GET /v1/jobs/{{id}}, docs at /docs)")
    table.add_row("API keys", "rmbg keys create --user <user> [--admin]; send 'Authorization: Bearer <key>'")
    for name, url in svc.metrics_urls.items():
        table.add_row(f"metrics {name}", f"{url}  (/healthz, /readyz beside it)")
    table.add_row("ready after", ", ".join(f"{n} {s:.1f} s" for n, s in svc.ready_s.items()))
    table.add_row("PostgreSQL", redact_url(endpoints.postgres_dsn))
    table.add_row("Redis", redact_url(endpoints.redis_url))
    table.add_row("Kafka", redact_url(endpoints.kafka_bootstrap))
    table.add_row("S3", f"{redact_url(endpoints.s3_endpoint)} bucket {settings.s3.bucket}")
    table.add_row("model", f"{model_name} ({opts.backend} backend)")
    table.add_row("logs", str(endpoints.state_dir / "logs"))
    console.print(table)
    if opts.backend == "classic":
        console.print(
            "[yellow]backend: classic GrabCut (weights-free). RMBG-2.0 weights are gated and not on this "
            "machine; run with --backend rmbg --model-source <hub id or folder> to use the model.[/]"
        )
    if opts.demo:
        ok = await until_stopped(stop, run_demo(svc.api_url, settings, console))
        console.print(
            "[green]demo: every job completed[/]" if ok else "[red]demo: some jobs did not complete[/]"
        )
    console.print("serving; press Ctrl+C to stop")
    await stop.wait()

