"""BDIA-DDIM: DDIM made exactly invertible by bi-directional integration (Zhang, Lewis, Kleijn 2023).

Plain DDIM inversion is only approximate: encoding uses eps at z_i to step *up* the interval
that decoding later crosses *down* with eps at z_{i+1}. BDIA replaces each decode step by

    z_{i-1} = gamma * z_{i+1} + g(z_i),
    g(z_i)  = (1 - gamma) z_i + D(t_i -> t_{i-1} | z_i) - gamma * D(t_i -> t_{i+1} | z_i),

where D(t_a -> t_b | z) is the DDIM increment from t_a to t_b with the model's (clamped) x0 at
(z, t_a). Every step uses one model call at the *middle* state, so it can be solved for the
upper state, z_{i+1} = (z_{i-1} - g(z_i)) / gamma, whatever g is: the round trip is exact up to
floating-point round-off, including DVA's x0 clamp. gamma = 0 is plain DDIM; the update is a
linear combination of z_i and the clamped x0, with weights computed once in float64.

The price: the encoding is a *pair* of states, (z_N, z_{N-1}), instead of one x_T. Here both
travel as one tensor [B, 2C, H, W] (z_N first), so caches and batching need no second array.

Grid: N + 1 timesteps from t_0 = 0 (the image, as in the official DDIM inversion) to
t_N = 999. Decoding from the pair makes N - 1 model calls (t_{N-1} .. t_1) and ends at z_0, the
image itself; encoding makes N (one DDIM step t_0 -> t_1, then t_1 .. t_{N-1}).
`steps` counts decode calls, so N = steps + 1.

gamma: the encode recursion divides by gamma at every step, so whatever g does not contract
can grow like 1/gamma^N (on the untrained tiny UNet, gamma = 0.5 blows the pair up to |z_N| ~ 5e3
at 20 calls); at gamma = 1 the two-step recursion has an undamped alternating mode and decodes
least accurately. DEFAULT_GAMMA is pinned by `bench/bdia_gamma.py` (fp32 vs fp64 round trips and
decode error against the exact ODE on Gaussians, pair size on the tiny UNet; README table).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from fvedit.config import DiffusionConfig
from fvedit.diffusion.ddim import EpsFn, ProgressFn
from fvedit.diffusion.schedule import VPSchedule, timestep_grid
from fvedit.errors import FveditError, InputError

DEFAULT_GAMMA = 0.8
DEFAULT_BDIA_GRID = "logSNR"


@dataclass(frozen=True)
class BDIAPlan:
    """Float64 weights of every step on one grid.

    For a step at t_i: x0 = clamp(recip_alpha[i] * z - sigma_over_alpha[i] * eps) and
    g(z) = p[i] * x0 + q[i] * z. Step 0 is the plain DDIM step t_0 -> t_1 (encode only)."""

    ts: tuple[float, ...]
    gamma: float
    p: tuple[float, ...]
    q: tuple[float, ...]
    recip_alpha: tuple[float, ...]
    sigma_over_alpha: tuple[float, ...]


@lru_cache(maxsize=32)
def make_bdia_plan(steps: int, gamma: float = DEFAULT_GAMMA, grid: str = DEFAULT_BDIA_GRID,
                   cfg: DiffusionConfig = DiffusionConfig()) -> BDIAPlan:
    """The plan for `steps` decode calls (a grid of steps + 2 timesteps)."""
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise InputError(f"BDIA needs at least 1 decode step, got {steps!r}")
    if not 0.0 < gamma <= 1.0:
        raise InputError(f"BDIA gamma must be in (0, 1], got {gamma}")
    sched = VPSchedule(cfg)
    ts = timestep_grid(sched, grid, sched.t_min, sched.t_max, int(steps) + 1)
    a, s = sched.alpha(ts), sched.sigma(ts)
    n = len(ts) - 1
    p, q = [0.0] * n, [0.0] * n
    # DDIM increment D(t_i -> t_j | z) = a_j x0 + s_j eps - z, eps = (z - a_i x0) / s_i
    def ddim_to(i: int, j: int) -> tuple[float, float]:  # (weight of x0, weight of z) in z_j
        return a[j] - s[j] * a[i] / s[i], s[j] / s[i]

    p[0], q[0] = ddim_to(0, 1)
    for i in range(1, n):
        (pd, qd), (pu, qu) = ddim_to(i, i - 1), ddim_to(i, i + 1)
        # (1 - gamma) z + (pd x0 + qd z - z) - gamma (pu x0 + qu z - z)
        p[i] = pd - gamma * pu
        q[i] = qd - gamma * qu
    return BDIAPlan(ts=tuple(float(t) for t in ts), gamma=float(gamma), p=tuple(p), q=tuple(q),
                    recip_alpha=tuple(1.0 / a), sigma_over_alpha=tuple(s / a))


def _check(x: Tensor, channels_even: bool = False) -> None:
    if x.ndim != 4:
        raise InputError(f"expected images [B,C,H,W], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise InputError(f"BDIA runs in float32 (or float64 for checks), got {x.dtype}")
    if channels_even and x.shape[1] % 2:
        raise InputError(f"a BDIA state pair has an even channel count, got {x.shape[1]}")


def _g(eps_fn: EpsFn, z: Tensor, plan: BDIAPlan, i: int, clamp: bool) -> Tensor:
    """g(z_i): one model call at t_i."""
    t = torch.full((z.shape[0],), plan.ts[i], dtype=torch.float32, device=z.device)
    eps = eps_fn(z, t)
    if eps.shape != z.shape:
        raise FveditError(f"eps model returned shape {tuple(eps.shape)} for input {tuple(z.shape)}")
    x0 = plan.recip_alpha[i] * z - plan.sigma_over_alpha[i] * eps.to(z.dtype)
    if clamp:
        x0 = x0.clamp(-1.0, 1.0)
    return plan.p[i] * x0 + plan.q[i] * z


def bdia_encode(eps_fn: EpsFn, x0: Tensor, steps: int, gamma: float = DEFAULT_GAMMA,
                grid: str = DEFAULT_BDIA_GRID, progress: ProgressFn | None = None, *,
                clamp: bool = True) -> Tensor:
    """Image [B,C,H,W] in [-1, 1] -> the state pair [B,2C,H,W] = (z_N, z_{N-1}); steps + 1 calls."""
    _check(x0)
    plan = make_bdia_plan(steps, gamma, grid)
    n = calls = len(plan.ts) - 1
    lower, mid = x0, _g(eps_fn, x0, plan, 0, clamp)  # z_0, z_1 (plain DDIM step)
    if progress is not None:
        progress(1, calls)
    for i in range(1, n):
        lower, mid = mid, (lower - _g(eps_fn, mid, plan, i, clamp)) / plan.gamma
        if progress is not None:
            progress(i + 1, calls)
    return torch.cat([mid, lower], dim=1)


def bdia_decode(eps_fn: EpsFn, pair: Tensor, steps: int, gamma: float = DEFAULT_GAMMA,
                grid: str = DEFAULT_BDIA_GRID, progress: ProgressFn | None = None, *,
                clamp: bool = True) -> Tensor:
    """State pair [B,2C,H,W] from `bdia_encode` -> image [B,C,H,W] (z_0); `steps` calls."""
    _check(pair, channels_even=True)
    plan = make_bdia_plan(steps, gamma, grid)
    n = len(plan.ts) - 1
    upper, mid = pair.chunk(2, dim=1)
    for done, i in enumerate(range(n - 1, 0, -1), start=1):
        upper, mid = mid, plan.gamma * upper + _g(eps_fn, mid, plan, i, clamp)
        if progress is not None:
            progress(done, n - 1)
    return mid
