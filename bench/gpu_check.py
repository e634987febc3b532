"""The GPU check's measuring helper: every number the first lent GPU must produce, part by part.

Run by `bench/gpu_check.sh` (read that first), or by hand:

    python bench/gpu_check.py --out OUT [--budget 400] [--clip clip.mp4 --faces faces.npz] [--only unet,edit]

Each part writes its figures into OUT/results.json as soon as it ends (the file is replaced
atomically), so a run cut off by the lease keeps every part it finished; a part that fails is
recorded in `errors` and the next part runs. A part whose usual time no longer fits in the budget
is skipped and says so. On a machine without CUDA every part falls back to the `tiny` preset and
CPU-sized batches: that is the rehearsal, which checks the mechanics, not the speed.

Parts, in order (what each measures is in its docstring): machine, ceil, parity, unet, prof,
sampler, edit, ops, swcfa, compile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch

from fvedit import benchmark as bm

STEPS = 15  # DPM-Solver++ calls per direction: the product default


class Check:
    """What every part shares: device, preset, weights, batch sizes, the clock and the output."""

    def __init__(self, out: Path, budget_s: float, clip: Path | None, faces: Path | None, preset: str | None):
        self.out, self.clip, self.faces = out, clip, faces
        self.deadline = time.monotonic() + budget_s
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.preset = preset or ("dva256" if self.cuda else "tiny")
        self.batches = [1, 8, 16, 32] if self.cuda else [1, 4]
        self.big = 16 if self.cuda else 4  # the batch the product runs at
        self.repeats = 5 if self.cuda else 2
        self.doc: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "preset": self.preset,
                                    "parts": {}, "errors": {}, "skipped": {}}  # fmt: skip
        self._weights = None

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def weights(self):
        if self._weights is None:
            from fvedit.weights.loading import load_for_run

            self._weights = load_for_run(None, self.preset, self.device)
        return self._weights

    def backend(self, name: str, dtype: str = "fp16", **kw):
        from fvedit.runtime.backends import make_backend

        return make_backend(name, self.weights.model, self.device, dtype=dtype, **kw)

    def torch_backend(self, dtype: str, *, graphs: bool | None = None, **kw):
        """The torch backend; graphs=False forces eager (on a CPU there are none anyway)."""
        from fvedit.runtime.fast_unet import DTYPES, TorchBackend

        dt = DTYPES[dtype if self.cuda or dtype != "fp16" else "fp32"]
        return TorchBackend(self.weights.model.unet, self.device, dt, cuda_graphs=graphs if self.cuda else False, **kw)

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.doc, indent=1, default=str))
        os.replace(tmp, self.out / "results.json")


# ------------------------------------------------------------------------------------------------
# small measuring tools


def rel_error(a: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """‖a − ref‖ / ‖ref‖ and max|a − ref| / max|ref|, in float64 (METHOD.md's comparison)."""
    a, ref = a.double(), ref.double()
    d = a - ref
    return {"rel_l2": float(d.norm() / ref.norm()), "rel_max": float(d.abs().max() / ref.abs().max()),
            "finite": bool(torch.isfinite(a).all())}  # fmt: skip


def psnr_db(a: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of images in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a.double().clamp(-1, 1) - ref.double().clamp(-1, 1)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def timed_ms(fn: Callable[[], Any], device: torch.device, repeats: int = 5, warmup: int = 2) -> dict[str, float | None]:
    """Median wall ms (device synchronised) and, on CUDA, median CUDA-event ms of fn()."""
    wall, events = bm.measure_both(fn, warmup=warmup, repeats=repeats, sync=device)
    return {"wall_ms": 1000 * bm.percentile(wall, 50), "event_ms": 1000 * bm.percentile(events, 50) if events else None}


# ------------------------------------------------------------------------------------------------
# the parts


def part_machine(c: Check) -> dict[str, Any]:
    """Versions, the GPU, the pixel extension and which backends can run (what `fvedit info` says)."""
    from fvedit.pixels import ext
    from fvedit.runtime.backends import available_backends

    info = bm.machine_info(c.device)
    info.update(pixels=ext.status(), backends=available_backends(), python=sys.version.split()[0])
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if c.cuda:
        p = torch.cuda.get_device_properties(c.device)
        info.update(sms=p.multi_processor_count, gpu_mem_gib=p.total_memory / 2**30, capability=f"{p.major}.{p.minor}")
    c.doc["weights"] = "demo (untrained, seeded)" if c.weights.is_demo else "imported"
    return info


def part_ceil(c: Check) -> dict[str, Any]:
    """The two ceilings every other figure is read against: a large matmul and a large copy."""
    out: dict[str, Any] = {}
    dtypes = [torch.bfloat16, torch.float16] if c.cuda else [torch.float32]
    for dt in dtypes:
        out[f"matmul_{str(dt).removeprefix('torch.')}_tflops"] = bm.measured_matmul_tflops(c.device, dt)
    n = (1 << 28) if c.cuda else (1 << 24)  # 1 GiB / 64 MiB of fp32
    src = torch.randn(n, device=c.device)
    dst = torch.empty_like(src)
    t = timed_ms(lambda: dst.copy_(src), c.device, repeats=10)
    ms = t["event_ms"] or t["wall_ms"]
    out["copy_gib"] = n * 4 / 2**30
    out["copy_tb_s"] = 2 * n * 4 / (ms / 1000) / 1e12  # bytes read + written
    return out


def part_parity(c: Check) -> dict[str, Any]:
    """fp16/bf16 against the fp32 reference with TF32 off; the TF32 effect; graphs against eager;
    the PSNR of a 15-step decode in each precision against the fp32 decode from the same x_T."""
    from fvedit.runtime.backends import eps_fn, reference_forward
    from fvedit.runtime.device import tf32_allowed
    from fvedit.diffusion.spec import SamplerSpec

    cfg = c.weights.config
    x, t, cond = bm.unet_inputs(cfg, 4, c.device, seed=11)
    ref = c.backend("reference")
    r = ref(x, t, cond)
    out: dict[str, Any] = {"batch": 4, "reference": ref.describe()}
    if c.cuda:  # what the oracle would be with TF32 convolutions and matmuls (cuDNN's default)
        with tf32_allowed(True):
            out["tf32_vs_fp32"] = rel_error(reference_forward(c.weights.model.unet, x, t, cond), r)
    spec = SamplerSpec("dpm", STEPS)
    gen = torch.Generator().manual_seed(12)
    x_T = torch.randn(4, 3, cfg.image_size, cfg.image_size, generator=gen).to(c.device)
    z = torch.randn(4, cfg.unet.cond_channels, generator=gen).to(c.device)
    ref_img = spec.decode(eps_fn(ref, z), x_T)
    for dtype in ("fp16", "bf16"):
        fast = c.torch_backend(dtype)
        row = {"backend": fast.describe(), "unet": rel_error(fast(x, t, cond), r)}
        if c.cuda:
            eager = c.torch_backend(dtype, graphs=False)
            row["graph_vs_eager"] = rel_error(fast(x, t, cond), eager(x, t, cond))
        row["decode_psnr_db"] = psnr_db(spec.decode(eps_fn(fast, z), x_T), ref_img)
        out[dtype] = row
    return out


def part_unet(c: Check) -> dict[str, Any]:
    """One UNet call per backend at batch 1/8/16/32, interleaved, with % of the measured bf16 peak."""
    peak = bm.measured_matmul_tflops(c.device)
    arms = {"reference": c.backend("reference"), "torch-fp16": c.torch_backend("fp16"),
            "torch-bf16": c.torch_backend("bf16")}  # fmt: skip
    if c.cuda:
        arms["torch-fp16-eager"] = c.torch_backend("fp16", graphs=False)
        arms["torch-fp16-no-cudnn-benchmark"] = c.torch_backend("fp16", cudnn_benchmark=False)
    rows = []
    for batch in c.batches:
        if c.left() < 20:
            break
        rows += bm.bench_unet(arms, c.weights.config, [batch], c.device, warmup=2, repeats=c.repeats,
                              calls_per_frame=2 * STEPS, peak_tflops=peak)  # fmt: skip
        c.doc["parts"]["unet"] = {"peak_tflops": peak, "rows": rows, "partial": True}
        c.save()
    return {"peak_tflops": peak, "rows": rows, "backends": {k: v.describe() for k, v in arms.items()}}


def _category(name: str) -> str:
    n = name.lower()
    if "_gn_" in n or "group_norm" in n:
        return "GroupNorm+SiLU"
    if any(k in n for k in ("conv", "gemm", "cutlass", "xmma", "sm90", "sm80", "implicit", "cudnn", "mm")):
        return "conv / gemm"
    if any(k in n for k in ("flash", "fmha", "attention", "softmax", "swcfa")):
        return "attention"
    return "elementwise / copies / other"


def part_prof(c: Check) -> dict[str, Any]:
    """A profiler split of one eager fp16 call at the product batch: where a UNet call's time goes."""
    from torch.profiler import ProfilerActivity, profile

    fast = c.torch_backend("fp16", graphs=False)
    x, t, cond = bm.unet_inputs(c.weights.config, c.big, c.device)
    for _ in range(2):
        fast(x, t, cond)
    bm.sync_device(c.device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if c.cuda else [])
    with profile(activities=acts) as prof:
        fast(x, t, cond)
        bm.sync_device(c.device)
    attr = "self_device_time_total" if c.cuda else "self_cpu_time_total"
    split: dict[str, float] = {}
    for ev in prof.key_averages():
        us = getattr(ev, attr, 0) or 0
        if c.cuda and getattr(ev, "device_type", None) is not None and "CUDA" not in str(ev.device_type):
            continue
        split[_category(ev.key)] = split.get(_category(ev.key), 0.0) + us / 1000
    table = prof.key_averages().table(sort_by=attr, row_limit=40)
    (c.out / "profile.txt").write_text(table)
    return {"batch": c.big, "ms_by_category": split, "kernel_ms_total": sum(split.values())}


def part_sampler(c: Check) -> dict[str, Any]:
    """DPM-Solver++ 15 calls each way (inversion + decode) per frame, at the product batch and 32."""
    from fvedit.diffusion.spec import SamplerSpec

    fast = c.torch_backend("fp16")
    rows = []
    for batch in sorted({c.big, c.batches[-1]}):
        rows += bm.bench_sampler(fast, c.weights, [SamplerSpec("dpm", STEPS)], batch, c.device, warmup=1,
                                 repeats=max(2, c.repeats - 2))  # fmt: skip
    return {"backend": fast.describe(), "rows": rows}


def part_edit(c: Check) -> dict[str, Any]:
    """A whole `fvedit edit` of the prepared clip (faces replayed from faces.npz: no dlib), first
    run and re-edit from the encode cache, per stage, in a fresh process."""
    if c.clip is None:
        raise RuntimeError("no --clip given (bench/README.md says how to prepare one)")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gpu-check-edit-") as work:
        args = {"video": str(c.clip), "work_dir": work, "preset": c.preset, "device": str(c.device),
                "backend": "torch", "steps": STEPS, "batch": c.big,
                "faces": str(c.faces) if c.faces else None}  # fmt: skip
        res = bm.run_isolated("edit_video_child", args, timeout=max(30.0, c.left() - 10))
    n = res["frames"]
    return {"frames": n, "size": res["size"], "batch": c.big, "faces_replayed": c.faces is not None,
            "first_ms_per_frame": bm.per_frame_stages(res["first"], n),
            "from_cache_ms_per_frame": bm.per_frame_stages(res["from_cache"], n),
            "from_cache_hit": res["from_cache"]["cache_hit"], "peak_host_mb": res["peak_host_mb"]}  # fmt: skip


def part_ops(c: Check) -> dict[str, Any]:
    """The biggest convolution with cudnn.benchmark off and on, and the biggest fused GroupNorm+SiLU
    against the eager 4-op GroupNorm, in TFLOP/s and TB/s."""
    from fvedit.runtime.kernels import group_norm_silu

    b, ch, s = (c.big, 128, 256) if c.cuda else (1, 32, 64)
    dt = torch.float16 if c.cuda else torch.float32
    conv = torch.nn.Conv2d(ch, ch, 3, padding=1).to(c.device, dt).to(memory_format=torch.channels_last)
    x = torch.randn(b, ch, s, s, device=c.device, dtype=dt).contiguous(memory_format=torch.channels_last)
    flops = 2 * b * ch * ch * 9 * s * s
    out: dict[str, Any] = {"conv_shape": [b, ch, s, s]}
    previous = torch.backends.cudnn.benchmark
    try:
        for bench_on in (False, True):
            torch.backends.cudnn.benchmark = bench_on
            with torch.no_grad():
                t = timed_ms(lambda: conv(x), c.device)
            out[f"conv_tflops_cudnn_benchmark_{'on' if bench_on else 'off'}"] = flops / ((t["event_ms"] or t["wall_ms"]) / 1000) / 1e12
    finally:
        torch.backends.cudnn.benchmark = previous
    gch = 256 if c.cuda else 64
    g = torch.randn(b, gch, s, s, device=c.device, dtype=dt).contiguous(memory_format=torch.channels_last)
    w, bias = torch.randn(gch, device=c.device, dtype=dt), torch.randn(gch, device=c.device, dtype=dt)
    nbytes = 2 * g.numel() * g.element_size()  # read once, write once
    fused = timed_ms(lambda: group_norm_silu(g, w, bias, 32), c.device)
    eager = timed_ms(lambda: torch.nn.functional.silu(torch.nn.functional.group_norm(g, 32, w, bias)), c.device)
    out.update(gn_shape=[b, gch, s, s], gn_fused_tb_s=nbytes / ((fused["event_ms"] or fused["wall_ms"]) / 1000) / 1e12,
               gn_eager_tb_s=nbytes / ((eager["event_ms"] or eager["wall_ms"]) / 1000) / 1e12)  # fmt: skip
    return out


def part_swcfa(c: Check) -> dict[str, Any]:
    """Sliding-window cross-frame attention (w=3) over 18 frames: eager and CUDA graphs against
    w=1, and its error against the w=3 fp32 reference."""
    frames = 18 if c.cuda else 6
    x, t, cond = bm.unet_inputs(c.weights.config, frames, c.device, seed=5)
    ref = c.backend("reference", temporal_window=3)
    arms = {"w1": c.torch_backend("fp16"), "w3-eager": c.torch_backend("fp16", graphs=False, temporal_window=3)}
    if c.cuda:
        arms["w3-graphs"] = c.torch_backend("fp16", temporal_window=3)
    out: dict[str, Any] = {"frames": frames, "error_vs_w3_reference": {}}
    r = ref(x, t, cond)
    for name, arm in arms.items():
        if name != "w1":
            out["error_vs_w3_reference"][name] = rel_error(arm(x, t, cond), r)
        out[f"{name}_ms"] = timed_ms(lambda arm=arm: arm(x, t, cond), c.device, repeats=c.repeats)
    return out


def part_compile(c: Check) -> dict[str, Any]:
    """The torch.compile mode of the fast UNet (inductor fuses GroupNorm, SiLU, the residual add
    and the skip concatenation): compile time, parity with the reference, ms per call."""
    x, t, cond = bm.unet_inputs(c.weights.config, c.big, c.device, seed=7)
    t0 = time.perf_counter()
    compiled = c.backend("torch", "fp16", compile=True)
    y = compiled(x, t, cond)
    bm.sync_device(c.device)
    compile_s = time.perf_counter() - t0
    plain = c.torch_backend("fp16")
    ref = c.backend("reference")
    return {"compile_s": compile_s, "error_vs_reference": rel_error(y, ref(x, t, cond)),
            "error_plain_vs_reference": rel_error(plain(x, t, cond), ref(x, t, cond)),
            "compiled_ms": timed_ms(lambda: compiled(x, t, cond), c.device, repeats=c.repeats),
            "plain_ms": timed_ms(lambda: plain(x, t, cond), c.device, repeats=c.repeats)}  # fmt: skip


PARTS: dict[str, tuple[Callable[[Check], dict[str, Any]], float]] = {  # part -> (function, usual GPU seconds)
    "machine": (part_machine, 15),
    "ceil": (part_ceil, 10),
    "parity": (part_parity, 40),
    "unet": (part_unet, 60),
    "prof": (part_prof, 15),
    "sampler": (part_sampler, 20),
    "edit": (part_edit, 60),
    "ops": (part_ops, 5),
    "swcfa": (part_swcfa, 25),
    "compile": (part_compile, 120),
}


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The short table printed last (the device reply carries the end of the output)."""
    p = doc["parts"]
    lines = [f"gpu check, preset {doc['preset']}: {', '.join(p) or 'no part'} done"]
    if "ceil" in p:
        lines.append("ceilings: " + ", ".join(f"{k} {v:.3g}" for k, v in p["ceil"].items() if k != "part_s"))
    if "parity" in p:
        for dt in ("fp16", "bf16"):
            r = p["parity"].get(dt)
            if r:
                lines.append(f"parity {dt}: rel_l2 {r['unet']['rel_l2']:.2e}, 15-step decode PSNR {r['decode_psnr_db']:.1f} dB")
    for r in p.get("unet", {}).get("rows", []):
        frac = "" if r.get("fraction_of_peak") is None else f", {100 * r['fraction_of_peak']:.1f} % of peak"
        lines.append(f"unet {r['backend']:<30} b{r['batch']:<3} {r['p50_ms']:9.2f} ms/call{frac}")
    for r in p.get("sampler", {}).get("rows", []):
        lines.append(f"sampler {r['sampler']} b{r['batch']}: {r['ms_per_frame']:.1f} ms/frame")
    if "edit" in p:
        e = p["edit"]
        lines.append(f"edit {e['frames']} frames {e['size']}: first {e['first_ms_per_frame']['total']:.1f} ms/frame, "
                     f"re-edit {e['from_cache_ms_per_frame']['total']:.1f} ms/frame")  # fmt: skip
    for part, err in doc["errors"].items():
        lines.append(f"FAILED {part}: {err}")
    for part, why in doc["skipped"].items():
        lines.append(f"skipped {part}: {why}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    ap.add_argument("--budget", type=float, default=400.0, help="seconds for all parts together")
    ap.add_argument("--clip", type=Path, default=None, help="the prepared 1080p clip for the whole-edit part")
    ap.add_argument("--faces", type=Path, default=None, help="its faces.npz (`fvedit align`), so no dlib is needed")
    ap.add_argument("--preset", default=None, help="default: dva256 on CUDA, tiny on a CPU")
    ap.add_argument("--only", default=os.environ.get("GPU_CHECK_ONLY", ""), help="comma-separated parts (default: all)")
    args = ap.parse_args(argv)
    chosen = [p for p in (args.only.split(",") if args.only else PARTS) if p]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    c = Check(args.out, args.budget, args.clip, args.faces, args.preset)
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "gpu_check.log").open("a")
    for name in chosen:
        fn, usual_s = PARTS[name]
        if c.left() < usual_s * (1 if c.cuda else 0.2):
            c.doc["skipped"][name] = f"{c.left():.0f} s left of the budget, the part usually takes {usual_s:.0f} s"
            c.save()
            continue
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            with torch.no_grad() if name != "edit" else nullcontext():
                c.doc["parts"][name] = fn(c)
            c.doc["parts"][name]["part_s"] = time.perf_counter() - t0
        except Exception as err:  # record, keep going: later parts still produce numbers
            first = (str(err).strip().splitlines() or [""])[0]
            c.doc["errors"][name] = f"{type(err).__name__}: {first}"[:400]
            c.doc["parts"].pop(name, None)
            log.write(f"--- {name}\n{traceback.format_exc()}\n")
            log.flush()
        c.save()
        print(f"[gpu_check] {name}: {'FAILED' if name in c.doc['errors'] else 'ok'} in {time.perf_counter() - t0:.1f} s",
              flush=True)  # fmt: skip
    lines = summary_lines(c.doc)
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if c.doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
