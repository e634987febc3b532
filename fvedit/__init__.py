"""fvedit: fast face-video attribute editing with Diffusion Video Autoencoders (DVA, CVPR 2023)."""

__version__ = "0.1.0"
