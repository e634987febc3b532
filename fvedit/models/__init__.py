"""Reference (fp32, eager) networks of the official DVA model."""

from fvedit.models.dva import DVAModel, build_model, randomize_zero_init
from fvedit.models.unet import UNet

__all__ = ["DVAModel", "UNet", "build_model", "randomize_zero_init"]
