"""Starting the four pipeline services as child processes (what `rmbg up` runs)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from rmbg.stack.processes import ChildProcess, PortBook, StackError

logger = logging.getLogger(__name__)

SERVICES = ("stats", "persister", "inference", "ingest")

_T = TypeVar("_T")


# A dead service is restarted after 1 s, doubling to 30 s while it keeps dying, and the delay resets once
# it has run for a minute: a crash loop neither spins the CPU nor waits long after one crash.
_RESTART_INITIAL_S = 1.0
_RESTART_MAX_S = 30.0
_HEALTHY_AFTER_S = 60.0
# A running service whose /healthz fails 3 probes in a row, 5 s apart (each probe given those 5 s), is
# stopped and restarted like a dead one. /healthz fails only once a consume loop has been wedged for 600 s
# (RMBG_TELEMETRY__WEDGED_AFTER_S), so ~10 s more costs nothing, while one refused or slow probe (a GC pause,
# a loaded machine) never restarts a service that is working.
_HEALTH_INTERVAL_S = 5.0
_UNHEALTHY_AFTER = 3
# Services drain in-flight work on SIGTERM; inference may hold a batch for a while. After this, SIGKILL.
STOP_GRACE_S = 60.0


class Stopped(Exception):
    """``stop`` was set (Ctrl+C, SIGTERM) before what was awaited finished; it was cancelled."""


async def until_stopped(stop: asyncio.Event, aw: Awaitable[_T]) -> _T:
    """``await aw``, unless ``stop`` is set first: then ``aw`` is cancelled, its own cleanup (stopping a
    child it had started) runs to its end, and Stopped is raised. Every long wait of `rmbg up` (servers
    starting, /readyz for up to 180 s, the demo for up to 600 s, a restart) goes through this, so Ctrl+C
    stops everything within seconds instead of when that wait ends."""
    work = asyncio.ensure_future(aw)
    stopping = asyncio.ensure_future(stop.wait())
    cancelled = False
    try:
        await asyncio.wait((work, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when we are cancelled ourselves: the loser never runs on unattended
        stopping.cancel()
        if not work.done():
            cancelled = work.cancel()
            await asyncio.wait((work,))
    if cancelled:
        try:
            return work.result()  # its cleanup may still have returned
        except asyncio.CancelledError:
            # A cancelled gather() ends with CancelledError set as its exception, not as cancelled (Python
            # 3.11), so work.cancelled() alone missed it and the supervisor's health check raised it.
            raise Stopped from None
    return work.result()  # what it returned or raised, also when it finished as stop was set


async def _answers(probe: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    try:
        return await asyncio.wait_for(probe(), timeout_s)
    except Exception:  # refused, timed out, an error: all "not answering"
        return False


@dataclass
class _Supervised:
    child: ChildProcess
    probe: Callable[[], Awaitable[bool]]
    started_at: float = 0.0
    delay_s: float = _RESTART_INITIAL_S
    restarts: int = 0
    failures: int = 0  # /healthz probes failed in a row since it last answered
    exit_codes: list[int | None] = field(default_factory=list)  # each exit before a restart, in order


@dataclass(frozen=True)
class RunningServices:
    api_url: str
    metrics_urls: dict[str, str]
    ready_urls: dict[str, str]
    logs: dict[str, Path]
    supervisor: Supervisor
    ready_s: dict[str, float]  # seconds from start until each answered /readyz


class Supervisor:
    """Restarts a service that died (SIGKILL, OOM, a crash) or whose /healthz stopped answering (a wedged
    consume loop) with backoff, and logs each restart. ``watch`` a child once it has been ready."""

    def __init__(
        self,
        *,
        ready_timeout_s: float,
        on_restart: Callable[[str, int, int | None], None],
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self._children: dict[str, _Supervised] = {}
        self._ready_timeout_s = ready_timeout_s
        self._on_restart = on_restart
        self._stop_grace_s = stop_grace_s

    def watch(self, child: ChildProcess, probe: Callable[[], Awaitable[bool]]) -> None:
        self._children[child.name] = _Supervised(child, probe, started_at=time.monotonic())

    @property
    def restarts(self) -> dict[str, int]:
        return {name: s.restarts for name, s in self._children.items()}

    @property
    def exit_codes(self) -> dict[str, list[int | None]]:
        """How each service exited before each restart (0: it stopped cleanly, e.g. after SIGTERM)."""
        return {name: list(s.exit_codes) for name, s in self._children.items()}

    async def run(
        self,
        stop: asyncio.Event,
        *,
        interval_s: float = 0.5,
        health_interval_s: float = _HEALTH_INTERVAL_S,
        unhealthy_after: int = _UNHEALTHY_AFTER,
    ) -> None:
        """Until ``stop``: restart each exited child every ``interval_s``, and probe each running one every
        ``health_interval_s``, restarting it after ``unhealthy_after`` failed probes in a row."""
        loop = asyncio.get_running_loop()
        next_probe = loop.time() + health_interval_s
        with contextlib.suppress(Stopped):
            while not stop.is_set():
                for item in self._children.values():
                    if item.child.returncode is not None and not stop.is_set():
                        await self._restart(item, stop)
                if loop.time() >= next_probe and not stop.is_set():
                    await self._check_health(stop, health_interval_s, unhealthy_after)
                    next_probe = loop.time() + health_interval_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)

    async def _check_health(self, stop: asyncio.Event, timeout_s: float, unhealthy_after: int) -> None:
        # Also probed: a restarted child that never answered within ready_timeout_s but kept running.
        running = [item for item in self._children.values() if item.child.returncode is None]
        answered = await until_stopped(stop, asyncio.gather(*(_answers(i.probe, timeout_s) for i in running)))
        for item, ok in zip(running, answered, strict=True):
            item.failures = 0 if ok else item.failures + 1
            if item.failures >= unhealthy_after and item.child.returncode is None and not stop.is_set():
                logger.warning(
                    "%s did not answer /healthz %d times in a row (%.0f s apart): stopping it to restart it",
                    item.child.name,
                    item.failures,
                    timeout_s,
                )
                # Not raced against stop: SIGTERM lets it drain, and Ctrl+C would wait for the same stop.
                await item.child.stop(self._stop_grace_s)
                await self._restart(item, stop)

    async def _restart(self, item: _Supervised, stop: asyncio.Event) -> None:
        code = item.child.returncode
        item.exit_codes.append(code)
        if time.monotonic() - item.started_at >= _HEALTHY_AFTER_S:
            item.delay_s = _RESTART_INITIAL_S
        logger.warning("%s exited with code %s; restarting in %.0f s", item.child.name, code, item.delay_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), item.delay_s)
        if stop.is_set():
            return
        item.delay_s = min(item.delay_s * 2, _RESTART_MAX_S)
        item.restarts += 1
        await item.child.start()
        item.started_at = time.monotonic()
        item.failures = 0
        self._on_restart(item.child.name, item.restarts, code)
        try:
            await until_stopped(
                stop, item.child.wait_ready(item.probe, timeout_s=self._ready_timeout_s, interval_s=0.25)
            )
        except StackError as exc:  # it died again while starting: the next round restarts it later
            logger.warning("%s did not come back: %s", item.child.name, exc)


async def _http_ok(url: str) -> bool:
    async with httpx.AsyncClient(timeout=1.0) as client:
        return (await client.get(url)).status_code == 200


@contextlib.asynccontextmanager
async def run_services(
    *,
    env: Mapping[str, str],
    state_dir: Path,
    api_port: int | None,
    ready_timeout_s: float = 180.0,
    on_restart: Callable[[str, int, int | None], None] | None = None,
) -> AsyncIterator[RunningServices]:
    """Start stats, persister, inference, ingest (downstream first, so nothing queues unheard) and return
    once every one answers /readyz: dependencies reachable, the model loaded and warmed, and each consumer
    in its group with its partitions, so the first job meets no group forming (which on the broker here
    takes about half the session timeout per group). Stop them in reverse: ingest stops taking work first,
    inference drains, persister writes last.

    The supervisor restarts a service that exits, or that stays running but fails /healthz 3 times in a
    row 5 s apart; the restart waits for /healthz only (a restarted service may wait for a dependency that
    is down, and must not hold up other restarts)."""
    ports = PortBook(state_dir / "service-ports.json")
    api = ports.get("ingest-api", api_port)
    metrics = {name: ports.get(f"{name}-metrics") for name in SERVICES if name != "ingest"}
    ports.save()
    base = {n: (f"http://127.0.0.1:{metrics[n]}" if n in metrics else f"http://127.0.0.1:{api}") for n in SERVICES}
    logs: dict[str, Path] = {}
    supervisor = Supervisor(ready_timeout_s=ready_timeout_s, on_restart=on_restart or _log_restart)
    async with contextlib.AsyncExitStack() as stack:
        children: list[ChildProcess] = []
        for name in SERVICES:
            child_env = dict(env)
            if name == "ingest":
                child_env["RMBG_INGEST__PORT"] = str(api)
            else:
                child_env["RMBG_TELEMETRY__METRICS_PORT"] = str(metrics[name])
            child = ChildProcess(
                name,
                [sys.executable, "-m", f"services.{name}.main"],
                log_path=state_dir / "logs" / f"{name}.log",
                env=child_env,
            )
            await child.start()
            stack.push_async_callback(child.stop, STOP_GRACE_S)
            children.append(child)
            logs[name] = child.log_path
        # All four come up at once (their groups form in parallel); none is "up" until all are ready.
        waited = await asyncio.gather(
            *(
                c.wait_ready(
                    functools.partial(_http_ok, f"{base[c.name]}/readyz"), timeout_s=ready_timeout_s, interval_s=0.25
                )
                for c in children
            )
        )
        logger.info(
            "services ready after %s", ", ".join(f"{c.name} {w:.1f} s" for c, w in zip(children, waited, strict=True))
        )
        for child in children:
            supervisor.watch(child, functools.partial(_http_ok, f"{base[child.name]}/healthz"))
        yield RunningServices(
            api_url=f"http://127.0.0.1:{api}",
            metrics_urls={n: f"{base[n]}/metrics" for n in SERVICES},
            ready_urls={n: f"{base[n]}/readyz" for n in SERVICES},
            logs=logs,
            supervisor=supervisor,
            ready_s=dict(zip(SERVICES, waited, strict=True)),
        )
        await asyncio.sleep(0)


def _log_restart(name: str, restarts: int, code: int | None) -> None:
    logger.warning("%s restarted (restart %d; it had exited with code %s)", name, restarts, code)
