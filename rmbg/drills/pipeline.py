"""The pipeline a drill runs on: a fresh embedded stack on loopback and the four services as supervised
child processes, with settings the drill sees exactly as the children get them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import psutil
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from rich.console import Console

from rmbg.stack.stack import EmbeddedStack, StackEndpoints
from rmbg.supervisor import RunningServices, run_services
from rmbg.up import provision
from shared.config import (
    DEV_S3_ACCESS_KEY,
    DEV_S3_SECRET_KEY,
    BaseServiceSettings,
    PostgresSettings,
    RedisSettings,
    S3Settings,
)

DRILL_MODEL = "tiny-rmbg-drill"


@dataclass(frozen=True)
class DrillOptions:
    state_dir: Path
    model_source: str
    backend: Literal["rmbg", "classic"] = "rmbg"
    # Service settings for this run, as RMBG_* variables (e.g. a lower RMBG_INGEST__MAX_QUEUE_WAIT_S).
    service_settings: tuple[tuple[str, str], ...] = ()


class _ExplicitSettings(BaseServiceSettings):
    """Settings from the arguments only: the harness must see exactly what the children are given."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def harness_settings(endpoints: StackEndpoints) -> BaseServiceSettings:
    return _ExplicitSettings(
        postgres=PostgresSettings(dsn=SecretStr(endpoints.postgres_dsn), max_pool=4),
        redis=RedisSettings(url=endpoints.redis_url),
        kafka=endpoints.kafka_settings(session_timeout_ms=6000, heartbeat_interval_ms=1000),
        s3=S3Settings(
            endpoint_url=endpoints.s3_endpoint,
            access_key=endpoints.s3_access_key,
            secret_key=SecretStr(endpoints.s3_secret_key),
        ),
    )


def service_env(endpoints: StackEndpoints, model_source: str, backend: str) -> dict[str, str]:
    """The children's environment: no inherited RMBG_* variable, only what this run chose."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RMBG_")}
    model = "classic-grabcut" if backend == "classic" else DRILL_MODEL
    env.update(endpoints.as_env())
    env.update(
        {
            "RMBG_INFERENCE__BACKEND": backend,
            "RMBG_INFERENCE__MODEL_SOURCE": model_source,
            "RMBG_INFERENCE__MODEL_NAME": model,
            "RMBG_INGEST__MODEL": model,
            # The tiny drill model is no product model: it joins the catalogue for this run only.
            "RMBG_MODELS__EXTRA": json.dumps(
                {DRILL_MODEL: {"licence": "test weights", "commercial_use": False, "note": "drill model"}}
            ),
            "RMBG_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "RMBG_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "RMBG_PERSISTER__SWEEP_INTERVAL_S": "5",
        }
    )
    return env


def service_pid(name: str) -> int | None:
    """The live child process running ``services.<name>.main``."""
    for proc in psutil.Process().children(recursive=False):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and f"services.{name}.main" in proc.cmdline():
                return int(proc.pid)
    return None


async def answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=2.0) as client:
            return (await client.get(url)).status_code == 200
    return False


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = 0.25) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval_s)
    return False


@contextlib.asynccontextmanager
async def open_pipeline(
    opts: DrillOptions, console: Console
) -> AsyncIterator[tuple[EmbeddedStack, BaseServiceSettings, RunningServices]]:
    stack = EmbeddedStack(
        opts.state_dir,
        s3_access_key=DEV_S3_ACCESS_KEY,
        s3_secret_key=DEV_S3_SECRET_KEY,
        use_local_servers=False,  # embedded PostgreSQL and Redis: restarting them disturbs nobody else
        ready_timeout_s=60.0,
    )
    async with stack as endpoints:
        settings = harness_settings(endpoints)
        await provision(settings)

        def restarted(name: str, restarts: int, code: int | None) -> None:
            console.print(f"[yellow]{name} exited (code {code}); supervisor restart {restarts}[/]")

        env = service_env(endpoints, opts.model_source, opts.backend) | dict(opts.service_settings)
        async with run_services(env=env, state_dir=endpoints.state_dir, api_port=None, on_restart=restarted) as svc:
            stop = asyncio.Event()
            supervising = asyncio.create_task(svc.supervisor.run(stop), name="drill-supervisor")
            try:
                yield stack, settings, svc
            finally:
                stop.set()
                await supervising


def drill_arguments(prog: str, doc: str | None, *, state_dir: str, short_help: str) -> argparse.ArgumentParser:
    """The options every drill takes; the drill adds its own."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0] if doc else None)
    p.add_argument("--model-source", required=True, help="folder of an RMBG-layout model (e.g. the tiny test model)")
    p.add_argument("--backend", choices=("rmbg", "classic"), default="rmbg")
    p.add_argument("--state-dir", type=Path, default=Path(state_dir), help="a fresh run-* folder is made in it")
    p.add_argument("--short", action="store_true", help=short_help)
    return p


def drill_options(args: argparse.Namespace, service_settings: tuple[tuple[str, str], ...] = ()) -> DrillOptions:
    """The options of a run, in a fresh run-<time> folder of --state-dir."""
    state_dir = (args.state_dir / time.strftime("run-%Y%m%d-%H%M%S")).resolve()
    return DrillOptions(
        state_dir=state_dir, model_source=args.model_source, backend=args.backend, service_settings=service_settings
    )


class DrillReport(Protocol):
    @property
    def ok(self) -> bool: ...
    def lines(self) -> list[str]: ...


def run_drill(name: str, drill: Callable[[Console], Coroutine[Any, Any, DrillReport]]) -> int:
    """Run a drill from the command line: quiet logs, the report's lines, exit status 0 when it held."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the submitter's producer while the broker is down
    console = Console()
    report: DrillReport = asyncio.run(drill(console))
    for line in report.lines():
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    console.print(
        f"{name}: every check held" if report.ok else f"{name}: FAILED", style="green" if report.ok else "red"
    )
    return 0 if report.ok else 1
