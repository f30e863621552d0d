"""`rmbg up` supervises its services: one that dies, or whose /healthz stops answering, is restarted with
backoff, and the restart is reported; setting stop ends a restart's wait at once."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from rmbg.stack.processes import ChildProcess, free_port
from rmbg.supervisor import Stopped, Supervisor, _http_ok, until_stopped


async def _always() -> bool:
    return True


async def test_a_killed_service_is_restarted_and_reported(tmp_path: Path) -> None:
    child = ChildProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], log_path=tmp_path / "sleeper.log"
    )
    await child.start()
    reported: list[tuple[str, int, int | None]] = []
    supervisor = Supervisor(ready_timeout_s=10, on_restart=lambda *args: reported.append(args))
    supervisor.watch(child, _always)
    stop = asyncio.Event()
    task = asyncio.create_task(supervisor.run(stop, interval_s=0.05))
    try:
        first = child.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        for _ in range(100):
            if reported:
                break
            await asyncio.sleep(0.05)
        assert reported == [("sleeper", 1, -signal.SIGKILL)]
        assert child.pid != first and child.returncode is None  # a new process, running
        assert supervisor.restarts == {"sleeper": 1}
    finally:
        stop.set()
        await task
        await child.stop(grace_s=2)


# Answers GET /healthz with 200 until WEDGE exists; the request that finds it deletes it (so the restarted
# process is healthy) and never answers, and being single-threaded the server answers nothing after it:
# the process runs on but /healthz is gone, as for a service whose consume loop is wedged.
_WEDGING_SERVER = """
import http.server, os, sys, time
port, wedge = int(sys.argv[1]), sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if os.path.exists(wedge):
            os.remove(wedge)
            time.sleep(3600)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


async def test_a_running_service_whose_healthz_stops_answering_is_restarted(tmp_path: Path) -> None:
    port = free_port()
    wedge = tmp_path / "wedge"
    child = ChildProcess(
        "wedging",
        [sys.executable, "-c", _WEDGING_SERVER, str(port), str(wedge)],
        log_path=tmp_path / "wedging.log",
    )
    probe = functools.partial(_http_ok, f"http://127.0.0.1:{port}/healthz")
    await child.start()
    await child.wait_ready(probe, timeout_s=10)  # as run_services does before it watches a service
    reported: list[tuple[str, int, int | None]] = []
    supervisor = Supervisor(ready_timeout_s=10, on_restart=lambda *args: reported.append(args), stop_grace_s=2)
    supervisor.watch(child, probe)
    stop = asyncio.Event()
    task = asyncio.create_task(supervisor.run(stop, interval_s=0.05, health_interval_s=0.2, unhealthy_after=3))
    try:
        await asyncio.sleep(0.5)  # a few healthy probes: no restart
        assert reported == []
        first = child.pid
        assert first is not None
        wedge.touch()
        for _ in range(200):
            if reported:
                break
            await asyncio.sleep(0.05)
        # SIGTERMed (it exits -15: a plain Python process has no handler), then started again.
        assert reported == [("wedging", 1, -signal.SIGTERM)]
        assert child.pid != first and child.returncode is None
        assert not psutil.pid_exists(first)
        await child.wait_ready(probe, timeout_s=10)  # the new process answers
    finally:
        stop.set()
        await task
        await child.stop(grace_s=2)


async def test_a_probe_failing_less_often_than_the_limit_restarts_nothing(tmp_path: Path) -> None:
    answers = iter([True, False, False, True, False, False, True] + [True] * 1000)

    async def blips() -> bool:
        return next(answers)

    child = ChildProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], log_path=tmp_path / "sleeper.log"
    )
    await child.start()
    supervisor = Supervisor(ready_timeout_s=10, on_restart=lambda *args: None)
    supervisor.watch(child, blips)
    stop = asyncio.Event()
    task = asyncio.create_task(supervisor.run(stop, interval_s=0.01, health_interval_s=0.02, unhealthy_after=3))
    try:
        await asyncio.sleep(0.5)
        assert supervisor.restarts == {"sleeper": 0}
        assert child.returncode is None
    finally:
        stop.set()
        await task
        await child.stop(grace_s=2)


async def test_stop_cuts_a_restarts_readiness_wait_short(tmp_path: Path) -> None:
    async def never() -> bool:
        return False

    child = ChildProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], log_path=tmp_path / "sleeper.log"
    )
    await child.start()
    reported: list[tuple[str, int, int | None]] = []
    # The restart would wait 60 s for a probe that never answers; no health probe within the test.
    supervisor = Supervisor(ready_timeout_s=60, on_restart=lambda *args: reported.append(args))
    supervisor.watch(child, never)
    stop = asyncio.Event()
    task = asyncio.create_task(supervisor.run(stop, interval_s=0.05, health_interval_s=600))
    try:
        pid = child.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):  # the first restart waits 1 s
            if reported:
                break
            await asyncio.sleep(0.05)
        assert reported
        await asyncio.sleep(0.2)  # inside wait_ready
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 3.0)
    finally:
        stop.set()
        await task
        await child.stop(grace_s=2)


async def test_a_stop_during_a_gathered_wait_is_stopped_not_cancelled() -> None:
    # The supervisor's health check waits on a gather(): cancelled, a gather ends with CancelledError as its
    # exception rather than as cancelled, which escaped as a CancelledError out of Supervisor.run.
    stop = asyncio.Event()

    async def slow() -> bool:
        await asyncio.sleep(30)
        return True

    waiting = asyncio.create_task(until_stopped(stop, asyncio.gather(slow(), slow())))
    await asyncio.sleep(0.05)
    stop.set()
    with pytest.raises(Stopped):
        await asyncio.wait_for(waiting, 5)
