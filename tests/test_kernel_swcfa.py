"""Sliding-window cross-frame attention: window rules, PyTorch twin, Triton kernel, attention block.

The Triton kernel runs under the Triton interpreter on CPU, and is also compiled to sm_90 PTX
(no GPU needed) to catch what only the real compiler rejects. Triton fixes interpreted vs
compiled mode for its own library when it is first imported, so both run in subprocesses, one
started with TRITON_INTERPRET=1 (`_interpreter_main`) and one without (`_compile_main`); this
module never touches the variable in the test process, and other modules may set it or not.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fvedit.errors import FveditError, InputError
from fvedit.models.unet import AttentionBlock, qkv_attention_legacy
from fvedit.runtime.kernels import swcfa
from tolerances import SAFETY, assert_close_scaled, attention_tolerance, sum_tolerance, unit_roundoff

ROOT = Path(__file__).resolve().parents[1]

# Window lists written out by hand (not computed by fvedit) for the boundary tests.
HAND_WINDOWS = {
    # F=4, w=3: one frame back, one forward.
    (4, 3, "shrink"): [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3]],
    (4, 3, "shift"): [[0, 1, 2], [0, 1, 2], [1, 2, 3], [1, 2, 3]],
    (4, 3, "clamp"): [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]],
    # F=4, w=2 (even): one frame back, none forward.
    (4, 2, "shrink"): [[0], [0, 1], [1, 2], [2, 3]],
    (4, 2, "shift"): [[0, 1], [0, 1], [1, 2], [2, 3]],
    (4, 2, "clamp"): [[0, 0], [0, 1], [1, 2], [2, 3]],
    # F=5, w=4 (even): two frames back, one forward.
    (5, 4, "shrink"): [[0, 1], [0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4]],
    (5, 4, "shift"): [[0, 1, 2, 3]] * 3 + [[1, 2, 3, 4]] * 2,
    (5, 4, "clamp"): [[0, 0, 0, 1], [0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 4]],
    # window larger than the clip: F=2, w=5.
    (2, 5, "shrink"): [[0, 1], [0, 1]],
    (2, 5, "shift"): [[0, 1], [0, 1]],
    (2, 5, "clamp"): [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]],
    # window 1 is per-frame self-attention under every rule.
    (3, 1, "shrink"): [[0], [1], [2]],
    (3, 1, "shift"): [[0], [1], [2]],
    (3, 1, "clamp"): [[0], [1], [2]],
}


def random_qkv(frames: int, channels: int, tokens: int, dtype=torch.float32, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(frames, channels, tokens, generator=g) * scale).to(dtype) for _ in range(3))


def naive_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, windows: list[list[int]]) -> np.ndarray:
    """fp64 loops: query token t of frame i against every token of the listed frames (duplicates count)."""
    frames, channels, tokens = q.shape
    out = np.zeros_like(q, dtype=np.float64)
    for i, window in enumerate(windows):
        keys = np.concatenate([k[j] for j in window], axis=1).astype(np.float64)
        values = np.concatenate([v[j] for j in window], axis=1).astype(np.float64)
        for t in range(tokens):
            logits = q[i, :, t].astype(np.float64) @ keys / math.sqrt(channels)
            p = np.exp(logits - logits.max())
            out[i, :, t] = values @ (p / p.sum())
    return out


def attention_scales(q, k, v, window: int, boundary: str) -> dict:
    """The quantities `attention_tolerance` scales with, from an fp64 evaluation of the twin's math.

    logit_gain / prob_gain: max over outputs of sqrt(sum_j p_j^2 (v_j - o)^2) and
    sqrt(sum_j p_j^2 v_j^2), how much independent logit / probability errors move an output.
    """
    q, k, v = (t.detach().double() for t in (q, k, v))
    frames, channels, tokens = q.shape
    index, valid = swcfa.window_table(frames, window, boundary, q.device)
    k_win = k[index].permute(0, 2, 1, 3).reshape(frames, channels, -1)
    v_win = v[index].permute(0, 2, 1, 3).reshape(frames, channels, -1)
    key_valid = valid.repeat_interleave(tokens, dim=1)[:, None, :].expand(frames, tokens, -1)
    logits = torch.einsum("bct,bcs->bts", q, k_win) / math.sqrt(channels)
    p = torch.softmax(logits.masked_fill(~key_valid, float("-inf")), dim=-1)
    p2 = p * p
    out = torch.einsum("bts,bcs->btc", p, v_win)
    sum_v2 = torch.einsum("bts,bcs->btc", p2, v_win * v_win)
    spread = sum_v2 - 2 * out * torch.einsum("bts,bcs->btc", p2, v_win) + out * out * p2.sum(-1, keepdim=True)
    return {
        "channels": channels,
        "n_keys": int(valid.sum(dim=1).max()) * tokens,
        "max_abs_logit": logits[key_valid].abs().max().item(),
        "max_abs_v": v.abs().max().item(),
        "logit_gain": spread.clamp_min(0).sqrt().max().item(),
        "prob_gain": sum_v2.sqrt().max().item(),
    }


# -- window rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("frames,window,boundary", sorted(HAND_WINDOWS))
def test_window_indices_match_hand_lists(frames, window, boundary):
    assert swcfa.window_indices(frames, window, boundary) == HAND_WINDOWS[(frames, window, boundary)]


def test_default_boundary_is_shrink():
    assert swcfa.window_indices(6, 3) == swcfa.window_indices(6, 3, "shrink")
    q, k, v = random_qkv(4, 4, 2)
    torch.testing.assert_close(
        swcfa.windowed_frame_attention_twin(q, k, v, 3),
        swcfa.windowed_frame_attention_twin(q, k, v, 3, boundary="shrink"),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: swcfa.window_indices(4, 0),
        lambda: swcfa.window_indices(4, -3),
        lambda: swcfa.window_indices(4, 2.0),
        lambda: swcfa.window_indices(4, True),
        lambda: swcfa.window_indices(0, 3),
        lambda: swcfa.window_indices(4, 3, "wrap"),
        lambda: swcfa.plan_chunks(10, 3, 2),
    ],
    ids=["zero", "negative", "float", "bool", "no-frames", "unknown-rule", "chunk-too-small"],
)
def test_bad_window_arguments_are_input_errors(call):
    with pytest.raises(InputError):
        call()


@pytest.mark.parametrize("boundary", swcfa.BOUNDARIES)
def test_plan_chunks_gives_every_kept_frame_its_whole_clip_window(boundary):
    for frames in range(1, 13):
        for window in range(1, 6):
            whole = swcfa.window_indices(frames, window, boundary)
            for max_frames in range(min(window, frames), frames + 2):
                chunks = swcfa.plan_chunks(frames, window, max_frames, boundary)
                kept = [f for c in chunks for f in range(c.keep_start, c.keep_stop)]
                assert kept == list(range(frames))
                for c in chunks:
                    assert 0 <= c.start <= c.keep_start < c.keep_stop <= c.stop <= frames
                    assert c.stop - c.start <= max_frames
                    local = swcfa.window_indices(c.stop - c.start, window, boundary)
                    for f in range(c.keep_start, c.keep_stop):
                        assert [j + c.start for j in local[f - c.start]] == whole[f], (frames, window, max_frames, c)


@pytest.mark.parametrize("boundary", swcfa.BOUNDARIES)
def test_chunked_attention_equals_whole_clip(boundary):
    q, k, v = random_qkv(11, 8, 5, seed=3)
    whole = swcfa.windowed_frame_attention_twin(q, k, v, 3, boundary=boundary)
    pieces = []
    for c in swcfa.plan_chunks(11, 3, 5, boundary):
        part = swcfa.windowed_frame_attention_twin(
            q[c.start : c.stop], k[c.start : c.stop], v[c.start : c.stop], 3, boundary=boundary
        )
        pieces.append(part[c.keep_start - c.start : c.keep_stop - c.start])
    # the same math on fewer frames (another batch size can change the BLAS blocking)
    tol = attention_tolerance("float32", **attention_scales(q, k, v, 3, boundary))
    assert_close_scaled(torch.cat(pieces), whole, tol, boundary)


# -- the kernel's device window table ----------------------------------------------------------


@pytest.fixture
def empty_table_cache(monkeypatch):
    """A private, empty table cache for one test (the module's own is left as it was)."""
    monkeypatch.setattr(swcfa, "_DEVICE_TABLES", {})
    return swcfa._DEVICE_TABLES


def test_device_table_is_built_once_per_shape(empty_table_cache, monkeypatch):
    first = swcfa.device_window_table(6, 3, "shrink", "cpu")
    index, valid = swcfa.window_table(6, 3, "shrink")
    assert first.index.dtype == first.counts.dtype == torch.int32 and first.index.is_contiguous()
    assert torch.equal(first.index, index.int()) and torch.equal(first.counts, valid.sum(1).int())
    assert first.slots == index.shape[1] == 3
    # a second lookup of the shape builds nothing: the host table must not even be computed
    with monkeypatch.context() as patch:
        patch.setattr(swcfa, "window_table", lambda *a, **kw: pytest.fail("table rebuilt"))
        assert swcfa.device_window_table(6, 3, "shrink", torch.device("cpu")) is first
    # every other key gets its own table
    others = [(7, 3, "shrink"), (6, 5, "shrink"), (6, 3, "clamp")]
    for key in others:
        table = swcfa.device_window_table(*key, "cpu")
        index, valid = swcfa.window_table(*key)
        assert torch.equal(table.index, index.int()) and torch.equal(table.counts, valid.sum(1).int()), key
    assert len(empty_table_cache) == 1 + len(others)


@pytest.mark.parametrize("window", [True, 3.0, 0])
def test_device_table_validates_before_the_cache(empty_table_cache, window):
    """True == 1 and 3.0 == 3 as dict keys: they must be refused, not served another shape's table."""
    swcfa.device_window_table(4, 1, "shrink")
    swcfa.device_window_table(4, 3, "shrink")
    with pytest.raises(InputError):
        swcfa.device_window_table(4, window, "shrink")
    with pytest.raises(InputError):
        swcfa.device_window_table(4, 3, "wrap")


def test_capture_safe_follows_the_kernel_path(monkeypatch):
    assert swcfa.capture_safe() == swcfa.triton_available()
    monkeypatch.setattr(swcfa, "triton_available", lambda: False)  # CUDA would run the twin
    assert swcfa.capture_safe() is False


# -- PyTorch twin -----------------------------------------------------------------------------


# fp32/fp16: the same ops in the same order, so bit-exact. fp64: the official block rounds its
# logits and softmax to fp32 while the twin keeps fp64: an attention in fp32 operands with fp64 sums.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_twin_window_one_is_the_official_self_attention(dtype):
    q, k, v = random_qkv(5, 24, 16, dtype=dtype, seed=1, scale=2.0)
    legacy = qkv_attention_legacy(torch.cat([q, k, v], dim=1), num_heads=1)
    tol = 0.0
    if dtype == torch.float64:
        tol = attention_tolerance("float32", accumulate="float64", **attention_scales(q, k, v, 1, "shrink"))
    for boundary in swcfa.BOUNDARIES:
        out = swcfa.windowed_frame_attention_twin(q, k, v, 1, boundary=boundary)
        assert out.dtype == dtype
        assert_close_scaled(out, legacy, tol, boundary)


@pytest.mark.parametrize("frames,window,boundary", sorted(k for k in HAND_WINDOWS if k[0] >= 4))
def test_twin_matches_hand_built_windows(frames, window, boundary):
    """Tiny example (C=4, T=2): the twin against fp64 loops over the hand-written frame lists."""
    q, k, v = random_qkv(frames, 4, 2, dtype=torch.float64, seed=frames * 10 + window, scale=1.5)
    expected = naive_attention(q.numpy(), k.numpy(), v.numpy(), HAND_WINDOWS[(frames, window, boundary)])
    out = swcfa.windowed_frame_attention_twin(q, k, v, window, boundary=boundary)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)
    out32 = swcfa.windowed_frame_attention_twin(q.float(), k.float(), v.float(), window, boundary=boundary)
    # fp32 against fp64 truth: the fp32 attention's own error (the truth adds none)
    tol32 = attention_tolerance("float32", **attention_scales(q, k, v, window, boundary))
    assert_close_scaled(out32, torch.from_numpy(expected), tol32, "fp32")


def test_boundary_rules_differ_only_at_the_clip_ends():
    q, k, v = random_qkv(4, 4, 2, seed=7)
    outs = {b: swcfa.windowed_frame_attention_twin(q, k, v, 3, boundary=b) for b in swcfa.BOUNDARIES}
    # interior frames see the same frames under every rule; only the padding of the table differs
    tol = max(attention_tolerance("float32", **attention_scales(q, k, v, 3, b)) for b in swcfa.BOUNDARIES)
    for a, b in [("shrink", "shift"), ("shrink", "clamp"), ("shift", "clamp")]:
        assert_close_scaled(outs[a][1:3], outs[b][1:3], tol, f"{a} vs {b}")
        assert (outs[a][0] - outs[b][0]).abs().max() > 1e-3
        assert (outs[a][3] - outs[b][3]).abs().max() > 1e-3


def test_clamp_equals_shrink_with_double_weight_on_the_repeated_frame():
    """Independent check of `clamp`: a repeated frame is the same as adding log(2) to its logits."""
    q, k, v = random_qkv(4, 4, 2, dtype=torch.float64, seed=11)
    scale = 4**-0.5
    keys = torch.cat([k[0], k[1]], dim=1)  # frame 0 under shrink sees frames 0, 1
    values = torch.cat([v[0], v[1]], dim=1)
    logits = (q[0].T @ keys) * scale
    logits[:, :2] += math.log(2.0)  # frame 0's two tokens appear twice under clamp
    expected = values @ torch.softmax(logits, dim=-1).T
    out = swcfa.windowed_frame_attention_twin(q, k, v, 3, boundary="clamp")
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "args",
    [
        (torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(4, 8)),
        (torch.zeros(4, 8, 3), torch.zeros(4, 8, 2), torch.zeros(4, 8, 3)),
        (torch.zeros(4, 8, 3), torch.zeros(4, 8, 3, dtype=torch.float64), torch.zeros(4, 8, 3)),
        (torch.zeros(4, 8, 3, dtype=torch.int64),) * 3,
        (torch.zeros(0, 8, 3),) * 3,
    ],
    ids=["2d", "shape-mismatch", "dtype-mismatch", "integer", "empty"],
)
def test_bad_tensors_are_input_errors(args):
    with pytest.raises(InputError):
        swcfa.windowed_frame_attention(*args, 3, backend="twin")


def test_dispatch(monkeypatch):
    q, k, v = random_qkv(3, 8, 4)
    with pytest.raises(InputError, match="backend"):
        swcfa.windowed_frame_attention(q, k, v, 3, backend="cuda")
    # CPU without the interpreter: 'auto' runs the twin, 'triton' says what to do.
    monkeypatch.setattr(swcfa, "interpreting", lambda: False)
    torch.testing.assert_close(
        swcfa.windowed_frame_attention(q, k, v, 3), swcfa.windowed_frame_attention_twin(q, k, v, 3), rtol=0, atol=0
    )
    with pytest.raises(FveditError, match="TRITON_INTERPRET"):
        swcfa.windowed_frame_attention(q, k, v, 3, backend="triton")
    # Under the interpreter bfloat16 stays on the twin ('auto') or is refused ('triton').
    monkeypatch.setattr(swcfa, "interpreting", lambda: True)
    monkeypatch.setattr(swcfa, "windowed_frame_attention_triton", lambda *a, **kw: pytest.fail("kernel called"))
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    swcfa.windowed_frame_attention(qb, kb, vb, 3)
    monkeypatch.undo()
    monkeypatch.setattr(swcfa, "interpreting", lambda: True)
    with pytest.raises(InputError, match="bfloat16"):
        swcfa.windowed_frame_attention_triton(qb, kb, vb, 3)


# -- attention block -----------------------------------------------------------------------------


def random_block(channels: int, heads: int, seed: int) -> AttentionBlock:
    """An AttentionBlock with every parameter random (proj_out is zero at init, which would hide bugs)."""
    torch.manual_seed(seed)
    block = AttentionBlock(channels, num_heads=heads)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return block.eval()


@torch.no_grad()
def block_tolerance(block: AttentionBlock, x: torch.Tensor, window: int, boundary: str = "shrink") -> float:
    """Two fp32 evaluations of `attention_block_forward`: the attention's tolerance (worst head)
    carried through proj_out (an error e becomes <= e * max row sum |W|), proj_out's own C-term
    sums, and the residual add (one rounding of the output)."""
    frames, channels = x.shape[:2]
    heads = block.num_heads
    xf = x.reshape(frames, channels, -1)
    per_head = block.qkv(block.norm(xf)).reshape(frames, heads, 3 * channels // heads, -1)
    att_tol, outs = 0.0, []
    for h in range(heads):
        q, k, v = per_head[:, h].split(channels // heads, dim=1)
        att_tol = max(att_tol, attention_tolerance("float32", **attention_scales(q, k, v, window, boundary)))
        outs.append(swcfa.windowed_frame_attention_twin(q, k, v, window, boundary=boundary))
    proj = block.proj_out(torch.cat(outs, dim=1))
    proj_gain = block.proj_out.weight.abs().sum(dim=(1, 2)).max().item()
    return (
        att_tol * proj_gain
        + sum_tolerance(channels, proj.abs().max().item(), "float32")
        + SAFETY * unit_roundoff("float32") * (xf + proj).abs().max().item()
    )


@pytest.mark.parametrize("heads", [1, 2])
def test_block_window_one_equals_the_block(heads):
    block = random_block(32, heads, seed=heads)
    x = torch.randn(5, 32, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = block(x)
        for boundary in swcfa.BOUNDARIES:
            out = swcfa.attention_block_forward(block, x, 1, boundary=boundary, backend="twin")
            # the same ops, batched per head instead of over batch*heads
            assert_close_scaled(out, expected, block_tolerance(block, x, 1, boundary), boundary)


@pytest.mark.parametrize("boundary", swcfa.BOUNDARIES)
def test_block_window_three_mixes_only_neighbouring_frames(boundary):
    block = random_block(32, 1, seed=0)
    x = torch.randn(5, 32, 4, 4, generator=torch.Generator().manual_seed(6))
    bumped = x.clone()
    bumped[0] += torch.randn(32, 4, 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        base = swcfa.attention_block_forward(block, x, 3, boundary=boundary, backend="twin")
        moved = swcfa.attention_block_forward(block, bumped, 3, boundary=boundary, backend="twin")
        assert (base - block(x)).abs().max() > 1e-3  # the window does change the block's output
    change = (moved - base).flatten(1).abs().amax(dim=1)
    assert change[0] > 1e-3 and change[1] > 1e-3  # frame 1 sees frame 0 under every rule
    assert torch.all(change[2:] == 0)  # frames 2..4 never see frame 0 with w=3 and F=5


def test_block_rejects_wrong_channels():
    block = random_block(32, 1, seed=0)
    with pytest.raises(InputError, match="32"):
        swcfa.attention_block_forward(block, torch.zeros(3, 16, 4, 4), 3)


# -- Triton kernel under the interpreter (one subprocess) --------------------------------------------

# (frames, channels, tokens, window, boundary, dtype, scale). Covers: several query and key tiles
# (T=72 > 64), channel chunks with masking (C=80: BLOCK_C 64, BLOCK_D 128), odd C/T, even windows,
# large logits (scale 6: the online-softmax rescaling must hold), fp16.
INTERPRETER_CASES = [
    (3, 16, 9, 1, "shrink", "float32", 1.0),
    (4, 24, 16, 3, "shrink", "float32", 1.0),
    (5, 32, 9, 3, "shift", "float32", 1.0),
    (4, 16, 16, 3, "clamp", "float32", 1.0),
    (5, 24, 9, 2, "shrink", "float32", 1.0),
    (3, 16, 72, 3, "shrink", "float32", 1.0),
    (3, 80, 9, 3, "clamp", "float32", 1.0),
    (4, 16, 9, 3, "shift", "float32", 6.0),
    (3, 32, 16, 3, "shrink", "float16", 1.0),
    (4, 16, 9, 3, "clamp", "float16", 1.0),
    (5, 24, 16, 1, "shift", "float16", 1.0),
]
# The kernel does the reference's math in another order (tiled dots, online softmax) and, in fp16,
# rounds q*s, k*s and the unnormalised probabilities to fp16 before its fp32-accumulated dots. Its
# tolerance is `tolerances.attention_tolerance`: unit roundoff x (sqrt(C) max|logit| through the
# logits' sensitivity + sqrt(N keys) for the values) x the size of v, with the scales measured on
# the reference (fp64) in the subprocess by `attention_scales`.


def kernel_block_case() -> tuple[AttentionBlock, torch.Tensor]:
    """The attention block run through the kernel (rebuilt in the test process for its tolerance)."""
    return random_block(32, 1, seed=3), torch.randn(4, 32, 4, 4, generator=torch.Generator().manual_seed(9))


CACHE_SHAPE = (6, 16, 9, 3, "shrink")  # (frames, channels, tokens, window, boundary): in no case above
CACHE_OTHERS = [(7, 3, "shrink"), (6, 5, "shrink")]  # other frames / window: their own tables


def _table_matches(table, frames: int, window: int, boundary: str) -> bool:
    """A cached device table holds `window_table`'s entries (as int32 index and counts)."""
    index, valid = swcfa.window_table(frames, window, boundary)
    return table is not None and torch.equal(table.index, index.int()) and torch.equal(table.counts, valid.sum(1).int())


def _table_cache_report() -> dict:
    """Runs in the interpreter subprocess: the launcher's second call of a shape builds no table."""
    frames, channels, tokens, window, boundary = CACHE_SHAPE
    q, k, v = random_qkv(frames, channels, tokens, seed=5)
    before = len(swcfa._DEVICE_TABLES)
    first = swcfa.windowed_frame_attention_triton(q, k, v, window, boundary=boundary)
    table = swcfa._DEVICE_TABLES.get((frames, window, boundary, q.device))
    built_first = len(swcfa._DEVICE_TABLES) - before
    host_table, builder = swcfa.window_table, swcfa._build_device_table

    rebuilt = []

    def refuse(*args, **kwargs):
        rebuilt.append(args)
        raise RuntimeError("the second call of a shape built a window table")

    swcfa.window_table = swcfa._build_device_table = refuse
    try:
        second = swcfa.windowed_frame_attention_triton(q, k, v, window, boundary=boundary)
    except RuntimeError:
        second = torch.full_like(first, float("nan"))
    finally:
        swcfa.window_table, swcfa._build_device_table = host_table, builder
    ref = swcfa.windowed_frame_attention_twin(q, k, v, window, boundary=boundary)
    others = []
    for f, w, b in CACHE_OTHERS:
        qo, ko, vo = random_qkv(f, channels, tokens, seed=f + w)
        n = len(swcfa._DEVICE_TABLES)
        out = swcfa.windowed_frame_attention_triton(qo, ko, vo, w, boundary=b)
        others.append(
            {
                "built": len(swcfa._DEVICE_TABLES) - n,
                "table_matches": _table_matches(swcfa._DEVICE_TABLES.get((f, w, b, qo.device)), f, w, b),
                "error": (out - swcfa.windowed_frame_attention_twin(qo, ko, vo, w, boundary=b)).abs().max().item(),
                "scales": attention_scales(qo, ko, vo, w, b),
            }
        )
    return {
        "built_first": built_first,
        "rebuilt_on_second_call": bool(rebuilt),
        "same_table": table is not None and swcfa._DEVICE_TABLES.get((frames, window, boundary, q.device)) is table,
        "table_unchanged": _table_matches(table, frames, window, boundary),
        "repeat_identical": bool(torch.equal(first, second)),
        "error": (second - ref).abs().max().item(),
        "scales": attention_scales(q, k, v, window, boundary),
        "others": others,
    }


def _interpreter_main() -> None:
    """Runs in the subprocess (TRITON_INTERPRET=1 set before triton is imported); prints JSON."""
    report = {"interpreting": swcfa.interpreting(), "cases": []}
    for frames, channels, tokens, window, boundary, dtype, scale in INTERPRETER_CASES:
        seed = frames + channels + tokens
        q, k, v = random_qkv(frames, channels, tokens, getattr(torch, dtype), seed=seed, scale=scale)
        out = swcfa.windowed_frame_attention_triton(q, k, v, window, boundary=boundary)
        auto = swcfa.windowed_frame_attention(q, k, v, window, boundary=boundary)
        ref = swcfa.windowed_frame_attention_twin(q.float(), k.float(), v.float(), window, boundary=boundary)
        report["cases"].append(
            {
                "dtype": str(out.dtype),
                "error": (out.float() - ref).abs().max().item(),
                "auto_is_kernel": bool(torch.equal(auto, out)),
                "ref_size": ref.abs().max().item(),
                "scales": attention_scales(q, k, v, window, boundary),
            }
        )
    report["cache"] = _table_cache_report()
    # The block through the kernel: q, k, v arrive as strided views of the qkv conv output.
    block, x = kernel_block_case()
    with torch.no_grad():
        kernel = swcfa.attention_block_forward(block, x, 3, backend="triton")
        twin = swcfa.attention_block_forward(block, x, 3, backend="twin")
    report["block_error"] = (kernel - twin).abs().max().item()
    print("SWCFA-REPORT " + json.dumps(report))


# Compiled (not interpreted) to sm_90 PTX without a GPU: catches what only the real compiler
# rejects (dot shapes, layouts, shared memory) on machines that have no GPU.
COMPILE_CASES = [("float16", 512), ("bfloat16", 512), ("float32", 512), ("float16", 24), ("float32", 24)]
H100_SHARED_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90


def _compile_main() -> None:
    """Runs in a subprocess without TRITON_INTERPRET; prints JSON."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    swcfa._load_triton()
    kernel = swcfa._swcfa_forward
    short = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
    report = []
    for dtype, channels in COMPILE_CASES:
        tiles = swcfa.kernel_tiles(channels, getattr(torch, dtype))
        # q, k, v, out; index, count; 12 strides, channels, tokens, max_slots; scale; 4 tile sizes.
        types = [f"*{short[dtype]}"] * 4 + ["*i32"] * 2 + ["i32"] * 15 + ["fp32"] + ["constexpr"] * 4
        constexprs = {name: tiles[name] for name in ("BLOCK_M", "BLOCK_N", "BLOCK_C", "BLOCK_D")}
        source = ASTSource(kernel, dict(zip(kernel.arg_names, types, strict=True)), constexprs=constexprs)
        options = {"num_warps": tiles["num_warps"], "num_stages": tiles["num_stages"]}
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        ptx = compiled.asm["ptx"]
        report.append({"entry": ".entry" in ptx, "mma": ptx.count("mma."), "shared": compiled.metadata.shared})
    print("SWCFA-REPORT " + json.dumps(report))


@pytest.fixture(scope="module")
def subprocess_reports() -> dict:
    """Run the interpreter cases and the sm_90 compile side by side (two processes, two cores)."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": path}
    jobs = {"interpreter": dict(env, TRITON_INTERPRET="1"), "compile": env}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import test_kernel_swcfa as m; m._{name}_main()"],
            env=job_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, job_env in jobs.items()
    }  # fmt: skip
    reports = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} subprocess failed:\n{err[-3000:]}"
        line = next(l for l in out.splitlines() if l.startswith("SWCFA-REPORT "))
        reports[name] = json.loads(line.removeprefix("SWCFA-REPORT "))
    return reports


@pytest.fixture(scope="module")
def interpreter_report(subprocess_reports) -> dict:
    return subprocess_reports["interpreter"]


@pytest.mark.parametrize("case", range(len(COMPILE_CASES)), ids=lambda i: "-".join(map(str, COMPILE_CASES[i])))
def test_kernel_compiles_for_sm90(subprocess_reports, case):
    dtype, channels = COMPILE_CASES[case]
    result = subprocess_reports["compile"][case]
    assert result["entry"]
    assert 0 < result["shared"] <= H100_SHARED_LIMIT, result
    if dtype != "float32":
        assert result["mma"] > 0, "fp16/bf16 dots should use tensor-core mma instructions"


def test_interpreter_is_active_in_the_subprocess(interpreter_report):
    assert interpreter_report["interpreting"] is True


def case_id(i: int) -> str:
    return "-".join(map(str, INTERPRETER_CASES[i][:6]))


@pytest.mark.parametrize("case", range(len(INTERPRETER_CASES)), ids=case_id)
def test_triton_kernel_matches_twin_under_interpreter(interpreter_report, case):
    dtype = INTERPRETER_CASES[case][5]
    result = interpreter_report["cases"][case]
    assert result["dtype"] == f"torch.{dtype}"
    assert result["ref_size"] > 0.1  # a non-trivial output
    scales = result["scales"]
    tol = attention_tolerance(dtype, **scales)
    assert result["error"] <= tol, (
        f"max error {result['error']:.3g} > tolerance {tol:.3g} (unit roundoff of {dtype} x logits and values): {scales}"
    )
    assert result["auto_is_kernel"]  # 'auto' runs the kernel under the interpreter


def test_launcher_reuses_its_device_table(interpreter_report):
    """Second call of a shape: no table built (the builders raise if called), same output, which
    matches the twin; another frame count or window gets its own, correct, table."""
    cache = interpreter_report["cache"]
    assert cache["built_first"] == 1 and not cache["rebuilt_on_second_call"]
    assert cache["same_table"] and cache["table_unchanged"]
    assert cache["repeat_identical"]
    assert cache["error"] <= attention_tolerance("float32", **cache["scales"]), cache
    for other in cache["others"]:
        assert other["built"] == 1 and other["table_matches"], other
        assert other["error"] <= attention_tolerance("float32", **other["scales"]), other


def test_block_through_triton_kernel_matches_twin(interpreter_report):
    block, x = kernel_block_case()
    tol = block_tolerance(block, x, 3)
    assert interpreter_report["block_error"] <= tol, (interpreter_report["block_error"], tol)


# -- Triton kernel on a GPU -------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("boundary", swcfa.BOUNDARIES)
def test_triton_kernel_on_cuda_matches_twin(dtype, boundary):
    """dva256 attention shapes: 512 channels at 16x16 (256 tokens) and 8x8 (64 tokens)."""
    for frames, tokens in [(6, 256), (5, 64)]:
        q, k, v = (t.cuda() for t in random_qkv(frames, 512, tokens, dtype, seed=tokens))
        out = swcfa.windowed_frame_attention(q, k, v, 3, boundary=boundary)
        ref = swcfa.windowed_frame_attention_twin(q.float(), k.float(), v.float(), 3, boundary=boundary)
        assert out.dtype == dtype
        # same scale as the interpreter cases: unit roundoff x logits and values of these inputs
        scales = attention_scales(q, k, v, 3, boundary)
        assert_close_scaled(out.float(), ref, attention_tolerance(dtype, **scales), f"{frames}x{tokens}", scale=str(scales))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_triton_kernel_is_capturable_in_a_cuda_graph(dtype):
    """After one eager call (Triton JIT, the window table), the launcher captures and replays."""
    q, k, v = (t.cuda() for t in random_qkv(6, 512, 64, dtype, seed=2))
    swcfa.windowed_frame_attention(q, k, v, 3)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = swcfa.windowed_frame_attention(q, k, v, 3)
    for t, new in zip((q, k, v), random_qkv(6, 512, 64, dtype, seed=3), strict=True):
        t.copy_(new)  # replay reads the static inputs' new contents
    graph.replay()
    torch.cuda.synchronize()
    ref = swcfa.windowed_frame_attention_twin(q.float(), k.float(), v.float(), 3)
    scales = attention_scales(q, k, v, 3, "shrink")
    assert_close_scaled(out.float(), ref, attention_tolerance(dtype, **scales), "replay", scale=str(scales))
