"""Identity encoder: ArcFace IR-SE-50 (TreB1eN / pSp `Backbone` layout) plus DVA's face crop.

The parameter names follow the pSp `model_ir_se50.pth` file (`input_layer`, `body.{i}`,
`output_layer`), so the official weights load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fvedit.errors import InputError

# Where the face sits in a 256 px DVA crop (rows 35:223, cols 32:220), and ArcFace's input size.
FACE_ROWS = (35, 223)
FACE_COLS = (32, 220)
ARCFACE_SIZE = 112


def check_rgb_batch(x: torch.Tensor, who: str) -> None:
    """Reject anything that is not a float [B, 3, H, W] image batch, with a one-line message."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{who}: expected an RGB batch [B, 3, H, W] in [-1, 1], got {shape}")
    if not x.is_floating_point():
        raise InputError(
            f"{who}: expected a float image in [-1, 1], got dtype {x.dtype}; convert with x.float() / 127.5 - 1"
        )


class SEModule(nn.Module):
    """Squeeze-and-excitation: rescale channels by a gate computed from their global mean."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, max(1, channels // reduction), 1, bias=False)
        self.fc2 = nn.Conv2d(max(1, channels // reduction), channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class BottleneckIRSE(nn.Module):
    """Pre-activation IR unit: BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN -> SE, plus shortcut.

    When the width does not change the shortcut is MaxPool2d(1, stride), i.e. plain
    subsampling with no parameters; otherwise a strided 1x1 conv + BN.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        if in_ch == out_ch:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
            nn.PReLU(out_ch),
            nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            SEModule(out_ch, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSEBackbone(nn.Module):
    """IR-SE network on a 112 px face in [-1, 1] -> L2-normalised identity embedding.

    `units`/`widths` give the stages (official IR-SE-50: (3, 4, 14, 3) / (64, 128, 256, 512));
    the first unit of each stage has stride 2, so the map leaving the body is 7x7.
    """

    def __init__(self, units: tuple[int, ...], widths: tuple[int, ...], out_dim: int, drop_ratio: float = 0.6):
        super().__init__()
        if len(units) != len(widths) or len(units) != 4:
            raise ValueError(f"IR-SE needs 4 stages; got units={units}, widths={widths}")
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.PReLU(widths[0]),
        )
        # Built before `body` so the state-dict order matches the official file.
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(widths[-1]),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(widths[-1] * 7 * 7, out_dim),
            nn.BatchNorm1d(out_dim),
        )
        blocks: list[nn.Module] = []
        in_ch = widths[0]
        for n_units, width in zip(units, widths):
            for i in range(n_units):
                blocks.append(BottleneckIRSE(in_ch, width, 2 if i == 0 else 1))
                in_ch = width
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output_layer(self.body(self.input_layer(x)))
        return x / torch.norm(x, 2, 1, True)


class IdentityNet(nn.Module):
    """DVA's IDnet: crop the face region of a 256 px frame, shrink to 112, embed (unit norm).

    The backbone is frozen and always runs in eval mode, as in the official model.
    """

    def __init__(self, units: tuple[int, ...], widths: tuple[int, ...], out_dim: int):
        super().__init__()
        self.backbone = IRSEBackbone(units, widths, out_dim)
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "IdentityNet":
        super().train(mode)
        self.backbone.eval()  # frozen BN statistics and no dropout, whatever the parent's mode
        return self

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> the [B,3,112,112] face crop the backbone expects (official order)."""
        if x.shape[2] != 256:
            x = F.adaptive_avg_pool2d(x, (256, 256))
        x = x[:, :, FACE_ROWS[0] : FACE_ROWS[1], FACE_COLS[0] : FACE_COLS[1]]
        return F.adaptive_avg_pool2d(x, (ARCFACE_SIZE, ARCFACE_SIZE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rgb_batch(x, "identity encoder")
        return self.backbone(self.preprocess(x))
