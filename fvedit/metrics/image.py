"""Reconstruction quality of aligned face crops: PSNR, SSIM and MS-SSIM, optionally inside a face mask.

Conventions (those of DVA's evaluation and of Wang et al.):
- images are float [B, C, H, W] in [0, 1] (`data_range` 1), a crop in uint8 is divided by 255;
- SSIM uses an 11-tap Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population
  (not sample) statistics, and only windows that lie fully inside the image ("valid"
  filtering, which is what scikit-image's `structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)` averages after cropping its border);
- colour images: the SSIM map is computed per channel and averaged over channels.

Face region: every function takes an optional `mask` [B, 1, H, W] (or [B, H, W]) of weights in
[0, 1]. PSNR then averages the squared error over the masked pixels; SSIM averages its map over
the window *centres* inside the mask; MS-SSIM pools the mask with the images at each scale and
does the same. With no mask (or an all-ones mask) these are the whole-crop metrics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fvedit.errors import InputError

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03
PSNR_CAP_DB = 100.0  # what identical images score (their PSNR is infinite)
# Wang, Simoncelli & Bovik 2003, five scales from fine to coarse.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _check_pair(x: Tensor, y: Tensor, who: str) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise InputError(f"{who}: expected two torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape or x.ndim != 4:
        raise InputError(f"{who}: expected two image batches of the same shape [B, C, H, W], got {tuple(x.shape)} and {tuple(y.shape)}")
    if not x.is_floating_point() or not y.is_floating_point():
        raise InputError(f"{who}: expected float images in [0, 1], got {x.dtype} and {y.dtype}; divide uint8 by 255")


def _mask_weights(mask: Tensor | None, x: Tensor) -> Tensor:
    """The mask as [B, 1, H, W] weights in x's dtype (all ones when there is none)."""
    b, _, h, w = x.shape
    if mask is None:
        return torch.ones((b, 1, h, w), dtype=x.dtype, device=x.device)
    m = mask if mask.ndim == 4 else mask[:, None]
    if m.shape != (b, 1, h, w):
        raise InputError(f"face mask must be [B, 1, H, W] = {(b, 1, h, w)}, got {tuple(mask.shape)}")
    return m.to(dtype=x.dtype, device=x.device)


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Mean of values [B, C, H, W] over C, H, W weighted by weights [B, 1, H, W], per image.

    An image whose weights are all zero (the face left the region) falls back to the plain mean.
    """
    total = weights.sum(dim=(1, 2, 3))
    plain = values.mean(dim=(1, 2, 3))
    weighted = (values * weights).sum(dim=(1, 2, 3)) / (total.clamp_min(1e-12) * values.shape[1])
    return torch.where(total > 0, weighted, plain)


def mse(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error per image [B] (over channels and masked pixels)."""
    _check_pair(x, y, "mse")
    return _weighted_mean((x - y) ** 2, _mask_weights(mask, x))


def psnr(x: Tensor, y: Tensor, mask: Tensor | None = None, *, data_range: float = 1.0, cap_db: float = PSNR_CAP_DB) -> Tensor:
    """Peak signal-to-noise ratio per image [B] in dB: 10 log10(range^2 / MSE), capped at `cap_db`."""
    err = mse(x, y, mask)
    value = 10.0 * torch.log10(data_range**2 / err.clamp_min(1e-30))
    return torch.where(err > 0, value.clamp(max=cap_db), torch.full_like(value, cap_db))


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA, dtype=torch.float64) -> Tensor:
    """Normalised 1-D Gaussian taps [size] centred on the middle tap."""
    if size < 1 or size % 2 == 0:
        raise InputError(f"the SSIM window must have an odd positive size, got {size}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _filter(x: Tensor, taps: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filtering of every channel: [B, C, H, W] -> [B, C, H-k+1, W-k+1]."""
    c, k = x.shape[1], taps.numel()
    taps = taps.to(dtype=x.dtype, device=x.device)
    x = F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_maps(x: Tensor, y: Tensor, *, data_range: float = 1.0, window: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> tuple[Tensor, Tensor]:
    """(SSIM map, contrast-structure map), each [B, C, H-window+1, W-window+1] (valid windows only)."""
    _check_pair(x, y, "ssim")
    if min(x.shape[-2:]) < window:
        raise InputError(f"ssim: images of {x.shape[-2]}x{x.shape[-1]} px are smaller than the {window} px SSIM window")
    taps = gaussian_window(window, sigma)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = _filter(x, taps), _filter(y, taps)
    var_x = _filter(x * x, taps) - mu_x * mu_x
    var_y = _filter(y * y, taps) - mu_y * mu_y
    cov = _filter(x * y, taps) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return luminance * cs, cs


def _valid_mask(weights: Tensor, window: int) -> Tensor:
    """Mask weights at the centres of the valid windows ([..., H-window+1, W-window+1])."""
    r = (window - 1) // 2
    return weights[..., r : weights.shape[-2] - r, r : weights.shape[-1] - r]


def ssim(x: Tensor, y: Tensor, mask: Tensor | None = None, *, data_range: float = 1.0) -> Tensor:
    """Structural similarity per image [B]: the SSIM map averaged over channels and masked window centres."""
    s, _ = ssim_maps(x, y, data_range=data_range)
    return _weighted_mean(s, _valid_mask(_mask_weights(mask, x), WINDOW_SIZE))


def ms_ssim_scales(height: int, width: int, window: int = WINDOW_SIZE) -> int:
    """How many of the 5 standard scales fit: every scale must still hold one full window.

    256 px crops get all 5 (256 ... 16 px); 64 px crops (the tiny preset) get 3 (64, 32, 16).
    """
    side, scales = min(height, width), 0
    while side >= window and scales < len(MS_SSIM_WEIGHTS):
        scales += 1
        side //= 2
    if scales == 0:
        raise InputError(f"ms-ssim: images of {height}x{width} px are smaller than the {window} px SSIM window")
    return scales


def ms_ssim(x: Tensor, y: Tensor, mask: Tensor | None = None, *, data_range: float = 1.0, scales: int | None = None) -> Tensor:
    """Multi-scale SSIM per image [B] (Wang et al. 2003).

    prod_j cs_j^w_j over the finer scales times ssim_M^w_M at the coarsest, per channel, then the
    channel mean; each scale halves the images (2x2 average). Negative cs/ssim means are clipped
    to 0 before the powers (as pytorch-msssim does). Fewer than 5 scales (small crops, see
    `ms_ssim_scales`) use the first weights renormalised to sum to 1.
    """
    _check_pair(x, y, "ms-ssim")
    n = scales or ms_ssim_scales(*x.shape[-2:])
    if not 1 <= n <= len(MS_SSIM_WEIGHTS) or n > ms_ssim_scales(*x.shape[-2:]):
        raise InputError(f"ms-ssim: {n} scales do not fit images of {x.shape[-2]}x{x.shape[-1]} px")
    w = torch.tensor(MS_SSIM_WEIGHTS[:n], dtype=x.dtype, device=x.device)
    w = w / w.sum()
    weights = _mask_weights(mask, x)
    per_scale = []
    for j in range(n):
        s_map, cs_map = ssim_maps(x, y, data_range=data_range)
        m = _valid_mask(weights, WINDOW_SIZE)
        per_channel = [_weighted_mean((s_map if j == n - 1 else cs_map)[:, c : c + 1], m) for c in range(x.shape[1])]
        per_scale.append(torch.stack(per_channel, dim=1).clamp_min(0))  # [B, C]
        if j < n - 1:
            x, y, weights = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2), F.avg_pool2d(weights, 2)
    values = torch.stack(per_scale, dim=0)  # [n, B, C]
    return torch.prod(values ** w.view(-1, 1, 1), dim=0).mean(dim=1)


def uint8_to_unit(images, device: torch.device | str = "cpu", dtype=torch.float32) -> Tensor:
    """uint8 [N, H, W, 3] crops -> float [N, 3, H, W] in [0, 1]."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.ndim != 4:
        raise InputError(f"expected uint8 crops [N, H, W, 3], got {t.dtype} {tuple(t.shape)}")
    return t.to(device).permute(0, 3, 1, 2).to(dtype) / 255.0

