"""The crop stage cuts frame by frame; the result must be the batched warp + box filter's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fvedit import pixels
from fvedit.face.align import crop_homography
from fvedit.pipeline.crop import cut_crops, supersample_factor


def _batched(frames: np.ndarray, quads: np.ndarray, size: int, factor: int) -> np.ndarray:
    """The computation on the whole batch at once (how the crops were cut before)."""
    big = size * factor
    crops = pixels.warp_crops(frames, crop_homography(quads, big), big)
    if factor == 1:
        return crops
    t = F.avg_pool2d(torch.from_numpy(crops).permute(0, 3, 1, 2).float(), factor)
    return t.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("factor", [1, 3])
def test_frame_by_frame_crops_equal_the_batched_ones(factor):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 120, 160, 3), dtype=np.uint8)
    centre = np.array([80.0, 60.0]) + rng.normal(0, 3, size=(3, 1, 2))
    square = np.array([[-30, -30], [-30, 30], [30, 30], [30, -30]], dtype=np.float64)  # FFHQ quad order
    quads = centre + square[None] * rng.uniform(0.9, 1.1, size=(3, 1, 1))
    size = 16
    assert supersample_factor(quads, size) == 4  # a 60 px face into 16 px: area filtering is due
    one_by_one = cut_crops(list(frames), quads, size, factor)
    assert one_by_one.shape == (3, size, size, 3) and one_by_one.dtype == np.uint8
    assert one_by_one.std() > 10  # real pixels, not a blank crop
    np.testing.assert_array_equal(one_by_one, _batched(frames, quads, size, factor))
    np.testing.assert_array_equal(cut_crops(frames, quads, size, factor), one_by_one)  # an array works too


def test_frames_and_quads_must_match():
    with pytest.raises(ValueError, match="2 frames for 1 quads"):
        cut_crops([np.zeros((8, 8, 3), np.uint8)] * 2, np.array([[[1, 1], [1, 6], [6, 6], [6, 1]]], float), 4)
