"""Face parser: BiSeNet (zllrunning/face-parsing.PyTorch, 19 CelebAMask-HQ classes) and DVA's mask.

Every channel count is a multiple of `width` (the ResNet-18 stem width, 64 officially), so
`width=64` reproduces the official shapes and smaller widths give a proportionally thinner net.
The spatial path of BiSeNet is replaced by the ResNet's 1/8 feature, as in the original repo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fvedit.models.encoders.idnet import check_rgb_batch
from fvedit.models.encoders.lndnet import imagenet_normalize

# CelebAMask-HQ labels that are not "face" for DVA's paste-back: background, cloth, hat ...
BACKGROUND_CLASSES: tuple[int, ...] = (0, 16, 18)
# ... and, for video paste-back, also ears, neck and hair (l_ear, r_ear, neck, hair).
VIDEO_BACKGROUND_CLASSES: tuple[int, ...] = BACKGROUND_CLASSES + (7, 8, 14, 17)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over the whole map, written as the official avg_pool2d over the full window."""
    return F.avg_pool2d(x, x.shape[2:])


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BN -> ReLU, keys `.conv` / `.bn`."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs, projection shortcut when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if in_ch != out_ch or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def basic_stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1))


class ResNet18(nn.Module):
    """ResNet-18 trunk without the classifier; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = basic_stage(width, width, 1)
        self.layer2 = basic_stage(width, 2 * width, 2)
        self.layer3 = basic_stage(2 * width, 4 * width, 2)
        self.layer4 = basic_stage(4 * width, 8 * width, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


class AttentionRefinement(nn.Module):
    """ConvBNReLU, then reweight its channels by a sigmoid gate from their global mean."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch)
        self.conv_atten = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(global_avg_pool(feat))))


class ContextPath(nn.Module):
    """ResNet-18 plus a top-down path (global context -> 1/32 -> 1/16 -> 1/8) with ARMs."""

    def __init__(self, width: int = 64):
        super().__init__()
        mid = 2 * width  # 128 officially
        self.resnet = ResNet18(width)
        self.arm16 = AttentionRefinement(4 * width, mid)
        self.arm32 = AttentionRefinement(8 * width, mid)
        self.conv_head32 = ConvBNReLU(mid, mid)
        self.conv_head16 = ConvBNReLU(mid, mid)
        self.conv_avg = ConvBNReLU(8 * width, mid, kernel=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        context = F.interpolate(self.conv_avg(global_avg_pool(feat32)), feat32.shape[2:], mode="nearest")
        up32 = F.interpolate(self.arm32(feat32) + context, feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest")
        up16 = self.conv_head16(up16)
        return feat8, up16, up32  # 1/8 (spatial stand-in), 1/8 (context), 1/16 (context)


class FeatureFusion(nn.Module):
    """Concatenate spatial and context features, 1x1 conv, add an SE-style reweighted copy."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_ch, out_ch, kernel=1, padding=0)
        self.conv1 = nn.Conv2d(out_ch, out_ch // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_ch // 4, out_ch, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(global_avg_pool(feat)))))
        return feat * gate + feat


class BiSeNetOutput(nn.Module):
    """3x3 ConvBNReLU then a 1x1 classifier (logits at the feature resolution)."""

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, mid_ch)
        self.conv_out = nn.Conv2d(mid_ch, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face-parsing BiSeNet. `conv_out16`/`conv_out32` are training-time auxiliary heads,
    kept so the official weights load; inference only needs the main head."""

    def __init__(self, num_classes: int = 19, width: int = 64):
        super().__init__()
        self.cp = ContextPath(width)
        self.ffm = FeatureFusion(4 * width, 4 * width)
        self.conv_out = BiSeNetOutput(4 * width, 4 * width, num_classes)
        self.conv_out16 = BiSeNetOutput(2 * width, width, num_classes)
        self.conv_out32 = BiSeNetOutput(2 * width, width, num_classes)

    def forward(self, x: torch.Tensor, with_aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Main logits [B, classes, H, W] (bilinear, align_corners=True); with_aux adds the 2 aux heads."""
        size = x.shape[2:]
        feat8, context8, context16 = self.cp(x)
        logits = F.interpolate(self.conv_out(self.ffm(feat8, context8)), size, mode="bilinear", align_corners=True)
        if not with_aux:
            return logits
        aux16 = F.interpolate(self.conv_out16(context8), size, mode="bilinear", align_corners=True)
        aux32 = F.interpolate(self.conv_out32(context16), size, mode="bilinear", align_corners=True)
        return logits, aux16, aux32


class FaceParser(nn.Module):
    """DVA's BGnet: per-pixel CelebAMask-HQ labels and the binary foreground (face) mask."""

    def __init__(self, width: int = 64, input_size: int = 512, num_classes: int = 19):
        super().__init__()
        if num_classes <= max(VIDEO_BACKGROUND_CLASSES):
            raise ValueError(f"face parser needs the 19 CelebAMask-HQ classes, got num_classes={num_classes}")
        self.input_size = input_size
        self.backbone = BiSeNet(num_classes, width)
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "FaceParser":
        super().train(mode)
        self.backbone.eval()  # frozen BN statistics, whatever the parent's mode
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> nearest-resized, clipped, ImageNet-normalised net input."""
        x = F.interpolate(x, (self.input_size, self.input_size), mode="nearest")
        return imagenet_normalize((x.clip(-1, 1) + 1) / 2)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Main-head logits at the parser's input size: [B, classes, input_size, input_size]."""
        check_rgb_batch(x, "face parser")
        return self.backbone(self.preprocess(x))

    def parse(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel labels [B, H, W] int64 at the input's size (argmax, then nearest resize)."""
        labels = self.logits(x).argmax(dim=1, keepdim=True)
        labels = F.interpolate(labels.float(), x.shape[2:], mode="nearest")
        return labels[:, 0].long()

    def face_mask(self, x: torch.Tensor, for_video: bool) -> torch.Tensor:
        """Binary float mask [B,1,H,W]: 1 where the label is not a background class.

        for_video=True also masks out ears, neck and hair (DVA's paste-back setting).
        """
        labels = self.logits(x).argmax(dim=1, keepdim=True)
        background = torch.tensor(VIDEO_BACKGROUND_CLASSES if for_video else BACKGROUND_CLASSES, device=labels.device)
        foreground = ~torch.isin(labels, background)
        return F.interpolate(foreground.float(), x.shape[2:], mode="nearest")

    def forward(self, x: torch.Tensor, for_video: bool = True) -> torch.Tensor:
        return self.face_mask(x, for_video)
