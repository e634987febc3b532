"""Noise schedules: the discrete training schedule, its DDIM respacing, and a continuous VP view.

Everything here is float64 NumPy computed once on the host. The samplers only cast the
numbers they need to float32 (as the official `_extract_into_tensor` does), so the sampling
loops stay free of host-device syncs.

Time convention used across fvedit: `t` is the *original* training timestep on the
0..num_timesteps-1 scale (what the UNet's sinusoidal embedding receives). DDIM uses
integer t; DPM-Solver uses real t in [0, num_timesteps-1].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from fvedit.config import DiffusionConfig
from fvedit.errors import InputError

GRID_KINDS = ("logSNR", "time_uniform", "time_quadratic")


def linear_betas(cfg: DiffusionConfig = DiffusionConfig()) -> np.ndarray:
    """The official linear beta schedule: np.linspace(beta_start, beta_end, N) in float64."""
    return np.linspace(cfg.beta_start, cfg.beta_end, cfg.num_timesteps, dtype=np.float64)


def alphas_cumprod(cfg: DiffusionConfig = DiffusionConfig()) -> np.ndarray:
    """alpha-bar_t = prod_{s<=t} (1 - beta_s), float64, length N."""
    return np.cumprod(1.0 - linear_betas(cfg))


def ddim_timesteps(steps: int, num_timesteps: int = 1000) -> np.ndarray:
    """The official `space_timesteps(N, f"ddim{steps}")`: [0, s, 2s, ...] with the smallest
    integer stride s for which len(range(0, N, s)) == steps."""
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool):
        raise InputError(f"DDIM steps must be an integer, got {steps!r}")
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == steps:
            return np.arange(0, num_timesteps, stride, dtype=np.int64)
    raise InputError(
        f"cannot make exactly {steps} DDIM steps out of {num_timesteps} timesteps with an integer "
        "stride (the official spacing rule); pick a step count like 5, 10, 20, 50, 100 or 1000"
    )


@dataclass(frozen=True)
class DDIMCoefficients:
    """Per spaced step k: the model timestep and the float64 coefficients of the official loops."""

    timesteps: np.ndarray  # [T] int64, the timestep_map
    alphas_cumprod: np.ndarray  # [T] spaced alpha-bar
    alphas_cumprod_prev: np.ndarray  # [T] alpha-bar_{k-1}, 1.0 at k=0
    alphas_cumprod_next: np.ndarray  # [T] alpha-bar_{k+1}, 0.0 at k=T-1
    sqrt_recip_alphas_cumprod: np.ndarray  # sqrt(1/alpha-bar)
    sqrt_recipm1_alphas_cumprod: np.ndarray  # sqrt(1/alpha-bar - 1)

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def ddim_coefficients(steps: int, cfg: DiffusionConfig = DiffusionConfig()) -> DDIMCoefficients:
    """Respace the training schedule the way the official `SpacedDiffusion` does.

    The official code turns the kept alpha-bars into new betas (1 - abar_k / abar_{k-1}) and
    re-accumulates them with cumprod; we repeat that arithmetic so the float32-cast
    coefficients match bit for bit, not just to rounding.
    """
    timesteps = ddim_timesteps(steps, cfg.num_timesteps)
    base = alphas_cumprod(cfg)
    new_betas, last = [], 1.0
    for t in timesteps:
        new_betas.append(1.0 - base[t] / last)
        last = base[t]
    acp = np.cumprod(1.0 - np.asarray(new_betas, dtype=np.float64))
    return DDIMCoefficients(
        timesteps=timesteps,
        alphas_cumprod=acp,
        alphas_cumprod_prev=np.append(1.0, acp[:-1]),
        alphas_cumprod_next=np.append(acp[1:], 0.0),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / acp),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / acp - 1.0),
    )


class VPSchedule:
    """Continuous-time view of the discrete schedule, for DPM-Solver.

    log alpha(t) is piecewise linear between the integer timesteps, where it equals
    0.5 * log(alpha-bar_t) exactly. This is DPM-Solver's discrete `NoiseScheduleVP` with its
    continuous time mapped back onto the model's timestep scale (their t_cont = (t + 1) / N),
    so fractional t reach the UNet unrounded and integer t reproduce the DDIM alpha-bars.
    lambda(t) = log(alpha / sigma) is half the log-SNR; it decreases with t.
    """

    def __init__(self, cfg: DiffusionConfig = DiffusionConfig()):
        self.num_timesteps = cfg.num_timesteps
        self.t_array = np.arange(cfg.num_timesteps, dtype=np.float64)
        self.log_alpha_array = 0.5 * np.cumsum(np.log(1.0 - linear_betas(cfg)))

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return float(self.num_timesteps - 1)

    def _check(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        if np.any(t < self.t_min) or np.any(t > self.t_max):
            raise InputError(f"timestep outside [{self.t_min:g}, {self.t_max:g}]: {t}")
        return t

    def log_alpha(self, t) -> np.ndarray:
        return np.interp(self._check(t), self.t_array, self.log_alpha_array)

    def alpha(self, t) -> np.ndarray:
        return np.exp(self.log_alpha(t))

    def sigma(self, t) -> np.ndarray:
        return np.sqrt(-np.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t) -> np.ndarray:
        la = self.log_alpha(t)
        return la - 0.5 * np.log(-np.expm1(2.0 * la))

    def t_from_lambda(self, lam) -> np.ndarray:
        """Inverse of lambda(t): solve for log alpha, then invert the piecewise-linear map."""
        lam = np.asarray(lam, dtype=np.float64)
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lam)
        # log_alpha_array decreases with t; np.interp needs increasing abscissae.
        t = np.interp(log_alpha, self.log_alpha_array[::-1], self.t_array[::-1])
        return self._check(np.clip(t, self.t_min, self.t_max))

    @cached_property
    def lambda_range(self) -> tuple[float, float]:
        return float(self.lambda_(self.t_min)), float(self.lambda_(self.t_max))


def timestep_grid(
    schedule: VPSchedule,
    kind: str | Sequence[float],
    t_from: float,
    t_to: float,
    intervals: int,
) -> np.ndarray:
    """`intervals + 1` timesteps from t_from to t_to (either direction), float64.

    - "logSNR": uniform in lambda (DPM-Solver's recommendation for small images);
    - "time_uniform": uniform in t;
    - "time_quadratic": uniform in sqrt of DPM-Solver's continuous time (t + 1) / N, i.e.
      denser near the clean end;
    - an explicit sequence of timesteps, used as is (it must run from t_from to t_to).
    """
    if intervals < 1:
        raise InputError(f"a timestep grid needs at least 1 interval, got {intervals}")
    if not isinstance(kind, str):
        grid = np.asarray(kind, dtype=np.float64)
        if grid.ndim != 1 or len(grid) != intervals + 1:
            raise InputError(f"an explicit grid must have {intervals + 1} timesteps, got {grid.shape}")
        if not (np.all(np.diff(grid) > 0) or np.all(np.diff(grid) < 0)):
            raise InputError("an explicit timestep grid must be strictly monotonic")
        return schedule._check(grid)
    if t_from == t_to:
        raise InputError(f"timestep grid start and end are equal ({t_from})")
    t_from_, t_to_ = float(schedule._check(t_from)), float(schedule._check(t_to))
    if kind == "logSNR":
        lam = np.linspace(schedule.lambda_(t_from_), schedule.lambda_(t_to_), intervals + 1)
        grid = schedule.t_from_lambda(lam)
    elif kind == "time_uniform":
        grid = np.linspace(t_from_, t_to_, intervals + 1)
    elif kind == "time_quadratic":
        n = schedule.num_timesteps
        root = np.linspace(np.sqrt((t_from_ + 1) / n), np.sqrt((t_to_ + 1) / n), intervals + 1)
        grid = root**2 * n - 1
    else:
        raise InputError(f"unknown timestep grid {kind!r}; choose one of {', '.join(GRID_KINDS)}")
    grid[0], grid[-1] = t_from_, t_to_  # exact end points despite the round trips through lambda
    return grid
