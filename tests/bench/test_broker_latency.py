"""bench/broker_latency.py, tiny: a few messages through the test stack's broker, and the idle CPU count.

The figures are checked for sanity (ordered percentiles, a row per pair), not for their size: which wait is
faster depends on the broker (docs/test-servers.md), and timings belong in the bench's own run.
"""

from __future__ import annotations

import psutil
import pytest

from bench.broker_latency import hop, idle_cpu, parse_args, run
from rmbg.stack import StackEndpoints


def test_arguments() -> None:
    args = parse_args([])
    assert (args.waits, args.partitions, args.bootstrap) == ([500, 100, 50], [1, 6], None)
    with pytest.raises(SystemExit):
        parse_args(["--waits", "0"])


@pytest.mark.timeout(120)
async def test_hops_and_table_on_the_stack_broker(stack: StackEndpoints) -> None:
    h = await hop(stack.kafka_bootstrap, partitions=3, wait_ms=50, messages=5, gap_s=0.02)
    assert (h.partitions, h.wait_ms) == (3, 50)
    assert 0 < h.p50_ms <= h.p95_ms <= h.max_ms and h.publish_ms > 0 and h.mean_ms <= h.max_ms
    tiny = ["--messages", "3", "--gap-s", "0.02", "--rounds", "1", "--idle-s", "0"]
    args = parse_args(["--bootstrap", stack.kafka_bootstrap, "--waits", "500", "50", "--partitions", "2", *tiny])
    table = await run(args)
    rows = [line for line in table.splitlines() if line.startswith("| 2 |")]
    assert [r.split(" | ")[1] for r in rows] == ["500", "50"], table
    assert "Idle" not in table  # no server CPU for a broker the bench did not start


@pytest.mark.timeout(120)
async def test_idle_cpu_counts_the_given_processes(stack: StackEndpoints) -> None:
    cpu = await idle_cpu(stack.kafka_bootstrap, {"this": psutil.Process()}, wait_ms=50, consumers=2, idle_s=1.0)
    assert set(cpu) == {"this"} and cpu["this"] >= 0
