"""Server-Sent Events read off a stream of lines (the WHATWG rules a job's event stream needs)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


async def parse_events(lines: AsyncIterable[str]) -> AsyncIterator[tuple[str, str]]:
    """``(event name, data)`` per dispatched event; comments (keep-alive pings) and ids are skipped.

    A blank line ends an event; data lines join with newlines; an event without a name is "message".
    An event cut off by the end of the stream is dropped, as a browser drops it."""
    name, data = "", list[str]()
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield name or "message", "\n".join(data)
            name, data = "", list[str]()
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
