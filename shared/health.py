"""What /healthz and /readyz answer, for every service.

- **Live** (``/healthz``): the process answers and no consume loop is wedged: each loop polls the broker
  every few hundred milliseconds, so one that has neither polled nor finished a batch for
  ``RMBG_TELEMETRY__WEDGED_AFTER_S`` (600 s: past that the broker's max poll interval evicts it from its
  group anyway) is stuck, and restarting the process is the cure. A dependency being down does not make a
  service unlive: restarting it would not bring PostgreSQL back.
- **Ready** (``/readyz``): the service can do its work now. Every dependency it opened answers within the
  readiness timeout (PostgreSQL: a round trip on a pooled connection; S3: HEAD of the bucket; the broker:
  a metadata request), every condition it declared holds (inference: the model is loaded and warmed up),
  and every consumer has joined its group and received its partition assignment. A consumer counts as
  joined from its first assignment on, also while a later rebalance briefly takes its partitions away and
  when the group gave it none (more members than partitions: a spare that takes over when a member
  leaves), so a rebalance elsewhere never flips a healthy fleet unready.

The dependency checks also feed ``rmbg_dependency_up`` and ``rmbg_ready``; /metrics runs them before each
scrape (at most one round of checks per second, shared by every caller), so the alert on an unreachable
object store or database does not depend on anyone polling /readyz.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from prometheus_client import Gauge

from shared.failures import describe

Probe = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Report:
    ok: bool
    checks: dict[str, str]  # name -> "ok" or "ok: detail", else "down: ..." / "waiting: ..." / "wedged: ..."

    def as_json(self, key: str) -> dict[str, object]:
        return {key: self.ok, "checks": self.checks}


@dataclass
class Condition:
    """Something a service declares ready by itself (the model loaded and warmed), not ready until set."""

    detail: str
    ok: bool = False

    def set_ready(self, detail: str) -> None:
        self.detail, self.ok = detail, True

    def set_waiting(self, detail: str) -> None:
        self.detail, self.ok = detail, False


@dataclass
class ConsumerWatch:
    """What one consume loop tells the health checks: its group assignment and that it is still moving."""

    group: str
    topic: str
    assigned: frozenset[TopicPartition] = frozenset()
    joined: bool = False  # an assignment (possibly empty) has arrived since the start
    last_progress: float = field(default_factory=time.monotonic)
    batch_since: float | None = None

    def on_assigned(self, partitions: Iterable[TopicPartition]) -> None:
        self.assigned = frozenset(partitions)
        self.joined = True

    def on_revoked(self, partitions: Iterable[TopicPartition]) -> None:
        self.assigned = self.assigned - frozenset(partitions)

    def progressed(self) -> None:
        """A poll returned, a batch ended or a backoff ended."""
        self.last_progress = time.monotonic()
        self.batch_since = None

    def batch_started(self) -> None:
        self.last_progress = time.monotonic()
        self.batch_since = self.last_progress

    def readiness(self) -> str:
        if not self.joined:
            return f"waiting: group {self.group} has not assigned partitions of {self.topic} yet"
        if self.assigned:
            return f"ok: {len(self.assigned)} partitions of {self.topic}"
        return f"ok: joined group {self.group}, no partitions of {self.topic} right now (rebalancing, or a spare)"

    def liveness(self, wedged_after_s: float) -> str:
        idle = time.monotonic() - self.last_progress
        if idle <= wedged_after_s:
            return "ok"
        doing = "one batch" if self.batch_since is not None else "no poll"
        return f"wedged: {doing} for {idle:.0f} s (limit {wedged_after_s:g} s)"


class Health:
    """A service's dependencies, conditions and consumers, judged for /healthz and /readyz."""

    def __init__(
        self,
        *,
        timeout_s: float = 2.0,
        wedged_after_s: float = 600.0,
        dependency_up: Gauge | None = None,
        ready: Gauge | None = None,
        cache_s: float = 1.0,
    ) -> None:
        self.timeout_s = timeout_s
        self.wedged_after_s = wedged_after_s
        self._dependencies: dict[str, Probe] = {}
        self._conditions: dict[str, Condition] = {}
        self._consumers: list[ConsumerWatch] = []
        self._dependency_up = dependency_up
        self._ready = ready
        self._cache_s = cache_s
        self._last: tuple[float, Report] | None = None
        self._lock = asyncio.Lock()

    def add_dependency(self, name: str, probe: Probe) -> None:
        self._dependencies[name] = probe
        self._last = None

    def condition(self, name: str, *, waiting: str) -> Condition:
        cond = self._conditions.setdefault(name, Condition(detail=waiting))
        self._last = None
        return cond

    def consumer(self, *, group: str, topic: str) -> ConsumerWatch:
        watch = ConsumerWatch(group=group, topic=topic)
        self._consumers.append(watch)
        self._last = None
        return watch

    def liveness(self) -> Report:
        checks = {"process": "ok"}
        for watch in self._consumers:
            checks[f"consumer {watch.group}"] = watch.liveness(self.wedged_after_s)
        return Report(ok=all(v.startswith("ok") for v in checks.values()), checks=checks)

    async def readiness(self) -> Report:
        """Every check, run at most once per ``cache_s`` however many callers ask at once."""
        async with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self._cache_s:
                return self._last[1]
            report = await self._evaluate()
            self._last = (time.monotonic(), report)
            return report

    async def _evaluate(self) -> Report:
        names = list(self._dependencies)
        results = await asyncio.gather(*(self._probe(self._dependencies[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        for name, result in checks.items():
            if self._dependency_up is not None:
                self._dependency_up.labels(dependency=name).set(1 if result == "ok" else 0)
        for name, cond in self._conditions.items():
            checks[name] = f"ok: {cond.detail}" if cond.ok else f"waiting: {cond.detail}"
        for watch in self._consumers:
            checks[f"consumer {watch.group}"] = watch.readiness()
        ok = all(v.startswith("ok") for v in checks.values())
        if self._ready is not None:
            self._ready.set(1 if ok else 0)
        return Report(ok=ok, checks=checks)

    async def _probe(self, probe: Probe) -> str:
        try:
            await asyncio.wait_for(probe(), self.timeout_s)
        except TimeoutError:
            return f"down: no answer within {self.timeout_s:g} s"
        except Exception as exc:
            return f"down: {describe(exc, limit=200)}"
        return "ok"
