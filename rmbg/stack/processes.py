"""Child-process supervision for the embedded stack: start with a log file, wait until ready, stop.

Every child runs in its own session (so a Ctrl-C in the terminal reaches only ``rmbg up``, which then
stops the children in reverse dependency order) and, on Linux, asks the kernel to SIGTERM it should the
supervising process die without cleaning up (``PR_SET_PDEATHSIG``): no orphaned brokers after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import psutil

from shared.exceptions import RmbgError

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
LOG_TAIL_LINES = 40


class StackError(RmbgError):
    """An embedded server could not be started, did not become ready, or died."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller must verify the server really got it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now (ignoring TIME_WAIT leftovers, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a listening TCP socket on ``port``."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


class PortBook:
    """Ports chosen for a state directory, reused on the next start while they are still free.

    Stable ports keep endpoints (and SeaweedFS's master metadata folder, named after its port) the
    same across restarts; a port that has meanwhile been taken is replaced by a fresh one.
    ``pair_offset`` also reserves ``port + pair_offset`` (SeaweedFS's gRPC convention).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._ports: dict[str, int] = {}
        self._held: dict[str, set[int]] = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                self._ports = {k: v for k, v in loaded.items() if isinstance(v, int)}

    def _usable(self, port: int, pair_offset: int) -> bool:
        taken = set().union(*self._held.values())
        wanted = {port, port + pair_offset}
        return all(p <= 65535 and p not in taken and port_is_free(p) for p in wanted)

    def get(self, name: str, requested: int | None = None, *, pair_offset: int = 0) -> int:
        self._held.pop(name, None)
        if requested is not None:
            port = requested
        else:
            saved = self._ports.get(name)
            port = saved if saved is not None and self._usable(saved, pair_offset) else 0
            while not port:
                candidate = free_port()
                port = candidate if self._usable(candidate, pair_offset) else 0
        self._ports[name] = port
        self._held[name] = {port, port + pair_offset}
        return port

    def forget(self, *names: str) -> None:
        for name in names:
            self._ports.pop(name, None)
            self._held.pop(name, None)

    def save(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._ports, indent=2, sort_keys=True))
        tmp.replace(self._path)


def _die_with_parent_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when the thread that started it dies.

    The libc lookup happens here, in the parent: the forked child only makes the one prctl call.
    """
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:  # pragma: no cover - runs in the forked child
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


class ChildProcess:
    """One supervised server process whose stdout and stderr go to ``log_path``."""

    def __init__(
        self, name: str, argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logger.info("starting %s: %s (log: %s)", self.name, " ".join(self.argv), self.log_path)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent_preexec(),
            )

    def failure(self, what: str) -> StackError:
        return StackError(f"{self.name} {what}; see {self.log_path}. Last lines:\n{log_tail(self.log_path)}")

    async def wait_ready(
        self, probe: Callable[[], Awaitable[bool]], *, timeout_s: float, interval_s: float = 0.1
    ) -> float:
        """Poll ``probe`` until it answers True; returns the seconds waited.

        Raises StackError (naming the log file, with its tail) when the child exits first or the
        deadline passes. A probe that raises counts as "not yet". Cancelling the wait always cancels
        it: the probe runs in this task under ``asyncio.timeout``, not ``asyncio.wait_for``, whose
        Python 3.11 version returns the probe's result, dropping the cancellation, when the probe has
        just finished as the cancel arrives (the caller would then wait out ``timeout_s``).
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            if self.returncode is not None:
                raise self.failure(f"exited with code {self.returncode} before it was ready")
            try:
                remaining = max(0.5, timeout_s - (loop.time() - started))
                async with asyncio.timeout(remaining):
                    answered = await probe()
                if answered:
                    return loop.time() - started
            except Exception as exc:  # the server is still coming up
                logger.debug("%s not ready yet: %r", self.name, exc)
            if loop.time() - started > timeout_s:
                raise self.failure(f"was not ready within {timeout_s:.0f} s")
            await asyncio.sleep(interval_s)

    async def kill(self) -> None:
        """SIGKILL the child (a crash, for fault drills) and reap it; a later ``start`` runs it again."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; always reaps the child."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        logger.info("stopping %s (pid %d)", self.name, proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=grace_s)
        except TimeoutError:
            logger.warning("%s did not stop within %.0f s: killing it", self.name, grace_s)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        except BaseException:  # cancelled while waiting: leave nothing running behind us
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        logger.info("%s stopped (code %s)", self.name, proc.returncode)
