"""`rmbg up` supervises its services: one that dies is restarted with backoff, and the restart is reported."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from rmbg.stack.processes import ChildProcess
from rmbg.supervisor import Supervisor


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
