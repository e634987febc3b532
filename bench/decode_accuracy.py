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

from test_bdia import DtypeGaussian  # noqa: E402
from test_decode_default import INSIDE, OPTIONS as TESTED_OPTIONS, OUTSIDE, relative_error  # noqa: E402

CALLS = (10, 15, 20, 50)
# the options the test checks against the default, plus rows for the README's comparison
OPTIONS = {
    "default (order 3 + corrector, logSNR, no x0 step, no clamp)": {},
    "old default (no corrector, x0 step, clamp)": dict(corrector=False, denoise_final=True, clamp=True),
    "lower_order_final off": dict(lower_order_final=False),
    **TESTED_OPTIONS,
}


def problems():
    for name, params in INSIDE.items():
        yield f"inside {name}", DtypeGaussian(**params)
    yield "outside [-1,1]", DtypeGaussian(**OUTSIDE)


def relative_errors() -> dict[tuple[str, str, int], float]:
    """(problem, option, calls) -> mean |decode - exact| / mean |exact| (library defaults + option)."""
    return {(label, name, n): relative_error(g, n, **change)
            for label, g in problems() for name, change in OPTIONS.items() for n in CALLS}


def main() -> None:
    errs = relative_errors()
    labels = [label for label, _ in problems()]
    print("| option | " + " | ".join(f"{lab} {n}" for lab in labels for n in CALLS) + " |")
    print("|---|" + "---|" * (len(labels) * len(CALLS)))
    for name in OPTIONS:
        print(f"| {name} | " + " | ".join(f"{errs[lab, name, n]:.1e}" for lab in labels for n in CALLS) + " |")


if __name__ == "__main__":
    main()
