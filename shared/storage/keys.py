"""Object keys derive from content, so a retry rewrites the same key with the same bytes and the same
image uploaded twice is stored once. Prefixes follow the design: original/, mask/, processed/.

The two-hex-digit fan-out spreads keys across 256 prefixes, which S3 partitions by for request rate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def model_slug(model_name: str, model_revision: str | None) -> str:
    base = _SLUG.sub("_", model_name).strip("_")
    rev = _SLUG.sub("_", model_revision or "norev")[:12]
    return f"{base}@{rev}"


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
