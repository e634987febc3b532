"""Built-in, deterministic, *untrained* demo weights: the whole pipeline runs without downloads.

Every tensor is drawn from a local `torch.Generator` seeded with `seed` (the caller's global
RNG state is never read or changed), so two calls give bit-identical models. The output of
such a model is noise-like: it exercises the code paths, not the quality of DVA.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fvedit.config import get_preset
from fvedit.errors import InputError
from fvedit.weights.store import (
    CELEBA_ATTRIBUTES,
    FORMAT_NAME,
    FORMAT_VERSION,
    AttributeClassifier,
    IdentityStats,
    LoadedWeights,
    build_empty_model,
    unit_vector_std,
)

DEMO_NOTICE = (
    "using untrained demo weights: results are meaningless noise-like images; "
    "run `fvedit weights fetch` or `fvedit weights import-dva` for the real DVA model"
)

_NORMS = (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.InstanceNorm2d)


@torch.no_grad()
def seeded_init_(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite every state-dict tensor with a deterministic, PyTorch-default-like init.

    Convs/linears: uniform +-1/sqrt(fan_in) (weight and bias, as `nn.Conv2d`'s default);
    norms: weight 1, bias 0, running mean 0 / var 1 (identity in eval mode); PReLU 0.25;
    anything else: 1-D "weight" -> 1, other 1-D -> 0, N-D -> uniform +-1/sqrt(fan_in).
    Modules are visited in `named_modules` order, so the result depends only on `seed`.
    """
    gen = torch.Generator().manual_seed(seed)
    for _, module in model.named_modules():
        for pname, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if tensor is None:
                continue
            if not tensor.is_floating_point():
                tensor.zero_()  # num_batches_tracked
                continue
            if isinstance(module, _NORMS):
                tensor.fill_(1.0 if pname in ("weight", "running_var") else 0.0)
            elif isinstance(module, nn.PReLU):
                tensor.fill_(0.25)
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) or tensor.ndim >= 2:
                weight = getattr(module, "weight", None)
                ref = weight if isinstance(weight, Tensor) and weight.ndim >= 2 else tensor
                fan_in = math.prod(ref.shape[1:]) if ref.ndim >= 2 else ref.numel()
                bound = 1.0 / math.sqrt(max(fan_in, 1))
                tensor.uniform_(-bound, bound, generator=gen)
            else:
                tensor.fill_(1.0 if pname == "weight" else 0.0)
    return model


def demo_weights(preset: str = "tiny", seed: int = 0, device: str | torch.device = "cpu") -> LoadedWeights:
    """A seeded random model with a seeded classifier and identity statistics (`is_demo=True`).

    Identity statistics are *unit-sphere* statistics, not measured ones: mean 0 and std
    1/sqrt(id_dim), the per-coordinate std of a random unit vector. Real z_id are unit
    vectors too, so normalised identities have norm ~sqrt(id_dim) as with the official
    latent.pkl, and an edit `scale` means roughly the same step size.
    """
    from fvedit.models import randomize_zero_init

    try:
        cfg = get_preset(preset)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    model = build_empty_model(cfg)
    seeded_init_(model, seed)
    randomize_zero_init(model, seed)
    model.eval().requires_grad_(False).to(device)

    id_dim = cfg.encoder.id_dim
    gen = torch.Generator().manual_seed(seed + 1_000_003)  # independent of the model stream
    mean = torch.zeros(id_dim)
    std = torch.full((id_dim,), unit_vector_std(id_dim))
    n_cls = len(CELEBA_ATTRIBUTES)
    weight = torch.randn(n_cls, id_dim, generator=gen) / math.sqrt(id_dim)
    bias = 0.1 * torch.randn(n_cls, generator=gen)
    classifier = AttributeClassifier(weight, bias, mean.clone(), std.clone()).to(device)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "demo": True,
        "preset": cfg.name,
        "seed": seed,
        "config": cfg.to_dict(),
        "files": {},
        "notes": [DEMO_NOTICE],
    }
    return LoadedWeights(
        model=model,
        classifier=classifier,
        id_stats=IdentityStats(mean, std).to(device),
        manifest=manifest,
        is_demo=True,
    )
