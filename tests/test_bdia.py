"""BDIA-DDIM: exact round trips (fp32 and fp64), call counts, and decode accuracy against the exact ODE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fvedit.diffusion import ddim_decode, dpm_decode
from fvedit.diffusion.bdia import bdia_decode, bdia_encode, make_bdia_plan
from fvedit.diffusion.spec import SamplerSpec
from fvedit.errors import InputError
from test_samplers import Gaussian, alpha_sigma, wiggly_eps

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


class DtypeGaussian(Gaussian):
    """The closed-form Gaussian eps, returned in the input's dtype (fp64 checks stay fp64)."""

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(t.double().numpy().copy())
        a, sg = (torch.from_numpy(v).view(-1, 1, 1, 1) for v in alpha_sigma(t.double().numpy()))
        return (sg * (x.double() - a * self.mu) / (a * a * self.s**2 + sg * sg)).to(x.dtype)


def gaussians() -> list[DtypeGaussian]:
    return [DtypeGaussian(seed=0), DtypeGaussian(mu_range=0.3, s_range=(0.1, 0.3), seed=3)]


@pytest.mark.parametrize("steps", [10, 15, 20])
@pytest.mark.parametrize("which", [0, 1])
def test_round_trip_is_exact_in_fp32_and_fp64(steps, which):
    """decode(encode(x)) = x up to round-off: the issue's goal is <= 1e-5 max abs in fp32 (images
    in [-1, 1], so that is ~80 fp32 ulps; measured ~1e-6). In fp64 the same code must land within
    a few hundred ulps, which shows the residue is round-off and not a method error."""
    g = gaussians()[which]
    x = g.images(3)
    rt32 = (bdia_decode(g.eps, bdia_encode(g.eps, x, steps), steps) - x).abs().max().item()
    x64 = x.double()
    rt64 = (bdia_decode(g.eps, bdia_encode(g.eps, x64, steps), steps) - x64).abs().max().item()
    assert rt32 <= 1e-5
    assert rt64 <= 1000 * EPS64
    # plain DDIM inversion on the same calls is nowhere near exact: the comparison can fail
    from fvedit.diffusion import ddim_encode
    ddim_rt = (ddim_decode(g.eps, ddim_encode(g.eps, x, steps + 1), steps + 1) - x).abs().max().item()
    assert ddim_rt > 1000 * rt32


def test_round_trip_is_exact_for_a_nonlinear_eps_with_clamping():
    """The exactness does not rely on the Gaussian being linear, nor on x0 staying in [-1, 1]."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand((2, 3, 8, 8), generator=g) * 2 - 1).double()
    clamped = []

    def eps(z, t):
        out = wiggly_eps(z, t)
        a, s = (torch.from_numpy(v).view(-1, 1, 1, 1).to(z.dtype) for v in alpha_sigma(t.double().numpy()))
        clamped.append(bool(((z - s * out) / a).abs().max() > 1))
        return out

    pair = bdia_encode(eps, x, 15)
    assert (bdia_decode(eps, pair, 15) - x).abs().max().item() <= 1e4 * EPS64
    assert any(clamped)  # the clamp was active somewhere along the trajectory


def test_call_counts_timesteps_and_pair_layout():
    g = DtypeGaussian(seed=0)
    x = g.images(2)
    spec = SamplerSpec("bdia", 6)
    pair = spec.encode(g.eps, x)
    assert pair.shape == (2, 6, 8, 8) and spec.states == 2
    enc_calls, g.calls = g.calls, []
    out = spec.decode(g.eps, pair)
    assert out.shape == x.shape
    ts = make_bdia_plan(6).ts
    assert len(ts) == 8 and ts[0] == 0.0 and ts[-1] == 999.0
    assert [c[0] for c in enc_calls] == pytest.approx(ts[:-1], abs=1e-4)  # t_0 .. t_{N-1}
    assert [c[0] for c in g.calls] == pytest.approx(ts[-2:0:-1], abs=1e-4)  # t_{N-1} .. t_1
    assert len(enc_calls) == spec.encode_calls == 7 and len(g.calls) == spec.decode_calls == 6
    assert spec.key != SamplerSpec("bdia", 7).key and spec.key.startswith("bdia6")


def test_edit_decode_against_the_exact_ode_beats_dpm_and_ddim_at_equal_calls():
    """An edit: invert under one Gaussian (the original identity), decode under another (the
    edited one) and compare with the exact probability-flow map of the same x_T. At 15 decode
    calls BDIA (gamma 0.8) measured 1.7e-3 / 3.1e-3 relative error on the two Gaussians, DPM-Solver++
    (order 3) 4.1e-3 / 5.5e-3 and the official DDIM 0.33 / 0.43 (its uniform grid)."""
    for g1, g2 in [(DtypeGaussian(seed=0), DtypeGaussian(seed=5)),
                   (DtypeGaussian(mu_range=0.3, s_range=(0.1, 0.3), seed=3),
                    DtypeGaussian(mu_range=0.3, s_range=(0.1, 0.3), seed=4))]:
        x = g1.images(4)
        exact = g2.flow(g1.flow(x, 0, 999), 999, 0)

        def rel(out):
            return ((out.double() - exact).abs().mean() / exact.abs().mean()).item()

        bdia = rel(bdia_decode(g2.eps, bdia_encode(g1.eps, x, 15), 15))
        dpm = rel(dpm_decode(g2.eps, SamplerSpec("dpm", 15).encode(g1.eps, x), 15))
        ddim = rel(ddim_decode(g2.eps, SamplerSpec("ddim", 15).encode(g1.eps, x), 15))
        assert bdia < dpm < ddim
        assert bdia < 5e-3


def test_bad_arguments():
    with pytest.raises(InputError, match="gamma"):
        make_bdia_plan(10, gamma=0.0)
    with pytest.raises(InputError, match="at least 1"):
        make_bdia_plan(0)
    with pytest.raises(InputError, match="even channel"):
        bdia_decode(wiggly_eps, torch.zeros((1, 3, 4, 4)), 5)
