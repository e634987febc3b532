"""The `fvedit` command line. Subcommands speak the user's jobs; the work lives in library modules.

Exit codes: 0 ok, 1 runtime failure, 2 bad arguments or bad input (one-line `error:` message),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM); an interrupted run keeps no partial output.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from fvedit.errors import FveditError, InputError

APP_HELP = """Fast face-video attribute editing with Diffusion Video Autoencoders.

Weights: without imported weights (`fvedit weights import-dva`) every command runs on seeded,
UNTRAINED demo weights and says so; their output shows the pipeline, not DVA's quality.

Exit codes: 0 ok; 1 runtime failure (disk full, out of memory); 2 bad arguments or bad input
(a one-line 'error:' message); 130 interrupted by Ctrl-C; 143 terminated (SIGTERM). An
interrupted or failed run leaves no partial output behind.
"""

app = typer.Typer(
    name="fvedit",
    help=APP_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register_subapps() -> None:
    from fvedit.runtime.export_cli import export_command
    from fvedit.weights.cli import app as weights_app

    app.add_typer(weights_app, name="weights", help="Import, list, verify and fetch model weights.")
    app.command("export")(export_command)
    from fvedit.metrics.cli import metrics_command

    app.command("metrics")(metrics_command)
    from fvedit.bench_cli import bench_command

    app.command("bench")(bench_command)


_register_subapps()

PresetOpt = typer.Option(
    None,
    "--preset",
    help="Model size for the built-in demo weights: 'tiny' (fast on a CPU) or 'dva256' (the official "
    "architecture). Default: the size of the imported weights, else 'tiny' on a CPU and 'dva256' on a GPU.",
)
WeightsDirOpt = typer.Option(
    None,
    "--weights-dir",
    help="Folder with imported weights (manifest.json + safetensors). Default: $FVEDIT_WEIGHTS_DIR, "
    "else ~/.cache/fvedit/weights. Without weights there, fvedit uses untrained demo weights and says so.",
)
DeviceOpt = typer.Option("auto", "--device", help="Where to run: 'auto' (CUDA if present), 'cpu', 'cuda' or 'cuda:N'.")
ThreadsOpt = typer.Option(
    None, "--threads", min=1, show_default=False,
    help="CPU threads for torch, onnxruntime, the x264 encoder and face detection (results do not depend on it). "
    "Default: every core this process may use.",
)


@app.command()
def info(
    weights_dir: Optional[Path] = WeightsDirOpt,
) -> None:
    """Show versions, devices, available presets and which weights would be used."""
    import torch

    from fvedit import __version__
    from fvedit.config import PRESETS
    from fvedit.weights.store import describe_weights_dir

    typer.echo(f"fvedit {__version__}  torch {torch.__version__}")
    typer.echo(f"CUDA: {'yes, ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no (CPU only)'}")
    for name, cfg in PRESETS.items():
        typer.echo(f"preset {name}: {cfg.unet.image_size}px UNet, {cfg.unet.model_channels} base channels")
    typer.echo(describe_weights_dir(weights_dir))
    from fvedit.pixels import ext
    from fvedit.runtime.backends import available_backends

    typer.echo(f"pixel kernels: {ext.status()}")
    typer.echo(f"triton: {_triton_line(torch.cuda.is_available())}")
    for name, status in available_backends().items():
        typer.echo(f"backend {name}: {status}")


def _triton_line(cuda: bool) -> str:
    """Triton's version and what it is used for here, without importing it (that fixes its mode)."""
    from importlib import metadata

    try:
        version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        return "not installed: the torch backend runs GroupNorm and cross-frame attention as PyTorch ops"
    use = "compiled kernels for the torch backend" if cuda else "its kernels need a GPU (or TRITON_INTERPRET=1); twins here"
    return f"{version}, {use}"


@app.command()
def reconstruct(
    image: Optional[Path] = typer.Argument(
        None, help="A face photo (PNG/JPEG). Default: the astronaut portrait that ships with scikit-image."
    ),
    output: Path = typer.Option(Path("fvedit-out/reconstruct.png"), "-o", "--output", help="Where to write the PNG (input | reconstruction)."),
    sampler: str = typer.Option("dpm", "--sampler", help="'dpm' (DPM-Solver++, fast), 'ddim' (the official sampler) or 'bdia' (BDIA-DDIM: exact inversion, two states cached per frame)."),
    steps: int = typer.Option(15, "--steps", min=2, max=1000, help="Model calls per direction (encode and decode each)."),
    preset: Optional[str] = PresetOpt,
    weights_dir: Optional[Path] = WeightsDirOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors and the result path."),
) -> None:
    """Encode one aligned face to its noise map x_T and decode it back: the autoencoder round trip."""
    from fvedit.reconstruct import run_reconstruct
    from fvedit.runtime.device import set_threads

    set_threads(threads)
    run_reconstruct(
        image=image, output=output, sampler=sampler, steps=steps, preset=preset,
        weights_dir=weights_dir, device=device, quiet=quiet,
    )



SamplerOpt = typer.Option("dpm", "--sampler", help="'dpm' (DPM-Solver++ 3rd order, fast), 'ddim' (the official sampler) or 'bdia' (BDIA-DDIM, exact inversion).")
StepsOpt = typer.Option(15, "--steps", min=2, max=1000, help="UNet calls per direction (inversion and decoding each). The official code uses DDIM with 1000.")
BatchOpt = typer.Option(8, "--batch-size", "-b", min=1, help="Frames per UNet batch. Larger is faster on a GPU until memory runs out.")
BackendOpt = typer.Option("auto", "--backend", help="UNet runtime: auto, reference (fp32 eager, exact), torch (fp16 + fused kernels on CUDA), onnxruntime, tensorrt.")
PrecisionOpt = typer.Option("fp16", "--precision", help="Arithmetic of the torch/onnxruntime/tensorrt backends on a GPU: fp16, bf16 or fp32 (the reference backend is always fp32; on a CPU the torch backend uses fp32).")
FaceOpt = typer.Option("largest", "--face", help="Which face to edit when several are visible: 'largest', 'first', an index counted left to right (0, 1, ...) or a point 'x,y' in pixels of the first frame with a face.")
CacheDirOpt = typer.Option(None, "--cache-dir", help="Where encodings (the inversion of a video) are kept for reuse. Default: $FVEDIT_CACHE_DIR, else ~/.cache/fvedit/encodings.")
MaxGapOpt = typer.Option(
    25, "--max-gap", min=0,  # fvedit.face.track.DEFAULT_MAX_GAP (not imported: `--help` stays fast)
    help="Longest run of frames on which the detector may miss the face and still have it bridged: each such "
    "frame is looked at again, more sensitively, and edited only where the face is confirmed. Frames without "
    "the face (the person left the shot, a cutaway) are always written unchanged. 0 = never bridge.",
)
AlignOpt = typer.Option(
    "fast", "--align",
    help="Face detection: 'fast' (HOG on a copy at most 640 px wide, landmarks at full resolution; on 1080p the "
    "crops move ~1 px from the official ones) or 'official' (HOG on every full-resolution frame, as the official "
    "DVA preprocessing: the same boxes, landmarks and crops; several times slower detection).",
)
FacesOpt = typer.Option(
    None, "--faces", show_default=False,
    help="A faces file from `fvedit align` for this video: replay its detections instead of running the face "
    "detector, so no dlib is needed here. It must match the video's frame count and size; use the --face and "
    "--max-gap it was made with (or any that ask it nothing it lacks).",
)
QuietOpt = typer.Option(False, "--quiet", "-q", help="Print only errors and warnings: no progress bars, no summary.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Also log library details (pixel backend, detector) while running.")


def _options(**kw):
    """PipelineOptions from CLI values (imported lazily: `fvedit --help` stays fast)."""
    from fvedit.pipeline import PipelineOptions
    from fvedit.diffusion.spec import SamplerSpec
    from fvedit.face.track import parse_selection
    from fvedit.runtime.device import set_threads

    sampler, steps = kw.pop("sampler"), kw.pop("steps")
    face = parse_selection(kw.pop("face"))
    from fvedit.face.detect import detector_settings

    detector_settings(kw.get("align", "fast"))  # an unknown --align fails before any work
    if "x264_preset" in kw:
        from fvedit.video.writer import X264_PRESETS

        if kw["x264_preset"] not in X264_PRESETS:
            raise InputError(f"unknown --x264-preset {kw['x264_preset']!r}: use one of {', '.join(X264_PRESETS)}")
    threads = set_threads(kw.pop("threads", None))
    return PipelineOptions(sampler=SamplerSpec(sampler, steps), face=face, threads=threads, **kw)


def _logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")


WorkersOpt = typer.Option(
    1, "--workers", min=1,
    help="Worker processes for the video's analysis (each decodes its own chunks of frames: face detection, "
    "crops, encoders) and the model work (inversion, decoding). 1: this process "
    "only (no Ray). N > 1: a local Ray instance with N workers, or N workers on the cluster at --ray-address; each "
    "holds the model once (one GPU each on CUDA). Needs Ray: pip install 'fvedit\\[ray]'. The output is the same "
    "as with 1.",
)
RayAddressOpt = typer.Option(
    None, "--ray-address", show_default=False,
    help="Join the Ray cluster at this address (host:port of its head, from `ray start --head`) instead of "
    "starting a local instance. With --workers above 1, $RAY_ADDRESS is used when this is not given.",
)


@app.command()
def edit(
    videos: list[Path] = typer.Argument(..., help="The input video(s) (any common container/codec)."),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", show_default=False,
        help="Output video (.mp4, .mov, .m4v or .mkv). Default: <input>.edited.mp4 next to the input. "
        "With several inputs: a folder, and each output keeps its input's name. "
        "An existing file there is overwritten once the new one is complete; the input never is.",
    ),
    attr: list[str] = typer.Option([], "--attr", "-a", help="Attribute to change, e.g. 'young', 'old=0.4', 'young=0.3,eyeglasses=0.5'. Repeatable; all are applied in one decode. See `fvedit attrs`."),
    strength: Optional[float] = typer.Option(None, "--strength", "-s", help="Signed step for attributes given without '=value' (default: each attribute's own default) or the text edit's scale (default 1.0)."),
    text: Optional[str] = typer.Option(None, "--text", help="CLIP text edit target, e.g. 'face with beard' (needs open-clip-torch and its ViT-B/16 weights)."),
    neutral: str = typer.Option("face", "--neutral", help="CLIP text edit source description."),
    clip_steps: int = typer.Option(200, "--clip-steps", min=1, help="Optimisation steps for a text edit (the paper uses 2000)."),
    side_by_side: bool = typer.Option(False, "--side-by-side", help="Write original | edit next to each other (twice the width)."),
    sampler: str = SamplerOpt,
    steps: int = StepsOpt,
    batch_size: int = BatchOpt,
    backend: str = BackendOpt,
    precision: str = PrecisionOpt,
    temporal_window: int = typer.Option(1, "--temporal-window", min=1, help="Sliding-window cross-frame attention over this many frames (1 = the official per-frame attention; odd sizes are centred, even ones lean to the past). Changes outputs vs the official model; batches get window//2 context frames on each side."),
    face: str = FaceOpt,
    max_gap: int = MaxGapOpt,
    align: str = AlignOpt,
    faces: Optional[Path] = FacesOpt,
    feather: float = typer.Option(8.0, "--feather", min=0.0, help="Width in pixels (of a 256 px crop) of the soft edge of the paste-back mask; 0 = hard official mask."),
    mask: str = typer.Option("auto", "--mask", help="Paste-back mask: 'parser' (face parser, as official), 'hull' (landmark hull) or 'auto' (parser with real weights, hull with demo weights)."),
    paste: str = typer.Option("delta", "--paste", help="'delta' (default) adds only the edit's change (edit - input crop) to the original frame, so the face keeps its full-resolution detail and an edit that changes nothing returns the frame; 'full' scales the decoded 256 px face into the frame (the official way; soft on HD faces, and better when an edit removes fine detail such as glasses frames, which the delta leaves at full resolution)."),
    crf: int = typer.Option(18, "--crf", min=0, max=51, help="H.264 quality (lower is better, 18 is visually lossless)."),
    x264_preset: str = typer.Option(
        "faster", "--x264-preset",
        help="x264 speed/size trade-off: ultrafast ... veryslow. 'faster' (default) writes 1080p 1.7-1.8x faster "
        "than 'medium' with PSNR within 0.2 dB and size within about 10 % at the same --crf (bench/x264_presets.py).",
    ),
    cache_dir: Optional[Path] = CacheDirOpt,
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute the inversion even if a cached encoding exists (it is then refreshed)."),
    from_cache: bool = typer.Option(False, "--from-cache", help="Require a cached encoding (from `fvedit encode` or an earlier edit); fail instead of inverting."),
    seed: int = typer.Option(0, "--seed", help="Seed for the text edit's optimisation (the rest is deterministic)."),
    metrics: bool = typer.Option(False, "--metrics", help="After writing, measure the edit against the input (TL-ID, TG-ID, identity preservation, face PSNR/SSIM, warping error) and write <output>.metrics.json and .metrics.png."),
    workers: int = WorkersOpt,
    ray_address: Optional[str] = RayAddressOpt,
    preset: Optional[str] = PresetOpt,
    weights_dir: Optional[Path] = WeightsDirOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Edit the face in a video: same size, length, frame rate and audio, one consistent edit in every frame.

    Without --attr or --text it writes a reconstruction: every frame decoded back from its inversion
    with the unedited mean identity (shows what the model keeps of the face). Frames without the
    face are written unchanged.
    """
    from fvedit.pipeline.jobs import EditRequest, run_jobs

    _logging(verbose)
    opts = _options(sampler=sampler, steps=steps, face=face, batch_size=batch_size, cache_dir=cache_dir,
                    use_cache=not no_cache, feather_px=feather, mask=mask, crf=crf, x264_preset=x264_preset, side_by_side=side_by_side,
                    quiet=quiet, max_gap=max_gap, threads=threads, faces=faces, align=align, paste=paste)
    if mask not in ("auto", "parser", "hull"):
        raise InputError(f"unknown --mask {mask!r}: use auto, parser or hull")
    from fvedit.pipeline.paste import PASTE_MODES

    if paste not in PASTE_MODES:
        raise InputError(f"unknown --paste {paste!r}: use {' or '.join(PASTE_MODES)}")
    if no_cache and from_cache:
        raise InputError("--no-cache and --from-cache contradict each other; use one")
    opts.require_cache = from_cache
    opts.precision, opts.temporal_window, opts.metrics = precision, temporal_window, metrics
    run_jobs(list(videos), output, EditRequest(list(attr), strength, text, neutral, clip_steps, seed), preset=preset,
             weights_dir=weights_dir, device=device, backend=backend, opts=opts, workers=workers, address=ray_address)


@app.command()
def preview(
    video: Path = typer.Argument(..., help="The input video."),
    attr: str = typer.Option(..., "--attr", help="The one attribute to preview (see `fvedit attrs`), e.g. young."),
    strengths: str = typer.Option("-0.6,-0.3,0,0.3,0.6", "--strengths", help="Comma-separated edit strengths, one column each (0 = the reconstruction)."),
    frames: int = typer.Option(3, "--frames", min=1, help="Keyframes, one row each, spread over the frames that have the face."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The PNG contact sheet (default: <video>.preview.png)."),
    sampler: str = SamplerOpt,
    steps: int = StepsOpt,
    backend: str = BackendOpt,
    precision: str = PrecisionOpt,
    face: str = FaceOpt,
    max_gap: int = MaxGapOpt,
    align: str = AlignOpt,
    faces: Optional[Path] = FacesOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    preset: Optional[str] = PresetOpt,
    weights_dir: Optional[Path] = WeightsDirOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Preview one attribute at several strengths on a few keyframes before the long edit: a labelled PNG.

    The identity is the whole video's mean, as in the edit, so the video is analysed once (or read
    from the encode cache of `fvedit encode` / an earlier edit); only the keyframes are inverted.
    """
    from fvedit.pipeline.preview import parse_strengths, run_preview

    values = parse_strengths(strengths)
    out = output or video.with_name(f"{video.stem}.preview.png")
    opts = _options(sampler=sampler, steps=steps, face=face, cache_dir=cache_dir, quiet=quiet, precision=precision,
                    max_gap=max_gap, align=align, threads=threads, faces=faces)
    run_preview(video, out, attr, strengths=values, keyframes=frames, preset=preset, weights_dir=weights_dir,
                device=device, backend=backend, opts=opts)


@app.command()
def encode(
    videos: list[Path] = typer.Argument(..., help="The input video(s)."),
    sampler: str = SamplerOpt,
    steps: int = StepsOpt,
    batch_size: int = BatchOpt,
    backend: str = BackendOpt,
    precision: str = PrecisionOpt,
    temporal_window: int = typer.Option(1, "--temporal-window", min=1, help="As for `fvedit edit`: an edit that uses a window must find an encoding made with the same window and batch size."),
    face: str = FaceOpt,
    max_gap: int = MaxGapOpt,
    align: str = AlignOpt,
    faces: Optional[Path] = FacesOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute and overwrite an existing encoding."),
    workers: int = WorkersOpt,
    ray_address: Optional[str] = RayAddressOpt,
    preset: Optional[str] = PresetOpt,
    weights_dir: Optional[Path] = WeightsDirOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Invert a video once (align, identities, landmarks, x_T) and cache it, so later edits skip the inversion.

    An edit finds the encoding when it uses the same sampler, steps, face, --max-gap, --align, backend,
    precision and temporal window.
    """
    from fvedit.pipeline.jobs import EditRequest, run_jobs

    opts = _options(sampler=sampler, steps=steps, face=face, batch_size=batch_size, cache_dir=cache_dir, quiet=quiet,
                    precision=precision, temporal_window=temporal_window, use_cache=not no_cache, max_gap=max_gap, align=align,
                    threads=threads, faces=faces)
    run_jobs(list(videos), None, EditRequest([]), encode_only=True, preset=preset, weights_dir=weights_dir, device=device,
             backend=backend, opts=opts, workers=workers, address=ray_address)


@app.command()
def align(
    video: Path = typer.Argument(..., help="The input video."),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", show_default=False,
        help="Where to write the faces file (.npz). Default: <input>.faces.npz next to the input. Written "
        "completely or not at all; an existing file is replaced only once the new one is complete.",
    ),
    face: str = FaceOpt,
    max_gap: int = MaxGapOpt,
    align: str = AlignOpt,
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, show_default=False,
        help="Threads that detect faces ahead of the tracker (results are the same for any number). "
        "Default: every core this process may use.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors and the path written."),
) -> None:
    """Detect and track the face once and save the results, so `edit`, `encode` and `bench` can run without
    the face detector (--faces FILE): analyse on a laptop with dlib, edit on a server without it.

    \b
    The faces file is an .npz (numpy.load(allow_pickle=False)), version 1.
    Scalars: format ('fvedit-faces'), version, frames (N), width, height
      (upright), detector, video_sha256 (the file the faces were found in:
      a replay needs the same bytes), can_recheck, and the tracking
      settings: face, max_gap, sigmas float64 [2], min_relative_score.
    Detections (every face, in the detector's order):
      det_frame int64 [K], det_box float64 [K, 4] (x0, y0, x1, y1),
      det_score float64 [K], det_landmarks float64 [K, 68, 2].
    Re-checks of short gaps: near_frame int64 [M], near_box float64 [M, 4]
      (the box expected), and the faces they returned: near_face_call
      int64 [L] (row in near_*), near_face_box float64 [L, 4],
      near_face_score float64 [L], near_face_landmarks float64 [L, 68, 2].
    What the crops use: quads float64 [N, 4, 2] (TL, BL, BR, TR),
      landmarks float64 [N, 68, 2], present bool [N], detected bool [N],
      faces_seen int64 [N], reacquired int64 [R].
    """
    from fvedit.face.track import parse_selection
    from fvedit.pipeline.jobs import run_align

    run_align(video, output, face=parse_selection(face), max_gap=max_gap, align=align, threads=threads, quiet=quiet)


@app.command()
def attrs() -> None:
    """List the editable attributes (the official classifier's 40 CelebA attributes), aliases and default strengths."""
    from fvedit.edit import attribute_table

    typer.echo(f"{'name':<22}{'default':>8}  {'official':<22}aliases")
    for row in attribute_table():
        typer.echo(f"{row.name:<22}{row.default_strength:>+8.2f}  {row.official:<22}{', '.join(row.aliases)}")
    typer.echo("Use --attr NAME or --attr NAME=STRENGTH; a negative strength reverses the direction (old = -young).")


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("fvedit-demo"), "--out-dir", "-o", help="Folder for input.mp4, edited.mp4, side_by_side.mp4 and the encode cache (cache/)."),
    attr: list[str] = typer.Option(["young"], "--attr", "-a", help="Attribute edit(s) to apply, as for `fvedit edit`."),
    frames: int = typer.Option(24, "--frames", min=2, help="Length of the generated test video."),
    sampler: str = SamplerOpt,
    steps: int = typer.Option(10, "--steps", min=2, max=1000, help="UNet calls per direction."),
    batch_size: int = BatchOpt,
    backend: str = BackendOpt,
    preset: Optional[str] = PresetOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Make a short face video with motion and sound (scikit-image's astronaut) and edit it, offline.

    Uses imported weights when there are any, else the untrained demo weights: then the edited face
    is deterministic noise that shows the pipeline (tracking, inversion, decoding, paste-back, timing
    and audio kept), not DVA's quality, and the files say so in their metadata (comment tag).
    """
    from fvedit.pipeline.jobs import run_demo

    opts = _options(sampler=sampler, steps=steps, face="largest", batch_size=batch_size, quiet=quiet,
                    cache_dir=out_dir / "cache", threads=threads)
    run_demo(out_dir, attrs=list(attr), frames=frames, preset=preset, device=device, backend=backend, opts=opts)


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM. Not a KeyboardInterrupt, so typer/click do not swallow it into 'Aborted!'."""

    def __init__(self, signum: int, stage: str | None):
        super().__init__(signum)
        self.signum, self.stage = signum, stage


def _interrupt(signum, frame) -> None:
    import signal

    from fvedit.progress import current_stage

    for sig in (signal.SIGINT, signal.SIGTERM):  # let the clean-up run to its end
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum, current_stage())


def _interrupted_message(err: Interrupted, argv: list[str] | None) -> str:
    import signal

    words = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")][:1]
    command = "fvedit " + " ".join(words) if words else "fvedit"
    what = "interrupted (Ctrl-C)" if err.signum == signal.SIGINT else "terminated (SIGTERM)"
    during = f" during '{err.stage}'" if err.stage else ""
    return f"{what}: {command} stopped{during}; no partial output was kept"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: turn fvedit errors into a one-line message and an exit code."""
    import signal

    from fvedit.runtime.host_memory import retain_freed_memory

    retain_freed_memory()  # before any frame or tensor is allocated (see the module)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        app(args=argv, standalone_mode=True)
    except Interrupted as err:
        typer.echo(_interrupted_message(err, argv), err=True)
        sys.exit(128 + err.signum)
    except FveditError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except OSError as err:  # disk full, permissions: one line, not a traceback
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        typer.echo(f"error: {err.strerror or err}{where}", err=True)
        sys.exit(1)
    except RuntimeError as err:
        if "out of memory" not in str(err).lower():
            raise
        typer.echo("error: the GPU ran out of memory; try a smaller --batch-size or --precision fp16", err=True)
        sys.exit(1)
    finally:
        for sig, handler in previous.items():  # main() may be called in-process (tests, notebooks)
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
