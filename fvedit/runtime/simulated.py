"""A simulated device: stand-ins for the UNet and the encoders that cost device time, not compute.

Why: whether a staged pipeline keeps the device busy can only be measured where the device is
fast next to the host. On a CPU-only machine the real UNet takes the cores the host stages need;
these stand-ins instead charge the time a GPU would take to a simulated device clock, and sleep
(releasing the GIL) only where a CUDA host would wait, so host stages can overlap them.

- `SimulatedDevice`: one device's clock and its queue. Work runs one piece at a time (as one GPU
  runs one kernel stream), back to back, so the busy intervals never overlap and the busy
  fraction of any window is at most 1. `enqueue` is a CUDA launch: the work is queued after what
  is already queued and the call returns at once; `synchronize` is `torch.cuda.synchronize()`
  (or the implicit one of `.cpu()`): it sleeps until the queue is empty. `run` is both.
- `SimulatedUNet(ms_per_frame)`: eps(x, t, cond) = 0.1 x + small terms in t and cond,
  deterministic, and B x ms_per_frame milliseconds of device time per call of batch B.
  Asynchronous by default, as a CUDA-graph replay is: the call queues its time and returns, the
  sampler's arithmetic goes on on the host, and the pipeline's stages call `synchronize()`
  (`fvedit.runtime.device.synchronize`) where they read the result back, where `.cpu()` would
  wait on a GPU. On a GPU that arithmetic is device work too (microseconds per step); here it
  is host work at CPU speed, so the host side of this simulation is, if anything, pessimistic.
  `asynchronous=False`: every call sleeps its time at once (the host waits on each call).
- `SimulatedEncoder`: identity / landmark features of the right shapes from pooled pixels, costing
  `ms_per_frame` per frame split between `id_forward` and `lnd_forward` (synchronous: their
  results are read at once); `fuse` is a fixed Linear (no device time: a tiny matmul). It has
  no face parser: the hull mask (demo weights) needs none.
- `simulated_weights(preset, ms)`: a `LoadedWeights` (is_demo, so the hull mask is used) whose
  model is the stand-in encoder plus the preset's config, and the `SimulatedUNet`, sharing a clock.

The reference model code is untouched and never built: only the preset's config is read.
"""

from __future__ import annotations

import math
import threading
import time

import torch
from torch import Tensor, nn

from fvedit.config import EncoderConfig, ModelConfig, get_preset
from fvedit.errors import InputError
from fvedit.weights.store import FORMAT_NAME, FORMAT_VERSION, LoadedWeights

SIMULATED_NAME = "simulated"  # the eps model's `name`: part of the encode-cache key (backend)


class SimulatedDevice:
    """Accounts simulated device time: total busy seconds (as charged) and the wall intervals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy_s = 0.0
        self._calls = 0
        self._intervals: list[tuple[float, float]] = []
        self._free_at = 0.0  # perf_counter time at which the queued work is done

    def enqueue(self, seconds: float) -> None:
        """Queue `seconds` of work after what is queued (now, if the device is idle); return at once."""
        if seconds < 0:
            raise InputError(f"device time must be >= 0, got {seconds}")
        with self._lock:
            start = max(time.perf_counter(), self._free_at)
            self._free_at = start + seconds
            self._busy_s += seconds
            self._calls += 1
            self._intervals.append((start, self._free_at))

    def synchronize(self) -> None:
        """Wait (sleeping, without the GIL) until all queued work is done."""
        with self._lock:
            free_at = self._free_at
        delay = free_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)

    def run(self, seconds: float) -> None:
        """Occupy the device for `seconds` and wait for it: `enqueue` then `synchronize`."""
        self.enqueue(seconds)
        self.synchronize()

    @property
    def busy_s(self) -> float:
        """Device seconds charged so far (the nominal cost, not the sleeps' slightly longer wall time)."""
        with self._lock:
            return self._busy_s

    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    @property
    def intervals(self) -> list[tuple[float, float]]:
        """(start, end) perf_counter seconds of every piece of work, in the order it ran."""
        with self._lock:
            return list(self._intervals)

    def busy_between(self, start: float, end: float) -> float:
        """Wall seconds the device was busy within [start, end] (the intervals clipped to it)."""
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.intervals)

    def reset(self) -> None:
        self.synchronize()
        with self._lock:
            self._busy_s, self._calls, self._intervals = 0.0, 0, []


def _check_ms(ms: float) -> float:
    if not math.isfinite(ms) or ms < 0:
        raise InputError(f"simulated device time must be a finite number of ms >= 0, got {ms}")
    return float(ms)


class SimulatedUNet:
    """The eps model stand-in: deterministic, right shape and dtype, B x ms_per_frame ms per call,
    queued (asynchronous, like a CUDA launch) or waited for at once."""

    name = SIMULATED_NAME
    dtype = torch.float32

    def __init__(self, ms_per_frame: float, clock: SimulatedDevice | None = None, *, asynchronous: bool = True):
        self.ms_per_frame = _check_ms(ms_per_frame)
        self.clock = clock if clock is not None else SimulatedDevice()
        self.asynchronous = bool(asynchronous)

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        b = x.shape[0]
        seconds = b * self.ms_per_frame / 1000
        if self.asynchronous:
            self.clock.enqueue(seconds)
        else:
            self.clock.run(seconds)
        t_term = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1) * 1e-5
        c_term = 0.01 * cond.float().mean(dim=1).reshape(-1, 1, 1, 1)
        return (0.1 * x.float() + t_term + c_term).to(x.dtype)

    def synchronize(self) -> None:
        """Wait for the queued calls (where a GPU pipeline's `.cpu()` would wait)."""
        self.clock.synchronize()

    def describe(self) -> str:
        mode = "queued like CUDA launches" if self.asynchronous else "each call waited for"
        return f"simulated device, {self.ms_per_frame:g} ms per frame per UNet call ({mode}; no compute)"


def _projection(rows: int, cols: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) / math.sqrt(rows)


class SimulatedEncoder(nn.Module):
    """id_forward / lnd_forward / fuse of `DVAEncoder`, from 4x4-pooled pixels, costing device time."""

    POOL = 4

    def __init__(self, cfg: EncoderConfig, ms_per_frame: float, clock: SimulatedDevice | None = None,
                 id_share: float = 0.5):
        super().__init__()
        if not 0 <= id_share <= 1:
            raise InputError(f"id_share must be in [0, 1], got {id_share}")
        self.cfg = cfg
        self.ms_per_frame = _check_ms(ms_per_frame)
        self.id_share = id_share
        self.clock = clock if clock is not None else SimulatedDevice()
        pooled = 3 * self.POOL * self.POOL
        self.register_buffer("id_proj", _projection(pooled, cfg.id_dim, 1))
        self.register_buffer("lnd_proj", _projection(pooled, cfg.lnd_dim, 2))
        self.register_buffer("fuse_weight", _projection(cfg.id_dim + cfg.lnd_dim, cfg.cond_dim, 3))

    def _pooled(self, x: Tensor, share: float) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected an RGB batch [B, 3, H, W], got {tuple(x.shape)}")
        self.clock.run(x.shape[0] * self.ms_per_frame * share / 1000)
        return nn.functional.adaptive_avg_pool2d(x.float(), self.POOL).flatten(1)

    def id_forward(self, x: Tensor) -> Tensor:
        """z_id [B, id_dim], unit L2 norm (as the identity net's)."""
        return nn.functional.normalize(self._pooled(x, self.id_share) @ self.id_proj, dim=1)

    def lnd_forward(self, x: Tensor) -> Tensor:
        """z_lnd [B, lnd_dim] in (0, 1) (as the landmark net's)."""
        return torch.sigmoid(self._pooled(x, 1 - self.id_share) @ self.lnd_proj)

    def fuse(self, z_id: Tensor, z_lnd: Tensor) -> Tensor:
        """z_face [B, cond_dim]; a batch-1 z_id is shared by all frames (as `DVAEncoder.fuse`)."""
        if z_id.ndim != 2 or z_id.shape[1] != self.cfg.id_dim or z_lnd.ndim != 2 or z_lnd.shape[1] != self.cfg.lnd_dim:
            raise InputError(f"fuse needs z_id [B, {self.cfg.id_dim}] and z_lnd [B, {self.cfg.lnd_dim}], "
                             f"got {tuple(z_id.shape)} and {tuple(z_lnd.shape)}")
        if z_id.shape[0] == 1 and z_lnd.shape[0] != 1:
            z_id = z_id.expand(z_lnd.shape[0], -1)
        return torch.cat([z_id.float(), z_lnd.float()], dim=1) @ self.fuse_weight

    def face_mask(self, x: Tensor, for_video: bool = True) -> Tensor:
        raise InputError("the simulated model has no face parser: use the landmark hull mask (--mask hull)")


class SimulatedModel(nn.Module):
    """What the pipeline reads of a DVAModel: `config` and `encoder` (the UNet is the eps model)."""

    def __init__(self, cfg: ModelConfig, encoder: SimulatedEncoder):
        super().__init__()
        self.config = cfg
        self.encoder = encoder


def simulated_weights(preset: str = "dva256", ms: float = 2.3, *, encoder_ms: float | None = None,
                      clock: SimulatedDevice | None = None, asynchronous: bool = True) -> tuple[LoadedWeights, SimulatedUNet]:
    """(weights, eps model) on one simulated device: `ms` per frame per UNet call, `encoder_ms`
    (default `ms`) per frame for both encoders together. The weights are marked demo (hull mask)
    and fingerprinted apart from the real demo weights, so their encodings never mix in a cache."""
    try:
        cfg = get_preset(preset)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    clock = clock if clock is not None else SimulatedDevice()
    encoder = SimulatedEncoder(cfg.encoder, ms if encoder_ms is None else encoder_ms, clock)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "demo": True,
        "preset": f"{SIMULATED_NAME}-{cfg.name}",
        "seed": 0,
        "config": cfg.to_dict(),
        "files": {},
        "notes": ["simulated device stand-ins: sleeps instead of networks, for pipeline timing only"],
    }
    weights = LoadedWeights(model=SimulatedModel(cfg, encoder).eval(), classifier=None, id_stats=None,
                            manifest=manifest, is_demo=True)
    return weights, SimulatedUNet(ms, clock, asynchronous=asynchronous)
