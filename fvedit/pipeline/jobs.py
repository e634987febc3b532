"""The user's jobs behind the CLI: `encode` a video, `edit` it, and the self-contained `demo`.

Each job loads weights (or the demo model, loudly), picks the UNet backend, runs the pipeline
and prints a summary of where the time went.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fvedit.edit import apply_attribute_edits, apply_text_direction, parse_attr_specs
from fvedit.errors import InputError
from fvedit.pipeline.cache import Encoding
from fvedit.pipeline.crop import crops_to_tensor
from fvedit.pipeline.options import EditIdentity, EditSummary, PipelineOptions
from fvedit.pipeline.scheduler import edit_video, encode_video
from fvedit.progress import StageTimes, console, progress_bar
from fvedit.runtime.device import resolve_device
from fvedit.video import check_output
from fvedit.weights.loading import load_for_run
from fvedit.weights.store import LoadedWeights

if TYPE_CHECKING:
    from fvedit.face.align import Alignment
    from fvedit.face.track import Selection


@dataclass
class EditRequest:
    """What to change: attribute specs (`young=0.3,glasses`) or a CLIP text pair; none = reconstruct."""

    attrs: list[str]
    strength: float | None = None
    text: str | None = None
    neutral: str = "face"
    clip_steps: int = 200
    seed: int = 0

    def check(self) -> None:
        if self.attrs and self.text:
            raise InputError("give either --attr or --text, not both (run twice to combine a text and an attribute edit)")


def _echo(quiet: bool):
    return (lambda m: None) if quiet else (lambda m: console.print(m, highlight=False))


def make_eps_model(weights: LoadedWeights, backend: str, device: torch.device, precision: str = "fp16",
                   temporal_window: int = 1, threads: int | None = None):
    """The UNet call (x, t, z_face) -> eps on the chosen backend (see fvedit.runtime.backends)."""
    from fvedit.runtime.backends import make_backend

    return make_backend(backend, weights.model, device, dtype=precision, temporal_window=temporal_window, threads=threads)


DEMO_TAG = (
    "made by fvedit with UNTRAINED demo weights: the face is deterministic noise that exercises the "
    "pipeline, not an edit; import the DVA weights for real edits"
)


def prepare_edit(weights: LoadedWeights, request: EditRequest, device: torch.device, quiet: bool):
    """Check the edit and load what it needs *before* any slow work, then return
    `edit(enc) -> EditIdentity`, which applies it once to the representative (mean) identity."""
    request.check()
    if request.text:
        from fvedit.edit.clip_edit import learn_text_direction
        from fvedit.edit.clip_models import load_open_clip

        clip = load_open_clip(device)
        strength = 1.0 if request.strength is None else request.strength

        def text_edit(enc: Encoding) -> EditIdentity:
            z_mean = torch.from_numpy(enc.z_id_mean).to(device)
            first = crops_to_tensor(enc.crops.take(enc.present_frames[:1]), device)
            with progress_bar("learn text edit", request.clip_steps, quiet=quiet, unit="step") as adv:
                delta = learn_text_direction(
                    weights.model, first, request.neutral, request.text, clip,
                    steps=request.clip_steps, seed=request.seed, progress=lambda done, total: adv(1),
                )
            desc = f'text "{request.neutral}" -> "{request.text}" x{strength:g}'
            return EditIdentity(apply_text_direction(z_mean, delta, strength), desc)

        return text_edit
    if request.attrs:
        if weights.classifier is None:
            raise InputError("these weights have no attribute classifier: import it with `fvedit weights import-dva --classifier last.ckpt`")
        edits = parse_attr_specs(request.attrs, strength=request.strength)
        classifier = weights.classifier.to(device)
        desc = ", ".join(f"{e.name} {e.strength:+g}" for e in edits)

        def attribute_edit(enc: Encoding) -> EditIdentity:
            z_mean = torch.from_numpy(enc.z_id_mean).to(device)
            return EditIdentity(apply_attribute_edits(z_mean, edits, classifier), desc)

        return attribute_edit
    return lambda enc: EditIdentity(torch.from_numpy(enc.z_id_mean).to(device), "none (reconstruction with the mean identity)")


def print_summary(summary: EditSummary, weights: LoadedWeights, backend: str, opts: PipelineOptions) -> None:
    say = console.print
    cfg = weights.config
    say(f"[bold]{summary.frames} frames[/bold] at {summary.info.width}x{summary.info.height}, {float(summary.info.fps):.3g} fps"
        f"{' (variable)' if summary.info.is_vfr else ''}, audio: {'copied' if summary.info.has_audio else 'none'}")
    say(f"model: {cfg.name} {'(UNTRAINED demo weights)' if weights.is_demo else '(imported weights)'}; backend: {backend}; "
        f"device: {opts.device}; sampler: {opts.sampler.key} ({opts.sampler.encode_calls}+{opts.sampler.decode_calls} calls/frame)")
    if summary.passed_through or summary.bridged:
        say(f"face: in {summary.frames - summary.passed_through} of {summary.frames} frames "
            f"({summary.bridged} bridged detection misses); {summary.passed_through} frames without it passed through unchanged")
    say(f"edit: {summary.edit}; encode cache: {'hit, inversion skipped' if summary.cache_hit else 'miss, saved'} ({summary.cache_folder})")
    width = max([22, *(len(name) + 1 for name in summary.times.seconds)])
    for name, sec in summary.times.seconds.items():
        say(f"  {name:<{width}}{sec:9.2f} s  {1000 * sec / max(summary.frames, 1):9.1f} ms/frame")
    wall = summary.wall_s if summary.wall_s is not None else summary.times.total
    say(f"  {'total (wall clock)':<{width}}{wall:9.2f} s  {summary.per_frame_ms:9.1f} ms/frame")
    if summary.times.total > 1.02 * wall:
        say(f"  (stages overlap: video decoding, paste and writing run beside the model, so the stages add up to "
            f"{summary.times.total:.2f} s)")
    if summary.output is not None:
        say(f"wrote [bold]{summary.output}[/bold]")


def check_faces_for(video: Path, opts: PipelineOptions) -> None:
    """Before any slow work: the --faces file is readable, made for this video (frame count, size
    and the file's sha256), and answers every question this run's --face and --max-gap will ask of it."""
    from fvedit.face.faces_file import load_faces_for
    from fvedit.video import probe
    from fvedit.weights.store import sha256_file

    faces = load_faces_for(opts.faces, video, probe(video))
    faces.check_video_hash(sha256_file(video), video)
    faces.check_replay(opts.face, opts.max_gap)


def run_align(video: Path, output: Path | None, *, face: "Selection" = "largest", max_gap: int | None = None,
              detector: str = "dlib", align: str = "fast", threads: int | None = None,
              quiet: bool = False) -> tuple[Path, "Alignment"]:
    """Detect and track the face once and save every detector answer plus the quads (`fvedit align`)."""
    from fvedit.face.align import OFFICIAL_SIGMAS, align_video
    from fvedit.face.detect import detector_name
    from fvedit.face.faces_file import FacesOutput, RecordingDetector, TrackSettings, format_selection, save_faces
    from fvedit.face.track import DEFAULT_MAX_GAP
    from fvedit.pipeline.align import alignment_notes, face_detectors
    from fvedit.pipeline.streaming import prefetched
    from fvedit.video import iter_frames, probe
    from fvedit.weights.store import sha256_file

    if not video.is_file():
        raise InputError(f"video not found: {video}")
    max_gap = DEFAULT_MAX_GAP if max_gap is None else max_gap
    target = output or video.with_name(f"{video.stem}.faces.npz")
    info = probe(video)
    if info.frame_count == 0:
        raise InputError(f"{video} has no video frames")
    with FacesOutput(target, inputs=(video,)) as out:
        detector_name(detector, align)  # refuses a mode this detector has not
        opts = PipelineOptions(detector=detector, align=align, face=face, max_gap=max_gap, threads=threads)
        with progress_bar("align", info.frame_count, quiet=quiet, unit="frame") as adv, \
                prefetched(iter_frames(video), depth=4, name="fvedit decode frames") as decoded, \
                face_detectors(opts, None, info.frame_count) as (pooled, ahead):
            recorder = RecordingDetector(pooled)  # records in frame order, in this thread

            def frames():
                for frame in decoded:
                    adv(1)
                    yield frame.rgb

            alignment = align_video(ahead(frames()), recorder, select=face, max_gap=max_gap, source=str(video))
        if alignment.num_frames != info.frame_count:
            raise InputError(f"{video}: decoded {alignment.num_frames} frames but probed {info.frame_count}; the file may be damaged")
        settings = TrackSettings(format_selection(face), int(max_gap), OFFICIAL_SIGMAS)
        with open(out.partial, "wb") as fh:
            save_faces(fh, recorder, alignment, width=info.width, height=info.height, settings=settings,
                       video_sha256=sha256_file(video))
        path = out.commit()
    if quiet:
        console.print(str(path), highlight=False)
        return path, alignment
    for note in alignment_notes(alignment, PipelineOptions(face=face)):
        console.print(f"note: {note}", highlight=False)
    n = alignment.num_frames
    console.print(f"wrote {path}: {n} frames, {n - alignment.num_absent} with the face ({alignment.num_bridged} bridged), "
                  f"{alignment.num_absent} without; detector {recorder.name}", highlight=False)
    return path, alignment


def precheck_edit(video: Path, output: Path | None, opts: PipelineOptions):
    """The checks that need no slow work, each a one-line error: the input, the options against each
    other, a --faces file, the output path. Returns the output's plan (cleanup on failure) or None."""
    if not video.is_file():
        raise InputError(f"video not found: {video}")
    if opts.metrics and opts.side_by_side:
        raise InputError("--metrics compares the edit with the input frame by frame; it cannot read a --side-by-side output")
    if opts.faces is not None:
        check_faces_for(video, opts)
    return check_output(output, inputs=[video]) if output is not None else None


def plan_outputs(videos: list[Path], output: Path | None) -> list[Path]:
    """One output per input: with one video OUT is the file (default <stem>.edited.mp4 beside it);
    with several OUT is a folder and each output keeps its input's name (with .mp4 where the input's
    extension is not one fvedit writes; default: <stem>.edited.mp4 beside each input). Two inputs
    that would write one path are refused."""
    from fvedit.video.writer import OUTPUT_SUFFIXES, check_output_name

    if len(videos) == 1:
        outputs = [output or videos[0].with_name(f"{videos[0].stem}.edited.mp4")]
    elif output is None:
        outputs = [v.with_name(f"{v.stem}.edited.mp4") for v in videos]
    else:
        if output.exists() and not output.is_dir():
            raise InputError(f"with {len(videos)} videos -o names a folder, but {output} is a file")
        outputs = [output / (v.name if v.suffix.lower() in OUTPUT_SUFFIXES else f"{v.stem}.mp4") for v in videos]
    seen: dict[Path, Path] = {}
    for video, out in zip(videos, outputs):
        key = out.resolve()
        if key in seen:
            raise InputError(f"{seen[key]} and {video} would both be written to {out}; rename one or edit them apart")
        seen[key] = video
        check_output_name(out)  # every name before the first video's work
    return outputs


def run_jobs(videos: list[Path], output: Path | None, request: EditRequest, *, encode_only: bool = False,
             workers: int = 1, address: str | None = None, **kw) -> list[EditSummary]:
    """`edit`/`encode` over one or more videos: in this process (`workers` 1 and no address; Ray is
    never imported then) or on a Ray pool (`fvedit.distributed`). $RAY_ADDRESS counts only with
    `workers` above 1 (Ray sets it on its own nodes, where a plain edit must stay in-process)."""
    opts: PipelineOptions = kw["opts"]
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if address is not None and not address.strip():
        raise InputError("--ray-address is empty; give host:port of the cluster's head, or leave it out")
    if address is None and workers > 1:
        address = os.environ.get("RAY_ADDRESS") or None
    if len(videos) > 1 and opts.faces is not None:
        raise InputError("--faces holds one video's detections; give one video with it")
    for video in videos:  # every input before the first one's work
        if not video.is_file():
            raise InputError(f"video not found: {video}")
    outputs = [None] * len(videos) if encode_only else plan_outputs(videos, output)
    if workers == 1 and not address:
        return [run_edit(v, o, request, **kw) for v, o in zip(videos, outputs)]
    from fvedit.distributed.ray_run import run_on_pool

    return run_on_pool(list(zip(videos, outputs)), request, workers=workers, address=address, **kw)


def run_edit(
    video: Path,
    output: Path | None,
    request: EditRequest,
    *,
    preset: str | None,
    weights_dir: Path | None,
    device: str,
    backend: str,
    opts: PipelineOptions,
) -> EditSummary:
    """Encode (or reuse the cached encoding), edit the identity once, decode, paste back, write."""
    started = time.perf_counter()
    dev = resolve_device(device)
    opts.device = dev
    times = StageTimes()
    plan = precheck_edit(video, output, opts)
    try:
        return _run_edit(video, output, request, preset=preset, weights_dir=weights_dir, dev=dev, backend=backend,
                         opts=opts, times=times, started=started)
    except BaseException:
        if plan is not None:
            plan.cleanup()  # the folders this run made for the output (the writer removed its partial)
        raise


def _run_edit(
    video: Path, output: Path | None, request: EditRequest, *, preset: str | None, weights_dir: Path | None,
    dev: torch.device, backend: str, opts: PipelineOptions, times: StageTimes, started: float,
) -> EditSummary:
    """run_edit after the checks that need no work: the output path is known to be writable."""
    echo = _echo(opts.quiet)
    with times.stage("load weights"):
        weights = load_for_run(weights_dir, preset, dev, echo=lambda m: console.print(m, style="yellow"))
        apply_edit = prepare_edit(weights, request, dev, opts.quiet)
        eps_model = make_eps_model(weights, backend, dev, opts.precision, opts.temporal_window, opts.threads)
    if output is None:  # encode only
        enc, info, hit = encode_video(video, weights, eps_model, opts, times, echo)
        with times.stage("edit identity"):
            identity = apply_edit(enc)
    else:
        tags = {"comment": DEMO_TAG} if weights.is_demo else {}
        enc, info, hit, identity = edit_video(video, output, weights, eps_model, opts, times, apply_edit, echo,
                                              writer_options={"metadata": tags, "threads": opts.threads})
    times.add("other (video decoding, overhead)", max(0.0, time.perf_counter() - started - times.total))
    summary = EditSummary(output, enc.num_frames, times, hit, enc.folder, info, identity.description,
                          passed_through=enc.num_absent, bridged=enc.num_bridged,
                          wall_s=time.perf_counter() - started)
    if not opts.quiet:
        print_summary(summary, weights, eps_model.describe() if hasattr(eps_model, "describe") else backend, opts)
    if opts.metrics and output is not None:
        report_metrics(video, output, weights, enc, dev, opts.quiet)
    return summary


def report_metrics(video: Path, output: Path, weights: LoadedWeights, enc: Encoding, device: torch.device, quiet: bool) -> None:
    """Measure the written edit against its input, reusing the encoding's alignment."""
    from fvedit.metrics import compute_metrics, print_report, write_json, write_plot

    report = compute_metrics(video, output, weights, device, quads=np.asarray(enc.quads),
                             landmarks=np.asarray(enc.landmarks), present=np.asarray(enc.present), quiet=quiet)
    json_path, png_path = output.with_suffix(".metrics.json"), output.with_suffix(".metrics.png")
    write_json(report, json_path)
    write_plot(report, png_path)
    if not quiet:
        print_report(report, console)
        console.print(f"metrics: {json_path}, {png_path}")


def run_demo(out_dir: Path, *, attrs: list[str], frames: int, preset: str | None, device: str, backend: str, opts: PipelineOptions) -> EditSummary:
    """Build a face video from scikit-image's astronaut (motion + sound) and edit it."""
    from fvedit.synth import make_face_video

    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / "input.mp4"
    console.print(f"making a {frames}-frame test video with motion and sound from scikit-image's astronaut: {source}")
    make_face_video(source, frames=frames, size=(640, 360), fps=25, audio=True, face_scale=0.5)
    opts.side_by_side = False
    edited = run_edit(source, out_dir / "edited.mp4", EditRequest(attrs=attrs), preset=preset, weights_dir=None,
                      device=device, backend=backend, opts=opts)
    opts.side_by_side = True
    opts.quiet = True
    run_edit(source, out_dir / "side_by_side.mp4", EditRequest(attrs=attrs), preset=preset, weights_dir=None,
             device=device, backend=backend, opts=opts)
    console.print(f"demo folder {out_dir}: input.mp4, edited.mp4, side_by_side.mp4, and cache/ "
                  "(the encode cache: the second edit reused it)")
    return edited
