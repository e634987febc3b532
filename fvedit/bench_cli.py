"""`fvedit bench`: how fast each UNet backend is here, as ratios to the fp32 reference, and what a frame costs.

The lead registers it with `app.command("bench")(bench_command)`. The measuring lives in
`fvedit.benchmark`; this module only chooses what to run, prints the tables and writes the JSON.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, List, Optional

import typer

from fvedit.errors import InputError


def _fmt(v: Any, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _print_tables(doc: dict[str, Any], say) -> None:
    from rich.table import Table

    unet = doc["unet"]
    t = Table(title=f"UNet call, {doc['preset']} ({doc['image_size']} px), {doc['unet_gflop_per_image']:.1f} GFLOP/image; "
                    f"per frame = {unet['calls_per_frame']} calls ({unet['sampler']})")  # fmt: skip
    columns = ("backend", "batch", "ms/call p50", "p90", "ms/image", "ms/frame", "frames/s", "x reference", "TFLOP/s", "% of peak")
    for col in columns:
        t.add_column(col, justify="left" if col == "backend" else "right")
    for r in unet["rows"]:
        fps = 1000 / r["ms_per_frame"] if r["ms_per_frame"] else None
        frac = None if r["fraction_of_peak"] is None else 100 * r["fraction_of_peak"]
        t.add_row(r["backend"], str(r["batch"]), _fmt(r["p50_ms"]), _fmt(r["p90_ms"]), _fmt(r["ms_per_item"], ".2f"),
                  _fmt(r["ms_per_frame"]), _fmt(fps, ".2f"), _fmt(r["ratio_to_reference"], ".2f"),
                  _fmt(r["tflops"], ".3f"), _fmt(frac, ".1f"))  # fmt: skip
    say(t)
    say(f"matmul peak measured here: {doc['matmul_peak_tflops']:.3f} TFLOP/s ({doc['matmul_dtype']}); "
        "'% of peak' = UNet FLOPs / time / that peak")
    for name, note in doc["backends"].items():
        built = f"skipped: {note['skipped']}" if "skipped" in note else f"{note['describe']} (built in {note['build_s']:.1f} s)"
        say(f"  {name}: {built}")
    if doc.get("sampler"):
        s = Table(title=f"sampler, encode + decode of a batch ({doc['sampler'][0]['backend']})")
        for col in ("sampler", "batch", "calls enc+dec", "encode ms", "decode ms", "ms/frame", "frames/s"):
            s.add_column(col, justify="left" if col == "sampler" else "right")
        for r in doc["sampler"]:
            s.add_row(r["sampler"], str(r["batch"]), f"{r['encode_calls']}+{r['decode_calls']}", _fmt(r["encode_p50_ms"]),
                      _fmt(r["decode_p50_ms"]), _fmt(r["ms_per_frame"]), _fmt(1000 / r["ms_per_frame"], ".2f"))  # fmt: skip
        say(s)
    px = doc.get("pixels")
    if px:
        p = Table(title=f"pixel kernels, warp + paste of one {px['rows'][0]['frame']} frame")
        for col in ("impl", "ms p50", "p90", "x twin"):
            p.add_column(col, justify="left" if col == "impl" else "right")
        twin = next(r for r in px["rows"] if r["impl"] == "twin")["p50_ms"]
        for r in px["rows"]:
            p.add_row(r["impl"], _fmt(r["p50_ms"]), _fmt(r["p90_ms"]), _fmt(r["p50_ms"] / twin, ".3f"))
        say(p)
    edit = doc.get("edit")
    if edit:
        e = Table(title=f"whole edit, {edit['frames']} frames {edit['size']}, backend {edit['backend']}, batch {edit['batch']}, "
                        f"{edit['sampler']}; peak host memory {edit['peak_host_mb']:.0f} MiB (fresh process)")  # fmt: skip
        e.add_column("stage")
        e.add_column("first edit ms/frame", justify="right")
        e.add_column("re-edit from cache", justify="right")
        first, again = edit["first_ms_per_frame"], edit["from_cache_ms_per_frame"]
        for stage in dict.fromkeys([*first, *again]):
            if stage != "total":
                e.add_row(stage, _fmt(first.get(stage)), _fmt(again.get(stage)))
        e.add_row("total (without load weights)", _fmt(first["total"]), _fmt(again["total"]))
        say(e)


def run_bench(
    *,
    preset: str | None,
    backends: list[str] | None,
    batch_sizes: list[int] | None,
    steps: int,
    device: str,
    frames: int,
    weights_dir: Path | None,
    repeats: int,
    warmup: int,
    threads: int | None,
    pixels: bool = True,
    echo=lambda m: None,
) -> dict[str, Any]:
    """Everything `fvedit bench` measures, as the JSON document (see fvedit.benchmark.SCHEMA)."""
    import torch

    from fvedit import benchmark as bm
    from fvedit.loading import load_for_run
    from fvedit.runtime.device import resolve_device
    from fvedit.sampling import SamplerSpec

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    names = bm.resolve_backend_names(backends)
    batches = sorted(set(batch_sizes or ([1, 8] if dev.type == "cuda" else [1, 4])))
    if batches[0] < 1:
        raise InputError(f"--batch-size must be >= 1, got {batches[0]}")
    weights = load_for_run(weights_dir, preset, dev, echo=echo)
    cfg = weights.config
    spec = SamplerSpec("dpm", steps)
    calls = spec.encode_calls + spec.decode_calls
    built, notes = bm.build_backends(weights, names, dev, threads=threads, echo=echo)
    dtype = bm.matmul_dtype(dev)
    peak = bm.measured_matmul_tflops(dev, dtype)
    echo(f"timing {', '.join(built)} at batch {', '.join(map(str, batches))} ({warmup} warm-up, {repeats} timed, interleaved)")
    rows = bm.bench_unet(built, cfg, batches, dev, warmup=warmup, repeats=repeats, calls_per_frame=calls, peak_tflops=peak)
    big = [r for r in rows if r["batch"] == batches[-1]]
    fastest = min(big, key=lambda r: r["p50_ms"])["backend"]
    echo(f"sampler runs on the fastest backend at batch {batches[-1]}: {fastest}")
    sampler_rows = bm.bench_sampler(
        built[fastest], weights, [spec, SamplerSpec("ddim", steps)], batches[-1], dev, warmup=min(warmup, 1), repeats=repeats
    )
    doc = bm.result_document(
        bm.machine_info(dev),
        preset=cfg.name,
        image_size=cfg.image_size,
        weights="demo (untrained, seeded)" if weights.is_demo else f"imported ({weights.manifest.get('preset', cfg.name)})",
        settings={"repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads(), "steps": steps,
                  "batch_sizes": batches, "timer": "host wall clock, device synchronised"},  # fmt: skip
        unet_gflop_per_image=bm.unet_flops(cfg) / 1e9,
        matmul_peak_tflops=peak,
        matmul_dtype=str(dtype).removeprefix("torch."),
        backends=notes,
        unet={"sampler": spec.key, "calls_per_frame": calls, "rows": rows},
        sampler=sampler_rows,
        pixels=bm.bench_pixels(warmup=1, repeats=repeats) if pixels else None,
        edit=None,
    )
    if frames > 0:
        doc["edit"] = _whole_edit(bm, cfg.name, weights_dir, dev, fastest, batches[-1], steps, frames, threads, echo)
    return doc


def _whole_edit(bm, preset, weights_dir, dev, backend, batch, steps, frames, threads, echo) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fvedit-bench-") as tmp:
        video = bm.make_bench_video(Path(tmp) / "face.mp4", frames, 640, 360)
        echo(f"whole edit of a generated {frames}-frame 640x360 face video in a fresh process ({backend}, batch {batch})")
        res = bm.run_isolated(
            "edit_video_child",
            {"video": str(video), "work_dir": tmp, "preset": preset, "weights_dir": str(weights_dir) if weights_dir else None,
             "device": str(dev), "backend": backend, "steps": steps, "batch": batch},
            threads=threads,
        )  # fmt: skip
    n = res["frames"]
    return {
        "frames": n, "size": res["size"], "backend": backend, "batch": batch, "sampler": f"dpm{steps}",
        "first_ms_per_frame": bm.per_frame_stages(res["first"], n),
        "from_cache_ms_per_frame": bm.per_frame_stages(res["from_cache"], n),
        "from_cache_hit": res["from_cache"]["cache_hit"],
        "peak_host_mb": res["peak_host_mb"], "memory": res["memory"],
    }  # fmt: skip


def bench_command(
    preset: Optional[str] = typer.Option(
        None, "--preset", help="Model size of the demo weights: 'tiny' or 'dva256'. Default: the imported weights' size, "
        "else 'tiny' on a CPU and 'dva256' on a GPU.",
    ),
    backend: Optional[List[str]] = typer.Option(
        None, "--backend", help="UNet backend to time: reference, torch, onnxruntime, tensorrt, or 'all' (default: every "
        "backend usable here). Repeatable. The fp32 reference always runs too: every figure is also a ratio to it.",
    ),
    batch_size: Optional[List[int]] = typer.Option(
        None, "--batch-size", "-b", help="Frames per UNet call; repeatable (default 1 and 4 on a CPU, 1 and 8 on a GPU).",
    ),
    steps: int = typer.Option(
        15, "--steps", min=2, max=1000, help="Sampler steps per direction: 'ms/frame' counts 2 x steps UNet calls "
        "(DPM-Solver++ inversion + decoding); the sampler table runs DPM-Solver++ and DDIM with this many.",
    ),
    device: str = typer.Option("auto", "--device", help="Where to run: 'auto' (CUDA if present), 'cpu', 'cuda' or 'cuda:N'."),
    frames: int = typer.Option(
        16, "--frames", min=0, help="Length of the generated 640x360 face video for the whole-edit timing "
        "(per-stage ms/frame, then a re-edit from the encode cache); 0 skips it.",
    ),
    json_out: Path = typer.Option(
        Path("bench-results/fvedit-bench.json"), "--json-out", "-o", help="Where to write all results as JSON (machine "
        "info, settings, every sample statistic).",
    ),
    weights_dir: Optional[Path] = typer.Option(
        None, "--weights-dir", help="Folder with imported weights. Default: $FVEDIT_WEIGHTS_DIR, else "
        "~/.cache/fvedit/weights; without weights there the untrained demo weights are timed (and the output says so).",
    ),
    repeats: int = typer.Option(5, "--repeats", "-r", min=1, help="Timed calls per measurement; medians are reported."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed calls before timing (lazy init, CUDA-graph capture)."),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="CPU threads for torch and onnxruntime (default: torch's default). On a busy "
        "machine 1 gives far steadier CPU numbers.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the path of the JSON file."),
) -> None:
    """Time the UNet backends (as ratios to the fp32 reference), the samplers, the pixel kernels and a whole edit."""
    from rich.console import Console

    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    if not out.is_terminal:  # files and pipes: wide enough that no column is cut
        out = Console(highlight=False, width=160)
    echo = (lambda m: None) if quiet else (lambda m: err.print(m, style="dim"))
    doc = run_bench(
        preset=preset, backends=backend, batch_sizes=batch_size, steps=steps, device=device, frames=frames,
        weights_dir=weights_dir, repeats=repeats, warmup=warmup, threads=threads, echo=echo,
    )  # fmt: skip
    from fvedit.benchmark import write_json

    path = write_json(json_out, doc)
    if not quiet:
        m = doc["machine"]
        out.print(f"weights: {doc['weights']}; device: {m['cuda_device'] or m['cpu']} "
                  f"({m['cpu_count']} CPU cores, torch {m['torch']}, {doc['settings']['threads']} threads)")
        _print_tables(doc, out.print)
    typer.echo(str(path))
