"""MobileNetV2 feature extractor with torchvision's layout and parameter names.

torchvision does not install here, and the landmark checkpoint stores torchvision's
`mobilenet_v2().features` keys (`features.{i}.conv.{j}...`), so this module rebuilds the
same layer tree by hand. Only `features` is built: the ImageNet classifier is never used.
"""

from __future__ import annotations

import torch
from torch import nn

# (expand ratio t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10%.

    Same rule torchvision uses, so any width multiplier gives torchvision's shapes.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn_relu6(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BN -> ReLU6; a Sequential so keys read `.0.weight`, `.1.running_mean`."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear); residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(in_ch, hidden, kernel=1))
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


def last_channel(width_mult: float) -> int:
    """Width of the final 1x1 conv: 1280, widened (never narrowed) by width_mult > 1."""
    return make_divisible(1280 * max(1.0, width_mult))


def mobilenet_v2_features(width_mult: float = 1.0) -> nn.Sequential:
    """torchvision's `mobilenet_v2(width_mult=...).features`: stride 32, `last_channel` outputs."""
    if width_mult <= 0:
        raise ValueError(f"MobileNetV2 width multiplier must be > 0, got {width_mult}")
    in_ch = make_divisible(32 * width_mult)
    layers: list[nn.Module] = [conv_bn_relu6(3, in_ch, stride=2)]
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        out_ch = make_divisible(c * width_mult)
        for i in range(n):
            layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
            in_ch = out_ch
    layers.append(conv_bn_relu6(in_ch, last_channel(width_mult), kernel=1))
    return nn.Sequential(*layers)
