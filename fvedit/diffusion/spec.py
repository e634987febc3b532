"""One object for "which sampler, how many steps": encode and decode a batch, and name it for caches.

Callers (reconstruct, the edit pipeline, benchmarks) use `SamplerSpec` so that switching between the
official DDIM and DPM-Solver++ is one flag, and an encode cache can tell whether its x_T fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fvedit.diffusion import EpsFn, ProgressFn, ddim_decode, ddim_encode, dpm_decode, dpm_encode
from fvedit.diffusion.dpm_solver import DEFAULT_GRID, DEFAULT_ORDER
from fvedit.errors import InputError

SAMPLERS = ("dpm", "ddim")


@dataclass(frozen=True)
class SamplerSpec:
    """`dpm`: multistep DPM-Solver++ with `steps` calls each way (x_T at t=999).
    `ddim`: the official DDIM with T=`steps` (encode T-1 calls, decode T; x_T at the last DDIM step)."""

    name: str = "dpm"
    steps: int = 15
    order: int = DEFAULT_ORDER
    grid: str = DEFAULT_GRID

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise InputError(f"unknown sampler {self.name!r}: choose one of {', '.join(SAMPLERS)}")
        if not 2 <= self.steps <= 1000:
            raise InputError(f"--steps must be between 2 and 1000, got {self.steps}")
        if self.name == "dpm" and self.order not in (1, 2, 3):
            raise InputError(f"DPM-Solver++ order must be 1, 2 or 3, got {self.order}")

    @property
    def key(self) -> str:
        """Identifies the x_T a spec produces (cache key part)."""
        if self.name == "ddim":
            return f"ddim{self.steps}"
        return f"dpm{self.steps}-o{self.order}-{self.grid}"

    @property
    def encode_calls(self) -> int:
        return self.steps - 1 if self.name == "ddim" else self.steps

    @property
    def decode_calls(self) -> int:
        return self.steps

    def encode(self, eps_fn: EpsFn, x0: Tensor, progress: ProgressFn | None = None) -> Tensor:
        if self.name == "ddim":
            return ddim_encode(eps_fn, x0, self.steps, progress)
        return dpm_encode(eps_fn, x0, self.steps, self.order, self.grid, progress=progress)

    def decode(self, eps_fn: EpsFn, x_T: Tensor, progress: ProgressFn | None = None) -> Tensor:
        if self.name == "ddim":
            return ddim_decode(eps_fn, x_T, self.steps, progress)
        return dpm_decode(eps_fn, x_T, self.steps, self.order, self.grid, progress=progress)
