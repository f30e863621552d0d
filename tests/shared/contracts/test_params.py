"""ProcessingParams: the threshold a job states is the one its mask's key names and the one it is cut at."""

from __future__ import annotations

import numpy as np

from shared.contracts.events import ProcessingParams
from shared.imaging import apply_threshold
from shared.storage.keys import ObjectKeys

SHA = "ab" * 32


def _key(threshold: float) -> str:
    params = ProcessingParams(threshold=threshold)
    return ObjectKeys.job_mask(SHA, model_name="m", model_revision="r", threshold=params.threshold)


def test_thresholds_that_share_a_mask_key_make_the_same_mask() -> None:
    matte = np.arange(256, dtype=np.uint8).reshape(16, 16)
    masks: dict[str, bytes] = {}
    for step in range(10_001):  # every 0.0001 from 0 to 1
        params = ProcessingParams(threshold=step / 10_000)
        mask = apply_threshold(matte, params.threshold).tobytes()
        assert masks.setdefault(_key(step / 10_000), mask) == mask, f"threshold {step / 10_000}"
    assert len(masks) == 1001


def test_the_stated_threshold_is_kept_to_thousandths() -> None:
    assert ProcessingParams(threshold=0.8996) == ProcessingParams(threshold=0.9004) == ProcessingParams(threshold=0.9)
    assert ProcessingParams(threshold=0.8996).digest() == ProcessingParams(threshold=0.9).digest()
    assert ProcessingParams(threshold=0.8996).canonical() == {"threshold": 0.9}
    assert ProcessingParams().threshold is None
