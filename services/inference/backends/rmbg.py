"""RMBG-2.0 (BiRefNet architecture) through transformers' remote-code loading path, as on the model card."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from services.inference.backends import recipe
from services.inference.backends.base import Chunk, Matte
from shared.exceptions import ModelError, ModelOutOfMemory

__all__ = ["DEFAULT_SOURCE", "WEIGHT_FILES", "RmbgBackend", "local_revision"]

DEFAULT_SOURCE = "briaai/RMBG-2.0"
# What transformers' from_pretrained accepts as weights in a local folder, in its order of preference.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_HASHED_PREFIX = 1024 * 1024
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Where resize and normalisation (and the matte's resize back) run: "host" is the card's PIL path, exact;
# "device" runs them in torch on the model's device (recipe.preprocess_on_device), within 1-2 levels of it.
Preprocess = Literal["host", "device"]
# How a half precision is applied: "autocast" keeps the weights in float32 and runs the convolutions and
# matmuls in half under torch.autocast (softmax, norms and the sigmoid stay float32); "cast" converts the
# weights as the card does (model.half()), halving their memory (885 MB -> 442 MB for RMBG-2.0).
Precision = Literal["autocast", "cast"]


def local_revision(folder: Path) -> str:
    """Identify a local model folder's weights: the SHA-256 (hex) of the first MiB of its weights file, or
    for sharded weights of their index and the first MiB of every shard it names.

    The first MiB holds the safetensors header (every tensor's name, dtype, shape and offset) and the first
    tensors, so retrained or re-exported weights change it, while hashing 885 MB at every start would cost
    seconds. Hex digits only: object keys carry the revision's first 12 characters (shared/storage/keys.py
    ``model_slug``), and the ``sha256:`` prefix this once had left 5 digits of the digest there, a sharded
    folder's ``config-sha256:`` none, so new weights under the same name reused the old weights' masks.
    """
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = folder / filename
        if path.is_file():
            with path.open("rb") as handle:
                return hashlib.sha256(handle.read(_HASHED_PREFIX)).hexdigest()
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return _sharded_revision(folder, index)
    config = folder / "config.json"
    if config.is_file():
        return hashlib.sha256(config.read_bytes()).hexdigest()
    raise ModelError(f"{folder} holds neither weights nor config.json")


def _sharded_revision(folder: Path, index: Path) -> str:
    raw = index.read_bytes()
    try:
        weight_map = json.loads(raw)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{index} is not a safetensors index (no weight_map of tensor -> file): {exc}") from exc
    digest = hashlib.sha256(raw)
    for shard in shards:
        path = folder / str(shard)
        if Path(str(shard)).name != shard or not path.is_file():
            raise ModelError(f"{index} names {shard!r}, which is not a file of {folder}")
        with path.open("rb") as handle:
            digest.update(handle.read(_HASHED_PREFIX))
    return digest.hexdigest()


def _hub_revision(source: str, revision: str | None) -> str:
    """The commit a hub load resolved to, read from the local cache (no network call)."""
    if revision is not None and _COMMIT_RE.match(revision):
        return revision
    # Deferred import: huggingface_hub comes with transformers; only the hub path needs it.
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json", revision=revision)
    if isinstance(cached, str):
        # The cache lays files out as .../snapshots/<commit>/config.json.
        commit = Path(cached).parent.name
        if _COMMIT_RE.match(commit):
            return commit
    # A branch or tag name is still better than nothing, but it is mutable: say so in the value.
    return f"ref:{revision or 'main'}"


def _check_device(device: str, dtype: torch.dtype) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"invalid device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    if dtype not in SUPPORTED_DTYPES:
        raise ModelError(f"unsupported dtype {dtype}; use one of {SUPPORTED_DTYPES}")
    if dev.type == "cpu" and dtype == torch.float16:
        # Several CPU kernels lack fp16 or run it far slower than fp32; the card's fp16 path is a GPU one.
        raise ModelError("float16 inference needs a CUDA device; use float32 (or bfloat16) on the CPU")
    return dev


def _check_local_folder(folder: Path) -> None:
    """Fail with a clear message before transformers does with a long, generic one."""
    if not (folder / "config.json").is_file():
        raise ModelError(f"model folder {folder} has no config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelError(f"model folder {folder} has no weights (looked for {', '.join(WEIGHT_FILES)})")


class RmbgBackend:
    """A loaded RMBG-2.0-layout model (hub id or local folder) behind ``SegmentationBackend``."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str,
        revision: str,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        max_batch: int = 8,
        preprocess: Preprocess = "host",
        precision: Precision = "autocast",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.name = name
        self.revision = revision
        self.max_batch = max_batch
        self.device = device
        self.dtype = dtype
        self.preprocess = preprocess
        # Autocast only means something for a half precision; float32 runs as it is.
        self.autocast = precision == "autocast" and dtype != torch.float32
        # What the model is fed: float32 under autocast (it casts inside), else the weights' dtype.
        self._input_dtype = torch.float32 if self.autocast else dtype
        self._model = model

    @classmethod
    def load(
        cls,
        source: str = DEFAULT_SOURCE,
        *,
        revision: str | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch: int = 8,
        preprocess: Preprocess = "host",
        precision: Precision = "autocast",
    ) -> RmbgBackend:
        """Load from a hub id (e.g. ``briaai/RMBG-2.0``) or a local folder with the hub repo's layout.

        Any failure (missing weights, missing packages the remote code imports, bad device) is a
        ``ModelError``; nothing else is substituted.
        """
        if max_batch < 1:
            raise ModelError(f"max_batch must be >= 1, got {max_batch}")
        dev = _check_device(device, dtype)
        folder = Path(source)
        is_local = folder.is_dir()  # the same test transformers applies to tell a folder from a hub id
        if is_local:
            _check_local_folder(folder)
        # Deferred import: transformers takes seconds to import and only this backend needs it.
        from transformers import AutoModelForImageSegmentation

        # As on the card: lets fp32 matmuls use TF32 on GPUs that have it. Process-wide, like the card's call.
        torch.set_float32_matmul_precision("high")
        try:
            model: Any = AutoModelForImageSegmentation.from_pretrained(
                source, trust_remote_code=True, revision=revision
            )
        except Exception as exc:
            # Remote code can raise anything (ImportError for a package it needs, OSError for files, ...);
            # the caller needs one type, and the message keeps the cause.
            raise ModelError(f"could not load segmentation model {source!r}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, torch.nn.Module):
            raise ModelError(f"{source!r} did not load as a torch module but as {type(model).__name__}")
        weights_dtype = torch.float32 if precision == "autocast" else dtype
        try:
            model = model.to(device=dev, dtype=weights_dtype)
        except (RuntimeError, TypeError) as exc:
            raise ModelError(f"could not move the model to {dev} / {dtype}: {exc}") from exc
        model.eval()
        if is_local:
            name, rev = folder.resolve().name, local_revision(folder)
        else:
            name, rev = source, _hub_revision(source, revision)
        return cls(
            model,
            name=name,
            revision=rev,
            device=dev,
            dtype=dtype,
            max_batch=max_batch,
            preprocess=preprocess,
            precision=precision,
        )

    def predict(self, images: Sequence[Image.Image]) -> list[Matte]:
        """One uint8 matte per image at its original size; batches of at most ``max_batch``."""
        mattes: list[Matte] = []
        for start in range(0, len(images), self.max_batch):
            mattes.extend(self.finish(self.forward(self.prepare(images[start : start + self.max_batch]))))
        return mattes

    def prepare(self, images: Sequence[Image.Image]) -> Chunk:
        """The card's preprocessing of at most ``max_batch`` images, the batch on the model's device."""
        if len(images) > self.max_batch:
            raise ValueError(f"{len(images)} images for a chunk of at most {self.max_batch}")
        sizes = [image.size for image in images]
        with self._device_memory("preprocessing", len(images)):
            if self.preprocess == "device":
                batch = recipe.preprocess_on_device(images, device=self.device, dtype=self._input_dtype)
            else:
                batch = recipe.preprocess_batch(images, device=self.device, dtype=self._input_dtype)
        return Chunk(sizes=sizes, inputs=batch)

    def forward(self, chunk: Chunk) -> Chunk:
        """The network on the prepared batch: its logits, checked to be (N, 1, H, W)."""
        precision = (
            torch.autocast(device_type=self.device.type, dtype=self.dtype)
            if self.autocast
            else contextlib.nullcontext()
        )
        try:
            with torch.inference_mode(), precision:
                outputs = self._model(chunk.inputs)
        except torch.OutOfMemoryError as exc:
            raise self._out_of_memory("the forward pass", len(chunk.sizes), exc) from exc
        except Exception as exc:
            # Out of memory, shape errors inside remote code, ...: one type for the caller to handle.
            raise ModelError(
                f"{self.name} failed on a batch of {len(chunk.sizes)}: {type(exc).__name__}: {exc}"
            ) from exc
        chunk.outputs = recipe.select_logits(outputs, len(chunk.sizes))
        if self.device.type == "cuda":
            # Kernels run asynchronously: waiting here makes this call's time the GPU's time, and the next
            # chunk's pass would queue behind this one anyway. Host threads keep preparing meanwhile.
            torch.cuda.synchronize(self.device)
        return chunk

    def finish(self, chunk: Chunk) -> list[Matte]:
        """The card's postprocessing: one matte per image at its original size."""
        with self._device_memory("postprocessing", len(chunk.sizes)):
            if self.preprocess == "device":
                return recipe.postprocess_on_device(chunk.outputs, chunk.sizes)
            return recipe.postprocess(chunk.outputs, chunk.sizes)

    @contextlib.contextmanager
    def _device_memory(self, step: str, images: int) -> Iterator[None]:
        # Pre- and postprocessing on the device hold each image at its own size (a 40 MP upload is about
        # 480 MB of float32 before its resize): out of memory there can be the image's, so it is a
        # ModelError, which the handler splits down to the one image and then fails as that image's.
        try:
            yield
        except torch.OutOfMemoryError as exc:
            raise ModelError(self._memory_message(step, images, exc)) from exc

    def _out_of_memory(self, step: str, images: int, exc: BaseException) -> ModelOutOfMemory:
        # The forward pass sees every image at the model's size, so its memory is the device's state, not
        # the image's: torch.OutOfMemoryError (CUDA's and other accelerators') there is retried.
        return ModelOutOfMemory(self._memory_message(step, images, exc))

    def _memory_message(self, step: str, images: int, exc: BaseException) -> str:
        return f"{self.name}: out of {self.device.type} memory in {step} of {images} image(s): {exc}"
