"""Measure an edit: stream an original video and its edit side by side and compute every metric.

One alignment pass over the ORIGINAL (or the quads and landmarks an edit already computed),
then one lockstep pass over both videos in chunks. Both videos are cut with the original's
face quads, so every comparison looks at the same face region:
- identity: the model's identity net on crops at the model's size -> TL-ID, TG-ID, preservation;
- quality: `quality_size` px crops (256 = DVA's evaluation size) -> PSNR, SSIM, MS-SSIM, inside
  the landmark hull of the original's face (extended over the forehead) or on the whole crop;
- temporal: optical flow of the original between neighbouring frames -> warping error of both
  videos over the face hull in frame coordinates (or the whole frame).
Only a chunk of frames, the previous frame and the per-frame numbers are held in memory.
"""

from __future__ import annotations

import time
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch

from fvedit.pipeline.crop import crops_to_tensor, cut_crops, supersample_factor
from fvedit.errors import InputError
from fvedit.face.align import OFFICIAL_SIGMAS, align_video
from fvedit.metrics.flow import face_mask_in_frame, make_flow, pair_mask, warp_error
from fvedit.metrics.identity import identity_metrics
from fvedit.metrics.image import ms_ssim, ms_ssim_scales, psnr, ssim, uint8_to_unit
from fvedit.metrics.report import MetricsReport
from fvedit.pipeline.paste import face_masks_in_crops
from fvedit.progress import progress_bar
from fvedit.video import VideoInfo, iter_frames, probe
from fvedit.weights.store import LoadedWeights

REGIONS = ("face", "full")
QUALITY_SIZE = 256
DEMO_IDENTITY_NOTE = (
    "the identity net is untrained (demo weights): TL-ID, TG-ID and identity preservation are computed "
    "but only exercise the machinery; import the DVA weights for meaningful identity numbers"
)


def check_comparable(original: VideoInfo, edited: VideoInfo) -> None:
    """An edit must have the original's frame count and size; say which differs in one line."""
    if original.frame_count == 0:
        raise InputError(f"{original.path} has no video frames")
    if edited.frame_count != original.frame_count:
        raise InputError(
            f"{edited.path} has {edited.frame_count} frames but {original.path} has {original.frame_count}: "
            "compare a video with its own edit (same length and size)"
        )
    if (edited.width, edited.height) != (original.width, original.height):
        raise InputError(
            f"{edited.path} is {edited.width}x{edited.height} but {original.path} is {original.width}x{original.height}: "
            "compare a video with its own edit (same length and size); a side-by-side output will not do"
        )


def _lockstep(original: Path, edited: Path, chunk: int):
    """Chunks of both videos side by side; a length mismatch found while decoding is an InputError."""
    for a, b in zip_longest(iter_frames(original, chunk=chunk), iter_frames(edited, chunk=chunk)):
        if a is None or b is None or len(a) != len(b):
            raise InputError(
                f"{original} and {edited} decode to different numbers of frames although their headers agree; "
                "one of them may be damaged"
            )
        yield a, b


def _track(original: Path, n: int, size: int, detector: str, face, quiet: bool, notes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quads [N, 4, 2], landmarks [N, 68, 2], present [N]) of the original video's face."""
    from fvedit.face.detect import make_detector

    with progress_bar("align", n, quiet=quiet, unit="frame") as adv:

        def frames():
            for frame in iter_frames(original):
                adv(1)
                yield frame.rgb

        alignment = align_video(frames(), make_detector(detector), size=size, select=face, sigmas=OFFICIAL_SIGMAS, source=str(original))
    if alignment.num_frames != n:
        raise InputError(f"{original}: decoded {alignment.num_frames} frames but probed {n}; the file may be damaged")
    if alignment.num_bridged:
        notes.append(f"the detector missed the face in {alignment.num_bridged} of {n} original frames; "
                     "a second look confirmed it and its region there is interpolated")
    if alignment.max_faces_seen > 1:
        notes.append(f"up to {alignment.max_faces_seen} faces per frame; measured the one selected by face={face!r}")
    return alignment.quads, alignment.landmarks, alignment.present


def compute_metrics(
    original_path: Path | str,
    edited_path: Path | str,
    weights: LoadedWeights,
    device: torch.device | str = "cpu",
    *,
    flow: str = "farneback",
    region: str = "face",
    quality_size: int = QUALITY_SIZE,
    batch_size: int = 8,
    detector: str = "dlib",
    face: str | int | tuple[float, float] = "largest",
    quads: np.ndarray | None = None,
    landmarks: np.ndarray | None = None,
    present: np.ndarray | None = None,
    quiet: bool = True,
) -> MetricsReport:
    """Every metric of `edited_path` against `original_path` (see the module docstring).

    `weights` supplies the identity net (imported or demo weights). `quads`/`landmarks`
    ([N, 4, 2] / [N, 68, 2], e.g. from an edit's encode cache) skip the face alignment; `present`
    (bool [N]) says which frames have the face (default: all). Only those are measured: frames
    without the face were passed through, so their per-frame values are NaN and leave the means.
    `region`: 'face' (landmark hull) or 'full' (whole crop for quality, whole frame for warping).
    """
    from fvedit.runtime.device import resolve_device

    start = time.perf_counter()
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if region not in REGIONS:
        raise InputError(f"unknown region {region!r}: use 'face' (landmark hull) or 'full' (whole crop/frame)")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    scales = ms_ssim_scales(quality_size, quality_size)  # also rejects crops smaller than the SSIM window
    original, edited = Path(original_path), Path(edited_path)
    info_o, info_e = probe(original), probe(edited)
    check_comparable(info_o, info_e)
    n, size = info_o.frame_count, weights.config.image_size
    flow_fn = make_flow(flow, dev)  # fail on a missing flow backend before the slow work

    notes: list[str] = [DEMO_IDENTITY_NOTE] if weights.is_demo else []
    if (quads is None) != (landmarks is None):
        raise InputError("pass both quads and landmarks of the original's face, or neither")
    if quads is None:
        quads, landmarks, present = _track(original, n, size, detector, face, quiet, notes)
    quads, landmarks = np.asarray(quads, dtype=np.float64), np.asarray(landmarks, dtype=np.float64)
    if quads.shape != (n, 4, 2) or landmarks.shape != (n, 68, 2):
        raise InputError(f"face track shapes {quads.shape} / {landmarks.shape} do not match the video's {n} frames")
    present = np.ones(n, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    if present.shape != (n,) or not present.any():
        raise InputError(f"the face must be present in at least one of the {n} frames (mask of shape {present.shape})")
    if not present.all():
        notes.append(f"measured the {int(present.sum())} of {n} frames that have the face; the others were passed through")
    id_factor, q_factor = supersample_factor(quads[present], size), supersample_factor(quads[present], quality_size)
    id_net = weights.model.encoder.id_forward

    emb_o, emb_e, psnr_v, ssim_v, ms_v = [], [], [], [], []
    warp_o: list[float] = []
    warp_e: list[float] = []
    prev: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
    with progress_bar("metrics", n, quiet=quiet, unit="frame") as adv, torch.no_grad():
        for chunk_o, chunk_e in _lockstep(original, edited, batch_size):
            start = chunk_o[0].index
            rows = np.flatnonzero(present[start : chunk_o[-1].index + 1]) + start
            if rows.size:
                fo = np.stack([chunk_o[i - start].rgb for i in rows])
                fe = np.stack([chunk_e[i - start].rgb for i in rows])
                for frames, store in ((fo, emb_o), (fe, emb_e)):
                    crops = cut_crops(frames, quads[rows], size, id_factor)
                    store.append(id_net(crops_to_tensor(crops, dev)).float().cpu().numpy())

                co = uint8_to_unit(cut_crops(fo, quads[rows], quality_size, q_factor), dev)
                ce = uint8_to_unit(cut_crops(fe, quads[rows], quality_size, q_factor), dev)
                mask = None
                if region == "face":
                    mask = torch.from_numpy(face_masks_in_crops(landmarks[rows], quads[rows], quality_size)).to(dev)
                psnr_v.append(psnr(ce, co, mask).cpu().numpy())
                ssim_v.append(ssim(ce, co, mask).cpu().numpy())
                ms_v.append(ms_ssim(ce, co, mask, scales=scales).cpu().numpy())

            for k, (a, b) in enumerate(zip((f.rgb for f in chunk_o), (f.rgb for f in chunk_e))):
                i = start + k
                face_region = face_mask_in_frame(landmarks[i], *a.shape[:2]) if region == "face" else None
                if prev is not None:
                    if present[i] and present[i - 1]:
                        fw, bw = flow_fn(prev[0], a), flow_fn(a, prev[0])
                        where = pair_mask(fw, bw, prev[2])
                        warp_o.append(warp_error(prev[0], a, fw, where))
                        warp_e.append(warp_error(prev[1], b, fw, where))
                    else:  # a pair with a passed-through frame is not measured
                        warp_o.append(float("nan"))
                        warp_e.append(float("nan"))
                prev = (a, b, face_region)
            adv(len(chunk_o))

    identity = _scatter_identity(identity_metrics(np.concatenate(emb_o), np.concatenate(emb_e)), present)
    if n > 1 and not (identity.tl_original > 1e-6 and identity.tg_original > 1e-6):
        notes.append("TL-ID/TG-ID are undefined: the original's own identity cosines are not positive")
    return MetricsReport(
        original=original,
        edited=edited,
        frames=n,
        width=info_o.width,
        height=info_o.height,
        model=weights.config.name,
        demo_weights=bool(weights.is_demo),
        flow=flow.lower(),
        region=region,
        quality_size=int(quality_size),
        ms_ssim_scales=scales,
        identity=identity,
        psnr=_scatter(np.concatenate(psnr_v), present),
        ssim=_scatter(np.concatenate(ssim_v), present),
        ms_ssim=_scatter(np.concatenate(ms_v), present),
        warp_original=np.asarray(warp_o, dtype=np.float64),
        warp_edited=np.asarray(warp_e, dtype=np.float64),
        notes=notes,
        seconds=time.perf_counter() - start,
    )


def _scatter(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """float64 [N]: the measured values at the frames with the face, NaN elsewhere."""
    out = np.full(present.shape, np.nan, dtype=np.float64)
    out[present] = values
    return out


def _scatter_identity(idm, present: np.ndarray):
    """Per-frame identity curves back on the video's frame axis (NaN where there is no face)."""
    if present.all():
        return idm
    from dataclasses import replace

    return replace(
        idm,
        sim_to_first_original=_scatter(idm.sim_to_first_original, present),
        sim_to_first_edited=_scatter(idm.sim_to_first_edited, present),
        sim_to_original=_scatter(idm.sim_to_original, present),
    )
