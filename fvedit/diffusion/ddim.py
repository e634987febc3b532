"""Deterministic DDIM (eta = 0) encode and decode with the official DVA semantics.

- Spacing: `ddim_timesteps(T)` (official `space_timesteps(1000, f"ddim{T}")`).
- Every step predicts x0, clamps it to [-1, 1] and re-derives eps from the clamped x0
  (official `clip_denoised=True` in `ddim_sample` / `ddim_reverse_sample`).
- Encode runs k = 0 .. T-2 (T-1 model calls, DVA's `indices[:-1]` edit); the input image
  is the state at t_0 = 0 and x_T lives at t_{T-1} (999 for T = 1000).
- Decode runs k = T-1 .. 0 (T model calls) and ends at the clamped x0 prediction.
- Coefficients come from float64 arrays cast to float32, and the alpha-bar square roots are
  taken in float32 after the cast, like the official `_extract_into_tensor` code path.

A sampler is a pure function of (eps_fn, x, steps); the caller closes over the condition.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Literal, NamedTuple, overload

import numpy as np
import torch
from torch import Tensor

from fvedit.config import DiffusionConfig
from fvedit.diffusion.schedule import DDIMCoefficients, ddim_coefficients
from fvedit.errors import FveditError, InputError

EpsFn = Callable[[Tensor, Tensor], Tensor]
"""eps_fn(x [B,C,H,W] float32, t [B] float32 original timesteps) -> eps [B,C,H,W]."""

ProgressFn = Callable[[int, int], None]
"""progress(done, total) after each model call (e.g. to drive a progress bar)."""


class StepInfo(NamedTuple):
    """What a per-step callback sees: the step's index (DDIM: the spaced index k; DPM-Solver:
    the step number from 0), its model timestep, the state after the step and the clamped x0
    prediction the step used."""

    index: int
    t: float
    x: Tensor
    x0: Tensor


class Trajectory(NamedTuple):
    """All states of a loop: xs[0] is the input, xs[i + 1] the state after step i.
    x0s[i] and ts[i] are the clamped x0 prediction and model timestep of step i."""

    xs: list[Tensor]
    x0s: list[Tensor]
    ts: list[float]


CallbackFn = Callable[[StepInfo], None]


@lru_cache(maxsize=32)
def _coefficients(steps: int, cfg: DiffusionConfig) -> DDIMCoefficients:
    return ddim_coefficients(steps, cfg)


_TABLES = ("sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "alphas_cumprod_prev",
           "alphas_cumprod_next")


@lru_cache(maxsize=32)
def _device_tables(steps: int, cfg: DiffusionConfig, device: torch.device) -> dict[str, Tensor]:
    """The float64 tables cast to float32 once per device (official `_extract_into_tensor` casts
    after indexing; the values are the same). Model timesteps stay exact in float32."""
    coef = _coefficients(steps, cfg)
    out = {name: torch.from_numpy(getattr(coef, name)).float().to(device) for name in _TABLES}
    out["timesteps"] = torch.from_numpy(coef.timesteps).float().to(device)
    return out


def _extract(tables: dict[str, Tensor], name: str, index: int | Tensor, x: Tensor) -> Tensor:
    """tables[name][index] shaped to broadcast against x: 0-dim for an int index (no host
    sync, no copy), [B,1,1,1] for per-sample indices. Tensor-tensor arithmetic keeps the
    official rounding (dividing by a Python scalar would turn into a reciprocal multiply)."""
    v = tables[name][index]
    return v if v.ndim == 0 else v.reshape(-1, *([1] * (x.ndim - 1)))


def _check_index(index: int | Tensor, batch: int, steps: int, device: torch.device) -> int | Tensor:
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        if not 0 <= index < steps:
            raise InputError(f"DDIM step index {index} out of range 0..{steps - 1}")
        return int(index)
    idx = torch.as_tensor(index, dtype=torch.long, device=device)
    if idx.shape != (batch,):
        raise InputError(f"step index must be an int or a [{batch}] tensor, got shape {tuple(idx.shape)}")
    if int(idx.min()) < 0 or int(idx.max()) >= steps:
        raise InputError(f"DDIM step index out of range 0..{steps - 1}: {idx.tolist()}")
    return idx


def predict_x0(
    eps_fn: EpsFn, x: Tensor, idx: int | Tensor, tables: dict[str, Tensor], clamp: bool = True
) -> tuple[Tensor, Tensor]:
    """Model call at spaced index idx; returns (x0, eps) with x0 clamped and eps re-derived."""
    t = tables["timesteps"][idx].expand(x.shape[0])
    eps = eps_fn(x, t)
    if eps.shape != x.shape:
        raise FveditError(f"eps model returned shape {tuple(eps.shape)} for input {tuple(x.shape)}")
    recip = _extract(tables, "sqrt_recip_alphas_cumprod", idx, x)
    recipm1 = _extract(tables, "sqrt_recipm1_alphas_cumprod", idx, x)
    x0 = recip * x - recipm1 * eps
    if clamp:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (recip * x - x0) / recipm1
    return x0, eps


def _check_images(x: Tensor) -> None:
    if x.ndim != 4:
        raise InputError(f"expected images [B,C,H,W], got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise InputError(f"samplers run in float32, got {x.dtype}")


def _check_steps(steps: int) -> int:
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool):
        raise InputError(f"DDIM steps must be an integer, got {steps!r}")
    return int(steps)


def ddim_step(
    eps_fn: EpsFn,
    x: Tensor,
    index: int | Tensor,
    steps: int,
    *,
    reverse: bool = False,
    clamp: bool = True,
    cfg: DiffusionConfig = DiffusionConfig(),
) -> tuple[Tensor, Tensor]:
    """One DDIM step at spaced index k (an int, or a [B] tensor for per-sample steps, as the
    CLIP editor batches x_800, x_600, ... in one call). reverse=False decodes (k -> k-1),
    reverse=True encodes (k -> k+1). Returns (x_new, x0)."""
    steps = _check_steps(steps)
    _check_images(x)
    tables = _device_tables(steps, cfg, x.device)
    idx = _check_index(index, x.shape[0], steps, x.device)
    x0, eps = predict_x0(eps_fn, x, idx, tables, clamp)
    abar = _extract(tables, "alphas_cumprod_next" if reverse else "alphas_cumprod_prev", idx, x)
    return x0 * torch.sqrt(abar) + torch.sqrt(1.0 - abar) * eps, x0


def _loop(
    eps_fn: EpsFn,
    x: Tensor,
    steps: int,
    indices: list[int],
    reverse: bool,
    clamp: bool,
    cfg: DiffusionConfig,
    progress: ProgressFn | None,
    callback: CallbackFn | None,
    keep: bool,
) -> tuple[Tensor, Trajectory | None]:
    _check_images(x)
    coef = _coefficients(_check_steps(steps), cfg)
    traj = Trajectory([x], [], []) if keep else None
    for done, k in enumerate(indices, start=1):
        x, x0 = ddim_step(eps_fn, x, k, steps, reverse=reverse, clamp=clamp, cfg=cfg)
        t = float(coef.timesteps[k])
        if traj is not None:
            traj.xs.append(x)
            traj.x0s.append(x0)
            traj.ts.append(t)
        if callback is not None:
            callback(StepInfo(k, t, x, x0))
        if progress is not None:
            progress(done, len(indices))
    return x, traj


@overload
def ddim_encode(eps_fn: EpsFn, x0: Tensor, steps: int, progress: ProgressFn | None = ..., *,
                callback: CallbackFn | None = ..., clamp: bool = ..., cfg: DiffusionConfig = ...,
                return_intermediates: Literal[False] = ...) -> Tensor: ...
@overload
def ddim_encode(eps_fn: EpsFn, x0: Tensor, steps: int, progress: ProgressFn | None = ..., *,
                callback: CallbackFn | None = ..., clamp: bool = ..., cfg: DiffusionConfig = ...,
                return_intermediates: Literal[True]) -> tuple[Tensor, Trajectory]: ...


def ddim_encode(
    eps_fn: EpsFn,
    x0: Tensor,
    steps: int,
    progress: ProgressFn | None = None,
    *,
    callback: CallbackFn | None = None,
    clamp: bool = True,
    cfg: DiffusionConfig = DiffusionConfig(),
    return_intermediates: bool = False,
):
    """Invert an image in [-1, 1] to x_T at timestep ddim_timesteps(steps)[-1] (T-1 model calls)."""
    steps = _check_steps(steps)
    x, traj = _loop(eps_fn, x0, steps, list(range(steps - 1)), True, clamp, cfg, progress,
                    callback, return_intermediates)
    return (x, traj) if return_intermediates else x


@overload
def ddim_decode(eps_fn: EpsFn, x_T: Tensor, steps: int, progress: ProgressFn | None = ..., *,
                callback: CallbackFn | None = ..., clamp: bool = ..., cfg: DiffusionConfig = ...,
                return_intermediates: Literal[False] = ...) -> Tensor: ...
@overload
def ddim_decode(eps_fn: EpsFn, x_T: Tensor, steps: int, progress: ProgressFn | None = ..., *,
                callback: CallbackFn | None = ..., clamp: bool = ..., cfg: DiffusionConfig = ...,
                return_intermediates: Literal[True]) -> tuple[Tensor, Trajectory]: ...


def ddim_decode(
    eps_fn: EpsFn,
    x_T: Tensor,
    steps: int,
    progress: ProgressFn | None = None,
    *,
    callback: CallbackFn | None = None,
    clamp: bool = True,
    cfg: DiffusionConfig = DiffusionConfig(),
    return_intermediates: bool = False,
):
    """Render x_T (at timestep ddim_timesteps(steps)[-1]) to an image in [-1, 1] (T model calls).

    With return_intermediates, xs = [x at t_{T-1}, x at t_{T-2}, ..., x at t_0, final image]
    (for T = 5: x_800, x_600, x_400, x_200, x_0, image), the official `forward_recon_imgs`."""
    steps = _check_steps(steps)
    x, traj = _loop(eps_fn, x_T, steps, list(range(steps - 1, -1, -1)), False, clamp, cfg,
                    progress, callback, return_intermediates)
    return (x, traj) if return_intermediates else x
