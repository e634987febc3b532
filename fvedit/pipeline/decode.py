"""Stage: decode a batch of noise maps with the one edited identity back to aligned face crops."""

from __future__ import annotations

import numpy as np
import torch

from fvedit.diffusion.spec import SamplerSpec
from fvedit.pipeline.crop import tensor_to_crops
from fvedit.runtime.device import synchronize


def decode_batch(model, eps_model, sampler: SamplerSpec, x_T: np.ndarray, z_lnd: np.ndarray,
                 z_id: torch.Tensor, keep: np.ndarray, device: torch.device) -> np.ndarray:
    """uint8 [len(keep),S,S,3]: the edited crops at positions `keep` of the batch run.

    x_T float32 [B,3,S,S] and z_lnd [B,102] are the whole run; z_id float32 [D] on `device` is
    the edited identity, the same for every frame of the video."""
    with torch.no_grad():
        z_face = model.encoder.fuse(z_id[None], torch.from_numpy(z_lnd).to(device))
        x = torch.from_numpy(np.ascontiguousarray(x_T)).to(device)  # any layout decodes as the cache's C order
        decoded = sampler.decode(lambda x, t: eps_model(x, t, z_face), x)
        synchronize(eps_model)
        return tensor_to_crops(decoded[torch.from_numpy(keep)])
