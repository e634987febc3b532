"""`fvedit bench`: how fast each UNet backend is here, as ratios to the fp32 reference, and what a frame costs.

The lead registers it with `app.command("bench")(bench_command)`. The measuring lives in
`fvedit.benchmark`; this module only chooses what to run, prints the tables and writes the JSON.

Four parts run in order: the UNet table, the samplers, the pixel kernels and a whole edit (in a
fresh process). The JSON is rewritten (atomically) after each part, and a part that fails is
recorded in `errors` while the next one runs, so a failing edit keeps every UNet and sampler
number; the command then exits 1 naming the failed parts. Rows carry wall-clock figures and, on
CUDA, CUDA-event ones (`*_event_ms`); `settings.timer` says which.

`--pipeline VIDEO --simulate-device-ms MS` runs instead only the pipeline measurement: the edit's
own code (`encode_video` + `decode_and_paste`) against a simulated device that sleeps MS per frame
per UNet call (`fvedit.runtime.simulated`), in a fresh process, timed by phase (analyse, edit) with
the device's busy fraction (`fvedit.benchmark.pipeline_child`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from fvedit.errors import FveditError, InputError

PARTS = ("unet", "sampler", "pixels", "edit")
Echo = Callable[[str], None]


def _fmt(v: Any, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _print_tables(doc: dict[str, Any], say) -> None:
    """Every part that produced numbers, then the backend notes and any failed part.

    Notes and errors are escaped: rich would read a "[tensorrt]" in them as markup and drop it."""
    from rich.markup import escape

    if doc.get("unet"):
        _print_unet(doc, say)
    for name, note in doc["backends"].items():
        built = f"skipped: {note['skipped']}" if "skipped" in note else f"{note['describe']} (built in {note['build_s']:.1f} s)"
        say(escape(f"  {name}: {built}"))
    if doc.get("sampler"):
        _print_sampler(doc["sampler"], say)
    if doc.get("pixels"):
        _print_pixels(doc["pixels"], say)
    if doc.get("edit"):
        _print_edit(doc["edit"], say)
    for part, err in doc.get("errors", {}).items():
        say(escape(f"{part}: FAILED ({err})"))


def _print_unet(doc: dict[str, Any], say) -> None:
    from rich.table import Table

    unet = doc["unet"]
    t = Table(title=f"UNet call, {doc['preset']} ({doc['image_size']} px), {doc['unet_gflop_per_image']:.1f} GFLOP/image; "
                    f"per frame = {unet['calls_per_frame']} calls ({unet['sampler']})")  # fmt: skip
    events = any(r.get("p50_event_ms") is not None for r in unet["rows"])
    columns = ("backend", "batch", "ms/call p50", *(("event p50",) if events else ()), "p90", "ms/image", "ms/frame",
               "frames/s", "x reference", "TFLOP/s", "% of peak")  # fmt: skip
    for col in columns:
        t.add_column(col, justify="left" if col == "backend" else "right")
    for r in unet["rows"]:
        fps = 1000 / r["ms_per_frame"] if r["ms_per_frame"] else None
        frac = None if r["fraction_of_peak"] is None else 100 * r["fraction_of_peak"]
        event = (_fmt(r.get("p50_event_ms")),) if events else ()
        t.add_row(r.get("label", r["backend"]), str(r["batch"]), _fmt(r["p50_ms"]), *event, _fmt(r["p90_ms"]),
                  _fmt(r["ms_per_item"], ".2f"), _fmt(r["ms_per_frame"]), _fmt(fps, ".2f"),
                  _fmt(r["ratio_to_reference"], ".2f"), _fmt(r["tflops"], ".3f"), _fmt(frac, ".1f"))  # fmt: skip
    say(t)
    say(f"matmul peak measured here: {doc['matmul_peak_tflops']:.3f} TFLOP/s ({doc['matmul_dtype']}); "
        "'% of peak' = UNet FLOPs / time / that peak; times are wall clock" + (", 'event' = CUDA events" if events else ""))


def _print_sampler(rows: list[dict[str, Any]], say) -> None:
    from rich.table import Table

    s = Table(title=f"sampler, encode + decode of a batch ({rows[0].get('label', rows[0]['backend'])})")
    for col in ("sampler", "batch", "calls enc+dec", "encode ms", "decode ms", "ms/frame", "frames/s"):
        s.add_column(col, justify="left" if col == "sampler" else "right")
    for r in rows:
        s.add_row(r["sampler"], str(r["batch"]), f"{r['encode_calls']}+{r['decode_calls']}", _fmt(r["encode_p50_ms"]),
                  _fmt(r["decode_p50_ms"]), _fmt(r["ms_per_frame"]), _fmt(1000 / r["ms_per_frame"], ".2f"))  # fmt: skip
    say(s)


def _print_pixels(px: dict[str, Any], say) -> None:
    from rich.table import Table

    p = Table(title=f"pixel kernels, warp + paste of one {px['rows'][0]['frame']} frame")
    for col in ("impl", "ms p50", "p90", "x twin"):
        p.add_column(col, justify="left" if col == "impl" else "right")
    twin = next(r for r in px["rows"] if r["impl"] == "twin")["p50_ms"]
    for r in px["rows"]:
        p.add_row(r["impl"], _fmt(r["p50_ms"]), _fmt(r["p90_ms"]), _fmt(r["p50_ms"] / twin, ".3f"))
    say(p)


def _print_edit(edit: dict[str, Any], say) -> None:
    from rich.table import Table

    clip = "" if edit.get("video", "generated") == "generated" else f" of {Path(edit['video']).name}"
    faces = ", faces replayed" if edit.get("faces_replayed") else ""
    e = Table(title=f"whole edit{clip}, {edit['frames']} frames {edit['size']}, backend {edit['backend']}, batch "
                    f"{edit['batch']}, {edit['sampler']}{faces}; peak host memory {edit['peak_host_mb']:.0f} MiB "
                    "(fresh process)")  # fmt: skip
    e.add_column("stage")
    e.add_column("first edit ms/frame", justify="right")
    e.add_column("re-edit from cache", justify="right")
    first, again = edit["first_ms_per_frame"], edit["from_cache_ms_per_frame"]
    for stage in dict.fromkeys([*first, *again]):
        if stage != "total":
            e.add_row(stage, _fmt(first.get(stage)), _fmt(again.get(stage)))
    e.add_row("total (without load weights)", _fmt(first["total"]), _fmt(again["total"]))
    say(e)


# ------------------------------------------------------------------------------------------------
# running the parts


def _one_line(err: BaseException) -> str:
    """An error as the one line `errors` keeps: its type and the first line of its message."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"[:400] if first else type(err).__name__


def _run_part(doc: dict[str, Any], part: str, fn: Callable[[], Any], save: Callable[[], None], echo: Echo) -> None:
    """doc[part] = fn(); a failure goes to doc["errors"][part] instead, so the next part still runs.

    The JSON is saved either way (also on Ctrl-C, which then goes on up): what was measured so far
    is on disk whatever the later parts do.
    """
    try:
        doc[part] = fn()
    except Exception as err:  # noqa: BLE001 - one failing part must not lose the others' numbers
        doc["errors"][part] = _one_line(err)
        echo(f"{part}: FAILED ({doc['errors'][part]}); going on with the other parts")
    finally:
        save()


def _check_bench_inputs(precision: str, video: Path | None, faces: Path | None) -> None:
    """Bad options fail before the weights load and anything is timed."""
    from fvedit.benchmark import BENCH_PRECISIONS

    if precision not in BENCH_PRECISIONS:
        raise InputError(f"--precision {precision!r}: use {' or '.join(BENCH_PRECISIONS)}")
    if faces is not None and video is None:
        raise InputError("--faces needs --video or --pipeline: a faces file is made by `fvedit align` for one clip")
    for flag, path in (("--video", video), ("--faces", faces)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{flag} {path}: no such file")


def _fastest(rows: list[dict[str, Any]], built: dict[str, Any], batch: int) -> str:
    """The backend with the lowest p50 at `batch`; without a UNet table, the first fast backend built."""
    big = [r for r in rows if r["batch"] == batch]
    if big:
        return min(big, key=lambda r: r["p50_ms"])["backend"]
    return next((n for n in built if n != "reference"), next(iter(built), "reference"))


def _notes_for_all(requested: list[str] | None, notes: dict[str, Any]) -> dict[str, Any]:
    """With 'all' (the default), the backends it left out and why, next to the built ones' notes."""
    from fvedit.benchmark import unusable_backends

    if requested and "all" not in [n.strip().lower() for n in requested]:
        return notes
    left_out = {n: {"skipped": why.removeprefix("no: ")} for n, why in unusable_backends().items() if n not in notes}
    return {**notes, **left_out}


@dataclass
class _Setup:
    """What every part needs: the built backends, the weights and the settings they run under."""

    built: dict[str, Any]
    weights: Any
    device: Any
    batches: list[int]
    steps: int
    warmup: int
    repeats: int
    peak_tflops: float

    @property
    def spec(self):
        from fvedit.diffusion.spec import SamplerSpec

        return SamplerSpec("dpm", self.steps)


@dataclass(frozen=True)
class _EditPlan:
    """What the whole-edit part runs: the settings its fresh child process gets."""

    preset: str
    weights_dir: Path | None
    device: str
    backend: str
    batch: int
    steps: int
    frames: int
    threads: int | None
    precision: str
    temporal_window: int
    video: Path | None
    faces: Path | None

    def child_kwargs(self, clip: Path, work_dir: str) -> dict[str, Any]:
        return {"video": str(clip), "work_dir": work_dir, "preset": self.preset,
                "weights_dir": str(self.weights_dir) if self.weights_dir else None, "device": self.device,
                "backend": self.backend, "steps": self.steps, "batch": self.batch,
                "faces": str(self.faces) if self.faces else None, "precision": self.precision,
                "temporal_window": self.temporal_window}  # fmt: skip


def _unet_part(bm, s: _Setup) -> dict[str, Any]:
    calls = s.spec.encode_calls + s.spec.decode_calls
    rows = bm.bench_unet(s.built, s.weights.config, s.batches, s.device, warmup=s.warmup, repeats=s.repeats,
                         calls_per_frame=calls, peak_tflops=s.peak_tflops)  # fmt: skip
    return {"sampler": s.spec.key, "calls_per_frame": calls, "rows": rows}


def _sampler_part(bm, s: _Setup, backend: str) -> list[dict[str, Any]]:
    from fvedit.diffusion.spec import SamplerSpec

    specs = [s.spec, SamplerSpec("ddim", s.steps)]
    return bm.bench_sampler(s.built[backend], s.weights, specs, s.batches[-1], s.device, warmup=min(s.warmup, 1),
                            repeats=s.repeats)  # fmt: skip


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
    precision: str = "fp16",
    temporal_window: int = 1,
    video: Path | None = None,
    faces: Path | None = None,
    json_out: Path | None = None,
    echo: Echo = lambda m: None,
) -> dict[str, Any]:
    """Everything `fvedit bench` measures, as the JSON document (see fvedit.benchmark.SCHEMA).

    With json_out the document is written after the set-up and after every part; a failed part
    leaves its section None and one line in doc["errors"][part] (a set-up failure still raises).
    """
    import torch

    from fvedit import benchmark as bm
    from fvedit.weights.loading import load_for_run
    from fvedit.runtime.device import resolve_device

    _check_bench_inputs(precision, video, faces)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    names = bm.resolve_backend_names(backends)
    batches = sorted(set(batch_sizes or ([1, 8] if dev.type == "cuda" else [1, 4])))
    if batches[0] < 1:
        raise InputError(f"--batch-size must be >= 1, got {batches[0]}")
    weights = load_for_run(weights_dir, preset, dev, echo=echo)
    cfg = weights.config
    built, notes = bm.build_backends(weights, names, dev, threads=threads, precision=precision,
                                     temporal_window=temporal_window, echo=echo)  # fmt: skip
    dtype = bm.matmul_dtype(dev)
    setup = _Setup(built, weights, dev, batches, steps, warmup, repeats, bm.measured_matmul_tflops(dev, dtype))
    doc = bm.result_document(
        bm.machine_info(dev),
        preset=cfg.name,
        image_size=cfg.image_size,
        weights="demo (untrained, seeded)" if weights.is_demo else f"imported ({weights.manifest.get('preset', cfg.name)})",
        settings={"repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads(), "steps": steps,
                  "batch_sizes": batches, "timer": bm.timer_label(dev), "precision": precision,
                  "temporal_window": temporal_window, "video": str(video) if video else None,
                  "faces": str(faces) if faces else None},
        unet_gflop_per_image=bm.unet_flops(cfg) / 1e9,
        matmul_peak_tflops=setup.peak_tflops,
        matmul_dtype=str(dtype).removeprefix("torch."),
        backends=_notes_for_all(backends, notes),
        unet=None, sampler=None, pixels=None, edit=None, errors={},
    )  # fmt: skip

    def save() -> None:
        if json_out is not None:
            bm.write_json(json_out, doc)

    save()
    echo(f"timing {', '.join(built)} at batch {', '.join(map(str, batches))} ({warmup} warm-up, {repeats} timed, interleaved)")
    _run_part(doc, "unet", lambda: _unet_part(bm, setup), save, echo)
    fastest = _fastest(doc["unet"]["rows"] if doc["unet"] else [], built, batches[-1])
    echo(f"sampler runs on the fastest backend at batch {batches[-1]}: {fastest}")
    _run_part(doc, "sampler", lambda: _sampler_part(bm, setup, fastest), save, echo)
    if pixels:
        _run_part(doc, "pixels", lambda: bm.bench_pixels(warmup=1, repeats=repeats), save, echo)
    if frames > 0:
        plan = _EditPlan(preset=cfg.name, weights_dir=weights_dir, device=str(dev), backend=fastest, batch=batches[-1],
                         steps=steps, frames=frames, threads=threads, precision=precision,
                         temporal_window=temporal_window, video=video, faces=faces)  # fmt: skip
        _run_part(doc, "edit", lambda: _whole_edit(bm, plan, echo), save, echo)
    return doc


def _whole_edit(bm, plan: _EditPlan, echo: Echo) -> dict[str, Any]:
    """A first edit and a re-edit from the cache, in a fresh process: of --video (all of it), else
    of a generated 640x360 clip of --frames frames."""
    with tempfile.TemporaryDirectory(prefix="fvedit-bench-") as tmp:
        if plan.video is not None:
            clip, what = Path(plan.video), f"{plan.video} (the whole clip)"
        else:
            clip = bm.make_bench_video(Path(tmp) / "face.mp4", plan.frames, 640, 360)
            what = f"a generated {plan.frames}-frame 640x360 face video"
        faces = f", faces replayed from {plan.faces}" if plan.faces else ""
        echo(f"whole edit of {what} in a fresh process ({plan.backend} {plan.precision}, batch {plan.batch}{faces})")
        res = bm.run_isolated("edit_video_child", plan.child_kwargs(clip, tmp), threads=plan.threads)
    n = res["frames"]
    return {
        "frames": n, "size": res["size"], "backend": plan.backend, "batch": plan.batch, "sampler": f"dpm{plan.steps}",
        "precision": plan.precision, "temporal_window": plan.temporal_window,
        "video": str(plan.video) if plan.video else "generated", "faces_replayed": plan.faces is not None,
        "first_ms_per_frame": bm.per_frame_stages(res["first"], n),
        "from_cache_ms_per_frame": bm.per_frame_stages(res["from_cache"], n),
        "from_cache_hit": res["from_cache"]["cache_hit"],
        "peak_host_mb": res["peak_host_mb"], "memory": res["memory"],
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------
# --pipeline: the edit's own code against a simulated device


def check_pipeline_inputs(pipeline: Path | None, simulate_ms: float | None, video: Path | None,
                          batch_sizes: list[int] | None, from_cache: bool = False) -> None:
    """The --pipeline options' one-line errors, before anything runs."""
    if pipeline is None:
        if simulate_ms is not None:
            raise InputError("--simulate-device-ms needs --pipeline VIDEO: only the pipeline measurement simulates the device")
        if from_cache:
            raise InputError("--frames-from-cache needs --pipeline VIDEO (the whole-edit part always times a re-edit too)")
        return
    if simulate_ms is None:
        raise InputError("--pipeline needs --simulate-device-ms MS: the simulated device's time per frame per UNet call "
                         "(e.g. 2.3)")
    if not simulate_ms >= 0 or simulate_ms == float("inf"):
        raise InputError(f"--simulate-device-ms must be a finite number >= 0, got {simulate_ms}")
    if video is not None:
        raise InputError("--pipeline and --video are two measurements: give one of them")
    if batch_sizes and len(batch_sizes) > 1:
        raise InputError(f"--pipeline runs one batch size, got -b {' -b '.join(map(str, batch_sizes))}")
    if not Path(pipeline).is_file():
        raise InputError(f"--pipeline {pipeline}: no such file")


def run_pipeline_bench(
    *,
    video: Path,
    simulate_ms: float,
    threads: int | None,
    from_cache: bool,
    faces: Path | None,
    batch: int,
    steps: int,
    preset: str,
    json_out: Path | None,
    echo: Echo = lambda m: None,
    simulate_sync: bool = False,
) -> dict[str, Any]:
    """The --pipeline document: machine, settings and `pipeline` (bench_pipeline's result), written
    to json_out when given."""
    from fvedit import benchmark as bm

    if faces is not None and not Path(faces).is_file():
        raise InputError(f"--faces {faces}: no such file")
    what = "re-edit from the encode cache" if from_cache else "first edit"
    echo(f"pipeline: {what} of {video} in a fresh process, simulated device {simulate_ms:g} ms/frame/call, "
         f"batch {batch}, dpm{steps}, threads {threads or 'default'}")  # fmt: skip
    result = bm.bench_pipeline(video, ms=simulate_ms, threads=threads, from_cache=from_cache, batch=batch,
                               steps=steps, faces=faces, preset=preset, asynchronous=not simulate_sync)  # fmt: skip
    doc = bm.result_document(
        bm.machine_info("cpu"),
        settings={"pipeline": str(video), "simulate_device_ms": simulate_ms, "threads": threads,
                  "frames_from_cache": from_cache, "faces": str(faces) if faces else None, "batch": batch,
                  "steps": steps, "preset": preset, "simulate_sync": simulate_sync},
        pipeline=result,
    )  # fmt: skip
    if json_out is not None:
        bm.write_json(json_out, doc)
    return doc


def _print_pipeline(doc: dict[str, Any], say) -> None:
    from rich.table import Table

    p = doc["pipeline"]
    run = "re-edit from the encode cache" if p["from_cache"] else "first edit"
    say(f"pipeline, {run}: {p['frames']} frames {p['size']}, simulated device {p['ms']:g} ms/frame/call "
        f"({p['calls_per_frame']} calls/frame), batch {p['batch']}, threads {p['threads'] or 'default'}, "
        f"cache {'hit' if p['cache_hit'] else 'miss'}")
    t = Table()
    t.add_column("measure")
    t.add_column("value", justify="right")
    for label, key, spec in (("wall ms/frame", "wall_ms_per_frame", ".1f"), ("device ms/frame", "device_ms_per_frame", ".1f"),
                             ("analyse ms/frame", "analyse_ms_per_frame", ".1f"), ("edit ms/frame", "edit_ms_per_frame", ".1f"),
                             ("device busy in edit", "device_busy_edit", ".3f"),
                             ("host CPU ms/frame in edit (all threads)", "host_cpu_ms_per_frame_edit", ".1f"),
                             ("host cores busy in edit", "host_cores_busy_edit", ".2f")):  # fmt: skip
        if key in p:  # documents written before a measure existed lack it
            t.add_row(label, _fmt(p[key], spec))
    for name, ms in p["stages_ms_per_frame"].items():
        t.add_row(f"  stage {name} (own time)", _fmt(ms))
    say(t)


# ------------------------------------------------------------------------------------------------
# the command


def bench_command(
    preset: Optional[str] = typer.Option(
        None, "--preset", help="Model size of the demo weights: 'tiny' or 'dva256'. Default: the imported weights' size, "
        "else 'tiny' on a CPU and 'dva256' on a GPU.",
    ),
    backend: Optional[List[str]] = typer.Option(
        None, "--backend", help="UNet backend to time: reference, torch, onnxruntime, tensorrt, or 'all' (default: every "
        "backend usable here; the notes say why any other was left out). Repeatable. The fp32 reference always runs too: "
        "every figure is also a ratio to it. On a GPU, onnxruntime without its CUDA provider is skipped before any export.",
    ),
    batch_size: Optional[List[int]] = typer.Option(
        None, "--batch-size", "-b", help="Frames per UNet call; repeatable (default 1 and 4 on a CPU, 1 and 8 on a GPU).",
    ),
    steps: int = typer.Option(
        15, "--steps", min=2, max=1000, help="Sampler steps per direction: 'ms/frame' counts 2 x steps UNet calls "
        "(DPM-Solver++ inversion + decoding); the sampler table runs DPM-Solver++ and DDIM with this many.",
    ),
    device: str = typer.Option("auto", "--device", help="Where to run: 'auto' (CUDA if present), 'cpu', 'cuda' or 'cuda:N'."),
    precision: str = typer.Option(
        "fp16", "--precision", help="Arithmetic of the fast backends (torch, onnxruntime, tensorrt): fp16 or bf16; the "
        "reference is always fp32. On a CPU the torch backend runs fp16 as fp32 (each row's label says what ran); "
        "onnxruntime has no bf16 export and is skipped with bf16 on a GPU. Also used by the whole edit.",
    ),
    temporal_window: int = typer.Option(
        1, "--temporal-window", min=1, help="Sliding-window cross-frame attention over this many frames for the reference "
        "and torch backends (and the whole edit); the batch is taken as consecutive frames. Above 1 the exported "
        "backends (onnxruntime, tensorrt) are skipped: their graphs have per-frame attention.",
    ),
    frames: int = typer.Option(
        16, "--frames", min=0, help="Length of the generated 640x360 face video for the whole-edit timing "
        "(per-stage ms/frame, then a re-edit from the encode cache); 0 skips it. With --video any value above 0 "
        "edits the whole clip.",
    ),
    video: Optional[Path] = typer.Option(
        None, "--video", show_default=False, help="Time the whole edit on this clip instead of a generated one; all of "
        "its frames are edited (--frames does not cut it; --frames 0 still skips the edit).",
    ),
    faces: Optional[Path] = typer.Option(
        None, "--faces", show_default=False, help="A faces file from `fvedit align` for the --video clip: the whole edit "
        "replays its detections, so no dlib is needed (and detection is not timed). Needs --video.",
    ),
    json_out: Path = typer.Option(
        Path("bench-results/fvedit-bench.json"), "--json-out", "-o", help="Where to write all results as JSON (machine "
        "info, settings, every sample statistic). Rewritten after every part, so a failing part keeps the others' "
        "numbers; failures are listed under 'errors'.",
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
    pipeline: Optional[Path] = typer.Option(
        None, "--pipeline", show_default=False, help="Run only the pipeline measurement on this clip (no UNet, sampler, "
        "pixel or whole-edit parts): the edit's own code against a simulated device (needs --simulate-device-ms), in a "
        "fresh process; reports wall, device, analyse and edit ms/frame, the device's busy fraction in the edit phase "
        "and each stage's own time. Uses -b (one value, default 16), --steps, --threads, --faces, --preset (default "
        "dva256: 256 px crops) and --frames-from-cache.",
    ),
    simulate_device_ms: Optional[float] = typer.Option(
        None, "--simulate-device-ms", show_default=False, help="With --pipeline: the simulated device's milliseconds "
        "per frame per UNet call (the encoders cost the same per frame); it sleeps instead of computing, so host stages "
        "can overlap it.",
    ),
    frames_from_cache: bool = typer.Option(
        False, "--frames-from-cache", help="With --pipeline: time the re-edit, the encoding taken from the encode cache "
        "(filled first, untimed), so only decode, paste and write run.",
    ),
    simulate_sync: bool = typer.Option(
        False, "--simulate-sync", help="With --pipeline: the host waits for every simulated UNet call (default: calls are "
        "queued like CUDA launches and the host waits where it reads results back, as on a GPU).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the path of the JSON file."),
) -> None:
    """Time the UNet backends (as ratios to the fp32 reference), the samplers, the pixel kernels and a whole edit.

    Times are wall clock with the device synchronised; on a GPU each row also has CUDA-event times
    (*_event_ms). A part that fails is recorded in the JSON and the others still run; the command
    then exits 1 naming the failed parts.

    With --pipeline VIDEO --simulate-device-ms MS only the edit pipeline is timed, against a
    simulated device, and written to the JSON under 'pipeline'.
    """
    from rich.console import Console

    check_pipeline_inputs(pipeline, simulate_device_ms, video, batch_size, frames_from_cache)
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    if not out.is_terminal:  # files and pipes: wide enough that no column is cut
        out = Console(highlight=False, width=160)
    echo = (lambda m: None) if quiet else (lambda m: err.print(m, style="dim"))
    if pipeline is not None:
        doc = run_pipeline_bench(video=pipeline, simulate_ms=simulate_device_ms, threads=threads,
                                 from_cache=frames_from_cache, faces=faces, batch=batch_size[0] if batch_size else 16,
                                 steps=steps, preset=preset or "dva256", json_out=json_out, echo=echo,
                                 simulate_sync=simulate_sync)  # fmt: skip
        if not quiet:
            _print_pipeline(doc, out.print)
        typer.echo(str(json_out))
        return
    doc = run_bench(
        preset=preset, backends=backend, batch_sizes=batch_size, steps=steps, device=device, frames=frames,
        weights_dir=weights_dir, repeats=repeats, warmup=warmup, threads=threads, precision=precision.strip().lower(),
        temporal_window=temporal_window, video=video, faces=faces, json_out=json_out, echo=echo,
    )  # fmt: skip
    if not quiet:
        m = doc["machine"]
        out.print(f"weights: {doc['weights']}; device: {m['cuda_device'] or m['cpu']} "
                  f"({m['cpu_count']} CPU cores, torch {m['torch']}, {doc['settings']['threads']} threads)")
        _print_tables(doc, out.print)
    typer.echo(str(json_out))
    if doc["errors"]:
        raise FveditError(failure_message(doc["errors"], json_out))


def failure_message(errors: dict[str, str], json_out: Path) -> str:
    """The one line the command ends with when parts failed: which, the first error, where the rest is."""
    failed = [p for p in PARTS if p in errors] + [p for p in errors if p not in PARTS]
    first = errors[failed[0]]
    return f"bench part(s) failed: {', '.join(failed)} ({failed[0]}: {first}); the other parts' numbers are in {json_out}"
