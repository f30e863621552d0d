"""services/ingest/errors.py json_object_param: what a JSON-object field accepts, and that any other input is
a 422 naming the field, never a 500."""

from __future__ import annotations

import pytest

from services.ingest.errors import ApiError, json_object_param


def test_a_json_object_is_parsed() -> None:
    assert json_object_param('{"threshold": 0.5}', "params") == {"threshold": 0.5}


@pytest.mark.parametrize(
    "raw",
    [
        "[1, 2]",
        "not json",
        '"a string"',
        "[" * 5000,  # the decoder's recursion limit: a RecursionError, not a JSONDecodeError
        "[" * 5000 + "]" * 5000,
        '{"a": ' * 5000 + "1" + "}" * 5000,
    ],
    ids=["list", "not-json", "string", "deep-open", "deep-list", "deep-object"],
)
def test_anything_else_is_a_422_naming_the_field(raw: str) -> None:
    with pytest.raises(ApiError) as refused:
        json_object_param(raw, "params")
    assert (refused.value.status, refused.value.code) == (422, "invalid_request")
    assert refused.value.message in ("params must be a JSON object", "params is nested too deeply")
    assert ("deeply" in refused.value.message) == (raw.startswith(("[[", '{"a": {')))
