"""Object keys: derived from content and what changes the bytes, fanned out by the hash's first byte."""

from __future__ import annotations

import hashlib
import re

from pydantic import TypeAdapter

from shared.contracts.events import ObjectKey
from shared.storage import ObjectKeys
from shared.storage.keys import ParsedKey, model_slug

SHA = hashlib.sha256(b"an image").hexdigest()
PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")


def test_original_fans_out_by_the_first_byte_of_the_hash() -> None:
    assert ObjectKeys.original(SHA, "png") == f"original/{SHA[:2]}/{SHA}.png"
    assert ObjectKeys.original(SHA, "jpg") != ObjectKeys.original(SHA, "png")


def test_mask_depends_on_content_model_revision_and_threshold_only() -> None:
    key = ObjectKeys.mask(SHA, model_name="briaai/RMBG-2.0", model_revision="abc", threshold_tag="soft")
    assert key == f"mask/{SHA[:2]}/{SHA}/briaai_RMBG-2.0@abc/soft.png"
    same = ObjectKeys.mask(SHA, model_name="briaai/RMBG-2.0", model_revision="abc", threshold_tag="soft")
    assert same == key, "a retry writes the same key"
    others = {
        ObjectKeys.mask(hashlib.sha256(b"other").hexdigest(), model_name="briaai/RMBG-2.0", model_revision="abc",
                        threshold_tag="soft"),
        ObjectKeys.mask(SHA, model_name="other-model", model_revision="abc", threshold_tag="soft"),
        ObjectKeys.mask(SHA, model_name="briaai/RMBG-2.0", model_revision="def", threshold_tag="soft"),
        ObjectKeys.mask(SHA, model_name="briaai/RMBG-2.0", model_revision="abc", threshold_tag="t0500"),
    }
    assert key not in others and len(others) == 4


def test_processed_names_the_params_hash_and_extension() -> None:
    key = ObjectKeys.processed(
        SHA, model_name="tiny", model_revision=None, params_hash="0123456789abcdef-webp", extension="webp"
    )
    assert key == f"processed/{SHA[:2]}/{SHA}/tiny@norev/0123456789abcdef-webp.webp"
    png = ObjectKeys.processed(
        SHA, model_name="tiny", model_revision=None, params_hash="0123456789abcdef-png", extension="png"
    )
    assert png != key


def test_threshold_tag() -> None:
    assert ObjectKeys.threshold_tag(None) == "soft"
    assert ObjectKeys.threshold_tag(0.0) == "t0000"
    assert ObjectKeys.threshold_tag(0.5) == "t0500"
    assert ObjectKeys.threshold_tag(1.0) == "t1000"
    assert ObjectKeys.threshold_tag(0.1234) == "t0123"
    # Thresholds a thousandth apart get different masks; closer ones share one (they round together).
    assert ObjectKeys.threshold_tag(0.501) != ObjectKeys.threshold_tag(0.5)
    assert ObjectKeys.threshold_tag(0.5001) == ObjectKeys.threshold_tag(0.5)


def test_model_slug_keeps_keys_safe_whatever_the_name() -> None:
    assert model_slug("briaai/RMBG-2.0", None) == "briaai_RMBG-2.0@norev"
    assert model_slug("a b/../c\x00\n", "rev with spaces and more than twelve") == "a_b_.._c@rev_with_spa"
    assert model_slug("x", "0123456789abcdef0123") == "x@0123456789ab", "revisions (commit hashes) cut to 12"
    hostile = ObjectKeys.mask(SHA, model_name="../../etc/passwd\x7f", model_revision="\x00" * 40, threshold_tag="soft")
    assert PRINTABLE.match(hostile) and "/../" not in hostile.replace(SHA, "")
    assert len(hostile) <= 512


def test_keys_fit_the_contracts_object_key() -> None:
    adapter: TypeAdapter[str] = TypeAdapter(ObjectKey)
    long_name = "m" * 300
    for key in (
        ObjectKeys.original(SHA, "webp"),
        ObjectKeys.mask(SHA, model_name=long_name, model_revision="r", threshold_tag="t0500"),
    ):
        assert adapter.validate_python(key) == key


def test_keys_written_here_parse_back() -> None:
    from shared.contracts import CutoutFormat

    assert ObjectKeys.parse(ObjectKeys.original(SHA, "jpg")) == ParsedKey("original", SHA)
    mask = ObjectKeys.job_mask(SHA, model_name="briaai/RMBG-2.0", model_revision="abc", threshold=0.5)
    assert mask == ObjectKeys.mask(SHA, model_name="briaai/RMBG-2.0", model_revision="abc", threshold_tag="t0500")
    assert ObjectKeys.parse(mask) == ParsedKey("mask", SHA)
    for fmt in CutoutFormat:
        key = ObjectKeys.cutout(SHA, model_name="m", model_revision=None, params_hash="0123abcd", fmt=fmt)
        assert ObjectKeys.parse(key) == ParsedKey("processed", SHA, fmt), key
    for foreign in ("uploads/x.png", "original/zz/nothex.png", f"original/00/{SHA}.png", "mask", ""):
        assert ObjectKeys.parse(foreign) is None, foreign
