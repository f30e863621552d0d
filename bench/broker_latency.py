"""Publish to consumed, by the consumers' fetch_max_wait_ms and the topic's partitions; the broker's idle CPU.

Run: ``.venv/bin/python -m bench.broker_latency`` (an embedded stack: Tansu on SeaweedFS, as ``rmbg up``), or
``--bootstrap HOST:PORT`` for a broker already running (real Kafka, say: a broker that answers a parked fetch
when a record arrives shows no difference between the waits). Prints Markdown tables.

Why: a consumer's fetch asks the broker to hold it for up to ``fetch_max_wait_ms`` while no partition has a
record. Kafka answers it as soon as one does; a broker that answers only at the limit adds up to that much
latency to every hop of the pipeline (ingest -> inference -> persister). The embedded stack's services get
a shorter wait for that reason (``rmbg/stack/stack.py``, docs/test-servers.md); this bench is how it was
chosen and how to check another broker.

Latency: per (partitions, wait), a fresh topic, the project's own producer (``shared.messaging.open_producer``:
acks=all, 5 ms linger) and consumer (``open_consumer`` with ``KafkaSettings.fetch_max_wait_ms``), one
message every ``--gap-s`` with a random key (so it lands on any partition), each carrying its send time;
"publish" is the producer's acknowledgement, "to consumed" the time from send to the consumer's
``getone``. The (partitions, wait) pairs run in order, then again in the same order (``--rounds``), and a
row gives the median over rounds of each figure. Idle: ``--consumers`` consumers in their own groups parked
on an empty 6-partition topic for ``--idle-s``, the CPU (psutil user + system) of the broker and the S3
server per second; only for servers this bench started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.cpu import run_header
from rmbg.stack import EmbeddedStack
from shared.config import DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY, KafkaSettings
from shared.messaging import open_consumer, open_producer

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Hop:
    partitions: int
    wait_ms: int
    publish_ms: float  # median acknowledgement
    mean_ms: float
    p50_ms: float
    p95_ms: float
    max_ms: float


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.asynccontextmanager
async def _topic(bootstrap: str, partitions: int) -> AsyncIterator[str]:
    """A fresh topic for one measurement, deleted afterwards (a real cluster keeps no bench leftovers)."""
    name = f"bench-latency-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
        try:
            yield name
        finally:
            await admin.delete_topics([name])
    finally:
        await admin.close()


def _kafka(bootstrap: str, wait_ms: int) -> KafkaSettings:
    # The drills' group timings, so a join takes about a second rather than five (docs/test-servers.md).
    return KafkaSettings(
        bootstrap_servers=bootstrap, session_timeout_ms=2000, heartbeat_interval_ms=500, fetch_max_wait_ms=wait_ms
    )


async def hop(bootstrap: str, *, partitions: int, wait_ms: int, messages: int, gap_s: float) -> Hop:
    kafka = _kafka(bootstrap, wait_ms)
    async with (
        _topic(bootstrap, partitions) as topic,
        open_producer(kafka, client_id="bench-latency") as producer,
        open_consumer(kafka, topics=[topic], group_id=f"{topic}-g", client_id="bench-latency") as consumer,
    ):
        # The first message waits for the group's join and the first fetch; not counted.
        await producer.send_and_wait(topic, b"0", key=b"first")
        await consumer.getone()
        acks: list[float] = []
        seen: list[float] = []
        for _ in range(messages):
            await asyncio.sleep(gap_s)
            sent = time.perf_counter()
            await producer.send_and_wait(topic, repr(sent).encode(), key=uuid.uuid4().bytes)
            acks.append((time.perf_counter() - sent) * 1000)
            record = await consumer.getone()
            if record.value is None:
                raise RuntimeError(f"a record without a value on {topic}: another producer is writing to it")
            seen.append((time.perf_counter() - float(record.value)) * 1000)
    seen.sort()
    return Hop(
        partitions,
        wait_ms,
        statistics.median(acks),
        statistics.fmean(seen),
        _quantile(seen, 0.5),
        _quantile(seen, 0.95),
        seen[-1],
    )


def _cpu_s(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, p in procs.items():
        t = p.cpu_times()
        out[name] = t.user + t.system
    return out


async def idle_cpu(
    bootstrap: str, procs: dict[str, psutil.Process], *, wait_ms: int, consumers: int, idle_s: float
) -> dict[str, float]:
    """CPU ms per second of each server while ``consumers`` consumers sit on an empty 6-partition topic."""
    kafka = _kafka(bootstrap, wait_ms)
    async with contextlib.AsyncExitStack() as stack:
        topic = await stack.enter_async_context(_topic(bootstrap, 6))
        for i in range(consumers):
            consumer = await stack.enter_async_context(
                open_consumer(kafka, topics=[topic], group_id=f"{topic}-g{i}", client_id=f"bench-idle-{i}")
            )
            await consumer.getmany(timeout_ms=100)  # starts fetching
        await asyncio.sleep(3)  # every group joined (about 1 s each with these timings)
        before, began = _cpu_s(procs), time.monotonic()
        await asyncio.sleep(idle_s)
        after, elapsed = _cpu_s(procs), time.monotonic() - began
    return {k: (after[k] - before[k]) / elapsed * 1000 for k in procs}


@contextlib.asynccontextmanager
async def broker(bootstrap: str | None) -> AsyncIterator[tuple[str, dict[str, psutil.Process]]]:
    """The given broker (no server CPU measured), or an embedded stack's Tansu and SeaweedFS."""
    if bootstrap is not None:
        yield bootstrap, {}
        return
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as state:
        stack = EmbeddedStack(
            Path(state),
            s3_access_key=DEV_S3_ACCESS_KEY,
            s3_secret_key=DEV_S3_SECRET_KEY,
            want_postgres=LOCAL_POSTGRES,
            want_redis=LOCAL_REDIS,
        )
        async with stack as endpoints:
            procs = {}
            for name in ("tansu", "seaweedfs"):
                pid = stack.child(name).pid
                if pid is not None:
                    procs[name] = psutil.Process(pid)
            yield endpoints.kafka_bootstrap, procs


async def run(args: argparse.Namespace) -> str:
    started = datetime.now(UTC)
    rounds: dict[tuple[int, int], list[Hop]] = {}
    idle: dict[int, list[dict[str, float]]] = {}
    async with broker(args.bootstrap) as (bootstrap, procs):
        for r in range(args.rounds):
            for partitions in args.partitions:
                for wait in args.waits:
                    h = await hop(
                        bootstrap, partitions=partitions, wait_ms=wait, messages=args.messages, gap_s=args.gap_s
                    )
                    rounds.setdefault((partitions, wait), []).append(h)
                    print(
                        f"round {r + 1}: {partitions} partitions, wait {wait} ms: mean {h.mean_ms:.1f} ms, "
                        f"p95 {h.p95_ms:.1f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
            if procs and args.idle_s > 0:
                for wait in args.waits:
                    idle.setdefault(wait, []).append(
                        await idle_cpu(bootstrap, procs, wait_ms=wait, consumers=args.consumers, idle_s=args.idle_s)
                    )
    where = f"the broker at {args.bootstrap}" if args.bootstrap else "an embedded stack (Tansu on SeaweedFS)"
    lines = [
        "### Publish to consumed, by fetch_max_wait_ms",
        "",
        run_header(started, f"aiokafka, {where}")
        + f"One message every {args.gap_s:g} s, {args.messages} per row and round, {args.rounds} rounds; "
        "medians over the rounds.",
        "",
        "| partitions | fetch_max_wait_ms | publish (ack) p50 ms | to consumed mean ms | p50 ms | p95 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (partitions, wait), hops in rounds.items():

        def med(field: str, hops: list[Hop] = hops) -> float:
            return float(statistics.median(getattr(h, field) for h in hops))

        lines.append(
            f"| {partitions} | {wait} | {med('publish_ms'):.1f} | {med('mean_ms'):.1f} | {med('p50_ms'):.1f} | "
            f"{med('p95_ms'):.1f} | {med('max_ms'):.1f} |"
        )
    if idle:
        names = sorted(next(iter(idle.values()))[0])
        lines += [
            "",
            f"Idle: {args.consumers} consumers parked on an empty 6-partition topic for {args.idle_s:g} s, CPU ms "
            "per second (median over rounds):",
            "",
            "| fetch_max_wait_ms | " + " | ".join(names) + " |",
            "|---:|" + "---:|" * len(names),
        ]
        for wait, samples in idle.items():
            cells = [f"{statistics.median(s[n] for s in samples):.1f}" for n in names]
            lines.append(f"| {wait} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.broker_latency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bootstrap", help="a running broker (default: start an embedded stack)")
    p.add_argument("--waits", type=int, nargs="+", default=[500, 100, 50], help="fetch_max_wait_ms values")
    p.add_argument("--partitions", type=int, nargs="+", default=[1, 6], help="partitions of the topic")
    p.add_argument("--messages", type=int, default=40, help="timed messages per row and round (default 40)")
    p.add_argument("--gap-s", type=float, default=0.23, help="seconds between messages (default 0.23)")
    p.add_argument("--rounds", type=int, default=2, help="each row this many times, in order (default 2)")
    p.add_argument("--consumers", type=int, default=4, help="idle consumers, as the pipeline's four groups")
    p.add_argument("--idle-s", type=float, default=20.0, help="seconds of idle CPU per wait (0: skip)")
    args = p.parse_args(argv)
    if min(args.waits) < 1 or min(args.partitions) < 1 or args.messages < 1 or args.rounds < 1:
        p.error("--waits, --partitions, --messages and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    print(asyncio.run(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
