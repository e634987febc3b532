"""The whole video edit, stage by stage: probe, align, crop + encoders, inversion, edit, decode + paste, write.

The video is streamed three times (align, crop, paste) rather than held in memory; what later stages
need (quads, crops, features, x_T) goes into the encode cache, read and written by rows. The identity
is averaged over the frames that have the face and edited once, so every frame is decoded with the
same edited identity: that, not any smoothing, is what keeps the edit temporally consistent.

Frames without the face (the person left the shot, a cutaway) are written exactly as they were
decoded: no crop, no inversion, no paste. Next to such a run the edit fades in and out over
`FADE_FRAMES` frames, so the face does not pop between edited and unedited.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fvedit.crops import crops_to_tensor, cut_crops, supersample_factor, tensor_to_crops
from fvedit.encode_cache import (
    Encoding,
    EncodingWriter,
    default_cache_dir,
    encoding_key,
    file_sha256,
    load_encoding,
    mean_identity,
    weights_fingerprint,
)
from fvedit.errors import InputError
from fvedit.face.align import OFFICIAL_SIGMAS, align_video, crop_homography
from fvedit.face.detect import detector_name
from fvedit.face.faces_file import FacesFile, ReplayDetector, load_faces_for
from fvedit.face.track import DEFAULT_MAX_GAP, nearest_known, present_runs
from fvedit.paste import face_masks_in_crops, feather, paste_back
from fvedit.progress import StageTimes, progress_bar
from fvedit.sampling import SamplerSpec
from fvedit.streaming import Prefetch, Worker, prefetched
from fvedit.video import VideoInfo, VideoWriter, iter_frames, probe
from fvedit.weights.store import LoadedWeights

EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Echo = Callable[[str], None]

STREAM_DEPTH = 1  # chunks queued between decode -> device -> paste + write (each chunk is batch_size frames)
FADE_FRAMES = 4  # present frames over which the edit fades in/out next to frames without the face


@dataclass
class PipelineOptions:
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    batch_size: int = 8
    device: torch.device = torch.device("cpu")
    face: str | int | tuple[float, float] = "largest"
    sigmas: tuple[float, float] = OFFICIAL_SIGMAS
    detector: str = "dlib"
    align: str = "fast"  # "official": full-resolution detection on every frame (fvedit.face.detect.detector_settings)
    max_gap: int = DEFAULT_MAX_GAP  # longest detection gap that may be bridged (after a re-check)
    faces: Path | None = None  # a faces file from `fvedit align`: replay its detections (no detector needed)
    cache_dir: Path | None = None
    use_cache: bool = True
    require_cache: bool = False  # --from-cache: fail instead of inverting
    feather_px: float = 8.0  # at 256 px crops; scaled with the model resolution
    mask: str = "auto"  # "parser", "hull" or "auto" (parser for real weights, hull for demo weights)
    crf: int = 18
    stream: bool = True  # video decoded ahead in a thread on every pass; pasted + written behind the device (fvedit.streaming)
    x264_preset: str = "faster"  # measured against medium in bench/x264_presets.py (README "What comes back")
    side_by_side: bool = False
    precision: str = "fp16"  # for the torch/onnx/tensorrt backends on a GPU
    temporal_window: int = 1  # sliding-window cross-frame attention (1 = official per-frame attention)
    metrics: bool = False  # measure the written edit against the input (fvedit edit --metrics)
    threads: int | None = None  # CPU threads for torch, onnxruntime and x264 (None: their defaults)
    quiet: bool = False


@dataclass
class EditIdentity:
    """The edited representative identity and a human description of the edit."""

    z_id: torch.Tensor  # [D]
    description: str


@dataclass
class EditSummary:
    output: Path | None
    frames: int
    times: StageTimes
    cache_hit: bool
    cache_folder: Path
    info: VideoInfo
    edit: str
    passed_through: int = 0  # frames without the face, written unchanged
    bridged: int = 0  # detection misses confirmed by the re-check and edited

    wall_s: float | None = None  # the whole run; stages overlap when streamed, so their sum can exceed it

    @property
    def per_frame_ms(self) -> float:
        seconds = self.wall_s if self.wall_s is not None else self.times.total
        return 1000 * seconds / max(self.frames, 1)


@dataclass(frozen=True)
class FrameBatch:
    """One UNet batch: the frames it encodes or decodes, and the neighbours run with them.

    frames: increasing indices of the frames kept (all have the face); run: the indices run
    through the UNet (the frames plus, for cross-frame attention, context on each side, never
    past a frame without the face); keep: positions of `frames` within `run`.
    """

    frames: np.ndarray
    run: np.ndarray
    keep: np.ndarray


def plan_batches(present: np.ndarray, batch_size: int, window: int) -> list[FrameBatch]:
    """The batches of an encode or decode pass, the same for both so x_T is decoded as it was made.

    Frames are taken in chunks of `batch_size` positions, the chunks the video reader yields, and
    a chunk's frames with the face form its batch. With cross-frame attention (window > 1) a
    batch also runs window//2 neighbours on each side and is split where the face is absent, so
    attention never looks across a cut; its edges approximate the whole-clip result.
    """
    present = np.asarray(present, dtype=bool)
    runs = present_runs(present)
    ctx = window // 2 if window > 1 else 0
    batches = []
    for start in range(0, len(present), batch_size):
        idx = np.flatnonzero(present[start : start + batch_size]) + start
        if not idx.size:
            continue
        if ctx == 0:
            batches.append(FrameBatch(idx, idx, np.arange(idx.size)))
            continue
        for run in runs:
            part = idx[(idx >= run.start) & (idx < run.stop)]
            if part.size:
                lo, hi = max(run.start, int(part[0]) - ctx), min(run.stop, int(part[-1]) + 1 + ctx)
                batches.append(FrameBatch(part, np.arange(lo, hi), part - lo))
    return batches


def fade_weights(present: np.ndarray, frames: int = FADE_FRAMES) -> np.ndarray:
    """float32 [N]: 1 for frames far from any frame without the face, ramping down to 1/(frames+1)
    next to one, 0 on frames without the face (they are not pasted at all)."""
    present = np.asarray(present, dtype=bool)
    if present.all():
        return np.ones(len(present), dtype=np.float32)
    dist = np.abs(np.arange(len(present)) - nearest_known(~present))  # to the nearest frame without it
    return np.minimum(1.0, dist / (frames + 1.0)).astype(np.float32)


def _encoding_settings(video_sha: str, weights: LoadedWeights, eps_model: EpsModel, opts: PipelineOptions,
                       detector: str | None = None) -> dict:
    """Everything x_T depends on. With cross-frame attention, batch edges change x_T too.

    `detector`: the name recorded in a --faces file; its replay gives that detector's results,
    so it shares their cache entry."""
    dtype = str(getattr(eps_model, "dtype", "torch.float32")).removeprefix("torch.")
    return {
        "video": video_sha,
        "weights": weights_fingerprint(weights.manifest),
        "sampler": opts.sampler.key,
        "size": weights.config.image_size,
        "face": str(opts.face),
        "sigmas": list(opts.sigmas),
        "detector": detector or detector_name(opts.detector, opts.align),
        "max_gap": opts.max_gap,
        "backend": f"{getattr(eps_model, 'name', 'custom')}-{dtype}",
        "temporal_window": opts.temporal_window,
        "batch_size": opts.batch_size if opts.temporal_window > 1 else None,
    }


def _writable_cache_dir(preferred: Path, echo: Echo) -> Path:
    """The cache folder, or a temporary one (with a note) when it cannot be created or written."""
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / "fvedit-encodings"
    echo(f"note: cannot write the encode cache folder {preferred}; using {fallback} for this run")
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def detection_workers(opts: PipelineOptions) -> int:
    """Threads that detect faces ahead of the tracker: --threads, else every core this process may use."""
    if opts.threads:
        return int(opts.threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


POOL_MIN_FRAMES = 64  # each pool thread builds its own HOG scanner (~0.4 s): not worth it for short clips


@contextmanager
def face_detectors(opts: PipelineOptions, faces: FacesFile | None, frames: int = POOL_MIN_FRAMES):
    """(detector, ahead) for the align pass: the replayed faces file (no dlib import), or a real
    detector, pooled over `detection_workers` threads when that is more than one and the video has
    at least POOL_MIN_FRAMES `frames` (`ahead` wraps the frame stream so each frame's detection
    starts early; identity without a pool)."""
    if faces is not None:
        yield ReplayDetector(faces), iter
        return
    from fvedit.face.detect import detector_settings, make_detector

    def factory(private: bool = False):
        extra = {"private_hog": True} if private and opts.detector == "dlib" else {}
        return make_detector(opts.detector, **detector_settings(opts.align), **extra)

    pooled = opts.stream and opts.detector == "dlib" and frames >= POOL_MIN_FRAMES
    workers = detection_workers(opts) if pooled else 1
    if workers <= 1:
        yield factory(), iter
        return
    from fvedit.face.pool import PooledDetector

    pool = PooledDetector(factory, workers)
    try:
        yield pool, pool.frames
    finally:
        pool.close()


def encode_video(
    video: Path,
    weights: LoadedWeights,
    eps_model: EpsModel,
    opts: PipelineOptions,
    times: StageTimes,
    echo: Echo = print,
) -> tuple[Encoding, VideoInfo, bool]:
    """The video's encoding, from the cache when a verified one exists, else computed and cached."""
    with times.stage("probe"):
        info = probe(video)
        if info.frame_count == 0:
            raise InputError(f"{video} has no video frames")
        faces = load_faces_for(opts.faces, video, info) if opts.faces is not None else None
        if faces is not None and opts.align == "official" and faces.detector != detector_name(opts.detector, "official"):
            raise InputError(f"--align official was asked for, but {opts.faces} holds {faces.detector!r} detections; "
                             f"make it with `fvedit align {video} --align official`")
    with times.stage("hash video"):
        video_sha = file_sha256(video)
        if faces is not None:
            faces.check_video_hash(video_sha, video)
        settings = _encoding_settings(video_sha, weights, eps_model, opts, faces and faces.detector)
    cache_dir = _writable_cache_dir(opts.cache_dir or default_cache_dir(), echo)
    key = encoding_key(settings)
    if opts.use_cache:
        with times.stage("load cache"):
            cached = load_encoding(cache_dir, key)
        if cached is not None:
            return cached, info, True
    if opts.require_cache:
        wanted = ", ".join(f"{k}={settings[k]}" for k in ("sampler", "backend", "temporal_window", "face", "size"))
        raise InputError(
            f"no cached encoding of {video} for these settings ({wanted}): "
            "run `fvedit encode` with the same options first, or drop --from-cache"
        )

    model, size, n = weights.model, weights.config.image_size, info.frame_count
    with times.stage("track + align"), progress_bar("align", n, quiet=opts.quiet, unit="frame") as adv, \
            prefetched(iter_frames(video), opts.stream, depth=4, name="fvedit decode frames") as decoded, \
            face_detectors(opts, faces, n) as (detector, ahead):
        def frames_for_detection():  # decoded in a thread, detected ahead in a pool, tracked here
            for frame in decoded:
                adv(1)
                yield frame.rgb

        alignment = align_video(
            ahead(frames_for_detection()), detector, size=size, select=opts.face,
            sigmas=opts.sigmas, max_gap=opts.max_gap, source=str(video),
        )
    if alignment.num_frames != n:
        raise InputError(f"{video}: decoded {alignment.num_frames} frames but probed {n}; the file may be damaged")
    for note in alignment_notes(alignment, opts):
        echo(f"note: {note}")

    present = alignment.present
    kept = alignment.present_frames
    dim = weights.config.encoder.id_dim
    writer = EncodingWriter(
        cache_dir,
        key,
        dict(settings, frames=n, fps=str(info.fps), source=str(video)),
        {
            "quads": ((n, 4, 2), np.float64),
            "landmarks": ((n, 68, 2), np.float64),
            "present": ((n,), np.bool_),
            "detected": ((n,), np.bool_),
            "crops": ((n, size, size, 3), np.uint8),
            "z_id": ((n, dim), np.float32),
            "z_lnd": ((n, weights.config.encoder.lnd_dim), np.float32),
            "x_T": ((n, 3, size, size), np.float32),
        },
    )
    try:
        arr = writer.arrays
        arr["quads"][:] = alignment.quads
        arr["landmarks"][:] = alignment.landmarks
        arr["present"][:] = present
        arr["detected"][:] = alignment.detected
        factor = supersample_factor(alignment.quads[present], size)
        with times.stage("crop + encoders"), progress_bar("crop", n, quiet=opts.quiet, unit="frame") as adv, \
                torch.no_grad(), prefetched(iter_frames(video, chunk=opts.batch_size), opts.stream, depth=STREAM_DEPTH,
                                            name="fvedit decode frames") as chunks:  # fmt: skip
            seen = 0
            for chunk in chunks:
                start = chunk[0].index
                seen = chunk[-1].index + 1
                if seen > n:
                    raise InputError(f"{video}: the crop pass decoded more frames than the {n} probed; the file may be damaged")
                rows = kept[(kept >= start) & (kept < seen)]
                if rows.size:  # frames without the face get no crop and no features
                    frames = np.stack([chunk[i - start].rgb for i in rows])
                    crops = cut_crops(frames, alignment.quads[rows], size, factor)
                    arr["crops"].put(rows, crops)
                    x0 = crops_to_tensor(crops, opts.device)
                    arr["z_id"].put(rows, model.encoder.id_forward(x0).cpu().numpy())
                    arr["z_lnd"].put(rows, model.encoder.lnd_forward(x0).cpu().numpy())
                adv(len(chunk))
            if seen != n:
                raise InputError(f"{video}: the crop pass decoded {seen} frames but {n} were probed; the file may be damaged")
        z_mean = torch.from_numpy(mean_identity(arr["z_id"][:], present)).to(opts.device)
        with times.stage("encode (inversion)"), progress_bar("invert", kept.size, quiet=opts.quiet, unit="frame") as adv, torch.no_grad():
            for batch in plan_batches(present, opts.batch_size, opts.temporal_window):
                x0 = crops_to_tensor(arr["crops"].take(batch.run), opts.device)
                z_lnd = torch.from_numpy(arr["z_lnd"].take(batch.run)).to(opts.device)
                z_face = model.encoder.fuse(z_mean[None], z_lnd)
                x_T = opts.sampler.encode(lambda x, t: eps_model(x, t, z_face), x0)
                arr["x_T"].put(batch.frames, x_T[torch.from_numpy(batch.keep)].cpu().numpy())
                adv(batch.frames.size)
        folder = writer.commit()
    except BaseException:
        writer.abort()
        raise
    encoding = load_encoding(cache_dir, key)
    if encoding is None:  # pragma: no cover - only on a disk that loses data between write and read
        raise InputError(f"the encoding just written to {folder} could not be read back")
    return encoding, info, False


def _frame_list(frames: np.ndarray, limit: int = 4) -> str:
    """'3-8, 40-52' for the runs of the given frame indices (the first `limit` runs)."""
    mask = np.zeros(int(frames.max()) + 1, dtype=bool)
    mask[frames] = True
    runs = present_runs(mask)
    text = ", ".join(f"{r.start}" if r.stop - r.start == 1 else f"{r.start}-{r.stop - 1}" for r in runs[:limit])
    return text + (", ..." if len(runs) > limit else "")


def alignment_notes(alignment, opts: PipelineOptions) -> list[str]:
    """What the user should know about the face track: several faces, bridged misses, absences."""
    notes = []
    n = alignment.num_frames
    if alignment.max_faces_seen > 1:
        notes.append(f"up to {alignment.max_faces_seen} faces per frame; editing the one chosen by --face {opts.face}")
    bridged = alignment.bridged_frames
    if bridged.size:
        notes.append(
            f"the detector missed the face in {bridged.size} of {n} frames ({_frame_list(bridged)}) and a second, "
            "more sensitive look found it there; those frames are edited with interpolated landmarks"
        )
    absent = alignment.absent_frames
    if absent.size:
        notes.append(f"no face in {absent.size} of {n} frames ({_frame_list(absent)}); they are passed through unchanged")
    for frame in alignment.reacquired:
        notes.append(f"the face was chosen again at frame {frame} after an absence; check that it is the same person")
    return notes


def _alpha_masks(weights: LoadedWeights, enc: Encoding, frames: np.ndarray, x0: torch.Tensor, opts: PipelineOptions,
                 fade: np.ndarray) -> np.ndarray:
    """Feathered paste-back alpha per crop (the face parser's mask, or the landmark hull), times
    `fade` (the video's `fade_weights`, per frame) next to frames without the face."""
    size = weights.config.image_size
    use_parser = opts.mask == "parser" or (opts.mask == "auto" and not weights.is_demo)
    if use_parser:
        with torch.no_grad():
            masks = weights.model.encoder.face_mask(x0, for_video=True)[:, 0].cpu().numpy()
    else:
        masks = face_masks_in_crops(enc.landmarks[frames], enc.quads[frames], size)
    width = opts.feather_px * size / 256
    return np.stack([feather(m, width) * w for m, w in zip(masks, fade[frames])]).astype(np.float32)


def decode_and_paste(
    video: Path,
    output: Path,
    enc: Encoding,
    info: VideoInfo,
    weights: LoadedWeights,
    eps_model: EpsModel,
    z_id: torch.Tensor,
    opts: PipelineOptions,
    times: StageTimes,
    writer_options: dict | None = None,
) -> Path:
    """Decode every frame with the face from its own x_T with the one edited identity, paste back,
    and write with audio; frames without the face are written exactly as decoded."""
    model, n = weights.model, enc.num_frames
    width = info.width * (2 if opts.side_by_side else 1)
    hom = crop_homography(np.asarray(enc.quads), weights.config.image_size)
    fade = fade_weights(enc.present)
    by_chunk: dict[int, list[FrameBatch]] = {}
    for batch in plan_batches(enc.present, opts.batch_size, opts.temporal_window):
        by_chunk.setdefault(int(batch.frames[0]) // opts.batch_size, []).append(batch)
    z_id = z_id[None].to(opts.device)
    use_parser = opts.mask == "parser" or (opts.mask == "auto" and not weights.is_demo)

    def on_device(chunk: list) -> list[tuple[FrameBatch, np.ndarray, np.ndarray | None]]:
        """The device's share of a chunk: each batch's edited crops (and the parser's masks)."""
        results = []
        for batch in by_chunk.get(chunk[0].index // opts.batch_size, []):
            with times.stage("decode"):
                x0 = crops_to_tensor(enc.crops.take(batch.frames), opts.device)
                z_face = model.encoder.fuse(z_id, torch.from_numpy(enc.z_lnd[batch.run]).to(opts.device))
                x_T = torch.from_numpy(enc.x_T.take(batch.run)).to(opts.device)
                decoded = opts.sampler.decode(lambda x, t: eps_model(x, t, z_face), x_T)
                edited = tensor_to_crops(decoded[torch.from_numpy(batch.keep)])
                alpha = _alpha_masks(weights, enc, batch.frames, x0, opts, fade) if use_parser else None
            results.append((batch, edited, alpha))
        return results

    def paste_and_write(item: tuple[list, list]) -> None:
        """The host's share: masks (landmark hull), paste-back and the video encoder, in frame order."""
        chunk, results = item
        start = chunk[0].index
        out = [f.rgb for f in chunk]  # frames without the face stay exactly as decoded
        for batch, edited, alpha in results:
            with times.stage("paste"):
                if alpha is None:
                    alpha = _alpha_masks(weights, enc, batch.frames, None, opts, fade)
                frames = np.stack([out[i - start] for i in batch.frames])
                for i, pasted in zip(batch.frames, paste_back(frames, edited, alpha, hom[batch.frames])):
                    out[i - start] = pasted
        with times.stage("write"):
            for f, rgb in zip(chunk, out):
                if opts.side_by_side:
                    rgb = np.concatenate([f.rgb, rgb], axis=1)
                writer.write(replace(f, rgb=np.ascontiguousarray(rgb)))
        adv(len(chunk))

    def checked(chunks):
        for chunk in chunks:
            if chunk[-1].index >= n:
                raise InputError(f"{video}: decoded more frames than the {n} that were encoded; the file may be damaged")
            yield chunk

    writer = VideoWriter(output, like=info, width=width, height=info.height, crf=opts.crf, preset=opts.x264_preset,
                         audio_from=video, **(writer_options or {}))
    with writer, progress_bar("decode + paste", n, quiet=opts.quiet, unit="frame") as adv, torch.no_grad():
        chunks = checked(iter_frames(video, chunk=opts.batch_size))
        if not opts.stream:
            for chunk in chunks:
                paste_and_write((chunk, on_device(chunk)))
        else:  # video decoding ahead and paste + write behind, while the device samples
            reader = Prefetch(chunks, depth=STREAM_DEPTH, name="fvedit decode frames")
            sink = Worker(paste_and_write, depth=STREAM_DEPTH, name="fvedit paste + write")
            try:
                for chunk in reader:
                    sink.put((chunk, on_device(chunk)))
                sink.finish()
            finally:
                sink.close()
                reader.close()
        if writer.frames_written != n:
            raise InputError(f"{video}: read {writer.frames_written} frames on the last pass but {n} were encoded")
    return output
