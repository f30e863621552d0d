"""What a person types, made into a request: paths into image files, ``k=v`` into params, a retry-safe key."""

from __future__ import annotations

import hashlib
import json
import mimetypes
from collections.abc import Iterable
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"})


class InputError(ValueError):
    """An argument that cannot be used as given (the message names it)."""


def expand_paths(args: Iterable[Path]) -> list[Path]:
    """Files as given, in order (the API judges whether they are images: its reason is the useful one),
    and for each directory the image files under it by extension, sorted, hidden ones skipped.
    Each file once, however often it is named."""
    found: list[Path] = []
    seen: set[Path] = set()
    for arg in args:
        if arg.is_dir():
            members = sorted(
                p
                for p in arg.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(arg).parts)
            )
            if not members:
                raise InputError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {arg}")
        elif arg.exists():
            members = [arg]
        else:
            raise InputError(f"no such file or directory: {arg}")
        for path in members:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(path)
    return found


def parse_params(pairs: Iterable[str]) -> dict[str, Any]:
    """``threshold=0.5 cutout_format=png`` -> ``{"threshold": 0.5, "cutout_format": "png"}``.

    A value is read as JSON when it is JSON (numbers, true/false, null), else kept as text, so nobody has
    to quote a format name; a later pair wins over an earlier one for the same key."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"expected key=value, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def parse_tag_options(values: Iterable[str]) -> list[str]:
    """``--tag a --tag b,c`` -> ``["a", "b", "c"]``: both spellings, blanks dropped, order kept."""
    tags: list[str] = []
    for value in values:
        for tag in value.split(","):
            if tag.strip() and tag.strip() not in tags:
                tags.append(tag.strip())
    return tags


def idempotency_key(data: bytes, *, params: dict[str, Any], tags: list[str], callback_url: str | None) -> str:
    """The same file asked for the same way gives the same key, so a retried submit (a lost answer, a
    rerun after Ctrl+C) is answered with the job the first one made instead of a second job."""
    request = json.dumps({"params": params, "tags": sorted(tags), "callback_url": callback_url}, sort_keys=True)
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(data).digest())
    digest.update(request.encode())
    return f"rmbg-cli-{digest.hexdigest()}"


def content_type(path: Path) -> str:
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"
