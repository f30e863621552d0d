"""API keys for the operator's own clients of the API (the demo, the drills): one key per user, made once.

These tools start the stack themselves, so they hold its settings and make keys the way
`rmbg keys create` does (rmbg.access.create_key), instead of asking the operator for one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from rmbg.access import create_key
from shared.config import BaseServiceSettings


class KeyRing:
    """Keys by (user, admin), each created on first need and then reused."""

    def __init__(self, settings: BaseServiceSettings, *, name: str) -> None:
        self._settings = settings
        self._name = name
        self._keys: dict[tuple[str, bool], str] = {}
        self._lock = asyncio.Lock()

    async def key(self, user_id: str, *, admin: bool = False) -> str:
        """The key of ``user_id`` (an admin key with ``admin``); the user is created if new."""
        wanted = (user_id, admin)
        cached = self._keys.get(wanted)
        if cached is not None:
            return cached
        async with self._lock:  # concurrent first requests for one user make one key, not several
            if wanted not in self._keys:
                issued = await create_key(self._settings, user_id=user_id, admin=admin, name=self._name, email=None)
                self._keys[wanted] = issued.key
            return self._keys[wanted]

    async def prepare(self, user_ids: Iterable[str], *, admin: bool = False) -> None:
        """Make the keys of ``user_ids`` now (before the stack is disturbed, in a drill)."""
        for user_id in user_ids:
            await self.key(user_id, admin=admin)

    async def headers(self, user_id: str, *, admin: bool = False) -> dict[str, str]:
        """The Authorization header that authenticates as ``user_id``."""
        return {"Authorization": f"Bearer {await self.key(user_id, admin=admin)}"}
