"""Stage: invert a batch of aligned crops to their noise maps x_T, conditioned on the video's one
mean identity and each frame's own landmark features (DVA's decomposition)."""

from __future__ import annotations

import numpy as np
import torch

from fvedit.diffusion.spec import SamplerSpec
from fvedit.pipeline.crop import crops_to_tensor
from fvedit.runtime.device import synchronize


def invert_batch(model, eps_model, sampler: SamplerSpec, crops: np.ndarray, z_lnd: np.ndarray,
                 z_mean: torch.Tensor, keep: np.ndarray, device: torch.device) -> np.ndarray:
    """float32 [len(keep),3,S,S]: x_T of the crops at positions `keep` of the batch run.

    crops uint8 [B,S,S,3] and z_lnd [B,102] are the whole run (with cross-frame attention it
    includes context frames whose x_T another batch keeps); z_mean float32 [D] on `device`."""
    with torch.no_grad():
        x0 = crops_to_tensor(crops, device)
        z_face = model.encoder.fuse(z_mean[None], torch.from_numpy(z_lnd).to(device))
        x_T = sampler.encode(lambda x, t: eps_model(x, t, z_face), x0)
        synchronize(eps_model)
        # C order, as the encode cache stores it: a strided x_T (the UNet's layout) would take other
        # conv kernels in the decode and change its rounding
        return np.ascontiguousarray(x_T[torch.from_numpy(keep)].cpu().numpy())
