"""Object keys derive from content, so a retry rewrites the same key with the same bytes and the same
image uploaded twice is stored once. Prefixes follow the design: original/, mask/, processed/.

The two-hex-digit fan-out spreads keys across 256 prefixes, which S3 partitions by for request rate.
This module is the one place that writes keys (``job_mask`` for inference and the persister alike,
``cutout`` with the format folded into its name) and reads them back (``parse``, for fsck).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from shared.contracts.events import CutoutFormat
from shared.imaging import CUTOUT_CONTENT_TYPES

_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


# Pure, and a deployment serves a handful of (model, revision) pairs, while every job row read derives two
# keys from it (JobRecord.from_row): cached, from_row of a 500-row batch took 7.8 instead of 10.3 us a row.
@functools.lru_cache(maxsize=1024)
def model_slug(model_name: str, model_revision: str | None) -> str:
    base = _SLUG.sub("_", model_name).strip("_")
    rev = _SLUG.sub("_", model_revision or "norev")[:12]
    return f"{base}@{rev}"


_SHA = re.compile(r"^[0-9a-f]{64}$")
ObjectKind = Literal["original", "mask", "processed"]


@dataclass(frozen=True)
class ParsedKey:
    """What a key says about its object: which kind, of which content, and a cut-out's format."""

    kind: ObjectKind
    content_sha256: str
    cutout_format: CutoutFormat | None = None


@dataclass(frozen=True)
class ObjectKeys:
    @staticmethod
    def original(sha256_hex: str, extension: str) -> str:
        return f"original/{sha256_hex[:2]}/{sha256_hex}.{extension}"

    @staticmethod
    def mask(sha256_hex: str, *, model_name: str, model_revision: str | None, threshold_tag: str) -> str:
        # The mask depends on content, model and threshold only; the cut-out format does not change it.
        slug = model_slug(model_name, model_revision)
        return f"mask/{sha256_hex[:2]}/{sha256_hex}/{slug}/{threshold_tag}.png"

    @staticmethod
    def processed(
        sha256_hex: str, *, model_name: str, model_revision: str | None, params_hash: str, extension: str
    ) -> str:
        slug = model_slug(model_name, model_revision)
        return f"processed/{sha256_hex[:2]}/{sha256_hex}/{slug}/{params_hash}.{extension}"

    @staticmethod
    def threshold_tag(threshold: float | None) -> str:
        return "soft" if threshold is None else f"t{round(threshold * 1000):04d}"

    @staticmethod
    def job_mask(sha256_hex: str, *, model_name: str, model_revision: str | None, threshold: float | None) -> str:
        """The mask key of a job's content, model and threshold: what inference writes and the persister reads."""
        return ObjectKeys.mask(
            sha256_hex,
            model_name=model_name,
            model_revision=model_revision,
            threshold_tag=ObjectKeys.threshold_tag(threshold),
        )

    @staticmethod
    def cutout(
        sha256_hex: str, *, model_name: str, model_revision: str | None, params_hash: str, fmt: CutoutFormat
    ) -> str:
        """The cut-out's key; its name carries the format it is encoded in (``<params_hash>-<format>.<ext>``),
        so a rebuild (fsck) re-encodes it the same way."""
        extension, _ = CUTOUT_CONTENT_TYPES[fmt]
        return ObjectKeys.processed(
            sha256_hex,
            model_name=model_name,
            model_revision=model_revision,
            params_hash=f"{params_hash}-{fmt.value}",
            extension=extension,
        )

    @staticmethod
    def parse(key: str) -> ParsedKey | None:
        """The kind, content and (for a cut-out) format of a key this module wrote; None for any other key."""
        parts = key.split("/")
        if len(parts) < 3 or parts[0] not in ("original", "mask", "processed"):
            return None
        kind: ObjectKind = parts[0]  # type: ignore[assignment]
        sha = parts[2].split(".", 1)[0]
        if not _SHA.match(sha) or parts[1] != sha[:2]:
            return None
        if kind != "processed":
            return ParsedKey(kind, sha)
        stem = parts[-1].rsplit(".", 1)[0]
        try:
            fmt = CutoutFormat(stem.rsplit("-", 1)[-1])
        except ValueError:
            return None
        return ParsedKey(kind, sha, fmt)
