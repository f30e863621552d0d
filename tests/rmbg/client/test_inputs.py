"""What a person types, made into a request: paths, k=v params, tags, the retry-safe key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmbg.client.inputs import InputError, expand_paths, idempotency_key, parse_params, parse_tag_options


def test_params_read_json_values_and_keep_words_as_text() -> None:
    got = parse_params(["threshold=0.5", "cutout_format=png", "webp_quality=90", "x=null", "y=", "threshold=1"])
    assert got == {"threshold": 1, "cutout_format": "png", "webp_quality": 90, "x": None, "y": ""}


@pytest.mark.parametrize("bad", ["threshold", "=0.5", " =1"])
def test_a_param_without_key_or_equals_is_refused_by_name(bad: str) -> None:
    with pytest.raises(InputError, match="key=value"):
        parse_params([bad])


def test_tags_take_both_spellings_once_each() -> None:
    assert parse_tag_options(["a", "b, c", "a", " ", "c,d"]) == ["a", "b", "c", "d"]


def test_directories_expand_to_their_images_files_stay_as_given(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.PNG", "a.jpg", "sub/c.webp", "notes.txt", ".hidden/d.png", ".e.png"):
        (tmp_path / name).write_bytes(b"x")
    loose = tmp_path / "notes.txt"
    got = expand_paths([tmp_path, loose, tmp_path / "a.jpg"])
    assert got == [tmp_path / "a.jpg", tmp_path / "b.PNG", tmp_path / "sub/c.webp", loose]


def test_a_missing_path_or_an_empty_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        expand_paths([tmp_path / "nope.png"])
    with pytest.raises(InputError, match="no image files"):
        expand_paths([tmp_path])


def test_the_idempotency_key_changes_with_the_file_and_the_request_only() -> None:
    base = idempotency_key(b"img", params={"threshold": 0.5}, tags=["a", "b"], callback_url=None)
    assert base == idempotency_key(b"img", params={"threshold": 0.5}, tags=["b", "a"], callback_url=None)
    assert base != idempotency_key(b"img2", params={"threshold": 0.5}, tags=["a", "b"], callback_url=None)
    assert base != idempotency_key(b"img", params={"threshold": 0.6}, tags=["a", "b"], callback_url=None)
    assert base != idempotency_key(b"img", params={"threshold": 0.5}, tags=["a"], callback_url=None)
    assert len(base) <= 255
