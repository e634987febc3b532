"""Decode accuracy of every exposed DPM-Solver++ option against the exact probability-flow ODE.

For Gaussian data x0 ~ N(mu, diag(s^2)) the ODE's solution is closed form, so the decode of an
exact x_T can be compared with the exact image (the state at t = 0): pure solver error, no
inversion error mixed in. Options: order 2/3, lower_order_final, the final x0 step
(denoise_final), the timestep grid and x0 clamping, at 10/15/20/50 calls, on Gaussians inside
[-1, 1] and one whose data leave it (where clamping changes the answer).

    python bench/decode_accuracy.py          # CPU, seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fvedit.diffusion import dpm_decode  # noqa: E402
from test_bdia import DtypeGaussian  # noqa: E402

CALLS = (10, 15, 20, 50)
DEFAULT = dict(order=3, grid="logSNR", denoise_final=False, lower_order_final=None, corrector=True,
               clamp=False)
OPTIONS = {
    "default (order 3 + corrector, logSNR, no x0 step, no clamp)": {},
    "no corrector (the old default had none)": dict(corrector=False),
    "old default (no corrector, x0 step, clamp)": dict(corrector=False, denoise_final=True, clamp=True),
    "order 2": dict(order=2),
    "order 1 (DDIM steps)": dict(order=1),
    "lower_order_final on": dict(lower_order_final=True),
    "lower_order_final off": dict(lower_order_final=False),
    "final x0 step": dict(denoise_final=True),
    "grid time_uniform": dict(grid="time_uniform"),
    "grid time_quadratic": dict(grid="time_quadratic"),
    "clamp x0": dict(clamp=True),
}


def problems():
    yield "inside A", DtypeGaussian(seed=0)
    yield "inside B", DtypeGaussian(mu_range=0.3, s_range=(0.1, 0.3), seed=3)
    yield "inside C", DtypeGaussian(mu_range=0.7, s_range=(0.02, 0.1), seed=11)
    yield "outside [-1,1]", DtypeGaussian(mu_range=(0.9, 1.3), s_range=(0.1, 0.3), seed=7)


def relative_errors() -> dict[tuple[str, str, int], float]:
    """(problem, option, calls) -> mean |decode - exact| / mean |exact|."""
    out = {}
    for label, g in problems():
        exact = g.images(4).double()
        x_T = g.flow(exact, 0, 999).float()
        for name, change in OPTIONS.items():
            kw = {**DEFAULT, **change}
            for n in CALLS:
                dec = dpm_decode(g.eps, x_T, n, **kw).double()
                out[label, name, n] = ((dec - exact).abs().mean() / exact.abs().mean()).item()
    return out


def main() -> None:
    errs = relative_errors()
    labels = [label for label, _ in problems()]
    print("| option | " + " | ".join(f"{lab} {n}" for lab in labels for n in CALLS) + " |")
    print("|---|" + "---|" * (len(labels) * len(CALLS)))
    for name in OPTIONS:
        print(f"| {name} | " + " | ".join(f"{errs[lab, name, n]:.1e}" for lab in labels for n in CALLS) + " |")


if __name__ == "__main__":
    main()
