"""Numeric tolerances with a stated scale, for tests that compare two floating-point computations.

A tolerance here is never a bare constant. It is

    SAFETY  x  u (the unit roundoff of the precision)  x  how roundings pile up  x  a magnitude

where the magnitude is measured on the data being compared (the size of the output, of its
terms, of the logits, ...) and the growth factor comes from the operation (the length of a sum,
the depth of a network). A test that moves to larger inputs, longer reductions or another
precision gets a tolerance that moves with it, and a machine whose BLAS or SIMD width sums in
another order stays inside it.

The rounding model (Higham & Mary, "A new approach to probabilistic rounding error analysis",
SIAM J. Sci. Comput. 2019): each operation returns op(a, b)(1 + d) with |d| <= u. Summing n
terms in sequence makes partial sums s_1 .. s_n and the computed result is off by
sum_i d_i s_i. The worst case adds those up, n u max|s|; but the d_i behave like independent
mean-zero variables, so the error grows like a random walk: its standard deviation is
(u / sqrt(3)) sqrt(sum_i s_i^2) <= (u / sqrt(3)) sqrt(n) max|s|, and exceeding
lambda sqrt(n) u max|s| has probability about exp(-lambda^2 / 2). That is why the growth
factor below is sqrt(n), not n. The model is for *recursive* summation, the least accurate
order in use; blocked, pairwise and tree reductions (BLAS, torch, Triton's tl.sum) do better,
so the same tolerance holds whatever order a machine picks.

Only the model's magnitude needs care: max|s| is the largest partial sum. sum|terms| always
bounds it; for terms of random sign (dot products of random data, convolutions) partial sums
stay at the size of the result, so the largest |result| stands in for it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Safety factor. Tolerances compare two computations, each off by up to the model's estimate
# (their errors add in quadrature: sqrt(2)); SAFETY = 2 then sits about 4 standard deviations out
# for the worst (recursive) order and far further for the orders real kernels use. Kept small on
# purpose: a tolerance must still catch a kernel that is wrong by a small relative amount.
SAFETY = 2.0

_UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,  # 10 stored mantissa bits + the implicit one
    torch.bfloat16: 2.0**-8,  # 7 stored mantissa bits + the implicit one
}


def unit_roundoff(dtype: torch.dtype | str) -> float:
    """u = 2^-p for a p-bit significand: the largest relative error of one round-to-nearest."""
    dtype = getattr(torch, dtype.removeprefix("torch.")) if isinstance(dtype, str) else dtype
    return _UNIT_ROUNDOFF[dtype]


def sum_tolerance(n_terms: int, magnitude: float, dtype: torch.dtype | str, *, safety: float = SAFETY) -> float:
    """Two evaluations of a sum or dot product of n_terms terms, in any order: safety * u * sqrt(n) * magnitude.

    magnitude bounds the partial sums (see the module docstring): sum|terms|, or the largest
    |result| when the terms have random signs. The products of a dot product round too, adding
    u |term| each; that is a random walk over terms smaller than the partial sums, covered.
    """
    return safety * unit_roundoff(dtype) * math.sqrt(max(n_terms, 1)) * magnitude


def network_rel_tolerance(
    dtype: torch.dtype | str,
    depth: int,
    fan_in: int,
    *,
    accumulate: torch.dtype | str = torch.float32,
    safety: float = SAFETY,
) -> float:
    """Relative error (to the output's size) of a network of `depth` rounded stages, each a sum of <= fan_in terms.

    Each stage (convolution, linear layer, normalisation) is a reduction accumulated in
    `accumulate`: relative error u_acc sqrt(fan_in), random-sign terms (see `sum_tolerance`). When
    activations and weights are stored in a lower precision (fp16/bf16) each stage also rounds its
    operands and its output once: about u_store more. GroupNorm renormalises between stages, so
    errors neither grow nor shrink from one stage to the next, and independent stage errors add in
    quadrature: sqrt(depth). Multiply by max|output| (max-abs checks) or RMS(output) (RMS checks).
    """
    u_acc = unit_roundoff(accumulate)
    u_store = max(unit_roundoff(dtype), u_acc)
    per_stage = u_acc * math.sqrt(max(fan_in, 1)) + (u_store if u_store > u_acc else 0.0)
    return safety * math.sqrt(max(depth, 1)) * per_stage


def rounding_tolerance(n_roundings: int, magnitude: float, dtype: torch.dtype | str, *, safety: float = SAFETY) -> float:
    """A chain of n elementwise operations (no reduction), each rounding a value of size <= magnitude.

    Each rounding moves its value by <= u |value|; a chain of a few has no random walk to speak
    of, so the errors are added: safety * n * u * magnitude.
    """
    return safety * n_roundings * unit_roundoff(dtype) * magnitude


@torch.no_grad()
def network_profile(model: nn.Module, *inputs) -> tuple[int, int]:
    """(depth, fan_in) of `network_rel_tolerance`, measured by one forward pass with hooks.

    depth: the number of convolution, linear and GroupNorm calls (every rounded stage; an upper
    bound on those along any one path). fan_in: the longest reduction one of them makes:
    in_channels / groups * kernel size, in_features, or C/G * H * W for a GroupNorm.
    """
    calls: list[int] = []

    def hook(mod, args, _out):
        if isinstance(mod, nn.GroupNorm):
            calls.append(args[0][0].numel() // mod.num_groups)
        else:
            calls.append(mod.weight[0].numel())  # [out, in/groups, *kernel] or [out, in]

    kinds = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.GroupNorm)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return len(calls), max(calls, default=1)


def attention_tolerance(
    dtype: torch.dtype | str,
    *,
    channels: int,
    n_keys: int,
    max_abs_logit: float,
    max_abs_v: float,
    logit_gain: float | None = None,
    prob_gain: float | None = None,
    accumulate: torch.dtype | str = torch.float32,
    safety: float = SAFETY,
) -> float:
    """Max-abs difference of two evaluations of o = softmax(l) V, l = (q s)^T (k s), s = C^-1/4.

    Derivation. Operands (q s, k s, the probabilities, the output) are rounded to `dtype`
    (unit roundoff u); the dots accumulate in `accumulate` (u_a, fp32 in every kernel here).

    1. Logits. l_j is a dot product of C terms: u_a sqrt(C) max|l| from the accumulation
       (`sum_tolerance`), plus 2 u max|l| when q s and k s are rounded to `dtype` first (each
       term moves by <= 2u relatively; random signs keep the sum at the size of l). So
           e_l = max|l| (u_a sqrt(C) + 2u).
    2. Logit errors -> output. With p = softmax(l), dp_j = p_j (e_j - sum_i p_i e_i), so
           do_c = sum_j p_j e_j (v_jc - o_c).
       Worst case |do| <= e_l * 2 max|v|; with independent e_j its RMS is
       e_l * sqrt(sum_j p_j^2 (v_jc - o_c)^2) (`logit_gain`, measured on the reference).
       A large logit does not hurt through exp(): softmax only sees logit *differences*, and a
       relative change e of a probability moves the output by e times a convex combination of v.
    3. Probabilities rounded to `dtype` before the P V product (relative u each, plus a few u_a
       from exp and the online-softmax rescalings): do_c = sum_j p_j e'_j v_jc, worst case
       u max|v|, RMS u sqrt(sum_j p_j^2 v_jc^2) (`prob_gain`).
    4. P V accumulates N keys whose partial sums are convex combinations of v: u_a sqrt(N) max|v|;
       the output itself rounds once to `dtype`: u max|v|.

        tol = safety * (e_l * logit_gain + (u + 2 u_a) * prob_gain + (u_a sqrt(N) + u) * max|v|)

    With the worst-case gains (2 max|v|, max|v|) and u = u_a this is
    max|v| u (4 (sqrt(C) + 2) max|l| + 2 sqrt(N) + 8): error ~ u sqrt(C) |l| from the logits plus
    u sqrt(N) from the values, each times the size of v.
    """
    u, u_a = unit_roundoff(dtype), unit_roundoff(accumulate)
    logit_gain = 2.0 * max_abs_v if logit_gain is None else logit_gain
    prob_gain = max_abs_v if prob_gain is None else prob_gain
    e_logit = max_abs_logit * (u_a * math.sqrt(channels) + 2.0 * u)
    return safety * (e_logit * logit_gain + (u + 2.0 * u_a) * prob_gain + (u_a * math.sqrt(n_keys) + u) * max_abs_v)


def group_norm_tolerance(
    *,
    group_size: int,
    spread: float,
    gain: float,
    max_abs_out: float,
    out_dtype: torch.dtype | str = torch.float32,
    accumulate: torch.dtype | str = torch.float32,
    safety: float = SAFETY,
) -> float:
    """Max-abs difference of two GroupNorm (+ affine/AdaGN) results computed in `accumulate`.

    y = (x - mean) / std * gain + offset, statistics over group_size = C/G * H * W values;
    spread = max over groups of max|x| / std (>= |mean|/std: large for a large-mean input).

    - mean: a sum of group_size terms of size <= max|x|: u sqrt(n) max|x|, i.e.
      u sqrt(n) spread after dividing by std (`sum_tolerance` with the sum |terms| bound).
    - variance: relative u sqrt(n) (sum of n squares), so rstd is off by u sqrt(n) / 2 and the
      output by that times |x_hat| <= 2 spread: another u sqrt(n) spread.
    - the fold y = x * A + B (A = gain / std, B ~ -mean * A): x * A and the add round values of
      size spread * gain; when |mean| >> std they nearly cancel, so this error does not shrink
      with the result: 2 u spread.
    - each side rounds its output once to out_dtype: u_out max|y|.

        tol = safety * (u_acc (2 sqrt(n) + 2) spread gain + u_out max|y|)
    """
    u_acc, u_out = unit_roundoff(accumulate), unit_roundoff(out_dtype)
    return safety * (u_acc * (2.0 * math.sqrt(group_size) + 2.0) * spread * gain + u_out * max_abs_out)


def max_abs_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| in float64 (NaN if either has a NaN, so a comparison with it fails)."""
    diff = (actual.detach().double().cpu() - expected.detach().double().cpu()).abs()
    return float("nan") if torch.isnan(diff).any() else float(diff.max()) if diff.numel() else 0.0


def assert_close_scaled(actual: Tensor, expected: Tensor, tol: float, what: str = "", *, scale: str = "") -> float:
    """Assert max|actual - expected| <= tol; the message names the error, the tolerance and its scale.

    Shapes must match (no broadcasting hides a missing axis). Returns the error, for reports.
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = max_abs_error(actual, expected)
    size = float(expected.detach().abs().max()) if expected.numel() else 0.0
    detail = f"{what + ': ' if what else ''}max error {err:.3g} > tolerance {tol:.3g} (max|expected| {size:.3g}"
    assert err <= tol, detail + (f"; {scale})" if scale else ")")
    return err
