"""Who is calling: API keys (format, keyed hash, verification through a cache) and the encryption of
personal data at rest. docs/access.md explains each choice."""

from shared.auth.crypto import EmailCipher, SecretCipher
from shared.auth.keys import ApiKeys, IssuedKey, Principal, hash_secret, parse_key

__all__ = ["ApiKeys", "EmailCipher", "IssuedKey", "Principal", "SecretCipher", "hash_secret", "parse_key"]
