"""The whole Diffusion Video Autoencoder: the UNet noise estimator plus the frozen encoders.

State-dict layout: `unet.<official UNet key>` and `encoder.<official encoder key>` (the one
renaming of the landmark net is documented in `fvedit.weights.importer`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fvedit.config import ModelConfig
from fvedit.models.encoders import DVAEncoder
from fvedit.models.unet import UNet


class DVAModel(nn.Module):
    """eps(x_t, t, z_face) via `unet`, and z_id / landmarks / z_face / face masks via `encoder`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.unet = UNet(cfg.unet)
        self.encoder = DVAEncoder(cfg.encoder)

    def eps(self, x: Tensor, t: Tensor, z_face: Tensor) -> Tensor:
        return self.unet(x, t, z_face)

    def forward(self, x: Tensor, t: Tensor, z_face: Tensor) -> Tensor:
        return self.unet(x, t, z_face)


def build_model(cfg: ModelConfig) -> DVAModel:
    """A model with fresh (official-style) initialisation, in eval mode. Load weights separately."""
    return DVAModel(cfg).eval()


@torch.no_grad()
def randomize_zero_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-randomise the official zero-init layers so a seeded model's eps is not identically 0.

    Uses PyTorch's default conv initialisation (uniform in +-1/sqrt(fan_in)) drawn from a
    local generator, so global RNG state is untouched and the result depends only on `seed`.
    """
    unet = model.unet if hasattr(model, "unet") else model
    gen = torch.Generator().manual_seed(seed)
    for mod in unet.zero_init_modules():
        w = mod.weight
        fan_in = w.shape[1] * math.prod(w.shape[2:])
        bound = 1.0 / math.sqrt(fan_in)
        w.copy_(torch.empty(w.shape).uniform_(-bound, bound, generator=gen).to(w))
        if mod.bias is not None:
            mod.bias.copy_(torch.empty(mod.bias.shape).uniform_(-bound, bound, generator=gen).to(mod.bias))
    return model
