"""Triton kernels, each beside its PyTorch twin; the twins run wherever Triton cannot."""

from fvedit.runtime.kernels.adagn import (
    group_norm_silu,
    group_norm_silu_reference,
    group_norm_silu_triton,
    triton_available,
)

__all__ = ["group_norm_silu", "group_norm_silu_reference", "group_norm_silu_triton", "triton_available"]
