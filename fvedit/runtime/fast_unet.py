"""The "torch" backend: the reference UNet's own modules run fast (low precision, fused AdaGN, SDPA,
channels_last, one CUDA graph per static batch).

Nothing here changes or copies the model beyond a dtype cast: `FastUNet` walks the same module
tree as `fvedit.models.unet.UNet.forward` (`walk_unet`) and reads every weight from the same
modules. What differs from the reference, and why:

- convolutions run in fp16/bf16 (the FLOPs); the time MLP, the per-block AdaGN Linears and every
  GroupNorm's statistics and affine stay fp32 (tiny, and the sinusoidal embedding of t ~ 999 has
  no fp16 resolution). GroupNorm + AdaGN + SiLU is one fused op (`group_norm_silu`: Triton on
  CUDA, its PyTorch twin elsewhere), which also keeps fp32 through the multiply-add;
- attention uses `F.scaled_dot_product_attention` (same math: q.k / sqrt(C) equals the
  official (q C^-1/4).(k C^-1/4); SDPA kernels accumulate the softmax in fp32 but round the
  probabilities to fp16 before P.V, the reference rounds them too: agreement ~1e-3 relative)
  or, with temporal_window > 1, the sliding-window cross-frame attention;
- activations are channels_last on CUDA (cuDNN's fast NHWC convolutions), and cuDNN autotunes
  its convolution algorithms (cudnn.benchmark: the shapes of a run are static);
- on CUDA each static input shape is captured once as a CUDA graph and replayed: at batch 1 the
  eager UNet is launch-bound (~1000 kernels per call);
- with compile=True the same walk runs through torch.compile (inductor), with the PyTorch twin of
  GroupNorm+SiLU in place of the Triton kernels, so that inductor fuses GroupNorm, SiLU, the
  residual add and the skip concatenation itself (the memory-bound 35-40 % of a call).

On a CPU the same code runs in fp32 (or bf16 when asked) with the PyTorch twins, which is what the
tests compare against the reference.
"""

from __future__ import annotations

import threading
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvedit.errors import InputError
from fvedit.models.unet import AttentionBlock, ResBlock, UNet, timestep_embedding
from fvedit.runtime.device import cudnn_benchmark as cudnn_benchmark_scope
from fvedit.runtime.kernels.adagn import group_norm_silu, group_norm_silu_reference
from fvedit.runtime.kernels.swcfa import windowed_frame_attention

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GN_BACKENDS = ("auto", "twin")
# inductor's "default" mode: no CUDA graphs of its own ("reduce-overhead" and "max-autotune" add
# cudagraph trees, which cannot run inside our capture), no minutes-long autotuning of the convs
# (they stay cuDNN calls; the gain sought is pointwise fusion). CudaGraphUNet captures the result.
COMPILE_MODE = "default"

ResBlockFn = Callable[[ResBlock, Tensor, Tensor, Tensor, "Tensor | None"], Tensor]
AttentionFn = Callable[[AttentionBlock, Tensor], Tensor]
LayerFn = Callable[[nn.Module, Tensor], Tensor]


def walk_unet(
    unet: UNet, h: Tensor, emb: Tensor, cond: Tensor, *, resblock: ResBlockFn, attention: AttentionFn, layer: LayerFn
) -> Tensor:
    """The UNet body with the official skip bookkeeping; each block kind runs through a callback.

    Returns the features before the `out` head. `UNet.forward` is this walk with every module
    called as itself; the fast path and the windowed reference pass their own callbacks.
    """

    def run(seq: nn.Sequential, h: Tensor, lateral: Tensor | None) -> Tensor:
        for mod in seq:
            if isinstance(mod, ResBlock):
                h = resblock(mod, h, emb, cond, lateral if mod.has_lateral else None)
            elif isinstance(mod, AttentionBlock):
                h = attention(mod, h)
            else:
                h = layer(mod, h)
        return h

    skips = []
    for block in unet.input_blocks:
        h = run(block, h, None)
        skips.append(h)
    h = run(unet.middle_block, h, None)
    for block in unet.output_blocks:
        h = run(block, h, skips.pop())
    return h


def broadcast_inputs(x: Tensor, t: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
    """t as [B] and cond as [B, D] (a scalar t or a single cond serve the whole batch)."""
    b = x.shape[0]
    t = t.reshape(-1)
    if t.shape[0] == 1 and b > 1:
        t = t.expand(b)
    if cond.shape[0] == 1 and b > 1:
        cond = cond.expand(b, -1)
    return t, cond


class FastUNet:
    """eps = FastUNet(x, t, cond) with the reference `unet`'s weights, in `dtype`, eager.

    Weight tensors are looked up per module: convolution weights are cast once to `dtype` (and
    channels_last on CUDA), everything else is used as stored (moved to `device` if needed).
    gn_backend "auto" runs GroupNorm+SiLU through `group_norm_silu` (Triton on CUDA), "twin" through
    its PyTorch twin everywhere: what torch.compile can trace and fuse.
    """

    def __init__(
        self,
        unet: UNet,
        device: torch.device,
        dtype: torch.dtype = torch.float16,
        *,
        temporal_window: int = 1,
        boundary: str = "shrink",
        channels_last: bool | None = None,
        gn_backend: str = "auto",
    ):
        if gn_backend not in GN_BACKENDS:
            raise InputError(f"unknown GroupNorm backend {gn_backend!r}: use one of {', '.join(GN_BACKENDS)}")
        if dtype not in DTYPES.values():
            raise InputError(f"FastUNet runs in float32, float16 or bfloat16, not {dtype}")
        if temporal_window > 1 and any(m.num_heads != 1 for m in unet.modules() if isinstance(m, AttentionBlock)):
            raise InputError("temporal_window > 1 needs single-head attention blocks (as DVA's)")
        self.unet = unet
        self.device = torch.device(device)
        self.dtype = dtype
        self.temporal_window = temporal_window
        self.boundary = boundary
        self.gn_backend = gn_backend
        self.channels_last = (self.device.type == "cuda") if channels_last is None else channels_last
        self._params = self._cast_params()

    @torch.no_grad()
    def _cast_params(self) -> dict[nn.Module, tuple[Tensor, Tensor | None]]:
        params: dict[nn.Module, tuple[Tensor, Tensor | None]] = {}
        for mod in self.unet.modules():
            if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                w = mod.weight.to(self.device, self.dtype)
                if self.channels_last and w.dim() == 4:
                    w = w.contiguous(memory_format=torch.channels_last)
                b = None if mod.bias is None else mod.bias.to(self.device, self.dtype)
                params[mod] = (w, b)
            elif isinstance(mod, (nn.Linear, nn.GroupNorm)):  # stay fp32: tiny, precision-sensitive
                b = None if mod.bias is None else mod.bias.to(self.device, torch.float32)
                params[mod] = (mod.weight.to(self.device, torch.float32), b)
        return params

    # -- one op per module kind ---------------------------------------------------------------

    def _conv(self, mod: nn.Module, h: Tensor) -> Tensor:
        w, b = self._params[mod]
        if isinstance(mod, nn.Conv2d):
            return F.conv2d(h, w, b, mod.stride, mod.padding, mod.dilation, mod.groups)
        return F.conv1d(h, w, b, mod.stride, mod.padding, mod.dilation, mod.groups)

    def _linear(self, mod: nn.Linear, v: Tensor) -> Tensor:
        w, b = self._params[mod]
        return F.linear(v, w, b)

    def _gn(self, gn: nn.GroupNorm, h: Tensor, scale=None, shift=None, act: bool = True) -> Tensor:
        w, b = self._params[gn]
        op = group_norm_silu_reference if self.gn_backend == "twin" else group_norm_silu
        return op(h, w, b, gn.num_groups, gn.eps, scale=scale, shift=shift, act=act)

    def _layer(self, mod: nn.Module, h: Tensor) -> Tensor:
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            return self._conv(mod, h)
        return mod(h)

    def _resblock(self, blk: ResBlock, x: Tensor, emb_act: Tensor, cond_act: Tensor, lateral: Tensor | None) -> Tensor:
        """`ResBlock.forward` with the three GN(+AdaGN)+SiLU sites fused; Dropout is identity."""
        if lateral is not None:
            x = torch.cat([x, lateral], dim=1)
        h = self._gn(blk.in_layers[0], x)
        if blk.resample != "none":
            h, x = blk.h_upd(h), blk.x_upd(x)
        h = self._conv(blk.in_layers[2], h)
        t_scale, t_shift = self._linear(blk.emb_layers[1], emb_act).chunk(2, dim=1)
        z_scale, z_shift = self._linear(blk.cond_emb_layers[1], cond_act).chunk(2, dim=1)
        o = blk.out_layers
        h = self._gn(o[0], h, t_scale, t_shift)  # time AdaGN + SiLU
        h = self._conv(o[2], h)
        h = self._gn(o[3], h, z_scale, z_shift)  # identity AdaGN + SiLU
        h = self._conv(o[6], h)
        skip = x if isinstance(blk.skip_connection, nn.Identity) else self._conv(blk.skip_connection, x)
        return skip + h

    def _attention(self, blk: AttentionBlock, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        n = self._gn(blk.norm, x, act=False).reshape(b, c, height * width)
        qkv = self._conv(blk.qkv, n)  # [B, 3C, T]
        heads = blk.num_heads
        ch = c // heads
        q, k, v = qkv.reshape(b * heads, 3 * ch, height * width).split(ch, dim=1)  # legacy split
        if self.temporal_window > 1:
            a = windowed_frame_attention(q, k, v, self.temporal_window, boundary=self.boundary)
        else:
            # SDPA's fused CUDA kernels want [N, heads, T, C] with unit stride in C; its default
            # scale 1/sqrt(C) equals the reference's (C^-1/4)^2
            q, k, v = (u.transpose(1, 2).unsqueeze(1).contiguous() for u in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2)
        out = x.reshape(b, c, -1) + self._conv(blk.proj_out, a.reshape(b, c, -1))
        out = out.reshape(b, c, height, width)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    # -- the whole network -----------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """x [B,3,S,S] float32, t [B] (or one value), cond [B or 1, D] -> eps [B,3,S,S] float32."""
        return self.forward(x, t, cond)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """`__call__` without its no_grad wrapper: the function torch.compile traces."""
        unet = self.unet
        t, cond = broadcast_inputs(x, t, cond)
        te = unet.time_embed.time_embed
        emb = timestep_embedding(t.float(), unet.cfg.model_channels)
        emb = self._linear(te[2], F.silu(self._linear(te[0], emb)))
        # every ResBlock applies SiLU to emb and cond before its Linear: do it once
        emb_act, cond_act = F.silu(emb), F.silu(cond.float())
        h = x.to(self.dtype)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        h = walk_unet(unet, h, emb_act, cond_act, resblock=self._resblock, attention=self._attention, layer=self._layer)
        h = self._gn(unet.out[0], h)
        return self._conv(unet.out[2], h).float().contiguous()


class CompiledUNet:
    """A FastUNet (PyTorch GroupNorm twin) through torch.compile: one static-shape inductor graph.

    dynamic=False: every call of a run has one shape, and a static graph fuses best; another batch
    size compiles again (up to dynamo's cache_size_limit, then eager). fullgraph=True: a graph
    break would split the fusions silently, so it is an error instead. Compilation happens on the
    first call of each shape: inside CudaGraphUNet's warm-ups, never inside a capture.
    """

    def __init__(self, fast: FastUNet, mode: str = COMPILE_MODE):
        if fast.gn_backend != "twin":
            raise InputError("torch.compile needs FastUNet(gn_backend='twin'): inductor cannot fuse the Triton kernels")
        self.fast = fast
        self.dtype = fast.dtype
        self.mode = mode
        self._fn = torch.compile(fast.forward, dynamic=False, fullgraph=True, mode=mode)

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self._fn(x, t, cond)


def use_cuda_graphs(device: torch.device, requested: bool | None = None) -> bool:
    """The TorchBackend default: CUDA graphs on CUDA, for any temporal_window (the SWCFA launcher
    keeps its window table on the device, so it is capturable); asking for them elsewhere is an error."""
    if requested is None:
        return device.type == "cuda"
    if requested and device.type != "cuda":
        raise InputError("CUDA graphs need a CUDA device")
    return bool(requested)


def use_cudnn_benchmark(device: torch.device, requested: bool | None = None) -> bool:
    """cudnn.benchmark for the torch backend: on by default on CUDA (static shapes, so autotuning
    pays off from the second call on); on a CPU there is no cuDNN, so always off."""
    return device.type == "cuda" and (True if requested is None else bool(requested))


def check_compilable(temporal_window: int) -> None:
    """InputError for what compile=True cannot do (before any compilation starts)."""
    if temporal_window > 1:
        raise InputError(
            f"compile=True runs per-frame attention only: --temporal-window {temporal_window} needs the eager "
            "torch backend (the SWCFA kernel and its table are not traceable in one graph)"
        )
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise InputError("compile=True: torch.compile is not supported on this Python/platform; run without it")


class CudaGraphUNet:
    """Replays one CUDA graph per static (batch, height, width, dtype); eager beyond `max_graphs`.

    Capture follows the usual rules: static input buffers filled by copy before each replay,
    three warm-up runs on a side stream first (Triton JIT, cuDNN heuristics and allocator growth
    must not land in the capture), one memory pool shared by all graphs of this runner, and the
    output copied out after replay because it lives in graph memory the next replay overwrites.
    Graphs are replayed one at a time (a lock), which is what makes sharing the pool safe.
    """

    def __init__(self, forward: FastUNet | CompiledUNet, max_graphs: int = 8, warmup: int = 3):
        self.forward = forward
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor, Tensor]] = {}
        self._failed: set[tuple] = set()
        self._pool = None
        self._lock = threading.Lock()

    @property
    def captured(self) -> list[tuple]:
        """Keys (batch, height, width, dtype) that have a graph."""
        return list(self._graphs)

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        t, cond = broadcast_inputs(x, t, cond)
        key = (x.shape[0], x.shape[2], x.shape[3], self.forward.dtype)
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                if key in self._failed or len(self._graphs) >= self.max_graphs:
                    return self.forward(x, t, cond)
                entry = self._capture(key, x, t, cond)
                if entry is None:
                    return self.forward(x, t, cond)
            graph, sx, st, sc, out = entry
            sx.copy_(x)
            st.copy_(t)
            sc.copy_(cond)
            graph.replay()
            return out.clone()

    def _capture(self, key: tuple, x: Tensor, t: Tensor, cond: Tensor):
        sx, st, sc = x.float().clone(), t.float().clone(), cond.float().clone()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.forward(sx, st, sc)
            torch.cuda.current_stream().wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self.forward(sx, st, sc)
        except RuntimeError as err:  # a non-capturable op: run this shape eagerly from now on
            self._failed.add(key)
            warnings.warn(f"CUDA graph capture failed for batch shape {key[:3]}, running it eagerly: {err}")
            return None
        self._graphs[key] = (graph, sx, st, sc, out)
        return self._graphs[key]


class TorchBackend:
    """The "torch" backend: `FastUNet` (or `CompiledUNet` with compile=True), wrapped in
    `CudaGraphUNet` on CUDA, with cudnn.benchmark on while it runs on CUDA.

    With temporal_window > 1 the batch must hold consecutive frames of one clip (the window sees
    only the frames of the batch). CUDA graphs are on by default for every temporal_window: the
    SWCFA launcher caches its window table on the device per shape, so a capture needs no
    host-to-device copy. cudnn_benchmark=False keeps cuDNN's heuristic algorithm choice.
    compile=True: per-frame attention only (an InputError otherwise).
    """

    name = "torch"

    def __init__(
        self,
        unet: UNet,
        device: torch.device,
        dtype: torch.dtype = torch.float16,
        *,
        temporal_window: int = 1,
        boundary: str = "shrink",
        cuda_graphs: bool | None = None,
        max_graphs: int = 8,
        compile: bool = False,
        cudnn_benchmark: bool | None = None,
        note: str = "",
    ):
        self.note = note
        self.device = torch.device(device)
        self.dtype = dtype
        self.temporal_window = temporal_window
        self.image_size = unet.cfg.image_size
        self.cond_dim = unet.cfg.cond_channels
        if compile:
            check_compilable(temporal_window)
        self.fast = FastUNet(
            unet, self.device, dtype, temporal_window=temporal_window, boundary=boundary,
            gn_backend="twin" if compile else "auto",
        )  # fmt: skip
        self.compiled = CompiledUNet(self.fast) if compile else None
        self.runner = self.compiled or self.fast
        self.cudnn_benchmark = use_cudnn_benchmark(self.device, cudnn_benchmark)
        graphs = use_cuda_graphs(self.device, cuda_graphs)
        self.graphs = CudaGraphUNet(self.runner, max_graphs=max_graphs) if graphs else None

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        from fvedit.runtime.backends import check_inputs

        x, t, cond = check_inputs(x, t, cond, self.cond_dim, self.device)
        run = self.graphs or self.runner
        if not self.cudnn_benchmark:
            return run(x, t, cond)
        with cudnn_benchmark_scope(True):
            return run(x, t, cond)

    def describe(self) -> str:
        dt = {v: k for k, v in DTYPES.items()}[self.dtype]
        norm = f"torch.compile ({self.compiled.mode})" if self.compiled else "fused GroupNorm+SiLU"
        parts = [f"torch ({dt}", norm, "SDPA" if self.temporal_window == 1 else f"SWCFA w={self.temporal_window}"]
        if self.fast.channels_last:
            parts.append("channels_last")
        if self.cudnn_benchmark:
            parts.append("cudnn.benchmark")
        parts.append("CUDA graphs" if self.graphs else "eager")
        return ", ".join(parts) + f") on {self.device}" + (f"; {self.note}" if self.note else "")
