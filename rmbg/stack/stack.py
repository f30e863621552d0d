"""The embedded stack: S3, a Kafka-API broker, PostgreSQL and Redis for a machine that has none.

    async with EmbeddedStack(state_dir, s3_access_key=..., s3_secret_key=...) as endpoints:
        ...

Each ``want_*`` URL names an externally run server (nothing is started for it); None starts our own.
Start order is SeaweedFS, Tansu (its log in a bucket on that S3), PostgreSQL, Redis; exit stops them in
reverse (SIGTERM, then SIGKILL after ``stop_grace_s``). Everything lives under ``state_dir``:

    state_dir/seaweedfs/   weed mini data          state_dir/s3.json     S3 identities (mode 600)
    state_dir/postgres/    embedded PostgreSQL     state_dir/ports.json  ports reused on restart
    state_dir/redis/       redis dump.rdb          state_dir/logs/<name>.log
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from rmbg.stack.postgres import (
    LOCAL_ADMIN_DSN,
    EmbeddedPostgres,
    ensure_database,
    postgres_answers,
    with_database,
)
from rmbg.stack.processes import ChildProcess, PortBook, StackError, listens_on
from rmbg.stack.redis import LOCAL_URL, redis_answers, start_redis
from rmbg.stack.seaweed import ensure_bucket, s3_answers, start_seaweed, write_s3_config
from rmbg.stack.tansu import kafka_answers, start_tansu
from shared.config import KafkaSettings

logger = logging.getLogger(__name__)


# Tansu answers a consumer's fetch over several partitions only when its max wait runs out, not when a
# record arrives (Kafka answers at once). `python -m bench.broker_latency` on this stack, 6 partitions: 132 ms
# p50 / 265 ms p95 from publish to consumed at aiokafka's 500 ms, 40 / 89 ms at 100, for 66 instead of 32 ms/s
# of broker CPU with four idle consumers (BENCHMARKS.md, "The broker's fetch wait").
TANSU_FETCH_MAX_WAIT_MS = 100


@dataclass(frozen=True)
class StackEndpoints:
    """Where each server of a running stack answers; ``started`` names the ones we started."""

    postgres_dsn: str
    redis_url: str
    kafka_bootstrap: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str = field(repr=False)
    state_dir: Path
    started: tuple[str, ...]

    def as_env(self) -> dict[str, str]:
        """The ``RMBG_*`` variables that point a service's settings at this stack."""
        return {
            "RMBG_POSTGRES__DSN": self.postgres_dsn,
            "RMBG_REDIS__URL": self.redis_url,
            "RMBG_KAFKA__BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "RMBG_S3__ENDPOINT_URL": self.s3_endpoint,
            "RMBG_S3__ACCESS_KEY": self.s3_access_key,
            "RMBG_S3__SECRET_KEY": self.s3_secret_key,
        } | self._consumer_env()

    @property
    def fetch_max_wait_ms(self) -> int | None:
        """The consumers' fetch wait this stack's broker needs: TANSU_FETCH_MAX_WAIT_MS when the stack
        started Tansu, else None (a real Kafka answers a parked fetch at once: its default serves)."""
        return TANSU_FETCH_MAX_WAIT_MS if "tansu" in self.started else None

    def kafka_settings(self, **options: Any) -> KafkaSettings:
        """Kafka settings for clients run in-process against this stack (tests, the drills' harness), with
        this stack's fetch wait; ``options`` sets the rest."""
        if self.fetch_max_wait_ms is not None:
            options.setdefault("fetch_max_wait_ms", self.fetch_max_wait_ms)
        return KafkaSettings(bootstrap_servers=self.kafka_bootstrap, **options)

    def _consumer_env(self) -> dict[str, str]:
        # An operator's own RMBG_KAFKA__FETCH_MAX_WAIT_MS wins over the stand-in's (rmbg up applies as_env).
        if self.fetch_max_wait_ms is None:
            return {}
        name = "RMBG_KAFKA__FETCH_MAX_WAIT_MS"
        return {name: os.environ.get(name, str(self.fetch_max_wait_ms))}


class EmbeddedStack:
    """Async context manager starting whichever servers are not given, and stopping them on exit."""

    def __init__(
        self,
        state_dir: Path,
        *,
        s3_access_key: str,
        s3_secret_key: str,
        want_postgres: str | None = None,
        want_redis: str | None = None,
        want_kafka: str | None = None,
        want_s3: str | None = None,
        s3_region: str = "us-east-1",
        s3_port: int | None = None,
        kafka_port: int | None = None,
        redis_port: int | None = None,
        use_local_servers: bool = True,
        database: str = "rmbg",
        tansu_bucket: str = "tansu-log",
        ready_timeout_s: float = 30.0,
        stop_grace_s: float = 10.0,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.want_postgres = want_postgres
        self.want_redis = want_redis
        self.want_kafka = want_kafka
        self.want_s3 = want_s3
        self.s3_access_key = s3_access_key
        self.s3_secret_key = s3_secret_key
        self.s3_region = s3_region
        self.s3_port = s3_port
        self.kafka_port = kafka_port
        self.redis_port = redis_port
        self.use_local_servers = use_local_servers
        self.database = database
        self.tansu_bucket = tansu_bucket
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self._exit: contextlib.AsyncExitStack | None = None
        # What we started, for fault drills (`rmbg.chaos`): the children and how to tell each is ready.
        self._children: dict[str, tuple[ChildProcess, Callable[[], Awaitable[bool]]]] = {}
        self._postgres_server: EmbeddedPostgres | None = None

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def child(self, name: str) -> ChildProcess:
        """A server process this stack started: ``seaweedfs``, ``tansu`` or ``redis``."""
        try:
            return self._children[name][0]
        except KeyError:
            raise StackError(f"{name} was not started by this stack") from None

    async def kill_and_restart(self, name: str, *, down_s: float = 0.0) -> float:
        """SIGKILL a server we started, wait ``down_s``, start it again with the same command and port.

        Returns the seconds from the kill until it answered again.
        """
        child, probe = self._children.get(name) or (None, None)
        if child is None or probe is None:
            raise StackError(f"{name} was not started by this stack")
        began = time.monotonic()
        await child.kill()
        await asyncio.sleep(down_s)
        await child.start()
        await child.wait_ready(probe, timeout_s=self.ready_timeout_s)
        return time.monotonic() - began

    async def restart_postgres(self, *, down_s: float = 0.0) -> float:
        """Stop the embedded PostgreSQL (sessions terminated), wait ``down_s``, start it again; seconds taken."""
        if self._postgres_server is None:
            raise StackError("PostgreSQL was not started by this stack")
        began = time.monotonic()
        await self._postgres_server.restart(down_s=down_s, timeout_s=self.ready_timeout_s)
        return time.monotonic() - began

    async def __aenter__(self) -> StackEndpoints:
        if self._exit is not None:
            raise StackError("EmbeddedStack is already running")
        self._exit = contextlib.AsyncExitStack()
        try:
            return await self._start(self._exit)
        except BaseException:
            await self.aclose()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop what we started, newest first."""
        exit_stack, self._exit = self._exit, None
        self._children.clear()
        self._postgres_server = None
        if exit_stack is not None:
            await exit_stack.aclose()

    def _lock_state_dir(self, exit_stack: contextlib.AsyncExitStack) -> None:
        lock_file = exit_stack.enter_context((self.state_dir / ".lock").open("w"))
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StackError(f"{self.state_dir} is in use by another embedded stack") from exc

    async def _start(self, exit_stack: contextlib.AsyncExitStack) -> StackEndpoints:
        began = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_state_dir(exit_stack)
        ports = PortBook(self.state_dir / "ports.json")
        started: list[str] = []
        s3 = await self._s3(exit_stack, ports, started)
        kafka = await self._kafka(exit_stack, ports, started, s3)
        postgres = await self._postgres(exit_stack, started)
        redis_url = await self._redis(exit_stack, ports, started)
        ports.save()
        logger.info("embedded stack ready in %.2f s (started: %s)", time.monotonic() - began, started)
        return StackEndpoints(
            postgres_dsn=postgres,
            redis_url=redis_url,
            kafka_bootstrap=kafka,
            s3_endpoint=s3,
            s3_access_key=self.s3_access_key,
            s3_secret_key=self.s3_secret_key,
            state_dir=self.state_dir,
            started=tuple(started),
        )

    async def _s3(self, exit_stack: contextlib.AsyncExitStack, ports: PortBook, started: list[str]) -> str:
        if self.want_s3 is not None:
            return self.want_s3
        s3_config = self.state_dir / "s3.json"
        write_s3_config(s3_config, self.s3_access_key, self.s3_secret_key)
        child, endpoint = await start_seaweed(
            data_dir=self.state_dir / "seaweedfs",
            log_path=self.log_dir / "seaweedfs.log",
            s3_config=s3_config,
            access_key=self.s3_access_key,
            secret_key=self.s3_secret_key,
            ports=ports,
            s3_port=self.s3_port,
            timeout_s=self.ready_timeout_s,
        )
        exit_stack.push_async_callback(child.stop, self.stop_grace_s)
        started.append("seaweedfs")
        self._children["seaweedfs"] = (
            child,
            functools.partial(s3_answers, endpoint, self.s3_access_key, self.s3_secret_key, self.s3_region),
        )
        return endpoint

    async def _kafka(
        self, exit_stack: contextlib.AsyncExitStack, ports: PortBook, started: list[str], s3: str
    ) -> str:
        if self.want_kafka is not None:
            return self.want_kafka
        await ensure_bucket(s3, self.s3_access_key, self.s3_secret_key, self.tansu_bucket, self.s3_region)
        child, bootstrap = await start_tansu(
            log_path=self.log_dir / "tansu.log",
            s3_endpoint=s3,
            access_key=self.s3_access_key,
            secret_key=self.s3_secret_key,
            region=self.s3_region,
            bucket=self.tansu_bucket,
            ports=ports,
            kafka_port=self.kafka_port,
            timeout_s=self.ready_timeout_s,
        )
        exit_stack.push_async_callback(child.stop, self.stop_grace_s)
        started.append("tansu")
        self._children["tansu"] = (child, functools.partial(_own_port_answers, child, bootstrap, kafka_answers))
        return bootstrap

    async def _postgres(self, exit_stack: contextlib.AsyncExitStack, started: list[str]) -> str:
        if self.want_postgres is not None:
            return self.want_postgres
        if self.use_local_servers and await postgres_answers(LOCAL_ADMIN_DSN):
            logger.info("using the local PostgreSQL at 127.0.0.1:5432")
            await ensure_database(LOCAL_ADMIN_DSN, self.database)
            return with_database(LOCAL_ADMIN_DSN, self.database)
        server = EmbeddedPostgres(self.state_dir / "postgres", self.log_dir / "postgres.log")
        admin_dsn = await server.start(self.ready_timeout_s)
        exit_stack.push_async_callback(server.stop)
        started.append("postgres")
        self._postgres_server = server
        await ensure_database(admin_dsn, self.database)
        return with_database(admin_dsn, self.database)

    async def _redis(self, exit_stack: contextlib.AsyncExitStack, ports: PortBook, started: list[str]) -> str:
        if self.want_redis is not None:
            return self.want_redis
        if self.use_local_servers and await redis_answers(LOCAL_URL):
            logger.info("using the local Redis at 127.0.0.1:6379")
            return LOCAL_URL
        child, url = await start_redis(
            data_dir=self.state_dir / "redis",
            log_path=self.log_dir / "redis.log",
            ports=ports,
            redis_port=self.redis_port,
            timeout_s=self.ready_timeout_s,
        )
        exit_stack.push_async_callback(child.stop, self.stop_grace_s)
        started.append("redis")
        self._children["redis"] = (child, functools.partial(redis_answers, url))
        return url


async def _own_port_answers(
    child: ChildProcess, address: str, answers: Callable[[str], Awaitable[bool]]
) -> bool:
    """The restarted child itself listens on the address's port, and a client gets an answer there."""
    pid = child.pid
    port = int(address.rsplit(":", 1)[1])
    return pid is not None and listens_on(pid, port) and await answers(address)
