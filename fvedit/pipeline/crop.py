"""Cut aligned face crops at model resolution, with an area prefilter against aliasing.

The bilinear warp kernel samples each crop pixel once. A face much larger than the crop
(a 400 px face into a 64 or 256 px crop) would alias, where the official pipeline crops at
1024 and resizes with antialiasing. So the crop is warped at k times the model size, k the
integer downscale of the face, and box-averaged back down: an area filter at the cost of a
k^2 larger warp.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fvedit import pixels
from fvedit.face.align import crop_homography

MAX_SUPERSAMPLE = 8


def supersample_factor(quads: np.ndarray, size: int) -> int:
    """Integer supersampling so the box filter covers the face's downscale (1 = none), capped.

    ceil: any face larger than the crop is area-filtered, so a 400 px face into 256 px gets 2x.
    """
    q = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)
    side = np.median(np.linalg.norm(q[:, 3] - q[:, 0], axis=-1))
    return int(np.clip(np.ceil(side / size - 1e-6), 1, MAX_SUPERSAMPLE))


def cut_crops(frames: np.ndarray | Sequence[np.ndarray], quads: np.ndarray, size: int, factor: int = 1) -> np.ndarray:
    """uint8 crops [N,S,S,3] of frames [N,H,W,3] (or N frames [H,W,3]) for quads [N,4,2],
    area-filtered by `factor`.

    One frame at a time, from the frames as given: stacking a batch of 1080p frames, or of
    k x k supersampled float crops (16 x 768 x 768 x 3 floats = 113 MB at k = 3), would put every
    batch in fresh memory, which costs more than the warp itself. The box filter of one crop is
    the same computation as in a batch, so the result does not depend on the batching."""
    big = size * factor
    hom = crop_homography(quads, big)
    if len(frames) != len(hom):
        raise ValueError(f"{len(frames)} frames for {len(hom)} quads")
    out = np.empty((len(hom), size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        crop = pixels.warp_crops(np.ascontiguousarray(frame)[None], hom[i : i + 1], big)
        out[i] = crop[0] if factor == 1 else _box_filter(crop, factor)[0]
    return out


def _box_filter(crops: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [N,kS,kS,3] -> [N,S,S,3]: the mean of each k x k block, rounded half up."""
    t = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
    t = F.avg_pool2d(t, factor)
    return t.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def crops_to_tensor(crops: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [N,S,S,3] -> float32 [N,3,S,S] in [-1, 1] (the model's input range)."""
    t = torch.from_numpy(np.array(crops, dtype=np.uint8)).to(device).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


def tensor_to_crops(x: torch.Tensor) -> np.ndarray:
    """float [N,3,S,S] in [-1, 1] -> uint8 [N,S,S,3], rounded like the official tensor2pil."""
    u = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u.permute(0, 2, 3, 1).cpu().numpy()


def encode_crops(encoder, crops: np.ndarray, device: torch.device | str) -> tuple[np.ndarray, np.ndarray]:
    """Stage: the identity and landmark features (float32 [N,D], [N,102]) of uint8 crops [N,S,S,3]."""
    with torch.no_grad():
        x0 = crops_to_tensor(crops, device)
        return encoder.id_forward(x0).cpu().numpy(), encoder.lnd_forward(x0).cpu().numpy()
