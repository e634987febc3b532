"""Pin BDIA's gamma: round-trip error in fp32 and fp64, and edit-decode error against the exact ODE.

Two Gaussian data models with closed-form eps (the exact probability-flow map is known), plus
the tiny preset's untrained UNet for the round trip (a network with a rough Jacobian, where
round-off is amplified through the model). An "edit" inverts under one Gaussian and decodes
under another, compared with the exact map of the same x_T; DPM-Solver++ (order 3) and the
official DDIM at the same decode calls are printed beside it.

    python bench/bdia_gamma.py            # CPU, about a minute
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from fvedit.diffusion.bdia import bdia_decode, bdia_encode  # noqa: E402
from fvedit.diffusion.spec import SamplerSpec  # noqa: E402
from test_bdia import DtypeGaussian  # noqa: E402

GAMMAS = (0.5, 0.8, 0.9, 1.0)
CALLS = (10, 15, 20)


def problems():
    yield "gauss A", DtypeGaussian(seed=0), DtypeGaussian(seed=5)
    yield "gauss B", DtypeGaussian(mu_range=0.3, s_range=(0.1, 0.3), seed=3), DtypeGaussian(mu_range=0.3, s_range=(0.1, 0.3), seed=4)


def rel(out: torch.Tensor, exact: torch.Tensor) -> float:
    return ((out.double() - exact).abs().mean() / exact.abs().mean()).item()


def main() -> None:
    print("| problem | sampler | calls | round trip fp32 (max abs) | round trip fp64 | edit vs exact ODE (rel. MAE) |")
    print("|---|---|---|---|---|---|")
    for label, g1, g2 in problems():
        x = g1.images(4)
        exact = g2.flow(g1.flow(x, 0, 999), 999, 0)
        for gamma in GAMMAS:
            for n in CALLS:
                pair = bdia_encode(g1.eps, x, n, gamma)
                rt = (bdia_decode(g1.eps, pair, n, gamma) - x).abs().max().item()
                rt64 = (bdia_decode(g1.eps, bdia_encode(g1.eps, x.double(), n, gamma), n, gamma) - x.double()).abs().max().item()
                print(f"| {label} | bdia g={gamma:g} | {n} | {rt:.1e} | {rt64:.1e} | {rel(bdia_decode(g2.eps, pair, n, gamma), exact):.1e} |")
        for name in ("dpm", "ddim"):
            for n in CALLS:
                spec = SamplerSpec(name, n)
                x_T = spec.encode(g1.eps, x)
                rt = (spec.decode(g1.eps, x_T) - x).abs().max().item()
                print(f"| {label} | {name} | {n} | {rt:.1e} | - | {rel(spec.decode(g2.eps, x_T), exact):.1e} |")
    try:
        from sampler_roundtrip import tiny_model
    except ImportError as err:
        print(f"tiny preset skipped: {err}")
        return
    found = tiny_model(2)
    if found is None:
        return
    eps, x = found
    for gamma in GAMMAS:
        for n in CALLS:
            pair = bdia_encode(eps, x, n, gamma)
            rt = (bdia_decode(eps, pair, n, gamma) - x).abs().max().item()
            print(f"| tiny (untrained) | bdia g={gamma:g} | {n} | {rt:.1e} | - | max abs z_N {pair[:, :3].abs().max().item():.1f} |")


if __name__ == "__main__":
    main()
