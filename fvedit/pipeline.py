"""The whole video edit, stage by stage: probe, align, crop + encoders, inversion, edit, decode + paste, write.

The video is streamed three times (align, crop, paste) rather than held in memory; what later stages
need (quads, crops, features, x_T) goes into the encode cache, which is memory-mapped. The identity is
averaged over all frames and edited once, so every frame is decoded with the same edited identity:
that, not any smoothing, is what keeps the edit temporally consistent.
"""

from __future__ import annotations

import os
import tempfile
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
    weights_fingerprint,
)
from fvedit.errors import InputError
from fvedit.face.align import OFFICIAL_SIGMAS, align_video, crop_homography
from fvedit.paste import face_masks_in_crops, feather, paste_back
from fvedit.progress import StageTimes, progress_bar
from fvedit.sampling import SamplerSpec
from fvedit.video import VideoInfo, VideoWriter, iter_frames, probe
from fvedit.weights.store import LoadedWeights

EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Echo = Callable[[str], None]


@dataclass
class PipelineOptions:
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    batch_size: int = 8
    device: torch.device = torch.device("cpu")
    face: str | int | tuple[float, float] = "largest"
    sigmas: tuple[float, float] = OFFICIAL_SIGMAS
    detector: str = "dlib"
    cache_dir: Path | None = None
    use_cache: bool = True
    require_cache: bool = False  # --from-cache: fail instead of inverting
    feather_px: float = 8.0  # at 256 px crops; scaled with the model resolution
    mask: str = "auto"  # "parser", "hull" or "auto" (parser for real weights, hull for demo weights)
    crf: int = 18
    side_by_side: bool = False
    precision: str = "fp16"  # for the torch/onnx/tensorrt backends on a GPU
    temporal_window: int = 1  # sliding-window cross-frame attention (1 = official per-frame attention)
    metrics: bool = False  # measure the written edit against the input (fvedit edit --metrics)
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

    @property
    def per_frame_ms(self) -> float:
        return 1000 * self.times.total / max(self.frames, 1)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _with_context(idx: slice, n: int, window: int) -> tuple[slice, slice]:
    """Frames to run and the part of the result to keep, for cross-frame attention over `window`.

    With window > 1 a batch also runs window//2 neighbouring frames on each side so the frames at
    its edges see their neighbours. The attention is still confined to what one batch holds, so
    batch edges approximate the whole-clip result (larger batches approximate it better).
    """
    ctx = window // 2 if window > 1 else 0
    start, stop = max(idx.start - ctx, 0), min(idx.stop + ctx, n)
    return slice(start, stop), slice(idx.start - start, idx.stop - start)


def _encoding_settings(video_sha: str, weights: LoadedWeights, eps_model: EpsModel, opts: PipelineOptions) -> dict:
    """Everything x_T depends on. With cross-frame attention, batch edges change x_T too."""
    dtype = str(getattr(eps_model, "dtype", "torch.float32")).removeprefix("torch.")
    return {
        "video": video_sha,
        "weights": weights_fingerprint(weights.manifest),
        "sampler": opts.sampler.key,
        "size": weights.config.image_size,
        "face": str(opts.face),
        "sigmas": list(opts.sigmas),
        "detector": opts.detector,
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
    with times.stage("hash video"):
        settings = _encoding_settings(file_sha256(video), weights, eps_model, opts)
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
    with times.stage("track + align"), progress_bar("align", n, quiet=opts.quiet, unit="frame") as adv:
        from fvedit.face.detect import make_detector

        def frames_for_detection():
            for frame in iter_frames(video):
                adv(1)
                yield frame.rgb

        alignment = align_video(
            frames_for_detection(), make_detector(opts.detector), size=size, select=opts.face,
            sigmas=opts.sigmas, source=str(video),
        )
    if alignment.num_frames != n:
        raise InputError(f"{video}: decoded {alignment.num_frames} frames but probed {n}; the file may be damaged")
    if alignment.max_faces_seen > 1:
        echo(f"note: up to {alignment.max_faces_seen} faces per frame; editing the largest (choose with --face)")
    missing = int((~alignment.detected).sum())
    if missing:
        echo(f"note: no face detected in {missing} of {n} frames; their crops are interpolated from neighbours")

    dim = weights.config.encoder.id_dim
    writer = EncodingWriter(
        cache_dir,
        key,
        dict(settings, frames=n, fps=str(info.fps), source=str(video)),
        {
            "quads": ((n, 4, 2), np.float64),
            "landmarks": ((n, 68, 2), np.float64),
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
        factor = supersample_factor(alignment.quads, size)
        with times.stage("crop + encoders"), progress_bar("crop", n, quiet=opts.quiet, unit="frame") as adv, torch.no_grad():
            seen = 0
            for chunk in iter_frames(video, chunk=opts.batch_size):
                idx = slice(chunk[0].index, chunk[-1].index + 1)
                seen = idx.stop
                if seen > n:
                    raise InputError(f"{video}: the crop pass decoded more frames than the {n} probed; the file may be damaged")
                frames = np.stack([f.rgb for f in chunk])
                crops = cut_crops(frames, alignment.quads[idx], size, factor)
                arr["crops"][idx] = crops
                x0 = crops_to_tensor(crops, opts.device)
                arr["z_id"][idx] = model.encoder.id_forward(x0).cpu().numpy()
                arr["z_lnd"][idx] = model.encoder.lnd_forward(x0).cpu().numpy()
                adv(len(chunk))
            if seen != n:
                raise InputError(f"{video}: the crop pass decoded {seen} frames but {n} were probed; the file may be damaged")
        z_mean = torch.from_numpy(np.asarray(arr["z_id"], dtype=np.float64).mean(0).astype(np.float32)).to(opts.device)
        with times.stage("encode (inversion)"), progress_bar("invert", n, quiet=opts.quiet, unit="frame") as adv, torch.no_grad():
            for idx in _batches(n, opts.batch_size):
                run, keep = _with_context(idx, n, opts.temporal_window)
                x0 = crops_to_tensor(arr["crops"][run], opts.device)
                z_face = model.encoder.fuse(z_mean[None], torch.from_numpy(np.array(arr["z_lnd"][run])).to(opts.device))
                x_T = opts.sampler.encode(lambda x, t: eps_model(x, t, z_face), x0)
                arr["x_T"][idx] = x_T[keep].cpu().numpy()
                adv(idx.stop - idx.start)
        folder = writer.commit()
    except BaseException:
        writer.abort()
        raise
    encoding = load_encoding(cache_dir, key)
    if encoding is None:  # pragma: no cover - only on a disk that loses data between write and read
        raise InputError(f"the encoding just written to {folder} could not be read back")
    return encoding, info, False


def _alpha_masks(weights: LoadedWeights, enc: Encoding, idx: slice, x0: torch.Tensor, opts: PipelineOptions) -> np.ndarray:
    """Feathered paste-back alpha per crop: the face parser's mask, or the landmark hull."""
    size = weights.config.image_size
    use_parser = opts.mask == "parser" or (opts.mask == "auto" and not weights.is_demo)
    if use_parser:
        with torch.no_grad():
            masks = weights.model.encoder.face_mask(x0, for_video=True)[:, 0].cpu().numpy()
    else:
        masks = face_masks_in_crops(enc.landmarks[idx], enc.quads[idx], size)
    width = opts.feather_px * size / 256
    return np.stack([feather(m, width) for m in masks]).astype(np.float32)


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
) -> Path:
    """Decode every frame from its own x_T with the one edited identity, paste back, write with audio."""
    model, size, n = weights.model, weights.config.image_size, enc.num_frames
    width = info.width * (2 if opts.side_by_side else 1)
    hom = crop_homography(np.asarray(enc.quads), size)
    writer = VideoWriter(output, like=info, width=width, height=info.height, crf=opts.crf, audio_from=video)
    with writer, progress_bar("decode + paste", n, quiet=opts.quiet, unit="frame") as adv, torch.no_grad():
        for chunk in iter_frames(video, chunk=opts.batch_size):
            idx = slice(chunk[0].index, chunk[-1].index + 1)
            if idx.stop > n:
                raise InputError(f"{video}: decoded more frames than the {n} that were encoded; the file may be damaged")
            with times.stage("decode"):
                run, keep = _with_context(idx, n, opts.temporal_window)
                x0 = crops_to_tensor(enc.crops[idx], opts.device)
                z_lnd = torch.from_numpy(np.array(enc.z_lnd[run])).to(opts.device)
                z_face = model.encoder.fuse(z_id[None].to(opts.device), z_lnd)
                x_T = torch.from_numpy(np.array(enc.x_T[run])).to(opts.device)
                edited = tensor_to_crops(opts.sampler.decode(lambda x, t: eps_model(x, t, z_face), x_T)[keep])
            with times.stage("paste"):
                alpha = _alpha_masks(weights, enc, idx, x0, opts)
                frames = np.stack([f.rgb for f in chunk])
                pasted = paste_back(frames, edited, alpha, hom[idx])
            with times.stage("write"):
                for f, out in zip(chunk, pasted):
                    rgb = np.concatenate([f.rgb, out], axis=1) if opts.side_by_side else out
                    writer.write(replace(f, rgb=np.ascontiguousarray(rgb)))
            adv(len(chunk))
        if writer.frames_written != n:
            raise InputError(f"{video}: read {writer.frames_written} frames on the last pass but {n} were encoded")
    return output
