"""One exception root for the whole pipeline: callers catch ``RmbgError`` and know it is ours."""

from __future__ import annotations


class RmbgError(Exception):
    """Root of every error raised on purpose by rmbg-pipeline code."""


class ConfigError(RmbgError):
    """Settings are missing, malformed or unsafe for the chosen environment."""


class ContractError(RmbgError):
    """A message does not match its event contract (malformed, wrong version, too large)."""


class ImageRejected(RmbgError):
    """An image failed validation: unsupported format, corrupt, too many bytes or pixels."""

    def __init__(self, reason: str, *, code: str = "invalid_image") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class StorageError(RmbgError):
    """The object store refused or lost an operation."""


class ModelError(RmbgError):
    """The segmentation model could not be loaded or failed on a batch."""


class InvalidTransition(RmbgError):
    """A job was asked to move backwards (e.g. completed -> processing)."""
