"""Sliding-window cross-frame attention (DiffFERV's SWCFA, Eq. 6): Triton kernel and PyTorch twin.

The official DVA `AttentionBlock` lets every frame attend to itself only. SWCFA keeps the
block's weights and lets the queries of frame i attend to all tokens of the frames in a
window around i, which ties neighbouring frames together during editing. Tensors use the
legacy layout of `fvedit.models.unet.qkv_attention_legacy`: q, k, v are [F, C, T] with the
frames of one clip along the batch axis in video order, one head of C channels, T tokens.
Numerics follow the official block: q and k are each scaled by C^-1/4 before the product,
the softmax runs in fp32.

Window rule. A window of w frames reaches `w // 2` frames back and `(w - 1) // 2` frames
forward, so odd w is symmetric (w=3: i-1, i, i+1) and even w leans to the past (w=2: i-1, i;
w=4: i-2 .. i+1). Eq. 6 writes the range as max(i - w/2, 1) .. min(i + w/2, m), which only
reads as w frames for odd w; the even case is our definition. At the ends of the clip:

* ``shrink`` (default, Eq. 6's max/min clamp of the range): frames that fall off the clip
  are dropped, so the first and last frame see fewer frames (w=3: 2 instead of 3). It is the
  paper's formula read literally, weighs no frame twice, and keeps each edge frame's window
  centred on the frame itself.
* ``shift``: the window keeps min(w, F) frames by sliding inward (frame 0 with w=3 sees 0, 1, 2).
* ``clamp``: out-of-range indices are clamped to the edge frame and the K/V are physically
  concatenated (Tune-A-Video style), so the edge frame is counted twice: its keys get
  double weight in the softmax. Not the same as shrink.

Chunking. The window only ever sees the frames that are passed in: a caller that splits a
clip into batches must give each batch its context frames (see `plan_chunks`) or pass the
whole clip, else the batch edges are treated as clip edges.

Window table: the kernel reads its window table from the device. `device_window_table` builds it
once per (frames, window, boundary, device) and caches it, so a call after the first copies
nothing host-to-device and never syncs, and the launcher can be captured in a CUDA graph
(`capture_safe`). The twin builds its own table on every call, on purpose: the oracle shares no
cached state with the kernel it checks.

Backends: `windowed_frame_attention_twin` is the plain-PyTorch reference;
`windowed_frame_attention_triton` is a flash-attention style kernel (online softmax in fp32,
one program per (frame, query tile), looping over the window's frames and their key tiles,
QK^T tiled over C so a 512-channel head fits). `windowed_frame_attention` picks the kernel for
CUDA tensors (or CPU tensors under TRITON_INTERPRET=1) and the twin otherwise. Triton's
interpreter mishandles bf16 dots, so on the CPU bf16 always takes the twin.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from fvedit.errors import FveditError, InputError

# Triton is optional (`fvedit[triton]`) and imported on first use only: the first `import
# triton` in a process fixes compiled vs interpreted mode, so importing this module must not.
triton = None
tl = None
_swcfa_forward = None

BOUNDARIES = ("shrink", "shift", "clamp")
BACKENDS = ("auto", "twin", "triton")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# -- which frames each frame sees --------------------------------------------------------


def window_extent(window: int) -> tuple[int, int]:
    """(frames before, frames after) the query frame; odd windows are symmetric."""
    _check_window(window)
    return window // 2, (window - 1) // 2


def window_indices(num_frames: int, window: int, boundary: str = "shrink") -> list[list[int]]:
    """For each frame 0..num_frames-1, the frame indices whose K/V it attends to, in order.

    `clamp` may list the edge frame twice (it then counts twice in the softmax).
    """
    if not isinstance(num_frames, int) or num_frames < 1:
        raise InputError(f"num_frames must be a positive integer, got {num_frames!r}")
    _check_boundary(boundary)
    before, after = window_extent(window)
    last = num_frames - 1
    out: list[list[int]] = []
    for i in range(num_frames):
        if boundary == "shrink":
            frames = list(range(max(i - before, 0), min(i + after, last) + 1))
        elif boundary == "shift":
            size = min(window, num_frames)
            start = min(max(i - before, 0), num_frames - size)
            frames = list(range(start, start + size))
        else:  # clamp
            frames = [min(max(i + d, 0), last) for d in range(-before, after + 1)]
        out.append(frames)
    return out


@dataclass(frozen=True)
class FrameChunk:
    """Pass frames [start, stop) to the attention; keep the outputs of [keep_start, keep_stop).

    All indices are clip indices. The extra frames on either side are context: their own
    outputs are wrong (their windows are cut by the chunk edge) and must be dropped.
    """

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def plan_chunks(num_frames: int, window: int, max_frames: int, boundary: str = "shrink") -> list[FrameChunk]:
    """Split a clip into chunks of at most `max_frames` frames whose kept outputs equal the whole clip's.

    Each chunk spans exactly the windows of the frames it keeps, so every kept frame sees the
    same frames as in the whole clip; the kept ranges tile 0..num_frames-1 in order.
    """
    windows = window_indices(num_frames, window, boundary)
    if not isinstance(max_frames, int) or max_frames < min(window, num_frames):
        raise InputError(
            f"max_frames={max_frames!r} cannot hold one window of {window} frames: "
            f"use max_frames >= {min(window, num_frames)}"
        )
    chunks: list[FrameChunk] = []
    first = 0
    while first < num_frames:
        start = min(windows[first])  # window starts and ends never decrease with the frame index
        end = first + 1
        while end < num_frames and max(windows[end]) + 1 - start <= max_frames:
            end += 1
        chunks.append(FrameChunk(start, max(windows[end - 1]) + 1, first, end))
        first = end
    return chunks


def window_table(
    num_frames: int, window: int, boundary: str, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Window indices as a padded table: index [F, n_max] (int64) and valid [F, n_max] (bool).

    Padding slots (only `shrink` has them, at the clip ends) sit after the real ones and point
    at the query frame itself; `valid` marks them False so they are masked out.
    """
    windows = window_indices(num_frames, window, boundary)
    width = max(len(w) for w in windows)
    index = torch.tensor([w + [i] * (width - len(w)) for i, w in enumerate(windows)], dtype=torch.long)
    valid = torch.tensor([[True] * len(w) + [False] * (width - len(w)) for w in windows])
    return index.to(device), valid.to(device)


# -- the kernel's window table, built once per shape on the device --------------------------


@dataclass(frozen=True)
class DeviceWindowTable:
    """The kernel's view of `window_table` on one device. Shared by every call of the shape (and
    by any CUDA graph that captured one), so read-only by convention: never write into it."""

    index: Tensor  # [F, slots] int32, contiguous: source frames, padding after the real ones
    counts: Tensor  # [F] int32: how many slots of each row are real
    slots: int


# Never evicted: a captured CUDA graph holds these tables' device addresses but no reference to
# them, so freeing one would let the allocator hand its memory to something else under the graph.
# They are tiny (F * slots int32), and a run sees a handful of (frames, window, boundary) keys.
_DEVICE_TABLES: dict[tuple[int, int, str, torch.device], DeviceWindowTable] = {}


def _table_key(num_frames: int, window: int, boundary: str, device: torch.device | str) -> tuple:
    """Validated cache key; a CUDA device without an index means the current one (as tensors say)."""
    _check_window(window)  # before the lookup: True == 1 and 3.0 == 3 as dict keys
    _check_boundary(boundary)
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise InputError(f"num_frames must be a positive integer, got {num_frames!r}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return num_frames, window, boundary, device


def _build_device_table(num_frames: int, window: int, boundary: str, device: torch.device) -> DeviceWindowTable:
    """Build on the host and copy over: the one host-to-device copy (and sync) of this shape."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise FveditError(
            f"SWCFA: the window table for {num_frames} frames, window {window} ({boundary}) is first needed "
            "inside a CUDA graph capture, where it cannot be copied to the GPU; run one call of this shape "
            "before capturing (CudaGraphUNet's warm-ups do), or call device_window_table first"
        )
    index, valid = window_table(num_frames, window, boundary)
    counts = valid.sum(dim=1).to(torch.int32).to(device)
    return DeviceWindowTable(index.to(torch.int32).contiguous().to(device), counts, index.shape[1])


def device_window_table(
    num_frames: int, window: int, boundary: str = "shrink", device: torch.device | str = "cpu"
) -> DeviceWindowTable:
    """The kernel's window table for this shape on `device`: built the first time, then reused, so
    later calls make no host-to-device copy and no host sync (and can be captured in a CUDA graph)."""
    key = _table_key(num_frames, window, boundary, device)
    table = _DEVICE_TABLES.get(key)
    if table is None:  # two threads may both build; setdefault hands both the same one
        table = _DEVICE_TABLES.setdefault(key, _build_device_table(*key))
    return table


def capture_safe() -> bool:
    """Whether `windowed_frame_attention` on CUDA tensors can run inside a CUDA graph capture.

    True when Triton is installed: 'auto' then runs the kernel, whose launcher only looks up its
    cached device table (after one call of the shape outside the capture: CudaGraphUNet's
    warm-ups make it). Without Triton the twin runs, which builds its table on the host and
    syncs on every call, so a capture would fail.
    """
    return triton_available()


# -- PyTorch twin (the reference) ----------------------------------------------------------


def windowed_frame_attention_twin(q: Tensor, k: Tensor, v: Tensor, window: int, *, boundary: str = "shrink") -> Tensor:
    """[F, C, T] x3 -> [F, C, T]: gather each frame's window K/V and run plain softmax attention.

    With window=1 this is op-for-op `qkv_attention_legacy` with one head.
    """
    _check_qkv(q, k, v)
    frames, channels, tokens = q.shape
    index, valid = window_table(frames, window, boundary, q.device)
    slots = index.shape[1]
    scale = 1 / math.sqrt(math.sqrt(channels))
    # k[index]: [F, slots, C, T] -> [F, C, slots*T], the window's frames side by side as keys.
    k_win = k[index].permute(0, 2, 1, 3).reshape(frames, channels, slots * tokens)
    v_win = v[index].permute(0, 2, 1, 3).reshape(frames, channels, slots * tokens)
    weight = torch.einsum("bct,bcs->bts", q * scale, k_win * scale)
    if not bool(valid.all()):
        key_valid = valid.repeat_interleave(tokens, dim=1)  # [F, slots*T]
        weight = weight.masked_fill(~key_valid[:, None, :], float("-inf"))
    # Softmax in fp32 as the official block (fp64 inputs keep fp64, for exact tests).
    softmax_dtype = torch.promote_types(weight.dtype, torch.float32)
    weight = torch.softmax(weight.to(softmax_dtype), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v_win)


# -- Triton kernel --------------------------------------------------------------------------


def _swcfa_forward_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    index_ptr,  # [F, max_slots] int32: the window's source frames, padding after the real ones
    count_ptr,  # [F] int32: how many slots of each row are real
    stride_qf,
    stride_qc,
    stride_qt,
    stride_kf,
    stride_kc,
    stride_kt,
    stride_vf,
    stride_vc,
    stride_vt,
    stride_of,
    stride_oc,
    stride_ot,
    channels,
    tokens,
    max_slots,
    scale,
    BLOCK_M: tl.constexpr,  # query tokens per program
    BLOCK_N: tl.constexpr,  # key tokens per step
    BLOCK_C: tl.constexpr,  # channels per QK^T partial product
    BLOCK_D: tl.constexpr,  # all channels (power of two >= C) for the output accumulator
):
    """One program = one frame's tile of BLOCK_M queries against every key of its window."""
    frame = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < tokens
    d_ok = offs_d < channels
    dtype = q_ptr.dtype.element_ty
    q_frame = q_ptr + frame * stride_qf

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    count = tl.load(count_ptr + frame)
    for slot in range(0, count):
        source = tl.load(index_ptr + frame * max_slots + slot).to(tl.int64)
        k_frame = k_ptr + source * stride_kf
        v_frame = v_ptr + source * stride_vf
        for n0 in range(0, tokens, BLOCK_N):
            keys = n0 + offs_n
            n_ok = keys < tokens
            # scores[m, n] = sum_c (q[c, m] s)(k[c, n] s), accumulated over channel chunks in fp32;
            # q and k are scaled in their own dtype first, as the official block does.
            scores = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for c0 in range(0, channels, BLOCK_C):
                chans = c0 + offs_c
                c_ok = chans < channels
                q_tile = tl.load(
                    q_frame + chans[None, :] * stride_qc + offs_m[:, None] * stride_qt,
                    mask=m_ok[:, None] & c_ok[None, :],
                    other=0.0,
                )
                k_tile = tl.load(
                    k_frame + chans[:, None] * stride_kc + keys[None, :] * stride_kt,
                    mask=c_ok[:, None] & n_ok[None, :],
                    other=0.0,
                )
                q_tile = (q_tile.to(tl.float32) * scale).to(dtype)
                k_tile = (k_tile.to(tl.float32) * scale).to(dtype)
                scores = tl.dot(q_tile, k_tile, scores, input_precision="ieee")
            scores = tl.where(n_ok[None, :], scores, float("-inf"))
            # Online softmax: rescale what was accumulated so far to the new running maximum.
            new_max = tl.maximum(row_max, tl.max(scores, 1))
            correction = tl.exp(row_max - new_max)
            probs = tl.exp(scores - new_max[:, None])
            row_sum = row_sum * correction + tl.sum(probs, 1)
            v_tile = tl.load(
                v_frame + offs_d[None, :] * stride_vc + keys[:, None] * stride_vt,
                mask=n_ok[:, None] & d_ok[None, :],
                other=0.0,
            )
            acc = acc * correction[:, None]
            acc = tl.dot(probs.to(dtype), v_tile, acc, input_precision="ieee")
            row_max = new_max

    out = acc / row_sum[:, None]
    tl.store(
        out_ptr + frame * stride_of + offs_d[None, :] * stride_oc + offs_m[:, None] * stride_ot,
        out.to(dtype),
        mask=m_ok[:, None] & d_ok[None, :],
    )


def triton_available() -> bool:
    """Whether Triton can be imported (without importing it)."""
    return triton is not None or importlib.util.find_spec("triton") is not None


def _load_triton() -> None:
    """Import Triton and wrap the kernel, once."""
    global triton, tl, _swcfa_forward
    if _swcfa_forward is not None:
        return
    if not triton_available():
        raise FveditError("Triton is not installed: install fvedit[triton] or use the PyTorch twin (backend='twin')")
    import triton as triton_module
    import triton.language as tl_module

    triton, tl = triton_module, tl_module  # the kernel body resolves `tl` from this module's globals
    _swcfa_forward = triton.jit(_swcfa_forward_kernel)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU with NumPy (TRITON_INTERPRET=1).

    Triton fixes that mode for its own library functions (tl.max, tl.sum, ...) when it is
    first imported, so the variable must be set before that, i.e. before Python starts;
    setting it later leaves the compiled mode in place and this stays False.
    """
    wanted = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")
    if not wanted and "triton" not in sys.modules:
        return False  # answer without importing triton (which would fix its mode)
    if not triton_available():
        return False
    _load_triton()
    return all(type(fn).__name__ == "InterpretedFunction" for fn in (tl.max, tl.sum, _swcfa_forward))


def kernel_tiles(channels: int, dtype: torch.dtype) -> dict[str, int]:
    """Tile sizes and launch options.

    The output accumulator keeps all C channels of BLOCK_M queries in fp32 registers, so a
    512-wide head (dva256) gets small query tiles and 8 warps. fp32 runs its dots at IEEE
    precision on CUDA cores, which costs more registers than the fp16/bf16 tensor-core path.
    Chosen from an offline sm_90 compile (Triton -> PTX -> ptxas -v) so that no tile spills
    (at most 24 bytes of stack): fp16/bf16 C=512 uses 203 registers and 35 KB shared memory,
    fp32 C=512 173 registers and 68 KB. Not yet timed on a GPU.
    """
    block_d = max(16, 1 << (channels - 1).bit_length())
    wide = block_d >= 256
    if dtype == torch.float32:
        tiles = dict(BLOCK_M=16 if wide else 32, BLOCK_N=32, BLOCK_C=min(block_d, 32))
        warps = 8 if block_d >= 128 else 4
    else:
        tiles = dict(BLOCK_M=32, BLOCK_N=32 if wide else 64, BLOCK_C=min(block_d, 64))
        warps = 8 if wide else 4
    return dict(**tiles, BLOCK_D=block_d, num_warps=warps, num_stages=2)


def windowed_frame_attention_triton(
    q: Tensor, k: Tensor, v: Tensor, window: int, *, boundary: str = "shrink"
) -> Tensor:
    """Launch the Triton kernel: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1.

    Host work per call is argument checks and a cache lookup: the window table lives on the device
    (`device_window_table`), so after the first call of a shape the launcher is capturable.
    """
    _check_qkv(q, k, v)
    if not triton_available():
        raise FveditError("Triton is not installed: install fvedit[triton] or use the PyTorch twin (backend='twin')")
    if q.dtype not in KERNEL_DTYPES:
        raise InputError(f"the SWCFA kernel takes float16, bfloat16 or float32 tensors, got {q.dtype}")
    if q.device.type != "cuda" and q.dtype == torch.bfloat16 and interpreting():
        raise InputError(
            "the Triton interpreter cannot run this kernel in bfloat16 (its tl.dot mishandles it): use float16/float32"
        )
    if q.device.type != "cuda" and not interpreting():
        raise FveditError(
            f"the SWCFA Triton kernel needs CUDA tensors (got {q.device}); to run it on the CPU, "
            "start Python with TRITON_INTERPRET=1 (it must be set before triton is imported)"
        )
    _load_triton()
    frames, channels, tokens = q.shape
    table = device_window_table(frames, window, boundary, q.device)  # cached: no copy, no sync
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # views such as a qkv split need no copy
    tiles = kernel_tiles(channels, q.dtype)
    grid = (frames, triton.cdiv(tokens, tiles["BLOCK_M"]))
    _swcfa_forward[grid](
        q, k, v, out, table.index, table.counts,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        channels, tokens, table.slots, 1 / math.sqrt(math.sqrt(channels)),
        **tiles,
    )  # fmt: skip
    return out


# -- dispatch and the attention block -------------------------------------------------------


def windowed_frame_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, *, boundary: str = "shrink", backend: str = "auto"
) -> Tensor:
    """[F, C, T] x3 -> [F, C, T]. Frame i's queries attend to every token of the frames in its window.

    backend: 'auto' uses the Triton kernel for CUDA tensors (or under TRITON_INTERPRET=1) when
    Triton is installed and the dtype is supported, else the twin; 'twin' / 'triton' force one.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown SWCFA backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        use_kernel = (
            isinstance(q, Tensor)
            and q.dtype in KERNEL_DTYPES
            and (q.device.type == "cuda" or (interpreting() and q.dtype != torch.bfloat16))
        )
        backend = "triton" if use_kernel and triton_available() else "twin"
    if backend == "triton":
        return windowed_frame_attention_triton(q, k, v, window, boundary=boundary)
    return windowed_frame_attention_twin(q, k, v, window, boundary=boundary)


def attention_block_forward(
    block: torch.nn.Module, x: Tensor, window: int, *, boundary: str = "shrink", backend: str = "auto"
) -> Tensor:
    """Run a `fvedit.models.unet.AttentionBlock` with SWCFA in place of its self-attention.

    x is [F, C, *spatial] with the frames of one clip (or one planned chunk) in video order.
    Same steps as `AttentionBlock.forward` (norm, qkv conv, attention, proj_out, residual);
    with several heads each head gets its own windowed attention. window=1 equals block(x).
    """
    if x.dim() < 3 or x.shape[1] != block.qkv.in_channels:
        raise InputError(
            f"attention block input must be [frames, {block.qkv.in_channels}, ...], got {tuple(x.shape)}"
        )
    frames, channels, *spatial = x.shape
    heads = block.num_heads
    xf = x.reshape(frames, channels, -1)
    tokens = xf.shape[-1]
    qkv = block.qkv(block.norm(xf))
    # Legacy split: [F, 3*H*ch, T] -> per head [F, 3*ch, T] -> q, k, v of [F, ch, T].
    per_head = qkv.reshape(frames, heads, 3 * channels // heads, tokens)
    outs = []
    for h in range(heads):
        q, k, v = per_head[:, h].split(channels // heads, dim=1)
        outs.append(windowed_frame_attention(q, k, v, window, boundary=boundary, backend=backend))
    a = torch.stack(outs, dim=1).reshape(frames, channels, tokens)
    return (xf + block.proj_out(a)).reshape(frames, channels, *spatial)


# -- argument checks ----------------------------------------------------------------------


def _check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise InputError(f"SWCFA window must be a positive integer number of frames, got {window!r}")


def _check_boundary(boundary: str) -> None:
    if boundary not in BOUNDARIES:
        raise InputError(f"unknown SWCFA boundary rule {boundary!r}; choose one of {', '.join(BOUNDARIES)}")


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise InputError(f"SWCFA {name} must be a [frames, channels, tokens] tensor, got {got}")
    if not (q.shape == k.shape == v.shape):
        shapes = ", ".join(str(tuple(t.shape)) for t in (q, k, v))
        raise InputError(f"SWCFA q, k, v must share one shape, got {shapes}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise InputError("SWCFA q, k, v must share one dtype and one device")
    if not q.is_floating_point():
        raise InputError(f"SWCFA takes floating-point tensors, got {q.dtype}")
    if q.numel() == 0:
        raise InputError(f"SWCFA got an empty tensor of shape {tuple(q.shape)}")
