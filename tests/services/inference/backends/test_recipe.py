"""The torch+Pillow recipe against independent references of the model card's torchvision path.

torchvision cannot be imported here, so each reference restates what torchvision does (read from its source:
``Resize`` -> ``img.resize((w, h), Image.BILINEAR)``, ``ToTensor`` -> ``/255``, ``Normalize`` ->
``(x - mean) / std`` in float32, ``ToPILImage`` -> ``mul(255).byte()``) with numpy and plain Pillow calls.
Measured on the four photos: preprocessing differs from the numpy reference by 0.0 (bit-identical); the
tolerance asserted is 1e-6. The restored mask equals the card's putalpha path exactly.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image

from services.inference.backends import recipe
from shared.exceptions import ModelError

PREPROCESS_TOLERANCE = 1e-6


def reference_model_input(image: Image.Image) -> npt.NDArray[np.float32]:
    """Resize((1024, 1024)) + ToTensor + Normalize, restated with numpy."""
    resized = image.convert("RGB").resize((1024, 1024), Image.Resampling.BILINEAR)
    hwc = np.asarray(resized, dtype=np.float32) / np.float32(255)
    mean = np.asarray((0.485, 0.456, 0.406), dtype=np.float32)
    std = np.asarray((0.229, 0.224, 0.225), dtype=np.float32)
    return ((hwc - mean) / std).transpose(2, 0, 1)


def card_alpha(prob: torch.Tensor, image: Image.Image) -> npt.NDArray[np.uint8]:
    """The card's tail: ToPILImage(pred), mask.resize(image.size), image.putalpha(mask); alpha read back."""
    pred_pil = Image.fromarray(prob.mul(255).byte().numpy())
    mask = pred_pil.resize(image.size)
    cutout = image.convert("RGB")
    cutout.putalpha(mask)
    return np.asarray(cutout)[:, :, 3]


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_preprocess_matches_numpy_reference(photos: dict[str, Image.Image], name: str) -> None:
    image = photos[name]
    ours = recipe.preprocess(image)
    assert ours.shape == (3, 1024, 1024)
    assert ours.dtype == torch.float32
    diff = np.abs(ours.numpy() - reference_model_input(image)).max()
    assert diff <= PREPROCESS_TOLERANCE


def test_preprocess_batch_stacks_in_order(photos: dict[str, Image.Image]) -> None:
    images = list(photos.values())
    batch = recipe.preprocess_batch(images)
    assert batch.shape == (4, 3, 1024, 1024)
    for row, image in zip(batch, images, strict=True):
        assert torch.equal(row, recipe.preprocess(image))


def test_preprocess_batch_casts_last(photos: dict[str, Image.Image]) -> None:
    image = photos["coffee"]
    half = recipe.preprocess_batch([image], dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    # Normalised in float32 first, then rounded once: within bf16's half-ulp of the float32 values.
    full = recipe.preprocess(image)
    assert torch.allclose(half[0].float(), full, rtol=2**-8, atol=0)


def test_resize_is_pil_bilinear_and_identity_at_model_size(photos: dict[str, Image.Image]) -> None:
    image = photos["chelsea"]
    expected = image.resize((1024, 1024), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(recipe.resize_for_model(image)), np.asarray(expected))
    already = expected.copy()
    assert recipe.resize_for_model(already) is already


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_non_rgb_inputs_become_three_channels(photos: dict[str, Image.Image], mode: str) -> None:
    image = photos["astronaut"].convert(mode)
    tensor = recipe.preprocess(image)
    assert tensor.shape == (3, 1024, 1024)
    assert np.abs(tensor.numpy() - reference_model_input(image)).max() <= PREPROCESS_TOLERANCE


def test_to_normalized_tensor_refuses_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        recipe.to_normalized_tensor(Image.new("L", (4, 4)))


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_mask_restore_matches_card_putalpha_exactly(photos: dict[str, Image.Image], name: str) -> None:
    image = photos[name]
    # Smooth logits with a full range of values, like a real matte's edges, plus seeded noise.
    generator = torch.Generator().manual_seed(7)
    yy, xx = torch.meshgrid(torch.linspace(-6, 6, 1024), torch.linspace(-6, 6, 1024), indexing="ij")
    noise = 0.3 * torch.randn(1024, 1024, generator=generator)
    logits = (3 - (xx.pow(2) + yy.pow(2)).sqrt() + noise)[None, None]
    (ours,) = recipe.postprocess(logits, [image.size])
    expected = card_alpha(logits[0, 0].sigmoid(), image)
    assert ours.dtype == np.uint8
    assert ours.shape == (image.height, image.width)
    assert np.array_equal(ours, expected)
    # The comparison means something only if the matte has soft edges, not just 0 and 255.
    assert len(np.unique(ours)) > 100


def test_to_pil_semantics_truncate_not_round() -> None:
    probs = torch.tensor([0.0, 0.5, 0.999, 1.0, 1 / 255 - 1e-4, 1 / 255 + 1e-4])
    logits = torch.logit(probs, eps=0.0).clamp(-1e4, 1e4).view(1, 1, 1, -1)
    (mask,) = recipe.logits_to_model_masks(logits)
    assert mask.mode == "L"
    # 0.5*255 = 127.5 -> 127; 0.999*255 = 254.7 -> 254: truncation, as mul(255).byte() does.
    assert list(np.asarray(mask)[0]) == [0, 127, 254, 255, 0, 1]


def test_select_logits_takes_the_last_output() -> None:
    coarse, fine = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 32, 32)
    assert recipe.select_logits([coarse, fine], 2) is fine


@pytest.mark.parametrize(
    "outputs",
    [
        torch.zeros(1, 1, 8, 8),
        [],
        [torch.zeros(1, 1, 8, 8), "not a tensor"],
        [torch.zeros(1, 3, 8, 8)],
        [torch.zeros(2, 1, 8, 8)],
        [torch.zeros(1, 8, 8)],
    ],
    ids=["bare-tensor", "empty", "not-tensor", "three-channels", "wrong-batch", "three-dims"],
)
def test_select_logits_refuses_unexpected_outputs(outputs: object) -> None:
    with pytest.raises(ModelError):
        recipe.select_logits(outputs, 1)


def test_non_finite_logits_are_a_model_error() -> None:
    logits = torch.zeros(1, 1, 4, 4)
    logits[0, 0, 1, 1] = float("nan")
    with pytest.raises(ModelError, match="non-finite"):
        recipe.logits_to_model_masks(logits)


def test_postprocess_checks_sizes_count() -> None:
    with pytest.raises(ValueError):
        recipe.postprocess(torch.zeros(2, 1, 4, 4), [(4, 4)])


@pytest.mark.parametrize("size", [(512, 512), (640, 427), (1600, 1200), (1024, 1024)])
def test_preprocessing_on_the_device_is_within_one_level_of_the_card(size: tuple[int, int]) -> None:
    """PIL rounds the resized image to 8 bits, torch does not: measured at most 1.0 level apart (as 8-bit
    input levels), 0.2-0.3 on average; at 1024x1024 (no resize) both are exact."""
    rng = np.random.default_rng(7)
    base = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    card = recipe.preprocess_batch([base])
    device = recipe.preprocess_on_device([base], device="cpu")
    levels = (card - device).abs() * torch.tensor(recipe.STD).view(1, 3, 1, 1) * 255
    limit = 1e-3 if size == recipe.MODEL_SIZE else 1.0 + 1e-3
    assert device.shape == card.shape == (1, 3, 1024, 1024) and device.dtype == torch.float32
    assert float(levels.max()) <= limit, float(levels.max())


@pytest.mark.parametrize("size", [(512, 512), (640, 427), (1600, 1200)])
def test_postprocessing_on_the_device_is_within_two_levels_of_the_card(size: tuple[int, int]) -> None:
    """The matte resized back in float and truncated once, against the card's truncate-then-PIL-bicubic:
    measured at most 2 levels apart on a smooth soft logit field."""
    torch.manual_seed(0)
    logits = torch.nn.functional.avg_pool2d(torch.randn(1, 1, 1024, 1024) * 0.3, 9, 1, 4) * 20
    card = recipe.postprocess(logits, [size])[0].astype(np.int16)
    device = recipe.postprocess_on_device(logits, [size])[0]
    assert device.dtype == np.uint8 and device.shape == (size[1], size[0])
    assert int(np.abs(card - device.astype(np.int16)).max()) <= 2


def test_postprocessing_on_the_device_refuses_non_finite_logits() -> None:
    logits = torch.zeros(1, 1, 8, 8)
    logits[0, 0, 3, 3] = float("nan")
    with pytest.raises(ModelError, match="non-finite"):
        recipe.postprocess_on_device(logits, [(8, 8)])
