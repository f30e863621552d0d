"""Emails encrypted at rest, in the application (``cryptography``'s Fernet: AES-128-CBC + HMAC-SHA-256).

Why in the application and not pgcrypto: the embedded PostgreSQL has no pgcrypto, and with pgcrypto the
key travels in every statement, where ``log_statement`` or ``pg_stat_statements`` can record it. Here the
database only ever holds ciphertext. Fernet keys rotate with :class:`MultiFernet`: the first key
encrypts, every key decrypts (``RMBG_AUTH__ENCRYPTION_KEYS`` lists them, newest first).

Uniqueness without decryption: ``digest`` is HMAC-SHA-256 of the normalised email under a key derived
from the first encryption key, so "is this email taken?" is one indexed equality. A rotation puts a new
key first, and the rows keep digests made under the keys before it: ``digests`` gives the email's digest
under every listed key, which lookups and the taken-check match, and a user's row is re-digested under the
newest key when it is written again.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shared.exceptions import ConfigError


def _fernet(keys: str) -> tuple[MultiFernet, list[str]]:
    """The Fernet keys of ``RMBG_AUTH__ENCRYPTION_KEYS`` (comma-separated, newest first), and their texts."""
    parts = [k.strip() for k in keys.split(",") if k.strip()]
    if not parts:
        raise ConfigError("RMBG_AUTH__ENCRYPTION_KEYS is empty")
    try:
        return MultiFernet([Fernet(k.encode()) for k in parts]), parts
    except ValueError as exc:
        raise ConfigError(f"RMBG_AUTH__ENCRYPTION_KEYS: {exc}") from None


class EmailCipher:
    def __init__(self, keys: str) -> None:
        self._fernet, parts = _fernet(keys)
        self._digest_keys = [hashlib.sha256(b"rmbg-email-digest:" + k.encode()).digest() for k in parts]

    @staticmethod
    def normalise(email: str) -> str:
        return email.strip().lower()

    def encrypt(self, email: str) -> bytes:
        return self._fernet.encrypt(self.normalise(email).encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken:
            raise ConfigError("an email does not decrypt with RMBG_AUTH__ENCRYPTION_KEYS (key rotated out?)") from None

    def digest(self, email: str) -> bytes:
        """The digest to store: under the newest key."""
        return self.digests(email)[0]

    def digests(self, email: str) -> list[bytes]:
        """The email's digest under every key, newest first: what rows written before a rotation hold."""
        normalised = self.normalise(email).encode()
        return [hmac.new(key, normalised, hashlib.sha256).digest() for key in self._digest_keys]


class SecretCipher:
    """Other secrets the services must read back (webhook signing secrets), under the same Fernet keys and
    rotation as emails: ``RMBG_AUTH__ENCRYPTION_KEYS``, newest first; the first encrypts, all decrypt."""

    def __init__(self, keys: str, *, what: str = "a secret") -> None:
        self._fernet, _ = _fernet(keys)
        self._what = what

    def encrypt(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken:
            raise ConfigError(
                f"{self._what} does not decrypt with RMBG_AUTH__ENCRYPTION_KEYS (key rotated out?)"
            ) from None
