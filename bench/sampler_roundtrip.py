"""Round-trip accuracy of the samplers: encode an image to x_T, decode it back.

For each sampler pairing and each budget N (model calls per direction) it prints the mean
absolute error and PSNR of decode(encode(x)) against (1) the input and (2) the official
1000-step DDIM round trip of the same model (999 + 1000 calls), the quality reference the
fast samplers try to reach.

Models:
  gaussian  x0 ~ N(mu, diag(s^2)) per pixel; its optimal eps is known in closed form
            (see tests/test_samplers.py), so this measures pure solver error.
  tiny      the seeded `tiny` demo model (random weights, zero-inits re-randomised) on face
            crops from scikit-image's astronaut photo, z_face from its own encoder. Its eps is
            not a trained denoiser: this checks robustness, not final quality.

    python bench/sampler_roundtrip.py --model gaussian
    python bench/sampler_roundtrip.py --model tiny --calls 10,15,20 --pairings ddim,dpm3-logSNR-denoise
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fvedit.diffusion import VPSchedule, ddim_decode, ddim_encode, dpm_decode, dpm_encode  # noqa: E402

EpsFn = Callable[[Tensor, Tensor], Tensor]


# ---------------------------------------------------------------------------------- models
class GaussianModel:
    """Per-pixel Gaussian data; eps*(x, t) = sigma (x - alpha mu) / (alpha^2 s^2 + sigma^2)."""

    def __init__(self, shape=(3, 32, 32), seed: int = 0):
        g = np.random.default_rng(seed)
        self.mu = torch.from_numpy(g.uniform(-0.4, 0.4, shape))
        self.s = torch.from_numpy(g.uniform(0.05, 0.2, shape))
        self.schedule = VPSchedule()

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        tt = t.double().cpu().numpy()
        a = torch.from_numpy(self.schedule.alpha(tt)).view(-1, 1, 1, 1)
        sg = torch.from_numpy(self.schedule.sigma(tt)).view(-1, 1, 1, 1)
        return (sg * (x.double() - a * self.mu) / (a * a * self.s**2 + sg * sg)).float()

    def images(self, n: int, seed: int = 1) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((n, *self.mu.shape), generator=g, dtype=torch.float64).clamp(-2.5, 2.5)
        return (self.mu + self.s * z).float()


def tiny_model(n_images: int) -> tuple[EpsFn, Tensor] | None:
    try:
        from fvedit.config import TINY
        from fvedit.models import build_model, randomize_zero_init
    except ImportError as e:  # the model package is optional for this script
        print(f"[tiny] skipped: cannot import the model ({e})")
        return None
    from skimage import data
    from skimage.transform import resize

    size = TINY.image_size
    img = data.astronaut().astype(np.float64) / 255.0  # 512x512 RGB, face near the top centre
    crops = [img[0:256, 128:384], img[16:240, 152:376], img[40:232, 170:362]][:n_images]
    x = torch.stack([torch.from_numpy(resize(c, (size, size), anti_aliasing=True)).permute(2, 0, 1)
                     for c in crops]).float() * 2 - 1
    model = randomize_zero_init(build_model(TINY), seed=0)
    with torch.no_grad():
        z_face = model.encoder(x)

    @torch.no_grad()
    def eps(xt: Tensor, t: Tensor) -> Tensor:
        return model.eps(xt, t, z_face)

    return eps, x


# -------------------------------------------------------------------------------- pairings
@dataclass(frozen=True)
class Pairing:
    """encode(eps, x, N) -> x_T and decode(eps, x_T, N) -> image, each with about N calls."""

    name: str
    encode: Callable[[EpsFn, Tensor, int], Tensor]
    decode: Callable[[EpsFn, Tensor, int], Tensor]


def pairings() -> dict[str, Pairing]:
    out = {"ddim": Pairing("ddim", lambda e, x, n: ddim_encode(e, x, n),
                           lambda e, x, n: ddim_decode(e, x, n))}
    for order in (2, 3):
        for grid in ("logSNR", "time_quadratic", "time_uniform"):
            def enc(e, x, n, o=order, g=grid):
                return dpm_encode(e, x, n, o, g)

            def enc_clamp(e, x, n, o=order, g=grid):  # the first default: x0 clamped
                return dpm_encode(e, x, n, o, g, clamp=True)

            def enc_mirror(e, x, n, o=order, g=grid):  # DDIM-like: N-1 calls on the decoder's grid
                return dpm_encode(e, x, n - 1, o, g, clamp=True)

            def dec_default(e, x, n, o=order, g=grid):  # corrector, no x0 call, no clamp
                return dpm_decode(e, x, n, o, g)

            def dec_plain(e, x, n, o=order, g=grid):
                return dpm_decode(e, x, n, o, g, corrector=False, clamp=True)

            def dec_denoise(e, x, n, o=order, g=grid):
                return dpm_decode(e, x, n, o, g, corrector=False, clamp=True, denoise_final=True)

            base = f"dpm{order}-{grid}"
            out[f"{base}-default"] = Pairing(f"{base}-default", enc, dec_default)
            out[f"{base}-plain"] = Pairing(f"{base}-plain", enc_clamp, dec_plain)
            out[f"{base}-denoise"] = Pairing(f"{base}-denoise", enc_clamp, dec_denoise)
            out[f"{base}-mirror"] = Pairing(f"{base}-mirror", enc_mirror, dec_denoise)
    return out


# --------------------------------------------------------------------------------- metrics
def mae(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().mean().item()


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR on the [0, 1] image scale (inputs are in [-1, 1])."""
    mse = ((a.double() - b.double()) / 2).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def run(label: str, eps: EpsFn, x: Tensor, calls: list[int], names: list[str]) -> None:
    table = pairings()
    t0 = time.perf_counter()
    ref = ddim_decode(eps, ddim_encode(eps, x, 1000), 1000)
    print(f"\n## {label}: {tuple(x.shape)}; DDIM-1000 round trip vs input: MAE {mae(ref, x):.2e}, "
          f"PSNR {psnr(ref, x):.2f} dB ({time.perf_counter() - t0:.1f} s)")
    head = "| pairing | " + " | ".join(f"N={n}" for n in calls) + " |"
    rows_in, rows_ref = [], []
    for name in names:
        p = table[name]
        cells_in, cells_ref = [], []
        for n in calls:
            y = p.decode(eps, p.encode(eps, x, n), n)
            cells_in.append(f"{mae(y, x):.1e} / {psnr(y, x):.1f}")
            cells_ref.append(f"{mae(y, ref):.1e} / {psnr(y, ref):.1f}")
        rows_in.append(f"| {name} | " + " | ".join(cells_in) + " |")
        rows_ref.append(f"| {name} | " + " | ".join(cells_ref) + " |")
        print(f"  done {name} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    sep = "|---" * (len(calls) + 1) + "|"
    print("\nround trip vs input (MAE / PSNR dB):\n" + "\n".join([head, sep, *rows_in]))
    print("\nround trip vs DDIM-1000 round trip (MAE / PSNR dB):\n" + "\n".join([head, sep, *rows_ref]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("gaussian", "tiny", "all"), default="all")
    ap.add_argument("--calls", default="10,15,20,50,100", help="model calls per direction")
    ap.add_argument("--pairings", default=None, help="comma list (default: all for gaussian, "
                    "ddim + the logSNR/quadratic DPM ones for tiny)")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    calls = [int(c) for c in args.calls.split(",")]
    every = list(pairings())
    chosen = args.pairings.split(",") if args.pairings else None
    unknown = [c for c in chosen or [] if c not in every]
    if unknown:
        ap.error(f"unknown pairings {unknown}; choose from {', '.join(every)}")

    if args.model in ("gaussian", "all"):
        g = GaussianModel()
        run("gaussian (closed-form eps)", g.eps, g.images(4), calls, chosen or every)
    if args.model in ("tiny", "all"):
        made = tiny_model(args.images)
        if made is not None:
            names = chosen or ["ddim"] + [n for n in every if n.startswith(("dpm2-logSNR", "dpm3-logSNR",
                                                                            "dpm3-time_quadratic"))]
            run("tiny demo model (seed 0) on astronaut crops", *made, calls, names)


if __name__ == "__main__":
    main()
