"""CI performance gate: is every optimised CPU path at least not slower than its reference, in this run?

    python bench/ci_gate.py --out bench-results/ci-bench.json

Measures, on the `tiny` preset with the seeded demo weights (so nothing depends on what is installed
in ~/.cache):
  1. one UNet call: the fp32 reference vs the `torch` backend and, when importable, onnxruntime
     (its ONNX export runs first and is reported as build time), interleaved round robin;
  2. the pixel kernels: warp + paste of a 1080p frame, C++ extension vs its PyTorch twin, interleaved;
  3. a short whole edit (generated face video, fresh process): per-stage ms per frame, reported only.
Writes everything as JSON, prints a table, and exits 1 ONLY when an optimised path is slower than
its reference by more than the margin, judged on medians of interleaved repeats. Never on
absolute times: CI machines differ and are shared.

Margins (optimised p50 / reference p50):
  UNet call      > 1.5 fails. On a CPU the torch backend runs the same fp32 convolutions with fused
                 GroupNorm twins: expected 0.8-1.05 here; onnxruntime expected well below 1. Spread
                 of interleaved single-thread medians on the shared 2-core machine: about +-20 %.
                 1.5 stays clear of that noise and still catches the real regressions (fp16 on a CPU
                 5x+, an extra UNet call 2x, a host copy or sync per op).
  pixel kernels  > 1.0 fails: the extension measures 0.1-0.2 of its twin's time, so "not slower than
                 the twin" is 5-10x away from the expected value; it catches a broken or
                 unoptimised build, never noise. Not gated (only noted) when the extension is not built.
Threads default to 1: with 2 OpenMP threads on a loaded 2-core machine a 40 ms call was measured
at 1-4 s (spin-waiting threads preempted by other processes), which no median can repair.

Testing only: FVEDIT_BENCH_SLOWDOWN="torch=3,ext=20" (or --inject-slowdown) makes the named arms take
that many times their own time (a sleep after each call), to prove the gate can fail.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from fvedit import benchmark as bm  # noqa: E402
from fvedit.errors import FveditError, InputError  # noqa: E402

UNET_MARGIN = 1.5
PIXEL_MARGIN = 1.0
SLOWDOWN_ENV = "FVEDIT_BENCH_SLOWDOWN"


def parse_slowdown(spec: str | None) -> dict[str, float]:
    """"torch=3,ext=20" -> {"torch": 3.0, "ext": 20.0} (factors >= 1)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, _, factor = part.partition("=")
        try:
            value = float(factor)
        except ValueError:
            value = float("nan")
        if not name or not value >= 1:
            raise InputError(f"bad slowdown {part!r}: use NAME=FACTOR with FACTOR >= 1, e.g. torch=3")
        out[name.strip()] = value
    return out


def slowed(fn: Callable[..., Any], factor: float) -> Callable[..., Any]:
    """fn, but each call then sleeps (factor - 1) x its own duration (test hook only)."""

    def run(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        time.sleep((factor - 1) * (time.perf_counter() - t0))
        return out

    return run


def _wrap(slowdown: dict[str, float]):
    return lambda name, fn: slowed(fn, slowdown[name]) if name in slowdown else fn


def gate_unet(rows: list[dict], margin: float) -> list[dict]:
    checks = []
    for r in rows:
        if r["backend"] == "reference":
            continue
        ratio = r["ratio_to_reference"]
        checks.append({"what": f"unet {r['backend']} b{r['batch']} / reference", "ratio": ratio, "margin": margin,
                       "ok": ratio <= margin})  # fmt: skip
    return checks


def gate_pixels(px: dict, margin: float) -> list[dict]:
    if not px["ext_built"]:
        note = "extension not built: not gated"
        return [{"what": "pixels ext / twin", "ratio": None, "margin": margin, "ok": True, "note": note}]
    ratio = px["ext_over_twin"]
    return [{"what": "pixels ext / twin", "ratio": ratio, "margin": margin, "ok": ratio <= margin}]


def run_gate(args: argparse.Namespace) -> dict[str, Any]:
    from fvedit.weights.demo import demo_weights

    torch.set_num_threads(args.threads)
    slowdown = parse_slowdown(args.inject_slowdown or os.environ.get(SLOWDOWN_ENV))
    weights = demo_weights("tiny")
    names = ["reference", "torch"] + (["onnxruntime"] if args.onnx and importlib.util.find_spec("onnxruntime") else [])
    with tempfile.TemporaryDirectory(prefix="fvedit-ci-bench-") as tmp:
        built, notes = bm.build_backends(weights, names, "cpu", export_dir=Path(tmp) / "export", threads=args.threads,
                                         echo=lambda m: print(m, flush=True))  # fmt: skip
        wrap = _wrap(slowdown)
        arms = {name: wrap(name, b) for name, b in built.items()}
        print(f"UNet: {', '.join(arms)} at batch {args.batch} ({args.repeats} interleaved repeats, {args.threads} thread)",
              flush=True)  # fmt: skip
        rows = bm.bench_unet(arms, weights.config, args.batch, "cpu", warmup=1, repeats=args.repeats,
                             calls_per_frame=2 * args.steps)  # fmt: skip
        print("pixels: warp + paste of a 1080p frame, ext vs twin", flush=True)
        px = bm.bench_pixels(warmup=1, repeats=args.repeats, wrap=wrap)
        edit = _short_edit(args, Path(tmp)) if args.edit_frames > 0 else None
    checks = gate_unet(rows, UNET_MARGIN) + gate_pixels(px, PIXEL_MARGIN)
    return bm.result_document(
        bm.machine_info("cpu"),
        preset="tiny",
        weights="demo (untrained, seeded)",
        settings={"repeats": args.repeats, "threads": args.threads, "batch_sizes": args.batch, "steps": args.steps,
                  "injected_slowdown": slowdown, "timer": "host wall clock"},  # fmt: skip
        backends=notes,
        unet={"sampler": f"dpm{args.steps}", "calls_per_frame": 2 * args.steps, "rows": rows},
        pixels=px,
        edit=edit,
        gate={"ok": all(c["ok"] for c in checks), "checks": checks, "unet_margin": UNET_MARGIN, "pixel_margin": PIXEL_MARGIN},
    )


def _short_edit(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    print(f"whole edit: {args.edit_frames} frames 160x120, reference, dpm{args.steps}, fresh process", flush=True)
    video = bm.make_bench_video(tmp / "face.mp4", args.edit_frames, 160, 120)
    env = {"FVEDIT_WEIGHTS_DIR": str(tmp / "no-weights"), "FVEDIT_CACHE_DIR": str(tmp / "cache")}
    res = bm.run_isolated(
        "edit_video_child",
        {"video": str(video), "work_dir": str(tmp), "preset": "tiny", "backend": "reference", "steps": args.steps,
         "batch": 4},
        threads=args.threads, env=env, timeout=600,
    )  # fmt: skip
    n = res["frames"]
    return {"frames": n, "size": res["size"], "backend": "reference", "sampler": f"dpm{args.steps}",
            "first_ms_per_frame": bm.per_frame_stages(res["first"], n),
            "from_cache_ms_per_frame": bm.per_frame_stages(res["from_cache"], n),
            "peak_host_mb": res["peak_host_mb"]}  # fmt: skip


def print_report(doc: dict[str, Any]) -> None:
    m = doc["machine"]
    print(f"\n{m['cpu']}, {m['cpu_count']} cores (load {', '.join(f'{v:.1f}' for v in m['load_average'] or [])}), "
          f"torch {m['torch']}, {doc['settings']['threads']} thread(s); pixels: {m['pixel_backend']}")  # fmt: skip
    print(f"{'UNet call (tiny)':<26}{'batch':>6}{'p50 ms':>10}{'p90 ms':>10}{'ms/frame':>10}{'x ref':>8}")
    for r in doc["unet"]["rows"]:
        print(f"{r['backend']:<26}{r['batch']:>6}{r['p50_ms']:>10.1f}{r['p90_ms']:>10.1f}{r['ms_per_frame']:>10.1f}"
              f"{r['ratio_to_reference']:>8.2f}")  # fmt: skip
    print(f"{'pixels 1080p warp+paste':<26}{'':>6}{'p50 ms':>10}{'p90 ms':>10}")
    for r in doc["pixels"]["rows"]:
        print(f"{r['impl']:<26}{'':>6}{r['p50_ms']:>10.1f}{r['p90_ms']:>10.1f}")
    if doc.get("edit"):
        e = doc["edit"]
        stages = ", ".join(f"{k} {v:.0f}" for k, v in e["first_ms_per_frame"].items() if k not in ("total", "load weights"))
        print(f"whole edit {e['frames']} frames {e['size']}: {e['first_ms_per_frame']['total']:.0f} ms/frame "
              f"({stages}); re-edit from cache {e['from_cache_ms_per_frame']['total']:.0f} ms/frame; "
              f"peak {e['peak_host_mb']:.0f} MiB")  # fmt: skip
    print("gate (optimised / reference, medians of interleaved repeats):")
    for c in doc["gate"]["checks"]:
        ratio = "n/a" if c["ratio"] is None else f"{c['ratio']:.3f}"
        verdict = "ok" if c["ok"] else "FAIL"
        note = f"  {c['note']}" if c.get("note") else ""
        print(f"  {verdict:<5}{c['what']:<40}{ratio:>8}  (fails above {c['margin']}){note}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="CPU performance gate: optimised paths vs their references, same run.")
    ap.add_argument("--out", type=Path, required=True, help="JSON output path (e.g. bench-results/ci-bench.json)")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timed rounds per comparison (default 7)")
    ap.add_argument("--threads", type=int, default=1, help="torch/onnxruntime CPU threads (default 1, see the docstring)")
    ap.add_argument("--batch", type=int, action="append", help="UNet batch size, repeatable (default 1 and 4)")
    ap.add_argument("--steps", type=int, default=3, help="sampler steps of the short edit (default 3)")
    ap.add_argument("--edit-frames", type=int, default=8, help="frames of the short whole edit; 0 skips it (default 8)")
    ap.add_argument("--no-onnx", dest="onnx", action="store_false", help="leave onnxruntime out (skips its export)")
    ap.add_argument("--inject-slowdown", default=None, help=f"testing only, like ${SLOWDOWN_ENV}: e.g. torch=3,ext=20")
    args = ap.parse_args(argv)
    args.batch = sorted(set(args.batch or [1, 4]))
    if args.repeats < 3 or args.threads < 1 or args.batch[0] < 1 or args.steps < 2 or args.edit_frames < 0:
        ap.error("need --repeats >= 3, --threads >= 1, --batch >= 1, --steps >= 2, --edit-frames >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        doc = run_gate(args)
        if not doc["gate"]["ok"]:
            # A burst of load from another process can skew one run even with interleaving: fail
            # only when a second, independent measurement shows the slowdown too.
            print("gate failed once; measuring again to rule out interference from other processes", flush=True)
            first = doc["gate"]
            doc = run_gate(args)
            doc["first_attempt"] = first
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FveditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    path = bm.write_json(args.out, doc)
    print_report(doc)
    print(f"wrote {path}")
    if not doc["gate"]["ok"]:
        failed = [c["what"] for c in doc["gate"]["checks"] if not c["ok"]]
        print(f"PERF GATE FAILED: {'; '.join(failed)} slower than the reference beyond the margin", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
