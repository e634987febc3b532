"""The frozen encoders and the fusion Linear against the official layout and independent twins.

Official-size nets are only built on the meta device (layout and parameter counts); the
behavioural tests use the tiny preset with random weights *and* random BN statistics, so a
wrong op order or a skipped layer changes the numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fvedit.config import TINY, EncoderConfig
from fvedit.errors import InputError
from fvedit.models.encoders import (
    BACKGROUND_CLASSES,
    VIDEO_BACKGROUND_CLASSES,
    DVAEncoder,
)
from fvedit.models.encoders.bgnet import AttentionRefinement, FeatureFusion
from fvedit.models.encoders.idnet import BottleneckIRSE, SEModule
from fvedit.models.encoders.mobilenet_v2 import InvertedResidual, make_divisible, mobilenet_v2_features

KEYS_FILE = Path(__file__).resolve().parents[2] / "shared/reference/dva_state_dict_keys.txt"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


def official_encoder_keys() -> dict[str, tuple[int, ...]]:
    """`encoder.*` names (prefix removed) and shapes from the reference key file, in file order."""
    if not KEYS_FILE.is_file():
        raise FileNotFoundError(f"{KEYS_FILE} is missing: the tests need shared/reference/ beside the repository")
    keys: dict[str, tuple[int, ...]] = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line.startswith("encoder."):
            name, shape = line.split()
            keys[name[len("encoder.") :]] = tuple(int(s) for s in shape.strip("[]").split(",") if s)
    return keys


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random conv/linear weights, BN affine + running stats and PReLU slopes (all non-trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return module


def bn_eval(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode BatchNorm written out by hand."""
    shape = (1, -1, 1, 1)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean.view(shape)) * scale.view(shape) + bn.bias.view(shape)


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Row i averages PyTorch's adaptive bin [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool_np(a: np.ndarray, out: int) -> np.ndarray:
    """Adaptive average pooling to out x out; bins are rectangles, so rows and columns separate."""
    return adaptive_pool_matrix(a.shape[2], out) @ a @ adaptive_pool_matrix(a.shape[3], out).T


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel under PyTorch's 'nearest' resize."""
    return np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(int), n_in - 1)


def nearest_resize_np(a: np.ndarray, h: int, w: int) -> np.ndarray:
    return a[..., nearest_index(a.shape[-2], h)[:, None], nearest_index(a.shape[-1], w)[None, :]]


@pytest.fixture(scope="module")
def tiny_encoder() -> DVAEncoder:
    torch.manual_seed(0)
    return randomize(DVAEncoder(TINY.encoder), seed=1).eval()


def frames(b: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------------------------
# Official layout (meta device: no memory, no time)


def official_to_fvedit_key(key: str) -> str | None:
    """The importer's mapping (its KEY_RULES table), for keys relative to `encoder.`."""
    from fvedit.weights.importer import official_to_fvedit

    new = official_to_fvedit("encoder." + key)
    return None if new is None else new.removeprefix("encoder.")


def test_state_dict_matches_official_encoder_keys_under_the_documented_map():
    with torch.device("meta"):
        enc = DVAEncoder(EncoderConfig())
    ours = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    official = official_encoder_keys()
    assert len(official) == 1228
    mapped = {official_to_fvedit_key(k): s for k, s in official.items()}
    dropped = mapped.pop(None, None)
    assert dropped is not None
    assert ours == mapped
    assert list(ours) == list(mapped)  # same order as the official file, too
    assert "idnet.backbone.input_layer.0.weight" in ours and "bgnet.backbone.cp.resnet.conv1.weight" in ours
    assert any(k.endswith("num_batches_tracked") for k in ours)


def test_official_key_map_drops_only_exact_duplicates_and_the_classifier():
    official = official_encoder_keys()
    base = {k: s for k, s in official.items() if k.startswith("lndnet.backbone.base_net.0.")}
    feats = {k: s for k, s in official.items() if k.startswith("lndnet.backbone.pretrain_net.features.")}
    assert len(base) == len(feats) > 0
    for k, s in base.items():  # every dropped feature key has its twin under pretrain_net.features
        twin = k.replace("lndnet.backbone.base_net.0.", "lndnet.backbone.pretrain_net.features.")
        assert feats[twin] == s
        assert official_to_fvedit_key(k) is None
    assert official_to_fvedit_key("lndnet.backbone.pretrain_net.classifier.1.weight") is None
    assert official_to_fvedit_key("lndnet.backbone.pretrain_net.features.3.conv.0.0.weight") == (
        "lndnet.backbone.features.3.conv.0.0.weight"
    )
    assert official_to_fvedit_key("bgnet.backbone.ffm.conv1.weight") == "bgnet.backbone.ffm.conv1.weight"


def test_official_parameter_counts():
    with torch.device("meta"):
        enc = DVAEncoder(EncoderConfig())

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(enc.idnet) == 43_797_696  # IR-SE-50
    # The facts count MobileNet_GDConv with its unused ImageNet head Linear(1280 -> 1000).
    assert count(enc.lndnet) + 1280 * 1000 + 1000 == 3_744_504
    assert count(enc.bgnet) == 13_300_416  # BiSeNet
    assert count(enc.linear) == 614 * 512 + 512 == 314_880


def test_frozen_nets_and_trainable_linear():
    with torch.device("meta"):
        enc = DVAEncoder(EncoderConfig())
    for net in (enc.idnet, enc.lndnet, enc.bgnet):
        assert not any(p.requires_grad for p in net.parameters())
    assert all(p.requires_grad for p in enc.linear.parameters())


# --------------------------------------------------------------------------------------------
# Building blocks against functional twins


def test_make_divisible_and_mobilenet_widths():
    assert [make_divisible(c * 1.0) for c in (32, 16, 24, 32, 64, 96, 160, 320)] == [32, 16, 24, 32, 64, 96, 160, 320]
    assert [make_divisible(c * 0.25) for c in (32, 16, 24, 32, 64, 96, 160, 320)] == [8, 8, 8, 8, 16, 24, 40, 80]
    assert make_divisible(0.35 * 24) == 8 and make_divisible(0.75 * 96) == 72 and make_divisible(1.4 * 1280) == 1792
    widths = [m.weight.shape[0] for m in mobilenet_v2_features(0.25).modules() if isinstance(m, nn.BatchNorm2d)]
    assert widths[-1] == 1280  # the last 1x1 conv never shrinks below 1280


def test_inverted_residual_matches_functional_twin():
    for in_ch, out_ch, stride, t in [(8, 8, 1, 6), (8, 16, 2, 6), (8, 8, 1, 1)]:
        block = randomize(InvertedResidual(in_ch, out_ch, stride, t), seed=2).eval()
        x = torch.randn(2, in_ch, 9, 9)
        layers = list(block.conv)
        h = x
        if t != 1:
            h = F.relu6(bn_eval(F.conv2d(h, layers[0][0].weight), layers[0][1]))
            layers = layers[1:]
        dw = layers[0][0]
        h = F.relu6(bn_eval(F.conv2d(h, dw.weight, stride=stride, padding=1, groups=dw.in_channels), layers[0][1]))
        h = bn_eval(F.conv2d(h, layers[1].weight), layers[2])
        if stride == 1 and in_ch == out_ch:
            h = h + x
        torch.testing.assert_close(block(x), h, rtol=1e-5, atol=1e-5)


def test_se_and_bottleneck_ir_se_match_functional_twin():
    for in_ch, out_ch, stride in [(16, 16, 2), (16, 32, 2), (32, 32, 1)]:
        unit = randomize(BottleneckIRSE(in_ch, out_ch, stride), seed=3).eval()
        x = torch.randn(2, in_ch, 8, 8)
        r = unit.res_layer
        h = bn_eval(x, r[0])
        h = F.prelu(F.conv2d(h, r[1].weight, padding=1), r[2].weight)
        h = bn_eval(F.conv2d(h, r[3].weight, stride=stride, padding=1), r[4])
        se: SEModule = r[5]
        gate = torch.sigmoid(F.conv2d(F.relu(F.conv2d(h.mean((2, 3), keepdim=True), se.fc1.weight)), se.fc2.weight))
        h = h * gate
        if in_ch == out_ch:
            shortcut = x[:, :, ::stride, ::stride]  # MaxPool2d(1, stride) is plain subsampling
        else:
            shortcut = bn_eval(F.conv2d(x, unit.shortcut_layer[0].weight, stride=stride), unit.shortcut_layer[1])
        torch.testing.assert_close(unit(x), h + shortcut, rtol=1e-5, atol=1e-5)


def test_bisenet_attention_and_fusion_match_functional_twins():
    arm = randomize(AttentionRefinement(16, 8), seed=4).eval()
    x = torch.randn(2, 16, 6, 6)
    feat = F.relu(bn_eval(F.conv2d(x, arm.conv.conv.weight, padding=1), arm.conv.bn))
    gate = torch.sigmoid(bn_eval(F.conv2d(feat.mean((2, 3), keepdim=True), arm.conv_atten.weight), arm.bn_atten))
    torch.testing.assert_close(arm(x), feat * gate, rtol=1e-5, atol=1e-5)

    ffm = randomize(FeatureFusion(16, 16), seed=5).eval()
    sp, cp = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    feat = F.relu(bn_eval(F.conv2d(torch.cat([sp, cp], 1), ffm.convblk.conv.weight), ffm.convblk.bn))
    squeezed = F.relu(F.conv2d(feat.mean((2, 3), keepdim=True), ffm.conv1.weight))
    gate = torch.sigmoid(F.conv2d(squeezed, ffm.conv2.weight))
    torch.testing.assert_close(ffm(sp, cp), feat * gate + feat, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Identity encoder


@pytest.mark.parametrize("size", [256, 64])
def test_identity_preprocessing_matches_numpy_twin_and_output_is_unit_norm(tiny_encoder, size):
    x = frames(2, size, seed=10)
    a = x.double().numpy()
    if size != 256:
        a = adaptive_avg_pool_np(a, 256)
    a = adaptive_avg_pool_np(a[:, :, 35:223, 32:220], 112)
    crop = tiny_encoder.idnet.preprocess(x)
    np.testing.assert_allclose(crop.numpy(), a, rtol=1e-5, atol=1e-5)

    z = tiny_encoder.id_forward(x)
    assert z.shape == (2, TINY.encoder.id_dim)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2), rtol=1e-5, atol=1e-5)
    raw = tiny_encoder.idnet.backbone.output_layer(
        tiny_encoder.idnet.backbone.body(tiny_encoder.idnet.backbone.input_layer(torch.from_numpy(a).float()))
    )
    torch.testing.assert_close(z, raw / raw.norm(dim=1, keepdim=True), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(z[0], z[1], atol=1e-3)


# --------------------------------------------------------------------------------------------
# Landmark encoder


def test_landmarks_drop_the_jaw_points_against_the_raw_backbone(tiny_encoder):
    x = frames(3, 256, seed=11)
    mean, std = torch.tensor(IMAGENET_MEAN).float(), torch.tensor(IMAGENET_STD).float()
    normalized = ((x[:, :, 16:240, 16:240] + 1) / 2 - mean) / std  # checked against numpy below
    raw = tiny_encoder.lndnet.backbone(normalized)  # [B, 136] = x0, y0, x1, y1, ...
    points = raw.clamp(0, 1).view(3, 68, 2)
    expected = torch.cat([points[:, i] for i in range(17, 68)], dim=1)  # (x17, y17, x18, y18, ...)
    z = tiny_encoder.lnd_forward(x)
    assert z.shape == (3, 102)
    torch.testing.assert_close(z, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(z, raw.clamp(0, 1)[:, :102], atol=1e-3)  # the jaw really is gone


def test_landmarks_are_clamped_to_unit_range(tiny_encoder):
    enc = randomize(DVAEncoder(TINY.encoder), seed=12).eval()
    with torch.no_grad():  # outputs spread over [-3, 4] so both ends of the clamp are hit
        enc.lndnet.backbone.linear1.bn.weight.fill_(0.05)
        enc.lndnet.backbone.linear1.bn.bias.copy_(torch.linspace(-3, 4, 136))
    x = frames(2, 256, seed=13)
    raw = enc.lndnet.backbone(enc.lndnet.preprocess(x))[:, 34:]
    assert (raw < 0).any() and (raw > 1).any() and ((raw > 0) & (raw < 1)).any()
    z = enc.lnd_forward(x)
    assert z.min() >= 0 and z.max() <= 1
    torch.testing.assert_close(z, raw.clamp(0, 1))


def test_landmark_preprocessing_256_is_official_and_other_sizes_resize_first(tiny_encoder):
    x256 = frames(2, 256, seed=14)
    official = ((x256.double().numpy()[:, :, 16:240, 16:240] + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(tiny_encoder.lndnet.preprocess(x256).numpy(), official, rtol=1e-5, atol=1e-6)

    x64 = frames(2, 64, seed=15)
    resized = F.interpolate(x64, (256, 256), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(tiny_encoder.lnd_forward(x64), tiny_encoder.lnd_forward(resized), rtol=0, atol=0)
    # Not the same as cropping the small frame directly (the generalisation matters).
    assert not torch.allclose(tiny_encoder.lnd_forward(x64), tiny_encoder.lnd_forward(x256[:, :, ::4, ::4]))


# --------------------------------------------------------------------------------------------
# Face parser


def test_parser_preprocessing_matches_numpy_twin(tiny_encoder):
    x = frames(2, 64, seed=16) * 1.5  # out-of-range values get clipped
    size = TINY.encoder.bg_input_size
    a = np.clip(nearest_resize_np(x.double().numpy(), size, size), -1, 1)
    expected = ((a + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(tiny_encoder.bgnet.preprocess(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_parser_outputs_with_random_weights(tiny_encoder):
    x = frames(2, 64, seed=17)
    logits = tiny_encoder.bgnet.logits(x)
    size = TINY.encoder.bg_input_size
    assert logits.shape == (2, 19, size, size)
    main, aux16, aux32 = tiny_encoder.bgnet.backbone(tiny_encoder.bgnet.preprocess(x), with_aux=True)
    torch.testing.assert_close(main, logits)
    assert aux16.shape == aux32.shape == logits.shape
    labels = tiny_encoder.bgnet.parse(x)
    assert labels.shape == (2, 64, 64) and labels.dtype == torch.int64
    mask = tiny_encoder.face_mask(x)
    assert mask.shape == (2, 1, 64, 64) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("for_video", [True, False])
@pytest.mark.parametrize("out_size", [64, 256])
def test_face_mask_marks_exactly_the_non_background_classes(tiny_encoder, monkeypatch, for_video, out_size):
    size = TINY.encoder.bg_input_size
    labels = torch.randint(0, 19, (2, size, size), generator=torch.Generator().manual_seed(18))
    forced = F.one_hot(labels, 19).permute(0, 3, 1, 2).float() * 5.0  # argmax == labels

    monkeypatch.setattr(tiny_encoder.bgnet.backbone, "forward", lambda x, with_aux=False: forced)
    x = frames(2, out_size, seed=19)
    background = VIDEO_BACKGROUND_CLASSES if for_video else BACKGROUND_CLASSES
    expected_labels = nearest_resize_np(labels.numpy(), out_size, out_size)
    expected_mask = (~np.isin(expected_labels, background)).astype(np.float32)[:, None]

    mask = tiny_encoder.face_mask(x, for_video=for_video)
    np.testing.assert_array_equal(mask.numpy(), expected_mask)
    np.testing.assert_array_equal(tiny_encoder.bgnet.parse(x).numpy(), expected_labels)
    assert 0 < expected_mask.mean() < 1


def test_video_mask_is_the_image_mask_minus_ears_neck_hair():
    assert set(BACKGROUND_CLASSES) == {0, 16, 18}
    assert set(VIDEO_BACKGROUND_CLASSES) == {0, 16, 18, 7, 8, 14, 17}


# --------------------------------------------------------------------------------------------
# Fusion and the whole encoder


def test_fuse_broadcasts_a_single_identity(tiny_encoder):
    g = torch.Generator().manual_seed(20)
    z_id = F.normalize(torch.randn(1, TINY.encoder.id_dim, generator=g), dim=1)
    z_lnd = torch.rand(4, 102, generator=g)
    w, b = tiny_encoder.linear.weight, tiny_encoder.linear.bias
    expected = torch.stack([w[:, :128] @ z_id[0] + w[:, 128:] @ z_lnd[i] + b for i in range(4)])
    torch.testing.assert_close(tiny_encoder.fuse(z_id, z_lnd), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tiny_encoder.fuse(z_id.expand(4, -1), z_lnd), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="z_id batch"):
        tiny_encoder.fuse(z_id.expand(2, -1), z_lnd)
    with pytest.raises(InputError, match="z_lnd"):
        tiny_encoder.fuse(z_id, z_lnd[:, :100])


def test_forward_composes_identity_landmarks_and_linear(tiny_encoder):
    x = frames(2, 64, seed=21)
    z_id, z_lnd = tiny_encoder.id_forward(x), tiny_encoder.lnd_forward(x)
    expected = F.linear(torch.cat([z_id, z_lnd], 1), tiny_encoder.linear.weight, tiny_encoder.linear.bias)
    z_face = tiny_encoder(x)
    assert z_face.shape == (2, TINY.encoder.cond_dim)
    torch.testing.assert_close(z_face, expected)
    mean_id = z_id.mean(0, keepdim=True)
    torch.testing.assert_close(tiny_encoder.forward_with_id(mean_id, x), tiny_encoder.fuse(mean_id, z_lnd))


def test_frozen_nets_stay_in_eval_mode_and_are_deterministic(tiny_encoder):
    x = frames(2, 64, seed=22)
    ref = (tiny_encoder(x), tiny_encoder.face_mask(x))
    try:
        tiny_encoder.train()
        assert tiny_encoder.training and tiny_encoder.linear.training
        for net in (tiny_encoder.idnet, tiny_encoder.lndnet, tiny_encoder.bgnet):
            assert not net.backbone.training and not any(m.training for m in net.backbone.modules())
        again = (tiny_encoder(x), tiny_encoder.face_mask(x))
    finally:
        tiny_encoder.eval()
    torch.testing.assert_close(again[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(again[1], ref[1], rtol=0, atol=0)
    torch.testing.assert_close(tiny_encoder(x), ref[0], rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors(tiny_encoder):
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        tiny_encoder.id_forward(torch.zeros(1, 1, 64, 64))
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        tiny_encoder.lnd_forward(torch.zeros(3, 64, 64))
    with pytest.raises(InputError, match="dtype"):
        tiny_encoder.face_mask(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
