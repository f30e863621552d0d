"""Fixtures for the backend tests: real photos from scikit-image and the tiny RMBG-layout model folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import skimage.data
from PIL import Image

from services.inference.backends.rmbg import RmbgBackend
from tests.support.tiny_rmbg import build_tiny_rmbg

# Four real photos of different sizes and aspect ratios (512x512, 600x400, 451x300, 640x427).
PHOTO_LOADERS: dict[str, Callable[[], npt.NDArray[np.uint8]]] = {
    "astronaut": skimage.data.astronaut,
    "coffee": skimage.data.coffee,
    "chelsea": skimage.data.chelsea,
    "rocket": skimage.data.rocket,
}


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    return {name: Image.fromarray(load()) for name, load in PHOTO_LOADERS.items()}


@pytest.fixture(scope="session")
def tiny_rmbg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The folder name becomes the remote-code module name (transformers_modules.tiny_rmbg).
    return build_tiny_rmbg(tmp_path_factory.mktemp("models") / "tiny_rmbg")


@pytest.fixture(scope="session")
def tiny_backend(tiny_rmbg_dir: Path) -> RmbgBackend:
    return RmbgBackend.load(str(tiny_rmbg_dir), device="cpu", max_batch=8)
