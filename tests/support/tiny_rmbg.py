"""Build a tiny stand-in for the briaai/RMBG-2.0 hub repository, for tests on machines without the weights.

The folder has the hub repo's layout and loading interface (docs/model.md), so it goes through exactly the
path the real model takes: ``AutoModelForImageSegmentation.from_pretrained(folder, trust_remote_code=True)``
reads ``config.json``'s ``auto_map``, imports ``BiRefNet_config.py`` and ``birefnet.py`` as remote code and
loads ``model.safetensors``. The quirks of the hub code that decide whether a transformers version can load
it are reproduced on purpose, so that an upgrade that would break the real model breaks the tests too:

* ``BiRefNet.__init__(self, bb_pretrained=True, config=BiRefNetConfig())``: from_pretrained passes the
  loaded config positionally, so it lands in ``bb_pretrained`` and the default config is used;
* ``__init__`` replaces ``self.config`` with a plain ``Config`` object (not a ``PretrainedConfig``);
* ``__init__`` does not call ``post_init()``;
* ``birefnet.py`` imports its config with a relative import (``from .BiRefNet_config import ...``).

What is *not* reproduced: the real ``birefnet.py`` also imports ``timm`` and ``torchvision`` (Swin backbone),
which cannot be installed here; loading the real model needs them (transformers checks the imports first).

The network itself is tiny (about 5k parameters, ~20 KB): three strided convolutions with fixed pseudo-random
weights make a 1/16-resolution feature map; the logit is how far each cell's features are from the mean of
the image border's features, scaled per image. An object that differs from its surroundings therefore gets a
higher matte than the background, which is enough for tests to tell a real matte from a constant one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = ["SEED", "TINY_STATE_SHAPES", "build_tiny_rmbg"]

SEED = 20240611

CONFIG_SOURCE = """\
from transformers import PretrainedConfig


class BiRefNetConfig(PretrainedConfig):
    model_type = "SegformerForSemanticSegmentation"

    def __init__(self, bb_pretrained=False, **kwargs):
        self.bb_pretrained = bb_pretrained
        super().__init__(**kwargs)
"""

MODEL_SOURCE = '''\
"""Tiny BiRefNet stand-in for tests (see tests/support/tiny_rmbg.py): the hub layout, not the hub network."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel

from .BiRefNet_config import BiRefNetConfig


class Config:
    # Like the hub code's Config: a plain object holding the architecture, not a PretrainedConfig.
    def __init__(self) -> None:
        self.size = 1024
        self.channels = (8, 16, 16)
        self.border_cells = 4
        self.eps = 1e-6


class BiRefNet(PreTrainedModel):
    config_class = BiRefNetConfig

    def __init__(self, bb_pretrained=True, config=BiRefNetConfig()):
        super(BiRefNet, self).__init__(config)
        bb_pretrained = config.bb_pretrained
        self.config = Config()
        self.epoch = 1
        c1, c2, c3 = self.config.channels
        self.bb = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=4, stride=4),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, kernel_size=4, stride=4),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
        )
        self.head = nn.Conv2d(1, 1, kernel_size=1)

    def forward(self, x):
        _, _, h, w = x.shape
        feats = self.bb(x)
        fh, fw = feats.shape[-2:]
        b = max(1, min(self.config.border_cells, fh // 4, fw // 4))
        ring = torch.ones((fh, fw), dtype=torch.bool, device=x.device)
        ring[b:fh - b, b:fw - b] = False
        if bool(ring.all()):
            ref = feats.mean(dim=(2, 3), keepdim=True)
        else:
            ref = feats[:, :, ring].mean(dim=2)[:, :, None, None]
        dist = (feats - ref).pow(2).mean(dim=1, keepdim=True).sqrt()
        dist = dist / (dist.mean(dim=(2, 3), keepdim=True) + self.config.eps)
        coarse = self.head(dist)
        fine = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        # Like BiRefNet in eval mode: a list of predictions, coarse to fine; the last is at input size.
        return [coarse, fine]
'''

# name -> shape of every tensor in the state dict, in the order the seeded generator fills them.
TINY_STATE_SHAPES: dict[str, tuple[int, ...]] = {
    "bb.0.weight": (8, 3, 4, 4),
    "bb.0.bias": (8,),
    "bb.2.weight": (16, 8, 4, 4),
    "bb.2.bias": (16,),
    "bb.4.weight": (16, 16, 3, 3),
    "bb.4.bias": (16,),
    "head.weight": (1, 1, 1, 1),
    "head.bias": (1,),
}

# logit = 4 * (normalised distance - 1): cells at the image's average distance from the border sit at 0.5,
# background near the border well below, a distinct object well above, without saturating everything.
_HEAD_GAIN = 4.0


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    """Deterministic weights: He-normal convolutions from a fixed seed, a fixed head."""
    generator = torch.Generator().manual_seed(SEED)
    state: dict[str, torch.Tensor] = {}
    for name, shape in TINY_STATE_SHAPES.items():
        if name == "head.weight":
            state[name] = torch.full(shape, _HEAD_GAIN)
        elif name == "head.bias":
            state[name] = torch.full(shape, -_HEAD_GAIN)
        elif name.endswith(".bias"):
            state[name] = 0.05 * torch.randn(shape, generator=generator)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            state[name] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
    return state


def build_tiny_rmbg(folder: Path) -> Path:
    """Write the tiny model folder at ``folder`` (created if needed) and return it.

    The folder's name becomes the remote-code module name in transformers' module cache
    (``transformers_modules.<name>``), so keep it a valid identifier, e.g. ``tiny_rmbg``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "_name_or_path": "tiny-rmbg-test",
        "architectures": ["BiRefNet"],
        "auto_map": {
            "AutoConfig": "BiRefNet_config.BiRefNetConfig",
            "AutoModelForImageSegmentation": "birefnet.BiRefNet",
        },
        "custom_pipelines": {
            "image-segmentation": {"pt": ["AutoModelForImageSegmentation"], "tf": [], "type": "image"}
        },
        "bb_pretrained": False,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "BiRefNet_config.py").write_text(CONFIG_SOURCE, encoding="utf-8")
    (folder / "birefnet.py").write_text(MODEL_SOURCE, encoding="utf-8")
    # metadata format "pt": transformers refuses safetensors files without it.
    save_file(_tiny_state_dict(), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
