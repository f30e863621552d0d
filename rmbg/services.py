"""Starting the four pipeline services as child processes (what `rmbg up` runs)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from rmbg.stack.processes import ChildProcess, PortBook

SERVICES = ("stats", "persister", "inference", "ingest")


@dataclass(frozen=True)
class RunningServices:
    api_url: str
    metrics_urls: dict[str, str]
    logs: dict[str, Path]


async def _http_ok(url: str) -> bool:
    async with httpx.AsyncClient(timeout=1.0) as client:
        return (await client.get(url)).status_code == 200


@contextlib.asynccontextmanager
async def run_services(
    *, env: Mapping[str, str], state_dir: Path, api_port: int | None, ready_timeout_s: float = 180.0
) -> AsyncIterator[RunningServices]:
    """Start stats, persister, inference, ingest (downstream first, so nothing queues unheard);
    stop them in reverse: ingest stops taking work first, inference drains, persister writes last."""
    ports = PortBook(state_dir / "service-ports.json")
    api = ports.get("ingest-api", api_port)
    metrics = {name: ports.get(f"{name}-metrics") for name in SERVICES if name != "ingest"}
    ports.save()
    logs: dict[str, Path] = {}
    async with contextlib.AsyncExitStack() as stack:
        for name in SERVICES:
            child_env = dict(env)
            if name == "ingest":
                child_env["RMBG_INGEST__PORT"] = str(api)
                metrics_url = f"http://127.0.0.1:{api}/metrics/"
            else:
                child_env["RMBG_TELEMETRY__METRICS_PORT"] = str(metrics[name])
                metrics_url = f"http://127.0.0.1:{metrics[name]}/metrics"
            child = ChildProcess(
                name,
                [sys.executable, "-m", f"services.{name}.main"],
                log_path=state_dir / "logs" / f"{name}.log",
                env=child_env,
            )
            await child.start()
            # Services drain in-flight work on SIGTERM; inference may hold a batch for a while.
            stack.push_async_callback(child.stop, 60.0)
            probe_url = f"http://127.0.0.1:{api}/healthz" if name == "ingest" else metrics_url
            await child.wait_ready(functools.partial(_http_ok, probe_url), timeout_s=ready_timeout_s, interval_s=0.25)
            logs[name] = child.log_path
        yield RunningServices(
            api_url=f"http://127.0.0.1:{api}",
            metrics_urls={
                n: (f"http://127.0.0.1:{metrics[n]}/metrics" if n in metrics else f"http://127.0.0.1:{api}/metrics/")
                for n in SERVICES
            },
            logs=logs,
        )
        await asyncio.sleep(0)
