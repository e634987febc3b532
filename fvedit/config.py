"""Model configurations: one frozen dataclass per network, and the named presets.

`dva256` is the official Diffusion Video Autoencoder (VoxCeleb, 256 px). `tiny` has the
same block types (time+identity AdaGN ResBlocks, attention, up/down ResBlocks, every
encoder) at a size that runs on two CPU cores; it is what tests and the offline demo use.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class UNetConfig:
    """The noise estimator eps(x_t, t, z_face) (official `BeatGANsAutoencConfig`)."""

    image_size: int = 256
    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    embed_channels: int = 512  # time-MLP width; the ResBlocks' condition width too
    cond_channels: int = 512  # width of z_face
    dropout: float = 0.1  # inactive at inference; kept so layer indices match


@dataclass(frozen=True)
class EncoderConfig:
    """The frozen encoders (identity, landmarks, face parser) and the fusion Linear."""

    # IR-SE-50 identity net (ArcFace). units per stage and stage widths.
    id_units: tuple[int, ...] = (3, 4, 14, 3)
    id_widths: tuple[int, ...] = (64, 128, 256, 512)
    id_dim: int = 512
    # MobileNet-GDConv landmark net: torchvision-style MobileNetV2 width multiplier.
    lnd_width_mult: float = 1.0
    # BiSeNet face parser: ResNet-18 stem width (64 official) and its input size.
    bg_width: int = 64
    bg_input_size: int = 512
    bg_classes: int = 19
    # Fusion Linear(id_dim + 102 -> cond_dim).
    cond_dim: int = 512

    @property
    def lnd_dim(self) -> int:
        """68 points minus the 17 jaw points, (x, y) each."""
        return (68 - 17) * 2


@dataclass(frozen=True)
class DiffusionConfig:
    """The training noise schedule (linear betas, eps prediction)."""

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02


@dataclass(frozen=True)
class ModelConfig:
    name: str
    unet: UNetConfig = field(default_factory=UNetConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        def tup(sub: dict) -> dict:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in sub.items()}

        return cls(
            name=d["name"],
            unet=UNetConfig(**tup(d["unet"])),
            encoder=EncoderConfig(**tup(d["encoder"])),
            diffusion=DiffusionConfig(**tup(d.get("diffusion", {}))),
        )


DVA256 = ModelConfig(name="dva256")

TINY = ModelConfig(
    name="tiny",
    unet=UNetConfig(
        image_size=64,
        model_channels=32,
        channel_mult=(1, 1, 2, 2),  # 64, 32, 16, 8 px; all widths multiples of 32 (GroupNorm32)
        num_res_blocks=1,
        attention_resolutions=(16,),  # plus the middle-block attention at 8 px
        embed_channels=128,
        cond_channels=128,
    ),
    encoder=EncoderConfig(
        id_units=(1, 1, 1, 1),
        id_widths=(16, 16, 32, 32),
        id_dim=128,
        lnd_width_mult=0.25,
        bg_width=16,
        bg_input_size=128,
        cond_dim=128,
    ),
)

PRESETS: dict[str, ModelConfig] = {"dva256": DVA256, "tiny": TINY}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
