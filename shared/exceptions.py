"""One exception root for the whole pipeline: callers catch ``RmbgError`` and know it is ours.

Every error a record can meet carries its failure class in its type (docs/failures.md):

- :class:`PermanentError`: this record can never succeed (a bad image, a broken contract, an encoder
  limit). The job ends ``failed`` with the reason, or the record is dead-lettered, and the line goes on.
- :class:`TransientError`: a dependency is down or slow. The batch is rewound and retried with backoff;
  nothing is skipped.

Anything else (a bug, a library error nobody classified) is retried a bounded number of times for that
record, then treated as permanent with its text kept (``shared.failures``).
"""

from __future__ import annotations


class RmbgError(Exception):
    """Root of every error raised on purpose by rmbg-pipeline code."""


class PermanentError(RmbgError):
    """Retrying this record changes nothing: fail its job with the reason, or dead-letter it."""


class TransientError(RmbgError):
    """A dependency is unreachable or timing out: retry the same record later, skip nothing."""


class Deferred(TransientError):
    """A record waits for an earlier record of the same job that is being retried (order is kept)."""


class ConfigError(RmbgError):
    """Settings are missing, malformed or unsafe for the chosen environment."""


class ContractError(PermanentError):
    """A message does not match its event contract (malformed, wrong version, too large)."""


class ImageRejected(PermanentError):
    """An image failed validation or cannot be encoded: unsupported, corrupt, too many bytes or pixels."""

    def __init__(self, reason: str, *, code: str = "invalid_image") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class StorageError(RmbgError):
    """The object store refused or lost an operation (the subclasses say which kind)."""


class ObjectMissing(StorageError, PermanentError):
    """The object a record names does not exist: no retry will make it appear."""


class ObjectTooLarge(StorageError, PermanentError):
    """The object is larger than the caller's limit."""


class StorageRefused(StorageError, PermanentError):
    """The store refused this request as malformed (a key or argument it will never accept)."""


class StorageUnavailable(StorageError, TransientError):
    """The object store is unreachable, throttling, timing out or answering 5xx."""


class ModelError(RmbgError):
    """The segmentation model could not be loaded (a start-up error, not a record's)."""


class ModelFailed(ModelError, PermanentError):
    """The model failed on one image (seen alone, so the image, not the batch, is to blame)."""


class ModelOutOfMemory(ModelError, TransientError):
    """The model's device ran out of memory in the forward pass. Every input reaches it at the model's size,
    so there one image costs what any other does: this is the device's state (a concurrent chunk,
    fragmentation), not the image's fault, and the record is retried. (Pre- and postprocessing on the
    device work at each image's own size: out of memory there is a plain ModelError.)"""


class InvalidTransition(PermanentError):
    """A job was asked to move backwards (e.g. completed -> processing)."""


class Overloaded(TransientError):
    """More work is waiting than the pipeline can finish within its configured time; try again later."""

    def __init__(self, reason: str, *, retry_after_s: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Unauthenticated(PermanentError):
    """No API key, a malformed one, an unknown one or a revoked one (the caller is not told which)."""


class RateLimited(TransientError):
    """A key sent more requests, or more jobs, than its limit allows; retry after ``retry_after_s``."""

    def __init__(self, reason: str, *, retry_after_s: int, code: str = "rate_limited") -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.code = code


class FetchRefused(PermanentError):
    """An image or webhook URL this service will not contact or could not use (``code`` says which:
    ``url_refused`` for a scheme or target the policy forbids, ``fetch_failed`` for an answer that is
    not a usable image: an HTTP error, too large, too slow, too many redirects)."""

    def __init__(self, reason: str, *, code: str = "url_refused") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
