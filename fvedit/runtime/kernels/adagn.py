"""Fused AdaGN: GroupNorm + per-sample scale/shift + SiLU, as Triton kernels beside their PyTorch twin.

Every DVA ResBlock normalises three times (in_layers, time AdaGN, identity AdaGN), each followed by
SiLU, and the UNet's output head does GN + SiLU once more. Eager PyTorch runs these as GroupNorm,
mul, add, SiLU: four passes over the activation. Here the whole thing is one statistics read and
one apply read+write:

    mean, var  per (batch, group), in fp32, biased (as nn.GroupNorm)
    A[b, c]  = rstd * gamma[c] * (1 + scale[b, c])
    B[b, c]  = (beta[c] - mean * rstd * gamma[c]) * (1 + scale[b, c]) + shift[b, c]
    y        = SiLU(x * A + B)        (no SiLU with act=False: the attention block's plain GN)

Numerics versus the official code. `GroupNorm32` normalises in fp32 and casts the result back to
x.dtype, then the AdaGN multiply-add runs in x.dtype (fp16 in the official fp16 model): two or more
roundings. The fused kernel keeps fp32 from the statistics through the multiply-add and SiLU and
rounds once, at the store. It is therefore *closer* to the exact result than the reference: in
fp32 the two agree to ~1e-6; in fp16 they differ by a few fp16 ulps of the pre-SiLU value
(|x_hat * (1 + s)| of a few units -> ulp 2^-9..2^-8), so fp16 parity tests use atol = rtol = 1e-2.

Like PyTorch's own GroupNorm kernels, the fold computes x*A + B rather than (x - mean)*rstd: when a
group's |mean| is far above its std, x*A and B nearly cancel and the output error grows like
eps_fp32 * |mean| / std. The *statistics* do not suffer from this: they are chunk-wise Welford
(two-pass per tile, Chan et al.'s merge between tiles and chunks), never E[x^2] - E[x]^2.

Why a split reduction: one program per (batch, group), as stable-fast and Liger do, launches only
32 programs for batch 1 with 32 groups; at 256x256 each would reduce 262k elements while most of an
H100's 132 SMs idle. The statistics pass therefore cuts H*W into chunks so that about four programs
per SM are in flight, each writing partial (count, mean, M2) triples:
- NCHW: a program reads [C/G, BLOCK_HW] tiles of one group (contiguous along H*W) and writes one
  partial per (chunk, group);
- channels_last: a group's C/G channels are a short, mostly unaligned run inside each pixel, so
  a program instead reads [BLOCK_HW, BLOCK_C] tiles across groups (contiguous along C, 16-byte
  loads) and writes one partial per (chunk, channel).
A small fold kernel merges each group's partials (chunks, and channels for channels_last) and folds
GN affine + AdaGN into A, B per (b, c). Two stages instead of atomics: merging (count, mean, M2)
triples is not an atomic add (atomics would force the cancellation-prone sum/sum-of-squares form),
the result is bitwise reproducible run to run, and no buffer has to be zeroed first. The partials
are ~1-2 % of the activation's bytes.

Dispatch: `group_norm_silu` runs the Triton kernels for CUDA tensors when triton imports, and for
CPU tensors when the kernels were built by Triton's interpreter (TRITON_INTERPRET=1 set before
triton was first imported: the interpreter replaces `triton.jit` at decoration time). Otherwise,
and for float64, it runs the PyTorch twin `group_norm_silu_reference`. FVEDIT_ADAGN=torch forces
the twin (for bisecting a difference).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fvedit.errors import FveditError, InputError

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: CPU users run the twin
    triton = None
    tl = None

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_BLOCK_CG = 4096  # channels per group that one stats tile holds (dva256 has 4..24)
PROGRAMS_PER_SM = 4  # statistics programs in flight per SM on CUDA


# Integer arguments Triton must not specialise on (a value of 1 or a multiple of 16 would each
# compile another variant). n_chunks follows batch and layer and only scales the partials'
# addresses, whose alignment the C or G factor already gives, so specialising on it gains
# nothing. The fold's CG / SEGS keep the "== 1" case (NCHW: SEGS = 1 turns k // SEGS into k)
# but not the 16-divisibility one, which only touches its tiny per-channel loads. (n_chunks is in
# both lists: do_not_specialize alone already drops both keys on current Triton; naming it twice
# keeps that so on versions that treated them apart.)
NO_SPECIALIZE = {"stats": ("n_chunks",), "fold": ("n_chunks",), "apply": ()}
NO_ALIGN_SPECIALIZE = {"stats": ("n_chunks",), "fold": ("n_chunks", "CG", "SEGS"), "apply": ()}


def _jit(role: str):
    """`triton.jit` (with the role's no-specialise lists) when triton is present; else the plain function."""

    def wrap(fn):
        if triton is None:
            return fn
        return triton.jit(
            fn, do_not_specialize=NO_SPECIALIZE[role], do_not_specialize_on_alignment=NO_ALIGN_SPECIALIZE[role]
        )

    return wrap


def _jit_helper(fn):
    """`triton.jit` for a device function called from the kernels (never launched)."""
    return triton.jit(fn) if triton is not None else fn


# ----------------------------------------------------------------------------------------------
# Triton kernels. x is addressed as [B, C, HW] through (stride_b, stride_c, stride_hw): contiguous
# NCHW has (C*HW, HW, 1), channels_last (HW*C, 1, C). Partials are fp32 [B, n_chunks, 3, n_seg]:
# planes (count, mean, M2) per segment, a segment being a group (NCHW) or a channel (NHWC).


@_jit_helper
def _merge(count, mean, m2, n_b, mean_b, m2_b):
    """Chan, Golub & LeVeque: statistics of the union of two sets from each one's (count, mean, M2)."""
    total = count + n_b
    frac = n_b / tl.where(total > 0, total, 1.0)
    delta = mean_b - mean
    return total, mean + delta * frac, m2 + m2_b + delta * delta * (count * frac)


@_jit("stats")
def _gn_group_stats_kernel(
    x_ptr,
    part_ptr,
    HW,
    G,
    CG,  # channels per group
    n_chunks,
    chunk_hw,  # H*W positions per chunk, a multiple of BLOCK_HW
    stride_b,
    stride_c,
    stride_hw,
    BLOCK_CG: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """NCHW. One program: one H*W chunk of one (batch, group); [BLOCK_CG, BLOCK_HW] tiles."""
    bg = tl.program_id(0)
    chunk = tl.program_id(1)
    b = bg // G
    g = bg % G
    cl = tl.arange(0, BLOCK_CG)
    c_mask = cl < CG
    c_offs = (g * CG + cl) * stride_c
    base = x_ptr + b.to(tl.int64) * stride_b
    hw_start = chunk * chunk_hw
    hw_end = tl.minimum(hw_start + chunk_hw, HW)

    count = tl.zeros((), dtype=tl.float32)
    mean = tl.zeros((), dtype=tl.float32)
    m2 = tl.zeros((), dtype=tl.float32)
    for start in range(hw_start, hw_end, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        mask = c_mask[:, None] & (hw < hw_end)[None, :]
        x = tl.load(base + c_offs[:, None] + hw[None, :] * stride_hw, mask=mask, other=0.0).to(tl.float32)
        # exact two-pass statistics of the tile (it is in registers anyway), merged into the running ones
        n_tile = (CG * tl.minimum(hw_end - start, BLOCK_HW)).to(tl.float32)
        mean_tile = tl.sum(tl.sum(x, axis=1), axis=0) / n_tile
        d = tl.where(mask, x - mean_tile, 0.0)
        count, mean, m2 = _merge(count, mean, m2, n_tile, mean_tile, tl.sum(tl.sum(d * d, axis=1), axis=0))

    out = part_ptr + (b * n_chunks + chunk) * 3 * G + g
    tl.store(out, count)
    tl.store(out + G, mean)
    tl.store(out + 2 * G, m2)


@_jit("stats")
def _gn_channel_stats_kernel(
    x_ptr,
    part_ptr,
    C,
    HW,
    n_chunks,
    chunk_hw,
    stride_b,
    stride_c,
    stride_hw,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """channels_last. One program: one H*W chunk of one (batch, channel block); per-channel partials."""
    pid_c = tl.program_id(0)
    chunk = tl.program_id(1)
    b = tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    base = x_ptr + b.to(tl.int64) * stride_b
    hw_start = chunk * chunk_hw
    hw_end = tl.minimum(hw_start + chunk_hw, HW)

    count = tl.zeros((), dtype=tl.float32)
    mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(hw_start, hw_end, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        mask = (hw < hw_end)[:, None] & c_mask[None, :]
        x = tl.load(base + hw[:, None] * stride_hw + c[None, :] * stride_c, mask=mask, other=0.0).to(tl.float32)
        n_tile = tl.minimum(hw_end - start, BLOCK_HW).to(tl.float32)
        mean_tile = tl.sum(x, axis=0) / n_tile
        d = tl.where(mask, x - mean_tile[None, :], 0.0)
        count, mean, m2 = _merge(count, mean, m2, n_tile, mean_tile, tl.sum(d * d, axis=0))

    out = part_ptr + (b * n_chunks + chunk) * 3 * C + c
    tl.store(out, tl.zeros((BLOCK_C,), dtype=tl.float32) + count, mask=c_mask)
    tl.store(out + C, mean, mask=c_mask)
    tl.store(out + 2 * C, m2, mask=c_mask)


@_jit("fold")
def _gn_fold_kernel(
    part_ptr,
    weight_ptr,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    a_ptr,  # fp32 [B, C] out: multiplier
    b_ptr,  # fp32 [B, C] out: offset
    C,
    G,
    CG,
    n_chunks,
    n_seg,  # segments per partial plane: G (NCHW) or C (channels_last)
    SEGS,  # segments per group: 1 or CG
    eps,
    stride_scale_b,
    stride_scale_c,
    stride_shift_b,
    stride_shift_c,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_CG: tl.constexpr,
):
    """One program per (block of groups, batch): merge each group's n_chunks * SEGS partials, then
    fold GN affine + AdaGN into A, B for the group's channels. BLOCK_K and BLOCK_CG are fixed and
    the kernel loops over K and CG, so one compiled variant serves every batch, layer and chunking."""
    pid_g = tl.program_id(0)
    b = tl.program_id(1)
    g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    g_mask = g < G
    K = n_chunks * SEGS
    count = tl.zeros((BLOCK_G,), dtype=tl.float32)
    mean = tl.zeros((BLOCK_G,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        chunk = k // SEGS
        mask = g_mask[:, None] & (k < K)[None, :]
        rows = part_ptr + (b * n_chunks + chunk[None, :]) * 3 * n_seg + g[:, None] * SEGS + (k % SEGS)[None, :]
        n_i = tl.load(rows, mask=mask, other=0.0)  # padding has count 0: it drops out
        mean_i = tl.load(rows + n_seg, mask=mask, other=0.0)
        m2_i = tl.load(rows + 2 * n_seg, mask=mask, other=0.0)
        n_blk = tl.sum(n_i, axis=1)
        mean_blk = tl.sum(n_i * mean_i, axis=1) / tl.where(n_blk > 0, n_blk, 1.0)
        d = mean_i - mean_blk[:, None]
        count, mean, m2 = _merge(count, mean, m2, n_blk, mean_blk, tl.sum(m2_i + n_i * d * d, axis=1))
    var = m2 / tl.where(count > 0, count, 1.0)  # biased, as nn.GroupNorm
    rstd = 1.0 / tl.sqrt(var + eps)

    for j0 in range(0, CG, BLOCK_CG):
        j = j0 + tl.arange(0, BLOCK_CG)
        c = g[:, None] * CG + j[None, :]
        c_mask = g_mask[:, None] & (j < CG)[None, :]
        gamma = tl.load(weight_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
        beta = tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
        a = rstd[:, None] * gamma
        off = beta - mean[:, None] * a
        if HAS_SCALE:
            s = 1.0 + tl.load(scale_ptr + b * stride_scale_b + c * stride_scale_c, mask=c_mask, other=0.0).to(
                tl.float32
            )
            a = a * s
            off = off * s
        if HAS_SHIFT:
            off = off + tl.load(shift_ptr + b * stride_shift_b + c * stride_shift_c, mask=c_mask, other=0.0).to(
                tl.float32
            )
        tl.store(a_ptr + b * C + c, a, mask=c_mask)
        tl.store(b_ptr + b * C + c, off, mask=c_mask)


@_jit("apply")
def _gn_apply_kernel(
    x_ptr,
    y_ptr,  # same strides as x
    a_ptr,
    b_ptr,
    C,
    HW,
    stride_b,
    stride_c,
    stride_hw,
    ACT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """y = SiLU(x * A[b, c] + B[b, c]) on a [BLOCK_C, BLOCK_HW] tile, fp32 inside, one rounding out."""
    pid_hw = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c_mask = c < C
    mask = c_mask[:, None] & (hw < HW)[None, :]
    a = tl.load(a_ptr + b * C + c, mask=c_mask, other=0.0)
    off = tl.load(b_ptr + b * C + c, mask=c_mask, other=0.0)
    offs = b.to(tl.int64) * stride_b + c[:, None] * stride_c + hw[None, :] * stride_hw
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = x * a[:, None] + off[:, None]
    if ACT:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Argument checks shared by both paths.


def _check_args(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    num_groups: int,
    scale: Tensor | None,
    shift: Tensor | None,
) -> tuple[Tensor | None, Tensor | None]:
    """Validate; return scale/shift as [B or 1, C] views (they may come as [B, C, 1, 1])."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"group_norm_silu: x must be a 4-D [B, C, H, W] float tensor, got {got}")
    B, C = x.shape[:2]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups <= 0 or C % num_groups:
        raise InputError(f"group_norm_silu: num_groups={num_groups!r} must be a positive integer dividing C={C}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.shape != (C,) or p.device != x.device):
            raise InputError(
                f"group_norm_silu: {name} must have shape ({C},) on {x.device}, got {tuple(p.shape)} on {p.device}"
            )
    out = []
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None:
            if t.dim() == 4 and t.shape[2:] == (1, 1):
                t = t[:, :, 0, 0]
            if t.dim() != 2 or t.shape[1] != C or t.shape[0] not in (1, B) or t.device != x.device:
                raise InputError(
                    f"group_norm_silu: {name} must have shape ({B}, {C}) (or (1, {C}), or with trailing 1, 1) "
                    f"on {x.device}, got {tuple(t.shape)} on {t.device}"
                )
        out.append(t)
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------
# The PyTorch twin: the reference path and the CPU runtime.


def group_norm_silu_reference(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    num_groups: int,
    eps: float = 1e-5,
    *,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    act: bool = True,
) -> Tensor:
    """Same math in plain torch ops: fp32 F.group_norm, fold affine + AdaGN, SiLU, cast back once."""
    scale, shift = _check_args(x, weight, bias, num_groups, scale, shift)
    C = x.shape[1]
    y = F.group_norm(x.float(), num_groups, eps=eps)  # a fresh fp32 tensor: safe to update in place
    a = weight.float()[None] if weight is not None else torch.ones(1, C, device=x.device)
    off = bias.float()[None] if bias is not None else torch.zeros(1, C, device=x.device)
    if scale is not None:
        s = 1 + scale.float()
        a, off = a * s, off * s
    if shift is not None:
        off = off + shift.float()
    y.mul_(a[:, :, None, None]).add_(off[:, :, None, None])
    if act:
        F.silu(y, inplace=True)
    y = y.to(x.dtype)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = y.contiguous(memory_format=torch.channels_last)
    return y


# ----------------------------------------------------------------------------------------------
# The Triton launcher.


def triton_available() -> bool:
    """True when triton imported (the kernels may still need a GPU or TRITON_INTERPRET=1)."""
    return triton is not None


def triton_interpreted() -> bool:
    """True when the kernels were built by Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return triton is not None and type(_gn_apply_kernel).__name__ == "InterpretedFunction"


def backend_for(x: Tensor) -> str:
    """'triton' or 'torch': which implementation `group_norm_silu` uses for this input."""
    if os.environ.get("FVEDIT_ADAGN", "").strip().lower() == "torch":
        return "torch"
    if triton is None or x.dtype not in _TRITON_DTYPES:
        return "torch"
    return "triton" if (x.is_cuda or triton_interpreted()) else "torch"


def _sm_count(device: torch.device) -> int:
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _sm_count_of(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# The fold kernel's tiles are fixed, whatever the shape: it loops over a group's K = n_chunks * SEGS
# partials and over its CG channels, so it compiles once per (dtype, AdaGN on/off) instead of once
# per chunk count. 2 x 1024 is the tile the shape-following plan used for the largest K: dva256 on
# an H100/H200 reaches K = 1056 at batch 1 (two steps, as before), and at large batches, where K
# is 4..64, the masked lanes issue no memory traffic. 32 channels per step covers dva256's
# CG = 4..32 in one.
FOLD_BLOCK_G = 2
FOLD_BLOCK_K = 1024
FOLD_BLOCK_CG = 32


@dataclass(frozen=True)
class LaunchPlan:
    """Grids, tiles and warps of the three kernels for one input shape and layout."""

    channels_last: bool
    stats_block_a: int  # BLOCK_CG (NCHW) or BLOCK_C (channels_last)
    stats_block_hw: int
    chunk_hw: int  # H*W positions per statistics program
    n_chunks: int  # statistics programs along H*W
    stats_warps: int
    stats_grid: tuple[int, ...]
    n_seg: int  # partial segments per (batch, chunk): G or C
    segs_per_group: int  # 1 or C/G
    fold_block_g: int
    fold_block_k: int
    fold_block_cg: int
    fold_grid: tuple[int, int]
    apply_block_c: int
    apply_block_hw: int
    apply_warps: int
    apply_grid: tuple[int, int, int]


def plan_launch(
    B: int,
    C: int,
    HW: int,
    G: int,
    channels_last: bool,
    programs_target: int,
    *,
    chunks: int | None = None,
    block_hw: int | None = None,
) -> LaunchPlan:
    """Statistics tiles of ~4k elements, and H*W split into enough chunks that the statistics grid
    reaches `programs_target` (4 per SM on CUDA; 1 in the interpreter, which runs programs one after
    another). Apply: ~2k-element tiles, wide along the contiguous axis (H*W, or C for
    channels_last). `chunks`/`block_hw` override the choice (tests use them to force merges)."""
    if block_hw is not None and (block_hw <= 0 or block_hw & (block_hw - 1)):
        raise InputError(f"plan_launch: block_hw={block_hw} must be a positive power of two")
    CG = C // G
    if channels_last:
        block_a = min(_next_pow2(C), 64)  # 64 fp16 channels = one 128-byte line per pixel
        bhw = block_hw or min(_next_pow2(HW), max(16, 4096 // block_a))
        rows = B * _cdiv(C, block_a)
    else:
        block_a = _next_pow2(CG)
        bhw = block_hw or min(_next_pow2(HW), max(16, 4096 // block_a))
        rows = B * G
    tiles = _cdiv(HW, bhw)
    chunks = _cdiv(programs_target, rows) if chunks is None else chunks
    chunks = max(1, min(int(chunks), tiles, 1024))
    chunk_hw = _cdiv(tiles, chunks) * bhw
    n_chunks = _cdiv(HW, chunk_hw)
    if channels_last:
        stats_grid: tuple[int, ...] = (_cdiv(C, block_a), n_chunks, B)
        n_seg, segs = C, CG
    else:
        stats_grid = (B * G, n_chunks)
        n_seg, segs = G, 1
    if channels_last:
        a_c = min(_next_pow2(C), 256)
        a_hw = block_hw or min(_next_pow2(HW), max(1, 2048 // a_c))
    else:
        a_hw = block_hw or min(_next_pow2(HW), 2048)
        a_c = min(_next_pow2(C), max(1, 2048 // a_hw))
    return LaunchPlan(
        channels_last=channels_last,
        stats_block_a=block_a,
        stats_block_hw=bhw,
        chunk_hw=chunk_hw,
        n_chunks=n_chunks,
        stats_warps=8 if block_a * bhw >= 4096 else 4,
        stats_grid=stats_grid,
        n_seg=n_seg,
        segs_per_group=segs,
        fold_block_g=FOLD_BLOCK_G,
        fold_block_k=FOLD_BLOCK_K,
        fold_block_cg=FOLD_BLOCK_CG,
        fold_grid=(_cdiv(G, FOLD_BLOCK_G), B),
        apply_block_c=a_c,
        apply_block_hw=a_hw,
        apply_warps=8 if a_c * a_hw >= 2048 else 4,
        apply_grid=(_cdiv(HW, a_hw), _cdiv(C, a_c), B),
    )


# ----------------------------------------------------------------------------------------------
# The launches of one call, described without their tensors: the launcher runs them, and
# `compile_variants` counts what Triton compiles for them, from the same description.

_KERNELS = {
    "group_stats": _gn_group_stats_kernel,
    "channel_stats": _gn_channel_stats_kernel,
    "fold": _gn_fold_kernel,
    "apply": _gn_apply_kernel,
}


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch minus its pointers: the scalars and constexprs that pick its compiled variant."""

    role: str  # "stats", "fold" or "apply" (keys NO_SPECIALIZE / NO_ALIGN_SPECIALIZE)
    kernel: str  # key of _KERNELS
    grid: tuple[int, ...]
    scalars: dict[str, int | float]  # by parameter name, in signature order
    consts: dict[str, int | bool]
    num_warps: int


def _stats_launch(plan: LaunchPlan, C: int, HW: int, G: int, strides: tuple[int, int, int]) -> KernelLaunch:
    """Statistics pass: per-channel partials (channels_last) or per-group partials (NCHW)."""
    stride_b, stride_c, stride_hw = strides
    common = {"n_chunks": plan.n_chunks, "chunk_hw": plan.chunk_hw, "stride_b": stride_b, "stride_c": stride_c}
    if plan.channels_last:
        scalars = {"C": C, "HW": HW, **common, "stride_hw": stride_hw}
        consts = {"BLOCK_C": plan.stats_block_a, "BLOCK_HW": plan.stats_block_hw}
        return KernelLaunch("stats", "channel_stats", plan.stats_grid, scalars, consts, plan.stats_warps)
    scalars = {"HW": HW, "G": G, "CG": C // G, **common, "stride_hw": stride_hw}
    consts = {"BLOCK_CG": plan.stats_block_a, "BLOCK_HW": plan.stats_block_hw}
    return KernelLaunch("stats", "group_stats", plan.stats_grid, scalars, consts, plan.stats_warps)


def _fold_launch(
    plan: LaunchPlan,
    C: int,
    G: int,
    eps: float,
    scale_strides: tuple[int, int] | None,
    shift_strides: tuple[int, int] | None,
) -> KernelLaunch:
    """Fold pass: merge the partials, fold GN affine + AdaGN into A, B."""
    sb, sc = scale_strides or (0, 0)
    hb, hc = shift_strides or (0, 0)
    scalars = {
        "C": C, "G": G, "CG": C // G, "n_chunks": plan.n_chunks, "n_seg": plan.n_seg, "SEGS": plan.segs_per_group,
        "eps": float(eps), "stride_scale_b": sb, "stride_scale_c": sc, "stride_shift_b": hb, "stride_shift_c": hc,
    }  # fmt: skip
    consts = {
        "HAS_SCALE": scale_strides is not None, "HAS_SHIFT": shift_strides is not None,
        "BLOCK_G": plan.fold_block_g, "BLOCK_K": plan.fold_block_k, "BLOCK_CG": plan.fold_block_cg,
    }  # fmt: skip
    return KernelLaunch("fold", "fold", plan.fold_grid, scalars, consts, 4)


def _apply_launch(plan: LaunchPlan, C: int, HW: int, strides: tuple[int, int, int], act: bool) -> KernelLaunch:
    """Apply pass: y = SiLU(x * A + B)."""
    stride_b, stride_c, stride_hw = strides
    scalars = {"C": C, "HW": HW, "stride_b": stride_b, "stride_c": stride_c, "stride_hw": stride_hw}
    consts = {"ACT": bool(act), "BLOCK_C": plan.apply_block_c, "BLOCK_HW": plan.apply_block_hw}
    return KernelLaunch("apply", "apply", plan.apply_grid, scalars, consts, plan.apply_warps)


def kernel_launches(
    plan: LaunchPlan,
    C: int,
    HW: int,
    G: int,
    strides: tuple[int, int, int],
    *,
    eps: float = 1e-5,
    scale_strides: tuple[int, int] | None = None,
    shift_strides: tuple[int, int] | None = None,
    act: bool = True,
) -> tuple[KernelLaunch, KernelLaunch, KernelLaunch]:
    """Statistics, fold and apply launches for x addressed as [B, C, HW] through `strides`."""
    return (
        _stats_launch(plan, C, HW, G, strides),
        _fold_launch(plan, C, G, eps, scale_strides, shift_strides),
        _apply_launch(plan, C, HW, strides, act),
    )


def int_specialization(value: int, role: str, name: str) -> str:
    """What Triton keys a compiled variant on for an int argument: "1" for a value of 1, its width,
    and "D" when divisible by 16; nothing but the width for a do-not-specialise argument."""
    width = "i32" if -(2**31) <= value < 2**31 else "i64"
    if name in NO_SPECIALIZE[role]:
        return width
    if value == 1:
        return "1"
    return width + ("D" if value % 16 == 0 and name not in NO_ALIGN_SPECIALIZE[role] else "")


def variant_key(launch: KernelLaunch, pointer_dtypes: tuple[torch.dtype, ...]) -> tuple:
    """The parts of Triton's cache key that vary between our launches (pointers assumed 16-byte aligned)."""
    ints = tuple(
        (name, int_specialization(v, launch.role, name)) for name, v in launch.scalars.items() if type(v) is int
    )
    consts = tuple(sorted(launch.consts.items()))
    return (launch.kernel, tuple(map(str, pointer_dtypes)), consts, launch.num_warps, ints)


@dataclass(frozen=True)
class GNSite:
    """One `group_norm_silu` call as FastUNet makes it: x [B, C, H, W], G groups, its options."""

    B: int
    C: int
    H: int
    W: int
    G: int
    channels_last: bool = True  # FastUNet's layout on CUDA
    adagn: bool = False  # scale and shift given: halves of a [B, 2C] Linear output, strides (2C, 1)
    act: bool = True


def site_launches(site: GNSite, programs_target: int) -> tuple[KernelLaunch, KernelLaunch, KernelLaunch]:
    """The launches `group_norm_silu_triton` makes for a dense x of this site."""
    C, HW = site.C, site.H * site.W
    strides = (C * HW, 1, C) if site.channels_last else (C * HW, HW, 1)
    plan = plan_launch(site.B, C, HW, site.G, site.channels_last, programs_target)
    halves = (2 * C, 1) if site.adagn else None
    return kernel_launches(plan, C, HW, site.G, strides, scale_strides=halves, shift_strides=halves, act=site.act)


def compile_variants(
    sites: list[GNSite],
    dtype: torch.dtype,
    *,
    programs_target: int = PROGRAMS_PER_SM * 132,
    scale_dtype: torch.dtype = torch.float32,
    param_dtype: torch.dtype = torch.float32,
) -> set[tuple]:
    """Distinct compiled kernels (see `variant_key`) the sites need, for x in `dtype` on a GPU with
    programs_target / PROGRAMS_PER_SM SMs (132: H100 / H200). Each one is a JIT compile on a fresh
    machine. scale/shift and the GN affine come in fp32 from FastUNet (its Linears and GNs stay fp32)."""
    f32 = torch.float32
    variants = set()
    for site in sites:
        stats, fold, apply = site_launches(site, programs_target)
        ada = scale_dtype if site.adagn else f32  # the fp32 A buffer stands in for an absent scale/shift
        variants.add(variant_key(stats, (dtype, f32)))
        variants.add(variant_key(fold, (f32, param_dtype, param_dtype, ada, ada, f32, f32)))
        variants.add(variant_key(apply, (dtype, dtype, f32, f32)))
    return variants


def group_norm_silu_triton(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    num_groups: int,
    eps: float = 1e-5,
    *,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    act: bool = True,
    plan: LaunchPlan | None = None,
) -> Tensor:
    """The fused op on Triton (statistics, fold, apply). `plan` overrides the launch plan (tests
    force several chunks and small tiles with it, to exercise every merge)."""
    if triton is None:
        raise FveditError("group_norm_silu_triton: triton is not installed (pip install 'fvedit[triton]')")
    scale, shift = _check_args(x, weight, bias, num_groups, scale, shift)
    if x.dtype not in _TRITON_DTYPES:
        raise InputError(f"group_norm_silu_triton: dtype {x.dtype} is not supported; use float32, float16 or bfloat16")
    if not (x.is_cuda or triton_interpreted()):
        raise FveditError(
            "group_norm_silu_triton: a CPU tensor needs Triton's interpreter (set TRITON_INTERPRET=1 before "
            "importing triton), or use group_norm_silu, which falls back to PyTorch"
        )
    B, C, H, W = x.shape
    HW, G = H * W, num_groups
    CG = C // G
    if _next_pow2(CG) > _MAX_BLOCK_CG:
        raise InputError(f"group_norm_silu_triton: {CG} channels per group is over the kernel's {_MAX_BLOCK_CG}")
    if B > 65535:
        raise InputError(f"group_norm_silu_triton: batch {B} is over the kernel grid's 65535; split the batch")
    if C * HW >= 2**31:
        raise InputError(f"group_norm_silu_triton: one sample has {C * HW} elements, over the kernel's int32 indexing")
    if x.numel() == 0:
        return torch.empty_like(x)
    # [B, C, HW] addressing needs H and W to merge: true for contiguous NCHW and channels_last.
    if W > 1 and H > 1 and x.stride(2) != W * x.stride(3):
        x = x.contiguous()
    y = torch.empty_like(x)  # preserve_format: same strides for dense x
    if y.stride() != x.stride():
        x, y = x.contiguous(), torch.empty_like(x, memory_format=torch.contiguous_format)
    stride_b, stride_c = x.stride(0), x.stride(1)
    stride_hw = x.stride(3) if W > 1 else x.stride(2)
    dev = x.device
    weight = weight if weight is not None else torch.ones(C, device=dev)
    bias = bias if bias is not None else torch.zeros(C, device=dev)
    if scale is not None:
        scale = scale.expand(B, C)
    if shift is not None:
        shift = shift.expand(B, C)

    if plan is None:
        target = PROGRAMS_PER_SM * _sm_count(x.device) if x.is_cuda else 1
        plan = plan_launch(B, C, HW, G, stride_hw != 1, target)
    elif plan.channels_last != (stride_hw != 1):
        raise InputError(f"group_norm_silu_triton: the plan is for channels_last={plan.channels_last}, x is not")
    partials = torch.empty(B, plan.n_chunks, 3, plan.n_seg, device=dev, dtype=torch.float32)
    a = torch.empty(B, C, device=dev, dtype=torch.float32)
    off = torch.empty(B, C, device=dev, dtype=torch.float32)
    dummy = a  # never read when the HAS_* flag is off
    pointers = {
        "stats": (x, partials),
        "fold": (partials, weight, bias, dummy if scale is None else scale, dummy if shift is None else shift, a, off),
        "apply": (x, y, a, off),
    }
    launches = kernel_launches(
        plan, C, HW, G, (stride_b, stride_c, stride_hw), eps=float(eps), act=bool(act),
        scale_strides=None if scale is None else scale.stride(), shift_strides=None if shift is None else shift.stride(),
    )  # fmt: skip
    for launch in launches:
        # enable_fp_fusion: x * A + B as one FMA in the apply kernel, one rounding
        _KERNELS[launch.kernel][launch.grid](
            *pointers[launch.role], **launch.scalars, **launch.consts, num_warps=launch.num_warps, enable_fp_fusion=True
        )
    return y


# ----------------------------------------------------------------------------------------------
# The op the model calls.


def group_norm_silu(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    num_groups: int,
    eps: float = 1e-5,
    *,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    act: bool = True,
) -> Tensor:
    """SiLU(GroupNorm(x) * (1 + scale) + shift), statistics in fp32; x is [B, C, H, W] NCHW or
    channels_last, scale/shift [B, C] (or [B, C, 1, 1], or [1, C]). Output: x's dtype and layout.
    Triton when `backend_for(x)` says so, else the PyTorch twin."""
    if backend_for(x) == "triton":
        return group_norm_silu_triton(x, weight, bias, num_groups, eps, scale=scale, shift=shift, act=act)
    return group_norm_silu_reference(x, weight, bias, num_groups, eps, scale=scale, shift=shift, act=act)
