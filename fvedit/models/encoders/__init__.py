"""DVA's frozen encoders (identity, landmarks, face parser) and the trainable fusion Linear.

z_face = Linear(cat[z_id, z_lnd]) is the condition of the diffusion UNet. The state-dict
names match the official `encoder.*` keys (the one renaming, of the landmark net's duplicated features, is in `fvedit.weights.importer.KEY_RULES`).
"""

from __future__ import annotations

import torch
from torch import nn

from fvedit.config import EncoderConfig
from fvedit.errors import InputError
from fvedit.models.encoders.bgnet import BACKGROUND_CLASSES, VIDEO_BACKGROUND_CLASSES, BiSeNet, FaceParser
from fvedit.models.encoders.idnet import IdentityNet, IRSEBackbone, check_rgb_batch
from fvedit.models.encoders.lndnet import LandmarkNet, MobileNetGDConv
from fvedit.models.encoders.mobilenet_v2 import mobilenet_v2_features

class DVAEncoder(nn.Module):
    """Official `DiffusionVideoAutoencoder`: idnet, lndnet, bgnet (frozen) and `linear`.

    All image inputs are RGB float in [-1, 1], [B, 3, H, W].
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.idnet = IdentityNet(cfg.id_units, cfg.id_widths, cfg.id_dim)
        self.lndnet = LandmarkNet(cfg.lnd_width_mult)
        self.bgnet = FaceParser(cfg.bg_width, cfg.bg_input_size, cfg.bg_classes)
        self.linear = nn.Linear(cfg.id_dim + cfg.lnd_dim, cfg.cond_dim)

    def id_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Identity embedding z_id [B, id_dim], unit L2 norm."""
        return self.idnet(x)

    def lnd_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Landmark code z_lnd [B, 102]: 51 non-jaw (x, y) pairs in [0, 1]."""
        return self.lndnet(x)

    def fuse(self, z_id: torch.Tensor, z_lnd: torch.Tensor) -> torch.Tensor:
        """z_face [B, cond_dim] = Linear(cat[z_id, z_lnd]); a batch-1 z_id is shared by all frames."""
        if z_id.ndim != 2 or z_id.shape[1] != self.cfg.id_dim:
            raise InputError(f"z_id must be [B, {self.cfg.id_dim}], got {tuple(z_id.shape)}")
        if z_lnd.ndim != 2 or z_lnd.shape[1] != self.cfg.lnd_dim:
            raise InputError(f"z_lnd must be [B, {self.cfg.lnd_dim}], got {tuple(z_lnd.shape)}")
        if z_id.shape[0] == 1 and z_lnd.shape[0] != 1:
            z_id = z_id.expand(z_lnd.shape[0], -1)
        elif z_id.shape[0] != z_lnd.shape[0]:
            raise InputError(
                f"z_id batch {z_id.shape[0]} does not match the {z_lnd.shape[0]} frames; "
                "pass one z_id per frame or a single one"
            )
        return self.linear(torch.cat([z_id, z_lnd], dim=1))

    def forward_with_id(self, z_id: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """z_face for frames x under a given (e.g. averaged or edited) identity."""
        return self.fuse(z_id, self.lnd_forward(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """z_face of each frame with its own identity."""
        return self.forward_with_id(self.id_forward(x), x)

    def face_mask(self, x: torch.Tensor, for_video: bool = True) -> torch.Tensor:
        """Binary foreground mask [B, 1, H, W] (see FaceParser.face_mask)."""
        return self.bgnet.face_mask(x, for_video)


__all__ = [
    "BACKGROUND_CLASSES",
    "VIDEO_BACKGROUND_CLASSES",
    "BiSeNet",
    "DVAEncoder",
    "FaceParser",
    "IRSEBackbone",
    "IdentityNet",
    "LandmarkNet",
    "MobileNetGDConv",
    "check_rgb_batch",
    "mobilenet_v2_features",
]
