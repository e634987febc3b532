"""The one scheduler: runs the stages over a video, overlapping host work with the device.

    analysis (must finish before any inversion: DVA conditions it on the whole video's identity)
      probe + hash -> cache lookup
      align   decode -> detect (thread pool) -> track + smooth -> quads      fvedit.pipeline.align
      crop    decode -> crop warp -> identity + landmark encoders             fvedit.pipeline.crop
      identity mean over the frames with the face, edited once                fvedit.edit
    edit (one pass over the video, a chunk of `batch_size` frames at a time)
      decode the chunk's frames (reader thread, one chunk ahead)
      invert  crops -> x_T, written to the encode cache                      fvedit.pipeline.invert
      decode  x_T -> edited crops with the edited identity                    fvedit.pipeline.decode
      paste + write (worker thread, one chunk behind)                         fvedit.pipeline.paste

On a first edit each chunk is inverted and then decoded at once (x_T is written to the cache on the
way), so the paste and write of chunk k-1 overlap the device's inversion and decoding of chunk k;
a re-edit takes x_T from the cache and only decodes. The stages are plain functions over batches;
this module is the only one that knows about threads (`stream`; off: the same calls, one after the
other, the same output bit for bit). Frames without the face (a cutaway) are written exactly as
decoded: no crop, no inversion, no paste; next to such a run the edit fades in and out over
`FADE_FRAMES` frames.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from fvedit.errors import InputError
from fvedit.face.align import Alignment, crop_homography
from fvedit.face.detect import detector_name
from fvedit.face.faces_file import FacesFile, load_faces_for
from fvedit.pipeline.align import align_pass, alignment_notes
from fvedit.pipeline.batches import FrameBatch, batches_by_chunk, fade_weights, plan_batches
from fvedit.pipeline.cache import (
    Encoding,
    EncodingWriter,
    default_cache_dir,
    encoding_key,
    file_sha256,
    load_encoding,
    weights_fingerprint,
)
from fvedit.pipeline.crop import crops_to_tensor, cut_crops, encode_crops, supersample_factor
from fvedit.pipeline.decode import decode_batch
from fvedit.pipeline.invert import invert_batch
from fvedit.pipeline.options import EditIdentity, PipelineOptions
from fvedit.pipeline.paste import alpha_masks, paste_frames, uses_parser
from fvedit.pipeline.streaming import Prefetch, Worker, prefetched
from fvedit.progress import StageTimes, progress_bar
from fvedit.video import VideoInfo, VideoWriter, iter_frames, probe
from fvedit.weights.store import LoadedWeights

EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Echo = Callable[[str], None]
EditFn = Callable[[Encoding], EditIdentity]

STREAM_DEPTH = 1  # chunks queued between decode -> device -> paste + write (each chunk is batch_size frames)


@dataclass
class Analysis:
    """The analysis of a video: its encoding, complete (from the cache) or pending.

    Pending (`writer` set): everything but x_T is written, and `enc` reads the writer's files, so
    the identity edit can run before the inversion; `finish()` commits it to the cache."""

    enc: Encoding
    info: VideoInfo
    writer: EncodingWriter | None = None
    cache_dir: Path | None = None

    @property
    def cache_hit(self) -> bool:
        """Whether the encoding came from the cache (False until a pending one is finished)."""
        return self.writer is None

    def finish(self) -> Encoding:
        """The committed, verified encoding (x_T complete)."""
        if self.writer is None:
            return self.enc
        key = self.writer.final.name
        folder = self.writer.commit()
        self.writer = None
        encoding = load_encoding(self.cache_dir, key)
        if encoding is None:  # pragma: no cover - only on a disk that loses data between write and read
            raise InputError(f"the encoding just written to {folder} could not be read back")
        self.enc = encoding
        return encoding

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def backend_label(eps_model: EpsModel) -> str:
    """The backend's name and dtype, as the encode cache key records them."""
    dtype = str(getattr(eps_model, "dtype", "torch.float32")).removeprefix("torch.")
    return f"{getattr(eps_model, 'name', 'custom')}-{dtype}"


def _encoding_settings(video_sha: str, weights: LoadedWeights, eps_model: EpsModel, opts: PipelineOptions,
                       detector: str | None = None) -> dict:
    """Everything x_T depends on. With cross-frame attention, batch edges change x_T too.

    `detector`: the name recorded in a --faces file; its replay gives that detector's results,
    so it shares their cache entry."""
    return {
        "video": video_sha,
        "weights": weights_fingerprint(weights.manifest),
        "sampler": opts.sampler.key,
        "size": weights.config.image_size,
        "face": str(opts.face),
        "sigmas": list(opts.sigmas),
        "detector": detector or detector_name(opts.detector, opts.align),
        "max_gap": opts.max_gap,
        "backend": backend_label(eps_model),
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


class AnalysisPasses(Protocol):
    """The analysis' two passes over the frames, wherever they run (`InProcessPasses` here, or
    `fvedit.distributed.analysis.PoolAnalysis` on Ray workers); one instance per video."""

    def align(self, video: Path, info: VideoInfo, video_sha: str, size: int, opts: PipelineOptions,
              faces: FacesFile | None) -> Alignment: ...

    def crop(self, video: Path, n: int, quads: np.ndarray, kept: np.ndarray, weights: LoadedWeights,
             opts: PipelineOptions, arr: dict) -> None: ...


class InProcessPasses:
    """Both passes in this process: `align_pass`, then `_crop_pass` (each decodes the video once)."""

    def align(self, video, info, video_sha, size, opts, faces) -> Alignment:
        return align_pass(video, info.frame_count, size, opts, faces)

    def crop(self, video, n, quads, kept, weights, opts, arr) -> None:
        _crop_pass(video, n, quads, kept, weights, opts, arr)


def analyse(video: Path, weights: LoadedWeights, eps_model: EpsModel, opts: PipelineOptions, times: StageTimes,
            echo: Echo = print, passes: AnalysisPasses | None = None) -> Analysis:
    """The cached encoding when a verified one exists; else align, crop and encode the video into
    a pending encoding (x_T still to come). `passes`: where the two passes over the frames run."""
    passes = passes if passes is not None else InProcessPasses()
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
            return Analysis(cached, info)
    if opts.require_cache:
        wanted = ", ".join(f"{k}={settings[k]}" for k in ("sampler", "backend", "temporal_window", "face", "size"))
        raise InputError(
            f"no cached encoding of {video} for these settings ({wanted}): "
            "run `fvedit encode` with the same options first, or drop --from-cache"
        )

    size, n = weights.config.image_size, info.frame_count
    with times.stage("track + align"):
        alignment = passes.align(video, info, video_sha, size, opts, faces)
    for note in alignment_notes(alignment, opts):
        echo(f"note: {note}")
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
            "z_id": ((n, weights.config.encoder.id_dim), np.float32),
            "z_lnd": ((n, weights.config.encoder.lnd_dim), np.float32),
            "x_T": ((n, 3 * opts.sampler.states, size, size), np.float32),
        },
    )
    try:
        arr = writer.arrays
        arr["quads"][:] = alignment.quads
        arr["landmarks"][:] = alignment.landmarks
        arr["present"][:] = alignment.present
        arr["detected"][:] = alignment.detected
        with times.stage("crop + encoders"):
            passes.crop(video, n, alignment.quads, alignment.present_frames, weights, opts, arr)
        enc = Encoding(folder=writer.tmp, meta=writer.meta, quads=alignment.quads, landmarks=alignment.landmarks,
                       present=alignment.present, detected=alignment.detected, crops=arr["crops"],
                       z_id=arr["z_id"][:], z_lnd=arr["z_lnd"][:], x_T=arr["x_T"])
    except BaseException:
        writer.abort()
        raise
    return Analysis(enc, info, writer, cache_dir)


CropBatch = tuple[np.ndarray, np.ndarray]  # (frame rows, their crops uint8 [K,S,S,3])


def _crop_batches(video: Path, n: int, quads: np.ndarray, kept: np.ndarray, size: int,
                  opts: PipelineOptions) -> Iterator[CropBatch]:
    """Decode again and cut the crops of the frames with the face, a chunk of frames at a time."""
    factor = supersample_factor(quads[kept], size)
    with progress_bar("crop", n, quiet=opts.quiet, unit="frame") as adv, \
            prefetched(iter_frames(video, chunk=opts.batch_size), opts.stream, depth=STREAM_DEPTH,
                       name="fvedit decode frames") as chunks:  # fmt: skip
        seen = 0
        for chunk in chunks:
            start = chunk[0].index
            seen = chunk[-1].index + 1
            if seen > n:
                raise InputError(f"{video}: the crop pass decoded more frames than the {n} probed; the file may be damaged")
            rows = kept[(kept >= start) & (kept < seen)]
            if rows.size:  # frames without the face get no crop and no features
                yield rows, cut_crops([chunk[i - start].rgb for i in rows], quads[rows], size, factor)
            adv(len(chunk))
        if seen != n:
            raise InputError(f"{video}: the crop pass decoded {seen} frames but {n} were probed; the file may be damaged")


def _crop_pass(video: Path, n: int, quads: np.ndarray, kept: np.ndarray, weights: LoadedWeights,
               opts: PipelineOptions, arr: dict) -> None:
    """Cut every frame's crop and run the two encoders (a batch per chunk of `batch_size` frames),
    writing both to the cache."""
    batches = _crop_batches(video, n, quads, kept, weights.config.image_size, opts)
    try:
        for rows, crops in batches:
            z_id, z_lnd = encode_crops(weights.model.encoder, crops, opts.device)
            arr["crops"].put(rows, crops)
            arr["z_id"].put(rows, z_id)
            arr["z_lnd"].put(rows, z_lnd)
    finally:
        batches.close()  # stops its reader thread now, also after an error


class _Inverter:
    """Inverts the batches of a pending encoding in order, as far as a decode needs them."""

    def __init__(self, enc: Encoding, weights: LoadedWeights, eps_model: EpsModel, opts: PipelineOptions,
                 times: StageTimes, progress: Callable[[int], None] | None = None):
        self.enc, self.weights, self.eps_model, self.opts, self.times = enc, weights, eps_model, opts, times
        self.batches = plan_batches(enc.present, opts.batch_size, opts.temporal_window)
        self.z_mean = torch.from_numpy(enc.z_id_mean).to(opts.device)
        self.progress = progress
        self.done = 0  # batches inverted

    def through(self, frame: int) -> None:
        """Invert every batch whose frames start at or before `frame` (all x_T up to it exist then)."""
        while self.done < len(self.batches) and int(self.batches[self.done].frames[0]) <= frame:
            batch = self.batches[self.done]
            with self.times.stage("encode (inversion)"):
                x_T = invert_batch(self.weights.model, self.eps_model, self.opts.sampler, self.enc.crops.take(batch.run),
                                   self.enc.z_lnd[batch.run], self.z_mean, batch.keep, self.opts.device)
                self.enc.x_T.put(batch.frames, x_T)
            self.done += 1
            if self.progress is not None:
                self.progress(batch.frames.size)

    def all(self) -> None:
        self.through(len(self.enc.present))


def encode_video(
    video: Path,
    weights: LoadedWeights,
    eps_model: EpsModel,
    opts: PipelineOptions,
    times: StageTimes,
    echo: Echo = print,
) -> tuple[Encoding, VideoInfo, bool]:
    """The video's encoding, from the cache when a verified one exists, else computed and cached."""
    analysis = analyse(video, weights, eps_model, opts, times, echo)
    if analysis.cache_hit:
        return analysis.enc, analysis.info, True
    try:
        kept = analysis.enc.present_frames.size
        with progress_bar("invert", kept, quiet=opts.quiet, unit="frame") as adv:
            _Inverter(analysis.enc, weights, eps_model, opts, times, adv).all()
        return analysis.finish(), analysis.info, False
    except BaseException:
        analysis.abort()
        raise


def edit_video(
    video: Path,
    output: Path,
    weights: LoadedWeights,
    eps_model: EpsModel,
    opts: PipelineOptions,
    times: StageTimes,
    edit: EditFn,
    echo: Echo = print,
    writer_options: dict | None = None,
) -> tuple[Encoding, VideoInfo, bool, EditIdentity]:
    """Analyse (or take the cached encoding), edit the identity once, then invert (on a cache
    miss), decode, paste and write in one pass. Returns (encoding, info, cache hit, identity)."""
    analysis = analyse(video, weights, eps_model, opts, times, echo)
    try:
        with times.stage("edit identity"):
            identity = edit(analysis.enc)
        inverter = None if analysis.cache_hit else _Inverter(analysis.enc, weights, eps_model, opts, times)
        decode_and_paste(video, output, analysis.enc, analysis.info, weights, eps_model, identity.z_id, opts, times,
                         writer_options, inverter=inverter)
        return analysis.finish(), analysis.info, inverter is None, identity
    except BaseException:
        analysis.abort()
        raise


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
    *,
    inverter: _Inverter | None = None,
    decoder: Callable[[FrameBatch], np.ndarray] | None = None,
) -> Path:
    """The edit phase, chunk by chunk: [invert,] decode, paste, write with audio. Every frame with
    the face is decoded with the one edited identity; frames without it are written exactly as
    decoded. With an `inverter` (a pending encoding) x_T is made just before a batch is decoded
    (and written to the cache); without one `enc` must be complete. A `decoder` (the Ray pool's)
    replaces the in-process decode: called with each batch in plan order, it returns its crops."""
    model, n, size = weights.model, enc.num_frames, weights.config.image_size
    width = info.width * (2 if opts.side_by_side else 1)
    hom = crop_homography(np.asarray(enc.quads), size)
    fade = fade_weights(enc.present)
    by_chunk = batches_by_chunk(plan_batches(enc.present, opts.batch_size, opts.temporal_window), opts.batch_size)
    z_id = z_id.to(opts.device)
    parser = model.encoder.face_mask if uses_parser(opts.mask, weights.is_demo) else None

    def on_device(chunk: list) -> list[tuple[FrameBatch, np.ndarray, np.ndarray | None]]:
        """The device's share of a chunk: each batch's edited crops (and the parser's masks)."""
        results = []
        for batch in by_chunk.get(chunk[0].index // opts.batch_size, []):
            if inverter is not None:
                inverter.through(int(batch.run[-1]))
            with times.stage("decode"):
                if decoder is not None:
                    edited = decoder(batch)
                else:
                    edited = decode_batch(model, eps_model, opts.sampler, enc.x_T.take(batch.run), enc.z_lnd[batch.run],
                                          z_id, batch.keep, opts.device)
                alpha = None
                if parser is not None:
                    x0 = crops_to_tensor(enc.crops.take(batch.frames), opts.device)
                    alpha = alpha_masks(None, None, size, opts.feather_px, fade[batch.frames], parser, x0)
            results.append((batch, edited, alpha))
        return results

    def paste_and_write(item: tuple[list, list]) -> None:
        """The host's share: masks (landmark hull), paste-back and the video encoder, in frame order."""
        chunk, results = item
        start = chunk[0].index
        # Pasted in place (frames without the face stay exactly as decoded); side by side keeps
        # the decoded frame for the left half.
        out = [f.rgb if f.rgb.flags.writeable and not opts.side_by_side else f.rgb.copy() for f in chunk]
        for batch, edited, alpha in results:
            with times.stage("paste"):
                if alpha is None:
                    alpha = alpha_masks(enc.landmarks[batch.frames], enc.quads[batch.frames], size, opts.feather_px,
                                        fade[batch.frames])
                reference = enc.crops.take(batch.frames) if opts.paste == "delta" else None
                paste_frames(out, start, batch.frames, edited, alpha, hom, reference)
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

    label = "invert + decode + paste" if inverter is not None else "decode + paste"
    writer = VideoWriter(output, like=info, width=width, height=info.height, crf=opts.crf, preset=opts.x264_preset,
                         audio_from=video, **(writer_options or {}))
    with writer, progress_bar(label, n, quiet=opts.quiet, unit="frame") as adv, torch.no_grad():
        chunks = checked(iter_frames(video, chunk=opts.batch_size))
        if not opts.stream:
            for chunk in chunks:
                paste_and_write((chunk, on_device(chunk)))
        else:  # video decoding ahead and paste + write behind, while the device works
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
        if inverter is not None:
            inverter.all()  # nothing is left unless the video ended early (caught above)
    return output
