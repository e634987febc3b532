"""Samplers for the DVA noise model: official DDIM (encode/decode) and multistep DPM-Solver++.

Samplers are pure functions of (eps_fn, x, steps): eps_fn(x, t) takes x [B,C,H,W] float32 and
t [B] float32 original timesteps (0..999) and returns eps; the caller closes over z_face.
"""

from fvedit.diffusion.ddim import (
    CallbackFn,
    EpsFn,
    ProgressFn,
    StepInfo,
    Trajectory,
    ddim_decode,
    ddim_encode,
    ddim_step,
)
from fvedit.diffusion.dpm_solver import (
    DEFAULT_GRID,
    DEFAULT_ORDER,
    DEFAULT_STEPS,
    DPMPlan,
    dpm_decode,
    dpm_encode,
    make_plan,
    run_plan,
)
from fvedit.diffusion.schedule import (
    GRID_KINDS,
    DDIMCoefficients,
    VPSchedule,
    alphas_cumprod,
    ddim_coefficients,
    ddim_timesteps,
    linear_betas,
    timestep_grid,
)

__all__ = [
    "CallbackFn",
    "DEFAULT_GRID",
    "DEFAULT_ORDER",
    "DEFAULT_STEPS",
    "DDIMCoefficients",
    "DPMPlan",
    "EpsFn",
    "GRID_KINDS",
    "ProgressFn",
    "StepInfo",
    "Trajectory",
    "VPSchedule",
    "alphas_cumprod",
    "ddim_coefficients",
    "ddim_decode",
    "ddim_encode",
    "ddim_step",
    "ddim_timesteps",
    "dpm_decode",
    "dpm_encode",
    "linear_betas",
    "make_plan",
    "run_plan",
    "timestep_grid",
]
