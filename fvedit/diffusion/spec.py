"""One object for "which sampler, how many steps": encode and decode a batch, and name it for caches.

Callers (reconstruct, the edit pipeline, benchmarks) use `SamplerSpec` so that switching between the
official DDIM, DPM-Solver++ and the exactly invertible BDIA-DDIM is one flag, and an encode cache can tell whether its x_T fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fvedit.diffusion import EpsFn, ProgressFn, ddim_decode, ddim_encode, dpm_decode, dpm_encode
from fvedit.diffusion.bdia import DEFAULT_BDIA_GRID, DEFAULT_GAMMA, bdia_decode, bdia_encode
from fvedit.diffusion.dpm_solver import DEFAULT_CLAMP, DEFAULT_CORRECTOR, DEFAULT_GRID, DEFAULT_ORDER
from fvedit.errors import InputError

SAMPLERS = ("dpm", "ddim", "bdia")


@dataclass(frozen=True)
class SamplerSpec:
    """`dpm`: multistep DPM-Solver++ with `steps` calls each way (x_T at t=999); `corrector` (decode
    only) and `clamp` as in `fvedit.diffusion.dpm_solver` (defaults: bench/decode_accuracy.py).
    `ddim`: the official DDIM with T=`steps` (encode T-1 calls, decode T; x_T at the last DDIM step).
    `bdia`: BDIA-DDIM (`fvedit.diffusion.bdia`), exact inversion: decode `steps` calls, encode
    steps + 1, and the encoding is a pair of states (twice the channels of x_T)."""

    name: str = "dpm"
    steps: int = 15
    order: int = DEFAULT_ORDER
    grid: str = DEFAULT_GRID
    corrector: bool = DEFAULT_CORRECTOR
    clamp: bool = DEFAULT_CLAMP

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
        if self.name == "bdia":
            return f"bdia{self.steps}-g{DEFAULT_GAMMA:g}-{DEFAULT_BDIA_GRID}"
        # only what the encode depends on: the decode's corrector does not change x_T
        return f"dpm{self.steps}-o{self.order}-{self.grid}-" + ("clamp" if self.clamp else "noclamp")

    @property
    def states(self) -> int:
        """Images per encoding: BDIA keeps the pair (z_N, z_{N-1}) stacked on channels."""
        return 2 if self.name == "bdia" else 1

    @property
    def encode_calls(self) -> int:
        return {"ddim": self.steps - 1, "bdia": self.steps + 1}.get(self.name, self.steps)

    @property
    def decode_calls(self) -> int:
        return self.steps

    def encode(self, eps_fn: EpsFn, x0: Tensor, progress: ProgressFn | None = None) -> Tensor:
        if self.name == "ddim":
            return ddim_encode(eps_fn, x0, self.steps, progress)
        if self.name == "bdia":
            return bdia_encode(eps_fn, x0, self.steps, progress=progress)
        return dpm_encode(eps_fn, x0, self.steps, self.order, self.grid, clamp=self.clamp,
                          progress=progress)

    def decode(self, eps_fn: EpsFn, x_T: Tensor, progress: ProgressFn | None = None) -> Tensor:
        if self.name == "ddim":
            return ddim_decode(eps_fn, x_T, self.steps, progress)
        if self.name == "bdia":
            return bdia_decode(eps_fn, x_T, self.steps, progress=progress)
        return dpm_decode(eps_fn, x_T, self.steps, self.order, self.grid, corrector=self.corrector,
                          clamp=self.clamp, progress=progress)
