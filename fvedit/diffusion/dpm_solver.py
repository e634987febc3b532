"""Multistep DPM-Solver++ (data prediction, orders 1-3) for decoding, and the matching inversion.

The probability-flow ODE in half-log-SNR lambda, written for the data prediction x0(x, t), is

    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral_{lambda_s}^{lambda_t} e^lambda x0(lambda) dlambda.

A multistep solver replaces x0(lambda) in the integral by the polynomial through the last
1-3 (clamped) x0 predictions, so every step is a fixed linear combination of the current x and
those predictions. We compute those weights once on the host in float64 (`DPMPlan`) and the
loop only does float32 tensor arithmetic: sync-free and capturable.

- Order 1 is exactly DDIM (eta = 0) with x0 clamping, on any grid.
- Order 2 is DPM-Solver++(2M) from the paper (Lu et al. 2022, Alg. 2).
- Order 3 integrates the quadratic through the last three predictions exactly. Note: the
  public DPM-Solver code weights the second divided difference by half of that, which
  makes its 3rd-order multistep formally 2nd order; our tests measure third-order
  convergence, so we keep the exact weight.
- Warm-up: step i uses order min(order, i + 1). With lower_order_final the last steps
  use min(order, steps left), as DPM-Solver recommends for few steps.
- Corrector (on by default; the UniC idea of Zhao et al. 2023, "UniPC"): the model call at
  the start of step i + 1 also gives the x0 prediction at the end of step i, so step i is redone
  with the polynomial through that new point as well (one order higher) before step i + 1 runs.
  No extra model calls; the prediction itself is kept (it was made at the uncorrected state).
  The last interval has no later call, so it is not corrected.

Time convention: t is the model timestep in [0, 999] (`VPSchedule`). The clean image is the
state at t = 0 (alpha-bar = 0.9999), exactly as in the official DDIM inversion, and x_T lives
at t = 999 by default (DDIM with T = 1000 puts it there too). `dpm_encode` integrates the same
ODE from t = 0 up to 999 on the reversed grid; `dpm_decode` integrates it back down to the state
at t = 0 or, with `denoise_final`, spends its last model call on the x0 predicted at t = 0 (the
last step of the official DDIM decode).

Defaults (15 calls per direction, order 3, logSNR grid, no x0 clamp; the decode with the
corrector and ending at the state at t = 0, the encode without it) were chosen against the exact
probability-flow solution on Gaussians with `bench/decode_accuracy.py` (README table): at 15
calls the corrector takes the relative error from 8e-3 to 2e-3; the final x0 call (what DDIM
ends with) returns E[x0 | x at t = 0] instead of the state the encoder started from, a floor of
2-3e-3; clamping the x0 predictions changes the answer wherever data leave [-1, 1] (500x worse
there at 15 calls) and the pixel conversion clamps anyway. The first defaults (order 3, logSNR,
x0 call, clamp) were chosen by measurement with `bench/sampler_roundtrip.py` on a Gaussian model
with closed-form eps (round trip MAE on [-1, 1] images, 15 calls each way): DDIM 6.9e-2; DPM++ order 3 logSNR
9.7e-4 (floor 7.2e-4 = the final x0 step itself, which DDIM-1000 also takes), time_quadratic
4.0e-3, time_uniform 2.5e-2; order 2 logSNR 1.4e-3. Uniform-in-time grids spend too few steps
near t = 0 where lambda changes fastest, which is what limits the inversion; order 3 wins from
15 calls on, order 2 is safer below 10. Encoding with N - 1 calls on the decoder's own grid
(the DDIM pairing) gives the same accuracy as N calls on an N + 1 point grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fvedit.config import DiffusionConfig
from fvedit.diffusion.ddim import CallbackFn, EpsFn, ProgressFn, StepInfo
from fvedit.diffusion.schedule import VPSchedule, timestep_grid
from fvedit.errors import FveditError, InputError

DEFAULT_STEPS = 15  # model calls per direction (paper, Appendix C.3: 15-step 3rd-order DPM-Solver)
DEFAULT_ORDER = 3
DEFAULT_GRID = "logSNR"
DEFAULT_CORRECTOR = True
DEFAULT_CLAMP = False


@dataclass(frozen=True)
class DPMPlan:
    """A precomputed multistep solve: timesteps, per-step orders and linear weights.

    Step i goes from ts[i] to ts[i + 1] after one model call at ts[i]:
        x <- x_coef[i] * x + sum_j m_coefs[i][j] * x0_pred[i - j].
    With denoise_final, one more model call at ts[-1] returns its clamped x0 prediction.
    """

    ts: tuple[float, ...]
    orders: tuple[int, ...]
    x_coefs: tuple[float, ...]
    m_coefs: tuple[tuple[float, ...], ...]
    recip_alpha: tuple[float, ...]  # 1 / alpha(ts[i]) for the x0 prediction
    sigma_over_alpha: tuple[float, ...]  # sigma / alpha at ts[i]
    denoise_final: bool
    # Corrector of step i (run once the prediction at ts[i + 1] exists), or None:
    # x <- c[0] * x_at_ts[i] + c[1] * x0_pred[i + 1] + sum_j c[2 + j] * x0_pred[i - j].
    c_coefs: tuple[tuple[float, ...] | None, ...] = ()

    @property
    def nfe(self) -> int:
        """Model calls the plan makes."""
        return len(self.orders) + int(self.denoise_final)


def _step_weights(lams: Sequence[float], lam_t: float, alpha_t: float, sigma_ratio: float,
                  order: int) -> tuple[float, tuple[float, ...]]:
    """Weights of one multistep update. lams = lambdas of the newest `order` predictions,
    newest first. Returns (coefficient of x, coefficients of the predictions newest first)."""
    h = lam_t - lams[0]
    phi_1 = np.expm1(-h)  # integral of e^u over the step, times -e^{-h}
    if order == 1:
        return sigma_ratio, (-alpha_t * phi_1,)
    r0 = (lams[0] - lams[1]) / h
    if order == 2:
        # DPM-Solver++(2M): x0 ~ m0 + (m0 - m1) / (2 r0) on the step.
        return sigma_ratio, (-alpha_t * phi_1 * (1 + 0.5 / r0), alpha_t * phi_1 * 0.5 / r0)
    if order != 3:
        raise InputError(f"DPM-Solver order must be 1, 2 or 3, got {order}")
    r1 = (lams[1] - lams[2]) / h
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    m0 = np.array([1.0, 0.0, 0.0])
    d1_0 = np.array([1.0, -1.0, 0.0]) / r0  # ~ h x0'
    d1_1 = np.array([0.0, 1.0, -1.0]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)  # h x0' to second order
    d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)  # h^2 x0''
    w = -alpha_t * phi_1 * m0 + alpha_t * phi_2 * d1 - alpha_t * phi_3 * d2
    return sigma_ratio, tuple(float(v) for v in w)


_GAUSS_X, _GAUSS_W = np.polynomial.legendre.leggauss(32)


def _poly_weights(nodes: Sequence[float], lam_s: float, lam_t: float, alpha_t: float) -> tuple[float, ...]:
    """Weights of x0 at `nodes` (lambdas) when x0(lambda) is the polynomial through them:
    sigma_t * integral_{lam_s}^{lam_t} e^lambda L_j(lambda) dlambda = alpha_t * integral e^(lambda - lam_t) L_j.
    32-point Gauss-Legendre is exact to float64 round-off here (|h| < 2, an entire integrand)."""
    half = 0.5 * (lam_t - lam_s)
    lam = half * _GAUSS_X + 0.5 * (lam_t + lam_s)
    kernel = _GAUSS_W * half * np.exp(lam - lam_t)
    out = []
    for j, nj in enumerate(nodes):
        basis = np.ones_like(lam)
        for k, nk in enumerate(nodes):
            if k != j:
                basis *= (lam - nk) / (nj - nk)
        out.append(float(alpha_t * np.sum(kernel * basis)))
    return tuple(out)


@lru_cache(maxsize=64)
def _plan_cached(ts: tuple[float, ...], order: int, lower_order_final: bool, denoise_final: bool,
                 corrector: bool, cfg: DiffusionConfig) -> DPMPlan:
    sched = VPSchedule(cfg)
    t = np.asarray(ts)
    lam, alpha, sigma, log_alpha = sched.lambda_(t), sched.alpha(t), sched.sigma(t), sched.log_alpha(t)
    n = len(t) - 1
    orders, x_coefs, m_coefs, c_coefs = [], [], [], []
    for i in range(n):
        k = min(order, i + 1)
        if lower_order_final:
            k = min(k, n - i)
        cx, w = _step_weights(lam[i::-1][:k], lam[i + 1], alpha[i + 1], sigma[i + 1] / sigma[i], k)
        orders.append(k)
        x_coefs.append(float(cx))
        m_coefs.append(tuple(float(v) for v in w))
        if corrector and i + 1 < n:  # the last interval has no later model call to correct with
            nodes = (lam[i + 1], *lam[i::-1][:k])
            c_coefs.append((float(cx), *_poly_weights(nodes, lam[i], lam[i + 1], alpha[i + 1])))
        else:
            c_coefs.append(None)
    return DPMPlan(
        ts=ts,
        orders=tuple(orders),
        x_coefs=tuple(x_coefs),
        m_coefs=tuple(m_coefs),
        recip_alpha=tuple(float(v) for v in np.exp(-log_alpha)),
        sigma_over_alpha=tuple(float(v) for v in np.sqrt(np.expm1(-2.0 * log_alpha))),
        denoise_final=denoise_final,
        c_coefs=tuple(c_coefs),
    )


def make_plan(
    steps: int,
    *,
    order: int = DEFAULT_ORDER,
    grid: str | Sequence[float] = DEFAULT_GRID,
    t_from: float,
    t_to: float,
    lower_order_final: bool | None = None,
    denoise_final: bool = False,
    corrector: bool = True,
    cfg: DiffusionConfig = DiffusionConfig(),
) -> DPMPlan:
    """Plan `steps` model calls from t_from to t_to (t_from > t_to decodes, < encodes).

    With denoise_final the last call is the x0 prediction at t_to, so the ODE gets steps - 1
    intervals. lower_order_final=None follows the DPM-Solver code: on below 10 intervals.
    corrector=True redoes each step with the next call's prediction (no extra calls).
    An explicit grid lists the interval end points (steps + 1, or steps with denoise_final).
    """
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool):
        raise InputError(f"DPM-Solver steps must be an integer, got {steps!r}")
    if order not in (1, 2, 3):
        raise InputError(f"DPM-Solver order must be 1, 2 or 3, got {order!r}")
    intervals = int(steps) - int(denoise_final)
    if intervals < 1:
        raise InputError(f"DPM-Solver needs at least {1 + int(denoise_final)} model calls here, got {steps}")
    ts = timestep_grid(VPSchedule(cfg), grid, t_from, t_to, intervals)
    if lower_order_final is None:
        lower_order_final = intervals < 10
    return _plan_cached(tuple(float(v) for v in ts), order, bool(lower_order_final),
                        bool(denoise_final), bool(corrector), cfg)


def _f32(v: float) -> float:
    """A float64 coefficient rounded to float32, as the official code casts its tables."""
    return float(np.float32(v))


def _predict_x0(eps_fn: EpsFn, x: Tensor, plan: DPMPlan, i: int, clamp: bool) -> Tensor:
    t = torch.full((x.shape[0],), plan.ts[i], dtype=torch.float32, device=x.device)
    eps = eps_fn(x, t)
    if eps.shape != x.shape:
        raise FveditError(f"eps model returned shape {tuple(eps.shape)} for input {tuple(x.shape)}")
    x0 = _f32(plan.recip_alpha[i]) * x - _f32(plan.sigma_over_alpha[i]) * eps
    return x0.clamp(-1.0, 1.0) if clamp else x0


def run_plan(
    eps_fn: EpsFn,
    x: Tensor,
    plan: DPMPlan,
    *,
    clamp: bool = True,
    callback: CallbackFn | None = None,
    progress: ProgressFn | None = None,
) -> Tensor:
    """Execute a plan from x (the state at plan.ts[0])."""
    if x.ndim != 4:
        raise InputError(f"expected images [B,C,H,W], got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise InputError(f"samplers run in float32, got {x.dtype}")
    preds: list[Tensor] = []  # newest first, at most 3
    x_prev = x  # the state at ts[i - 1], for the corrector
    for i, (cx, ws) in enumerate(zip(plan.x_coefs, plan.m_coefs)):
        x0 = _predict_x0(eps_fn, x, plan, i, clamp)
        corr = plan.c_coefs[i - 1] if i > 0 and plan.c_coefs else None
        if corr is not None:  # redo step i - 1 with the new prediction as well
            x = _f32(corr[0]) * x_prev + _f32(corr[1]) * x0
            for w, m in zip(corr[2:], preds):
                x = x + _f32(w) * m
        preds = [x0, *preds[:2]]
        x_prev = x
        x_new = _f32(cx) * x
        for w, m in zip(ws, preds):
            x_new = x_new + _f32(w) * m
        x = x_new
        if callback is not None:
            callback(StepInfo(i, plan.ts[i], x, x0))
        if progress is not None:
            progress(i + 1, plan.nfe)
    if plan.denoise_final:
        i = len(plan.orders)
        x = _predict_x0(eps_fn, x, plan, i, clamp)
        if callback is not None:
            callback(StepInfo(i, plan.ts[i], x, x))
        if progress is not None:
            progress(plan.nfe, plan.nfe)
    return x


def dpm_decode(
    eps_fn: EpsFn,
    x_T: Tensor,
    steps: int = DEFAULT_STEPS,
    order: int = DEFAULT_ORDER,
    grid: str | Sequence[float] = DEFAULT_GRID,
    t_start: float | None = None,
    *,
    t_end: float = 0.0,
    denoise_final: bool = False,
    lower_order_final: bool | None = None,
    corrector: bool = DEFAULT_CORRECTOR,
    clamp: bool = DEFAULT_CLAMP,
    callback: CallbackFn | None = None,
    progress: ProgressFn | None = None,
    cfg: DiffusionConfig = DiffusionConfig(),
) -> Tensor:
    """Render x_T (the state at t_start, default 999) to the state at t_end (the image) with
    `steps` model calls. denoise_final=True ends like DDIM, at the x0 predicted at t_end;
    clamp=True clamps every x0 prediction to [-1, 1] like DVA's DDIM (off by default: it
    changes the ODE where data leave [-1, 1]; pixels are clamped when converted)."""
    t_start = float(cfg.num_timesteps - 1) if t_start is None else float(t_start)
    if not t_start > t_end:
        raise InputError(f"decoding runs from high to low t; got t_start={t_start} <= t_end={t_end}")
    plan = make_plan(steps, order=order, grid=grid, t_from=t_start, t_to=t_end,
                     lower_order_final=lower_order_final, denoise_final=denoise_final,
                     corrector=corrector, cfg=cfg)
    return run_plan(eps_fn, x_T, plan, clamp=clamp, callback=callback, progress=progress)


def dpm_encode(
    eps_fn: EpsFn,
    x0: Tensor,
    steps: int = DEFAULT_STEPS,
    order: int = DEFAULT_ORDER,
    grid: str | Sequence[float] = DEFAULT_GRID,
    t_end: float | None = None,
    *,
    t_start: float = 0.0,
    lower_order_final: bool | None = None,
    corrector: bool = False,
    clamp: bool = DEFAULT_CLAMP,
    callback: CallbackFn | None = None,
    progress: ProgressFn | None = None,
    cfg: DiffusionConfig = DiffusionConfig(),
) -> Tensor:
    """Invert an image in [-1, 1] (taken as the state at t_start = 0, like the official DDIM
    inversion) to x_T at t_end (default 999) along the probability-flow ODE, `steps` model
    calls on the reversed `grid`. The corrector is off by default here: inverting, it made x_T
    less accurate at 10-20 calls (1.3e-2 vs 8.8e-3 relative at 15 on a Gaussian), because the
    steps up in t weight the x0 predictions by up to e^|h| (bench/decode_accuracy.py)."""
    t_end = float(cfg.num_timesteps - 1) if t_end is None else float(t_end)
    if not t_end > t_start:
        raise InputError(f"encoding runs from low to high t; got t_start={t_start} >= t_end={t_end}")
    plan = make_plan(steps, order=order, grid=grid, t_from=t_start, t_to=t_end,
                     lower_order_final=lower_order_final, denoise_final=False,
                     corrector=corrector, cfg=cfg)
    return run_plan(eps_fn, x0, plan, clamp=clamp, callback=callback, progress=progress)
