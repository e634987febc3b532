"""Identity metrics of an edit from per-frame identity embeddings: TL-ID, TG-ID, identity preservation.

TL-ID and TG-ID (Tzaban et al. 2022, STIT; used by DVA §5.2 and DiffFERV §4.2) ask whether the
edited video keeps *one* identity as steadily as the original does. They are relative:
- TL-ID = mean cos(e_t, e_t+1) over adjacent frames of the edited video, divided by the same
  mean for the original video (local consistency);
- TG-ID = mean cos(e_i, e_j) over all pairs i < j of the edited video, divided by the same for
  the original (global consistency).
1 means "as consistent as the source"; values above 1 are possible (an edit that freezes motion).
This is the ratio of the means. STIT's circulating script averages the per-pair ratios instead;
for cosines near 1 the two agree to second order, and the ratio of means cannot blow up on a
single near-zero cosine of an untrained or weak identity net.

Identity preservation (DiffFERV's IDP; the seed paper's cosine): the cosine between the two
videos' mean identities (each mean renormalised). 1 = same identity overall.

Embeddings come from the model's own identity net (ArcFace IR-SE-50 in the official weights),
computed on both videos' crops cut with the ORIGINAL video's face quads, so the same region is
compared. All functions here work on [N, D] arrays and do not need the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fvedit.errors import InputError

ArrayF = np.ndarray


def normalize_rows(e: ArrayF) -> ArrayF:
    """Rows scaled to unit L2 norm (float64). A zero row stays zero."""
    e = np.asarray(e, dtype=np.float64)
    if e.ndim != 2:
        raise InputError(f"identity embeddings must be [N, D], got shape {e.shape}")
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(norm > 0, norm, 1.0)


def adjacent_cosines(e: ArrayF) -> ArrayF:
    """cos(e_t, e_t+1) for t = 0 .. N-2: [N-1]."""
    u = normalize_rows(e)
    return np.sum(u[:-1] * u[1:], axis=1)


def mean_adjacent_cosine(e: ArrayF) -> float:
    """Mean cosine of neighbouring frames; NaN for fewer than 2 frames."""
    c = adjacent_cosines(e)
    return float(c.mean()) if c.size else float("nan")


def mean_pairwise_cosine(e: ArrayF) -> float:
    """Mean cos(e_i, e_j) over all N(N-1)/2 pairs i < j, without the N x N matrix.

    For unit rows u: sum_{i != j} u_i.u_j = |sum_i u_i|^2 - sum_i |u_i|^2, so memory and time are
    O(N D) however long the video. NaN for fewer than 2 frames.
    """
    u = normalize_rows(e)
    n = u.shape[0]
    if n < 2:
        return float("nan")
    total = u.sum(axis=0)
    off_diagonal = float(total @ total) - float(np.sum(u * u))
    return off_diagonal / (n * (n - 1))


def mean_identity(e: ArrayF) -> ArrayF:
    """The video's identity: the mean of its unit embeddings, renormalised ([D])."""
    return normalize_rows(normalize_rows(e).mean(axis=0, keepdims=True))[0]


def _relative(edited: float, original: float) -> float:
    """edited / original; NaN when the original has no meaningful consistency (<= 0 or undefined)."""
    if not np.isfinite(original) or not np.isfinite(edited) or original <= 1e-6:
        return float("nan")
    return edited / original


@dataclass(frozen=True)
class IdentityMetrics:
    """Identity consistency of an edited video relative to its original (see the module docstring)."""

    tl_id: float  # relative local consistency (1 = as steady as the source)
    tg_id: float  # relative global consistency
    preservation: float  # cosine of the two videos' mean identities
    tl_original: float  # mean adjacent cosine of the original
    tl_edited: float
    tg_original: float  # mean all-pairs cosine of the original
    tg_edited: float
    sim_to_first_original: ArrayF  # [N] cos(e_t, e_0) within the original
    sim_to_first_edited: ArrayF  # [N] cos(e_t, e_0) within the edit
    sim_to_original: ArrayF  # [N] cos(edited e_t, original e_t): per-frame preservation


def identity_metrics(original: ArrayF, edited: ArrayF) -> IdentityMetrics:
    """All identity metrics from the per-frame embeddings [N, D] of the original and the edited video."""
    o, e = normalize_rows(original), normalize_rows(edited)
    if o.shape != e.shape or o.shape[0] == 0:
        raise InputError(f"identity embeddings of both videos must have the same non-empty shape, got {o.shape} and {e.shape}")
    tl_o, tl_e = mean_adjacent_cosine(o), mean_adjacent_cosine(e)
    tg_o, tg_e = mean_pairwise_cosine(o), mean_pairwise_cosine(e)
    return IdentityMetrics(
        tl_id=_relative(tl_e, tl_o),
        tg_id=_relative(tg_e, tg_o),
        preservation=float(mean_identity(o) @ mean_identity(e)),
        tl_original=tl_o,
        tl_edited=tl_e,
        tg_original=tg_o,
        tg_edited=tg_e,
        sim_to_first_original=o @ o[0],
        sim_to_first_edited=e @ e[0],
        sim_to_original=np.sum(o * e, axis=1),
    )
