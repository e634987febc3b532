"""Every official parameter name maps onto fvedit's DVAModel (dva256) one for one, same shape.

The key list `dva_state_dict_keys.txt` was dumped from the official model class; CI clones this
repo with `shared/` beside it. The model is built on the meta device, so nothing is allocated.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from fvedit.config import DVA256
from fvedit.models import build_model
from fvedit.weights.importer import dropped_reason, official_to_fvedit

KEYS_FILE = Path(__file__).resolve().parents[2] / "shared/reference/dva_state_dict_keys.txt"
UNET_LINES = 758


def _official_keys() -> list[tuple[str, tuple[int, ...]]]:
    if not KEYS_FILE.is_file():
        pytest.fail(f"reference key list not found at {KEYS_FILE}; check out `shared/` beside the repo")
    out = []
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip():
            continue
        key, shape = line.split()
        dims = shape.strip("[]")
        out.append((key, tuple(int(d) for d in dims.split(",")) if dims else ()))
    return out


@pytest.fixture(scope="module")
def model_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_model(DVA256)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_every_official_key_maps_once_with_its_shape(model_shapes):
    official = _official_keys()
    assert len(official) == 1986
    hits: Counter[str] = Counter()
    dropped = []
    for key, shape in official:
        new = official_to_fvedit(key)
        if new is None:
            assert dropped_reason(key), key
            dropped.append(key)
            continue
        assert new in model_shapes, f"{key} -> {new} is not a DVAModel key"
        assert model_shapes[new] == shape, f"{key} {shape} -> {new} {model_shapes[new]}"
        hits[new] += 1
    assert [k for k, n in hits.items() if n != 1] == []
    assert sorted(set(model_shapes) - set(hits)) == []


def test_unet_lines_go_to_unet_and_encoder_lines_to_encoder():
    official = _official_keys()
    assert all(official_to_fvedit(k).startswith("unet.") for k, _ in official[:UNET_LINES])
    assert all(k.startswith("encoder.") for k, _ in official[UNET_LINES:])


def test_only_the_landmark_duplicates_and_imagenet_head_are_dropped():
    official = dict(_official_keys())
    dropped = {k for k in official if official_to_fvedit(k) is None}
    duplicates = {k for k in official if k.startswith("encoder.lndnet.backbone.base_net.0.")}
    head = {k for k in official if k.startswith("encoder.lndnet.backbone.pretrain_net.classifier.")}
    assert dropped == duplicates | head
    assert len(duplicates) == 312 and len(head) == 2
    for key in duplicates:  # each duplicate has a kept twin of the same shape
        twin = key.replace("base_net.0.", "pretrain_net.features.")
        assert official[twin] == official[key]
        assert official_to_fvedit(twin) == key.replace("base_net.0.", "features.")


def test_unknown_official_key_raises():
    with pytest.raises(KeyError, match="no mapping rule"):
        official_to_fvedit("latent_net.layers.0.weight")
