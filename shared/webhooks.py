"""Webhook signatures the Standard Webhooks way, and each user's signing secret (docs/access.md, Webhooks).

Shared by the API, which shows a user their secret and rotates it, and the persister, which signs with it.

- A secret is ``whsec_`` + base64 of 32 random bytes (256 bits; the spec asks 24 to 64), stored
  Fernet-encrypted (:class:`shared.auth.SecretCipher`), created on first use.
- Each message is signed ``v1,<base64 HMAC-SHA-256 of "<id>.<timestamp>.<body>">``. After a rotation the
  old secret signs beside the new one for :data:`ROTATION_OVERLAP` (the header lists both signatures and
  a receiver accepts either), so a receiver can switch secrets without dropping a delivery.
- ``webhook-id`` names the message, the same on every retry, so a receiver drops repeats by it: delivery
  is at least once (a send whose answer was lost is sent again).
"""

from __future__ import annotations

import base64
import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
from standardwebhooks.webhooks import Webhook

from shared.auth import SecretCipher
from shared.db.models import WebhookSecretRecord
from shared.db.repositories.webhooks import WebhooksRepository
from shared.exceptions import ConfigError

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
_SECRET_BYTES = 32
# How long a rotated-out secret still signs: a day lets a receiver deploy its new secret at leisure.
ROTATION_OVERLAP = timedelta(hours=24)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def message_id(job_id: UUID) -> str:
    """One message per job (its ending), so the job id names it: stable across retries."""
    return f"msg_{job_id}"


def signed_headers(signing: Sequence[str], *, msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for ``body`` sent at ``timestamp``, signed by every secret given."""
    if not signing:
        raise ValueError("a webhook needs at least one signing secret")
    at = timestamp.astimezone(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(math.floor(at.timestamp())),
        "webhook-signature": " ".join(Webhook(s).sign(msg_id=msg_id, timestamp=at, data=body) for s in signing),
        "content-type": "application/json",
    }


@dataclass(frozen=True)
class SigningSecrets:
    current: str
    previous: str | None
    previous_until: datetime | None
    created_at: datetime
    rotated_at: datetime | None

    def signing(self, now: datetime) -> list[str]:
        """The secrets that sign a message sent at ``now``: the current one, and the previous one while it
        overlaps."""
        if self.previous and self.previous_until and now < self.previous_until:
            return [self.current, self.previous]
        return [self.current]


class WebhookSecrets:
    """Get-or-create, and rotate, users' secrets; the caller owns the connection."""

    def __init__(self, *, repo: WebhooksRepository, cipher: SecretCipher) -> None:
        self._repo = repo
        self._cipher = cipher

    async def get(self, conn: asyncpg.Connection, *, user_id: str) -> SigningSecrets:
        found = await self._repo.get_secret(conn, user_id=user_id)
        if found is None:
            found = await self._repo.get_or_create_secret(
                conn, user_id=user_id, candidate_encrypted=self._cipher.encrypt(new_secret())
            )
        return self._open(found)

    async def rotate(self, conn: asyncpg.Connection, *, user_id: str, now: datetime | None = None) -> SigningSecrets:
        now = now or datetime.now(UTC)
        record = await self._repo.rotate_secret(
            conn,
            user_id=user_id,
            secret_encrypted=self._cipher.encrypt(new_secret()),
            previous_until=now + ROTATION_OVERLAP,
        )
        return self._open(record)

    def _open(self, record: WebhookSecretRecord) -> SigningSecrets:
        return SigningSecrets(
            current=self._cipher.decrypt(record.secret_encrypted),
            previous=self._previous(record),
            previous_until=record.previous_until,
            created_at=record.created_at,
            rotated_at=record.rotated_at,
        )

    def _previous(self, record: WebhookSecretRecord) -> str | None:
        """The previous secret while it still signs (ROTATION_OVERLAP after a rotation), else None.

        Its ciphertext stays in the row after the overlap; decrypted regardless, it made every read fail
        once the encryption key it was made under was rotated out of RMBG_AUTH__ENCRYPTION_KEYS, although
        only the current secret signs by then: the user's webhooks gave up and GET /v1/webhooks/secret
        answered 500. Within the overlap a previous secret that does not decrypt is dropped with a
        warning: the current one still signs, and receivers verify either."""
        if not record.previous_encrypted or record.previous_until is None:
            return None
        if record.previous_until <= datetime.now(UTC):
            return None
        try:
            return self._cipher.decrypt(record.previous_encrypted)
        except ConfigError as exc:
            log.warning("previous webhook secret of %s dropped: %s", record.user_id, exc)
            return None
