"""Samplers against closed-form answers.

The reference problem: per-pixel Gaussian data x0 ~ N(mu, s^2). With x_t = alpha x0 + sigma eps
the optimal noise model is eps*(x, t) = sigma (x - alpha mu) / (alpha^2 s^2 + sigma^2), and the
probability-flow ODE keeps each pixel's z-score (x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2)
constant, so the exact solution between any two times is a per-pixel affine map. The schedule
used by this twin is written out here from the official definition (linear betas, log alpha
linear between integer timesteps), independently of fvedit.diffusion.schedule.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from fvedit.diffusion import (
    VPSchedule,
    ddim_coefficients,
    ddim_decode,
    ddim_encode,
    ddim_step,
    ddim_timesteps,
    dpm_decode,
    dpm_encode,
    make_plan,
    timestep_grid,
)
from fvedit.diffusion.dpm_solver import _poly_weights, _step_weights
from fvedit.errors import FveditError, InputError

N = 1000
BETAS = np.linspace(1e-4, 0.02, N, dtype=np.float64)
ABAR = np.cumprod(1.0 - BETAS)
LOG_ALPHA = 0.5 * np.log(ABAR)


def alpha_sigma(t) -> tuple[np.ndarray, np.ndarray]:
    la = np.interp(np.asarray(t, dtype=np.float64), np.arange(N, dtype=np.float64), LOG_ALPHA)
    return np.exp(la), np.sqrt(1.0 - np.exp(2.0 * la))


class Gaussian:
    """Closed-form eps model and exact ODE solution for x0 ~ N(mu, diag(s^2))."""

    def __init__(self, shape=(3, 8, 8), mu_range=0.4, s_range=(0.05, 0.2), seed=0):
        g = np.random.default_rng(seed)
        self.mu = torch.from_numpy(g.uniform(-mu_range, mu_range, shape) if np.isscalar(mu_range)
                                   else g.uniform(*mu_range, shape))
        self.s = torch.from_numpy(g.uniform(*s_range, shape))
        self.calls: list[np.ndarray] = []

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],) and t.dtype == torch.float32
        self.calls.append(t.double().numpy().copy())
        a, sg = (torch.from_numpy(v).view(-1, 1, 1, 1) for v in alpha_sigma(t.double().numpy()))
        return (sg * (x.double() - a * self.mu) / (a * a * self.s**2 + sg * sg)).float()

    def std(self, t: float) -> torch.Tensor:
        a, sg = alpha_sigma(t)
        return torch.sqrt(float(a) ** 2 * self.s**2 + float(sg) ** 2)

    def flow(self, x: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        """Exact probability-flow ODE solution from t_from to t_to."""
        (a0, _), (a1, _) = alpha_sigma(t_from), alpha_sigma(t_to)
        z = (x.double() - float(a0) * self.mu) / self.std(t_from)
        return float(a1) * self.mu + self.std(t_to) * z

    def x0_mean(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """E[x0 | x_t] (what the final DDIM step returns when no clamping is needed)."""
        a, _ = alpha_sigma(t)
        return self.mu + float(a) * self.s**2 / self.std(t) ** 2 * (x.double() - float(a) * self.mu)

    def images(self, b=2, seed=1, trunc=2.5) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((b, *self.mu.shape), generator=g, dtype=torch.float64).clamp(-trunc, trunc)
        return (self.mu + self.s * z).float()


def mae(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().mean().item()


@pytest.fixture()
def gauss() -> Gaussian:
    return Gaussian()


# ---------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("steps,stride", [(1000, 1), (100, 10), (20, 50), (5, 200), (15, 67), (10, 100)])
def test_ddim_timesteps_follow_the_official_stride_rule(steps, stride):
    ts = ddim_timesteps(steps)
    assert ts.tolist() == list(range(0, 1000, stride))
    assert len(ts) == steps
    # smallest such stride: every smaller stride gives a different count
    assert all(len(range(0, 1000, s)) != steps for s in range(1, stride))


def test_ddim_timesteps_for_five_steps():
    assert ddim_timesteps(5).tolist() == [0, 200, 400, 600, 800]


@pytest.mark.parametrize("steps", [1, 999, 0])
def test_ddim_timesteps_rejects_impossible_counts(steps):
    with pytest.raises(InputError, match="DDIM steps"):
        ddim_timesteps(steps)


def test_ddim_coefficients_match_the_training_schedule():
    coef = ddim_coefficients(20)
    np.testing.assert_allclose(coef.alphas_cumprod, ABAR[coef.timesteps], rtol=1e-13)
    np.testing.assert_allclose(coef.alphas_cumprod_prev[1:], coef.alphas_cumprod[:-1])
    assert coef.alphas_cumprod_prev[0] == 1.0 and coef.alphas_cumprod_next[-1] == 0.0
    np.testing.assert_allclose(coef.sqrt_recipm1_alphas_cumprod**2, 1 / coef.alphas_cumprod - 1, rtol=1e-12)


def test_vp_schedule_interpolates_the_discrete_schedule():
    sch = VPSchedule()
    t_int = np.arange(0, 1000, 37.0)
    np.testing.assert_allclose(sch.alpha(t_int) ** 2, ABAR[t_int.astype(int)], rtol=1e-12)
    t = np.linspace(0, 999, 301) + 0.25 * np.sin(np.arange(301))
    t = np.clip(t, 0, 999)
    a, sg = alpha_sigma(t)
    np.testing.assert_allclose(sch.alpha(t), a, rtol=1e-12)
    np.testing.assert_allclose(sch.lambda_(t), np.log(a / sg), rtol=1e-10)
    assert np.all(np.diff(sch.lambda_(np.arange(1000.0))) < 0)
    np.testing.assert_allclose(sch.t_from_lambda(sch.lambda_(t)), t, atol=1e-8)
    with pytest.raises(InputError, match="outside"):
        sch.alpha(1000.5)


def test_timestep_grids():
    sch = VPSchedule()
    for kind in ("logSNR", "time_uniform", "time_quadratic"):
        g = timestep_grid(sch, kind, 999.0, 0.0, 12)
        assert len(g) == 13 and g[0] == 999.0 and g[-1] == 0.0 and np.all(np.diff(g) < 0)
        back = timestep_grid(sch, kind, 0.0, 999.0, 12)
        np.testing.assert_allclose(back, g[::-1], atol=1e-9)  # encode grid = decode grid reversed
    lam = sch.lambda_(timestep_grid(sch, "logSNR", 999.0, 0.0, 12))
    np.testing.assert_allclose(np.diff(lam), np.full(12, (lam[-1] - lam[0]) / 12), rtol=1e-9)
    np.testing.assert_allclose(np.diff(timestep_grid(sch, "time_uniform", 999.0, 0.0, 9)), -111.0)
    q = timestep_grid(sch, "time_quadratic", 999.0, 0.0, 9)
    np.testing.assert_allclose(np.diff(np.sqrt((q + 1) / N)), np.diff(np.sqrt((q + 1) / N))[0], rtol=1e-9)
    with pytest.raises(InputError, match="unknown timestep grid"):
        timestep_grid(sch, "karras", 999.0, 0.0, 5)
    with pytest.raises(InputError, match="monotonic"):
        timestep_grid(sch, [999.0, 10.0, 500.0], 999.0, 0.0, 2)


# --------------------------------------------------------------------------------------- DDIM
def official_ddim_loop(eps_fn, x, steps, reverse):
    """The official loops transcribed step by step: gather float64 tables, cast to float32,
    clamp x0, re-derive eps, move with sqrt(alpha-bar next/prev) taken in float32."""
    base = ABAR
    use = set(range(0, 1000, 1000 // steps if 1000 % steps == 0 else 1))
    assert len(use) == steps, "this twin only handles strides that divide 1000"
    new_betas, last, tmap = [], 1.0, []
    for i, ab in enumerate(base):
        if i in use:
            new_betas.append(1 - ab / last)
            last = ab
            tmap.append(i)
    acp = np.cumprod(1.0 - np.array(new_betas))
    tables = {
        "recip": np.sqrt(1.0 / acp),
        "recipm1": np.sqrt(1.0 / acp - 1),
        "next": np.append(acp[1:], 0.0),
        "prev": np.append(1.0, acp[:-1]),
    }

    def ext(name, k):
        return torch.from_numpy(tables[name])[torch.full((x.shape[0],), k)].float().view(-1, 1, 1, 1)

    order = range(steps - 1) if reverse else range(steps - 1, -1, -1)
    for k in order:
        eps = eps_fn(x, torch.full((x.shape[0],), float(tmap[k])))
        x0 = (ext("recip", k) * x - ext("recipm1", k) * eps).clamp(-1, 1)
        eps = (ext("recip", k) * x - x0) / ext("recipm1", k)
        ab = ext("next" if reverse else "prev", k)
        x = x0 * torch.sqrt(ab) + torch.sqrt(1 - ab) * eps
    return x


def wiggly_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A nonlinear, t-dependent stand-in for a network whose x0 predictions overshoot [-1, 1]."""
    return torch.tanh(1.7 * x + 0.3) * (0.5 + t.view(-1, 1, 1, 1) / 1000.0) - 0.2 * x


@pytest.mark.parametrize("steps", [1000, 20])
def test_ddim_reproduces_the_official_loop_bit_for_bit(steps):
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    xT = ddim_encode(wiggly_eps, x, steps)
    assert torch.equal(xT, official_ddim_loop(wiggly_eps, x, steps, reverse=True))
    assert torch.equal(ddim_decode(wiggly_eps, xT, steps), official_ddim_loop(wiggly_eps, xT, steps, reverse=False))


def test_ddim_call_counts_and_model_timesteps(gauss):
    x = gauss.images()
    xT = ddim_encode(gauss.eps, x, 5)
    assert [c[0] for c in gauss.calls] == [0, 200, 400, 600]  # T-1 calls; x_T lives at 800
    gauss.calls.clear()
    ddim_decode(gauss.eps, xT, 5)
    assert [c[0] for c in gauss.calls] == [800, 600, 400, 200, 0]  # T calls
    gauss.calls.clear()
    ddim_decode(gauss.eps, xT, 1000)
    assert len(gauss.calls) == 1000 and gauss.calls[0][0] == 999 and gauss.calls[-1][0] == 0


def test_ddim_one_step_by_hand_with_clamping():
    """Encode step k=1 and decode step k=2 of T=5 against float64 hand arithmetic, on inputs
    whose x0 prediction leaves [-1, 1] in some pixels."""
    g = torch.Generator().manual_seed(3)
    x = 1.6 * torch.randn(2, 3, 4, 4, generator=g)
    ab = ABAR[[0, 200, 400, 600, 800]]
    for k, reverse in ((1, True), (2, False)):
        t = float(200 * k)
        eps = wiggly_eps(x, torch.full((2,), t)).double()
        x0_raw = (x.double() - math.sqrt(1 - ab[k]) * eps) / math.sqrt(ab[k])
        assert (x0_raw.abs() > 1).any() and (x0_raw.abs() < 1).any()
        x0 = x0_raw.clamp(-1, 1)
        eps2 = (x.double() - math.sqrt(ab[k]) * x0) / math.sqrt(1 - ab[k])
        ab_to = ab[k + 1] if reverse else ab[k - 1]
        want = math.sqrt(ab_to) * x0 + math.sqrt(1 - ab_to) * eps2
        got, got_x0 = ddim_step(wiggly_eps, x, k, 5, reverse=reverse)
        torch.testing.assert_close(got_x0.double(), x0, atol=2e-6, rtol=0)
        torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=0)
        # without clamping the same step differs
        unclamped, _ = ddim_step(wiggly_eps, x, k, 5, reverse=reverse, clamp=False)
        assert mae(unclamped, got) > 1e-3


def test_ddim_final_step_returns_the_clamped_x0(gauss):
    x = gauss.images()
    out, x0 = ddim_step(gauss.eps, x, 0, 10)
    assert torch.equal(out, x0)
    torch.testing.assert_close(out.double(), gauss.x0_mean(x, 0.0), atol=1e-6, rtol=0)


def test_ddim_converges_to_the_exact_ode(gauss):
    x = gauss.images()
    errs = []
    for steps in (10, 100, 1000):
        t_T = float(ddim_timesteps(steps)[-1])
        xT = gauss.flow(x, 0.0, t_T).float()
        want = gauss.x0_mean(gauss.flow(xT, t_T, 0.0), 0.0)
        errs.append(mae(ddim_decode(gauss.eps, xT, steps), want))
    assert errs[0] > 3 * errs[1] > 9 * errs[2]
    assert errs[2] < 2e-3


def test_ddim_intermediates_and_callback(gauss):
    x = gauss.images()
    xT = ddim_encode(gauss.eps, x, 5)
    seen = []
    out, traj = ddim_decode(gauss.eps, xT, 5, callback=lambda s: seen.append((s.index, s.t)),
                            return_intermediates=True)
    assert seen == [(4, 800.0), (3, 600.0), (2, 400.0), (1, 200.0), (0, 0.0)]
    assert len(traj.xs) == 6 and len(traj.x0s) == 5 and traj.ts == [800.0, 600.0, 400.0, 200.0, 0.0]
    assert traj.xs[0] is xT and torch.equal(traj.xs[-1], out) and torch.equal(traj.x0s[-1], out)
    # the CLIP editor's batched single step: per-sample indices equal separate steps
    states = torch.cat([traj.xs[i][:1] for i in range(5)])
    batched, _ = ddim_step(gauss.eps, states, torch.tensor([4, 3, 2, 1, 0]), 5)
    for i, k in enumerate([4, 3, 2, 1, 0]):
        single, _ = ddim_step(gauss.eps, states[i : i + 1], k, 5)
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched[:1], traj.xs[1][:1], atol=1e-6, rtol=0)
    _, enc = ddim_encode(gauss.eps, x, 5, return_intermediates=True)
    assert enc.ts == [0.0, 200.0, 400.0, 600.0] and len(enc.xs) == 5


def test_progress_reports_every_call(gauss):
    x = gauss.images()
    ticks = []
    ddim_decode(gauss.eps, x, 10, progress=lambda d, n: ticks.append((d, n)))
    assert ticks == [(i, 10) for i in range(1, 11)]
    ticks.clear()
    dpm_decode(gauss.eps, x, 7, progress=lambda d, n: ticks.append((d, n)))
    assert ticks == [(i, 7) for i in range(1, 8)]


# ---------------------------------------------------------------------------------------- DPM
def _one_step(order, h, coef):
    """(solver step, exact step) for x0(lambda) = polynomial `coef`, history spaced unevenly
    before lambda_s = 0.3 and a step of size h in lambda."""
    lams = (0.3 - h * np.array([0.0, 0.8, 1.9]))[:order]  # newest first
    lam_t = 0.3 + h
    a_t = 1 / math.sqrt(1 + math.exp(-2 * lam_t))
    s_t, s_s = math.sqrt(1 - a_t**2), 1 / math.sqrt(1 + math.exp(2 * lams[0]))

    def p(l):
        return sum(c * l**j for j, c in enumerate(coef))

    cx, w = _step_weights(lams, lam_t, a_t, s_t / s_s, order)
    assert cx == pytest.approx(s_t / s_s)
    got = sum(wi * p(li) for wi, li in zip(w, lams))
    want = s_t * quad(lambda l: math.exp(l) * p(l), lams[0], lam_t, epsabs=1e-14, epsrel=1e-13)[0]
    return got, want


@pytest.mark.parametrize("order,degree", [(1, 0), (2, 0), (3, 0), (3, 1), (3, 2)])
def test_multistep_weights_integrate_polynomials_exactly(order, degree):
    """Order 1 and 2 are exact for constant x0(lambda); order 3 integrates the quadratic through
    its three points exactly (the public DPM-Solver code halves the x0'' term and fails this)."""
    coef = np.random.default_rng(degree).normal(size=degree + 1)
    for h in (0.5, -0.4):  # decoding and inversion directions
        got, want = _one_step(order, h, coef)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_multistep_local_error_has_the_right_order(order):
    """Local error on a smooth non-polynomial x0(lambda) shrinks like h^(order+1)."""
    coef = [0.2, 1.1, -0.8, 0.9, -0.6]
    errs = [abs(np.subtract(*_one_step(order, h, coef))) for h in (0.1, 0.05)]
    assert math.log2(errs[0] / errs[1]) == pytest.approx(order + 1, abs=0.4)


@pytest.mark.parametrize("nodes", [2, 3, 4])
def test_corrector_weights_integrate_the_polynomial_through_the_new_point(nodes):
    """The corrector's weights (new point at lambda_t, then the history) integrate any polynomial
    of degree nodes - 1 exactly, in both directions; on the predictor's own nodes they equal the
    closed-form order-3 weights."""
    for h in (0.6, -0.5):
        lam_s, lam_t = 0.3, 0.3 + h
        pts = (lam_t, *(lam_s - h * np.array([0.0, 0.8, 1.9]))[: nodes - 1])
        a_t = 1 / math.sqrt(1 + math.exp(-2 * lam_t))
        s_t = math.sqrt(1 - a_t**2)
        coef = np.random.default_rng(nodes).normal(size=nodes)

        def p(l):
            return sum(c * l**j for j, c in enumerate(coef))

        got = sum(w * p(li) for w, li in zip(_poly_weights(pts, lam_s, lam_t, a_t), pts))
        want = s_t * quad(lambda l: math.exp(l) * p(l), lam_s, lam_t, epsabs=1e-14, epsrel=1e-13)[0]
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    hist = tuple(0.3 - 0.5 * np.array([0.0, 0.8, 1.9]))
    _, closed = _step_weights(hist, 0.8, a_t, 1.0, 3)
    np.testing.assert_allclose(_poly_weights(hist, 0.3, 0.8, a_t), closed, rtol=1e-10, atol=1e-13)


def test_corrector_raises_the_order_by_one(gauss):
    """Orders 1 and 2 with the corrector converge one order faster (observed rate between 40 and
    80 calls); order 3 with it is more accurate than without at every count (its rate at 80 calls
    is limited by fp32 round-off, ~1e-6 relative, so the rate is not asserted there)."""
    x = gauss.images()
    xT = gauss.flow(x, 0.0, 999.0).float()
    want = gauss.flow(xT, 999.0, 0.0)

    def errs(order, corrector):
        return [mae(dpm_decode(gauss.eps, xT, n, order, corrector=corrector, lower_order_final=False), want)
                for n in (20, 40, 80)]

    for order in (1, 2):
        e = errs(order, True)
        assert math.log2(e[1] / e[2]) > order + 1 - 0.35, (order, e)
    with_c, without = errs(3, True), errs(3, False)
    assert all(a < b / 2 for a, b in zip(with_c, without)), (with_c, without)


def test_corrector_makes_no_extra_model_calls(gauss):
    x = gauss.images()
    for corrector in (False, True):
        gauss.calls.clear()
        dpm_decode(gauss.eps, x, 9, corrector=corrector)
        assert len(gauss.calls) == 9


def test_dpm_order1_on_the_ddim_grid_is_ddim(gauss):
    """Order 1 with DDIM's clamp and final x0 call, and no corrector, is the official DDIM."""
    x = gauss.images()
    grid = ddim_timesteps(10).astype(float)
    enc = dpm_encode(gauss.eps, x, 9, order=1, grid=grid, t_end=900.0, clamp=True)
    torch.testing.assert_close(enc, ddim_encode(gauss.eps, x, 10), atol=2e-5, rtol=0)
    dec = dpm_decode(gauss.eps, enc, 10, order=1, grid=grid[::-1], t_start=900.0, clamp=True,
                     corrector=False, denoise_final=True)
    torch.testing.assert_close(dec, ddim_decode(gauss.eps, enc, 10), atol=2e-5, rtol=0)


@pytest.mark.parametrize("grid", ["logSNR", "time_quadratic"])
def test_dpm_error_shrinks_with_steps_and_order(gauss, grid):
    x = gauss.images()
    xT = gauss.flow(x, 0.0, 999.0).float()
    want = gauss.flow(xT, 999.0, 0.0)
    steps = (20, 40, 80)
    errs = {o: [mae(dpm_decode(gauss.eps, xT, n, o, grid, denoise_final=False, lower_order_final=False), want)
                for n in steps] for o in (1, 2, 3)}
    for o, e in errs.items():
        rate = math.log2(e[1] / e[2])  # observed order between 40 and 80 steps
        assert rate > o - 0.35, (o, e, rate)
    assert errs[3][2] < errs[2][2] < errs[1][2]
    # clamping was never active on this data, so the comparison with the exact ODE is fair
    same = dpm_decode(gauss.eps, xT, 40, 3, grid, denoise_final=False, lower_order_final=False, clamp=False)
    assert mae(same, dpm_decode(gauss.eps, xT, 40, 3, grid, denoise_final=False, lower_order_final=False)) == 0


def test_dpm_inversion_converges_to_the_exact_x_T(gauss):
    x = gauss.images()
    want = gauss.flow(x, 0.0, 999.0)
    errs = [mae(dpm_encode(gauss.eps, x, n, 3, lower_order_final=False), want) for n in (20, 40, 80)]
    assert errs[0] > 4 * errs[1] > 16 * errs[2]


def test_dpm_15_beats_ddim_15(gauss):
    x = gauss.images()
    xT = gauss.flow(x, 0.0, 999.0).float()
    dpm_err = mae(dpm_decode(gauss.eps, xT, 15), gauss.x0_mean(gauss.flow(xT, 999.0, 0.0), 0.0))
    t_T = float(ddim_timesteps(15)[-1])
    xT_d = gauss.flow(x, 0.0, t_T).float()
    ddim_err = mae(ddim_decode(gauss.eps, xT_d, 15), gauss.x0_mean(gauss.flow(xT_d, t_T, 0.0), 0.0))
    assert dpm_err < ddim_err / 5, (dpm_err, ddim_err)


def test_round_trips_return_the_input(gauss):
    x = gauss.images()
    dpm_rt = dpm_decode(gauss.eps, dpm_encode(gauss.eps, x, 15), 15)
    assert mae(dpm_rt, x) < 2e-3
    ddim_rt = ddim_decode(gauss.eps, ddim_encode(gauss.eps, x, 1000), 1000)
    assert mae(ddim_rt, x) < 4e-3
    assert mae(dpm_rt, ddim_rt) < 5e-3
    # a 15-step DDIM round trip is far worse: the test can tell samplers apart
    assert mae(ddim_decode(gauss.eps, ddim_encode(gauss.eps, x, 15), 15), x) > 10 * mae(dpm_rt, x)


def test_dpm_call_counts_and_times(gauss):
    x = gauss.images()
    xT = dpm_encode(gauss.eps, x, 15)
    ts = [c[0] for c in gauss.calls]
    assert len(ts) == 15 and ts[0] == 0.0 and all(np.diff(ts) > 0)
    assert any(abs(t - round(t)) > 1e-3 for t in ts)  # fractional timesteps reach the model
    gauss.calls.clear()
    dpm_decode(gauss.eps, xT, 15)  # default: 15 intervals, no call at t = 0
    ts = [c[0] for c in gauss.calls]
    assert len(ts) == 15 and ts[0] == pytest.approx(999.0) and ts[-1] > 0.0
    np.testing.assert_allclose(ts, np.asarray(make_plan(15, t_from=999.0, t_to=0.0).ts[:-1]), atol=1e-4)
    gauss.calls.clear()
    dpm_decode(gauss.eps, xT, 12, denoise_final=True)  # DDIM's ending: the last call is x0 at t = 0
    ts = [c[0] for c in gauss.calls]
    assert len(ts) == 12 and ts[-1] == 0.0
    plan = make_plan(12, t_from=999.0, t_to=0.0, lower_order_final=True)
    assert plan.orders == (1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 2, 1) and plan.nfe == 12
    assert make_plan(12, t_from=999.0, t_to=0.0).orders[-1] == 3  # auto: lower order only below 10


def test_clamping_keeps_out_of_range_data_in_range():
    """Data centred outside [-1, 1]: clamping must act, and the outputs must stay in range."""
    g = Gaussian(mu_range=(1.1, 1.6), s_range=(0.05, 0.1))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    for decode in (lambda c: ddim_decode(g.eps, x, 10, clamp=c),
                   lambda c: dpm_decode(g.eps, x, 10, clamp=c, denoise_final=True)):
        clamped, free = decode(True), decode(False)
        assert clamped.abs().max() <= 1.0
        assert free.max() > 1.05
        assert mae(clamped, free) > 0.05


def test_dpm_first_step_by_hand_with_clamping():
    """The first decode step is order 1: x1 = (sigma_1/sigma_0) x - alpha_1 expm1(-h) clamp(x0)."""
    g = Gaussian(mu_range=(1.1, 1.6), s_range=(0.05, 0.1))
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    plan = make_plan(10, t_from=999.0, t_to=0.0, denoise_final=True)
    t0, t1 = plan.ts[0], plan.ts[1]
    (a0, s0), (a1, s1) = alpha_sigma(t0), alpha_sigma(t1)
    eps = g.eps(x, torch.full((1,), t0, dtype=torch.float32)).double()
    x0 = ((x.double() - float(s0) * eps) / float(a0)).clamp(-1, 1)
    h = math.log(a1 / s1) - math.log(a0 / s0)
    want = float(s1 / s0) * x.double() - float(a1) * math.expm1(-h) * x0
    steps = []
    dpm_decode(g.eps, x, 10, clamp=True, denoise_final=True, callback=lambda s: steps.append(s))
    torch.testing.assert_close(steps[0].x.double(), want, atol=1e-5, rtol=0)
    assert steps[0].x0.max() == 1.0


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda e, x: dpm_decode(e, x, 10, order=4), "order"),
        (lambda e, x: dpm_decode(e, x, 10, grid="karras"), "unknown timestep grid"),
        (lambda e, x: dpm_decode(e, x, 1, denoise_final=True), "at least 2 model calls"),
        (lambda e, x: dpm_decode(e, x, 0), "at least 1 model calls"),
        (lambda e, x: dpm_decode(e, x, 10, t_start=0.0), "high to low"),
        (lambda e, x: dpm_encode(e, x, 10, t_end=0.0), "low to high"),
        (lambda e, x: dpm_decode(e, x, 10, grid=[999.0, 0.0]), "explicit grid"),
        (lambda e, x: ddim_decode(e, x, 7.5), "integer"),
        (lambda e, x: ddim_decode(e, x[0], 10), r"\[B,C,H,W\]"),
        (lambda e, x: ddim_decode(e, x.double(), 10), "float32"),
        (lambda e, x: ddim_step(e, x, 10, 10), "out of range"),
        (lambda e, x: dpm_encode(e, x.half(), 10), "float32"),
    ],
)
def test_bad_arguments_raise_clear_errors(gauss, call, match):
    with pytest.raises(InputError, match=match):
        call(gauss.eps, gauss.images())


def test_wrong_model_output_shape_is_reported(gauss):
    with pytest.raises(FveditError, match="eps model returned shape"):
        dpm_decode(lambda x, t: x[:, :1], gauss.images(), 5)
