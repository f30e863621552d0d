"""load_backend: picks the backend asked for, refuses what it does not know, never falls back silently."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from services.inference.backends.classic import ClassicBackend
from services.inference.backends.factory import load_backend
from services.inference.backends.rmbg import RmbgBackend
from shared.exceptions import ConfigError, ModelError, RmbgError


def test_classic_kind() -> None:
    backend = load_backend("classic", max_batch=2)
    assert isinstance(backend, ClassicBackend)
    assert backend.max_batch == 2


def test_rmbg_kind_loads_a_local_folder(tiny_rmbg_dir: Path) -> None:
    backend = load_backend("rmbg", model_source=str(tiny_rmbg_dir), max_batch=4)
    assert isinstance(backend, RmbgBackend)
    assert backend.name == "tiny_rmbg"
    assert re.fullmatch(r"[0-9a-f]{64}", backend.revision), backend.revision  # local_revision: hex only
    assert backend.max_batch == 4


def test_unknown_kind_is_refused() -> None:
    bad: Any = "u2net"
    with pytest.raises(ConfigError, match="u2net"):
        load_backend(bad)


def test_unknown_dtype_is_refused(tiny_rmbg_dir: Path) -> None:
    bad: Any = "int8"
    with pytest.raises(ConfigError, match="int8"):
        load_backend("rmbg", model_source=str(tiny_rmbg_dir), dtype=bad)


@pytest.mark.parametrize("kind", ["rmbg", "classic"])
def test_non_positive_batch_is_refused(kind: Any) -> None:
    with pytest.raises(ConfigError):
        load_backend(kind, max_batch=0)


def test_folder_without_weights_is_a_model_error(tiny_rmbg_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no_weights"
    folder.mkdir()
    for name in ("config.json", "BiRefNet_config.py", "birefnet.py"):
        (folder / name).write_bytes((tiny_rmbg_dir / name).read_bytes())
    with pytest.raises(ModelError, match="no weights"):
        load_backend("rmbg", model_source=str(folder))


def test_empty_folder_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"config\.json"):
        load_backend("rmbg", model_source=str(tmp_path))


def test_corrupt_weights_are_a_model_error_not_a_fallback(tiny_rmbg_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "corrupt_weights"
    folder.mkdir()
    for item in tiny_rmbg_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError) as caught:
        load_backend("rmbg", model_source=str(folder))
    assert isinstance(caught.value, RmbgError)


def test_config_without_auto_map_is_a_model_error(tiny_rmbg_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no_auto_map"
    folder.mkdir()
    for item in tiny_rmbg_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError):
        load_backend("rmbg", model_source=str(folder))
