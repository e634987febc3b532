"""Landmark encoder: MobileNet-GDConv (cunjian/pytorch_face_landmark) and DVA's LNDnet wrapper.

Official checkpoints hold the MobileNetV2 features twice (`pretrain_net.features.*` and
`base_net.0.*`) plus an unused ImageNet classifier. fvedit stores the features once, as
`backbone.features.*`; the weights importer maps `pretrain_net.features.` -> `features.` and
drops `base_net.0.*` and `pretrain_net.classifier.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fvedit.models.encoders.idnet import check_rgb_batch
from fvedit.models.encoders.mobilenet_v2 import last_channel, mobilenet_v2_features

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_POINTS = 68
JAW_POINTS = 17  # points 0..16 trace the jaw line; DVA drops them (they move with the pose, not the expression)
CROP_SIZE = 224  # the landmark net's input: the centre 224x224 of a 256 px frame
FRAME_SIZE = 256


def imagenet_normalize(x01: torch.Tensor) -> torch.Tensor:
    """[0,1] RGB -> ImageNet-standardised. Constants are built per call so meta-built modules stay loadable."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


class LinearConvBN(nn.Module):
    """Conv (no bias) + BN with no activation: GDConv's `linear7` / `linear1` blocks."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, depthwise: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, 1, 0, groups=in_ch if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class MobileNetGDConv(nn.Module):
    """MobileNetV2 features -> global depthwise 7x7 conv -> 1x1 conv to 2*68 coordinates.

    The 7x7 depthwise kernel covers the whole feature map, so the input must be 224x224.
    """

    def __init__(self, width_mult: float = 1.0, num_outputs: int = 2 * NUM_POINTS):
        super().__init__()
        channels = last_channel(width_mult)
        self.features = mobilenet_v2_features(width_mult)
        self.linear7 = LinearConvBN(channels, channels, 7, depthwise=True)
        self.linear1 = LinearConvBN(channels, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear1(self.linear7(self.features(x))).flatten(1)


class LandmarkNet(nn.Module):
    """DVA's LNDnet: 68 landmarks of the centre crop, jaw dropped -> [B, 102] in [0, 1].

    Official: crop rows/cols 16:240 whenever H != 224. fvedit first resizes any H != 256
    frame to 256 (bilinear, no antialias) so small presets crop the same face region;
    at H == 256 this is exactly the official path.
    """

    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        self.backbone = MobileNetGDConv(width_mult)
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "LandmarkNet":
        super().train(mode)
        self.backbone.eval()  # frozen BN statistics, whatever the parent's mode
        return self

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> ImageNet-normalised [B,3,224,224] centre crop."""
        if x.shape[2] != FRAME_SIZE or x.shape[3] != FRAME_SIZE:
            x = F.interpolate(x, (FRAME_SIZE, FRAME_SIZE), mode="bilinear", align_corners=False, antialias=False)
        lo, hi = (FRAME_SIZE - CROP_SIZE) // 2, (FRAME_SIZE + CROP_SIZE) // 2
        x = x[:, :, lo:hi, lo:hi]
        return imagenet_normalize((x + 1) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rgb_batch(x, "landmark encoder")
        points = self.backbone(self.preprocess(x)).clamp(0, 1).reshape(-1, NUM_POINTS, 2)
        return points[:, JAW_POINTS:, :].reshape(x.shape[0], -1)
