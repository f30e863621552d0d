"""Counters scraped from every service while a drill runs (a restarted process starts from zero)."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from prometheus_client.parser import text_string_to_metric_families

_COUNTERS = ("rmbg_records_total", "rmbg_dead_letters_total", "rmbg_record_failures_total")


class MetricsWatch:
    """Scrapes every service's counters; a restarted process starts from zero, so resets are carried."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self._last: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        self._carried: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}

    async def run(self, stop: asyncio.Event, interval_s: float = 2.0) -> None:
        async with httpx.AsyncClient(timeout=2.0) as client:
            while not stop.is_set():
                await self.scrape(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)
            await self.scrape(client)

    async def scrape(self, client: httpx.AsyncClient) -> None:
        for service, url in self.urls.items():
            try:
                text = (await client.get(url)).text
            except httpx.HTTPError:
                continue  # down right now
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in _COUNTERS:
                        self._observe((service, sample.name, tuple(sorted(sample.labels.items()))), sample.value)

    def _observe(self, key: tuple[str, str, tuple[tuple[str, str], ...]], value: float) -> None:
        last = self._last.get(key, 0.0)
        if value < last:
            self._carried[key] = self._carried.get(key, 0.0) + last
        self._last[key] = value

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, value in self._last.items():
            service, name, labels = key
            total = value + self._carried.get(key, 0.0)
            outcome = dict(labels).get("outcome")
            if name == "rmbg_records_total" and outcome is not None:
                bucket = f"{service}.{outcome}"
            elif name == "rmbg_dead_letters_total":
                bucket = "dead_letters"
            else:
                bucket = f"record_failures.{service}.{dict(labels).get('failure_class')}"
                out["record_failures"] = out.get("record_failures", 0.0) + total
            out[bucket] = out.get(bucket, 0.0) + total
        return out
