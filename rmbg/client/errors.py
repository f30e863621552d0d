"""The one exception every client failure becomes, so commands print one readable line and no trace."""

from __future__ import annotations

from typing import Any

# What a person can do about a missing or refused key; the API cannot make one itself.
KEY_HINT = "an operator makes one with `rmbg keys create --user U`; pass it as RMBG_API_KEY or --api-key"


class ClientError(Exception):
    """A refusal by the API (``status`` and its stable ``code``) or a failure to reach it (no status)."""

    def __init__(self, message: str, *, code: str = "error", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def as_json(self) -> dict[str, Any]:
        """The API's own error shape, plus the HTTP status when there was one."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.status is not None:
            body["status"] = self.status
        return {"error": body}
