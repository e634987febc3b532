"""`fvedit preview`: a contact sheet of one attribute at several strengths on a few keyframes.

A user picks a strength in seconds instead of after a full edit. The identity is the whole
video's mean, exactly as an edit uses it, so the analysis (align, crop, encoders) runs over the
whole video (or comes from the encode cache). Only the keyframes are inverted, unless the cache
already holds their x_T. Rows: keyframes spread over the frames that have the face; columns:
the input crop, then one decode per strength, labelled.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from fvedit.errors import InputError
from fvedit.pipeline.decode import decode_batch
from fvedit.pipeline.invert import invert_batch
from fvedit.pipeline.jobs import EditRequest, _echo, make_eps_model, prepare_edit
from fvedit.pipeline.options import PipelineOptions
from fvedit.pipeline.scheduler import analyse
from fvedit.progress import StageTimes
from fvedit.reconstruct import save_png_atomic
from fvedit.runtime.device import resolve_device
from fvedit.weights.loading import load_for_run

DEFAULT_STRENGTHS = (-0.6, -0.3, 0.0, 0.3, 0.6)
CELL = 192  # px per face on the sheet (crops are scaled to it)
LABEL = 22  # px of the label strip above the columns and left of the rows


@dataclass
class PreviewResult:
    output: Path
    keyframes: np.ndarray  # frame indices, one per row
    strengths: tuple[float, ...]  # one per column after the input column
    cells: np.ndarray  # uint8 [rows, 1 + len(strengths), S, S, 3]: input crop, then each strength
    x_T: np.ndarray  # the keyframes' noise maps the sheet was decoded from
    inverted: int  # keyframes inverted in this run (0 when the cache held them)
    seconds: float


def parse_strengths(text: str) -> tuple[float, ...]:
    """'-0.6,-0.3,0,0.3,0.6' -> floats (finite, at least one, at most 12)."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--strengths must be numbers separated by commas, got {text!r}") from None
    if not values or len(values) > 12 or not all(np.isfinite(values)):
        raise InputError(f"--strengths needs 1 to 12 finite numbers, got {text!r}")
    return values


def pick_keyframes(present: np.ndarray, count: int) -> np.ndarray:
    """`count` frames spread evenly over the frames that have the face (fewer if the video is short)."""
    frames = np.flatnonzero(present)
    if count < 1:
        raise InputError(f"--frames must be at least 1, got {count}")
    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    return frames[picks]


def contact_sheet(cells: np.ndarray, keyframes: np.ndarray, strengths: tuple[float, ...], attr: str) -> np.ndarray:
    """uint8 sheet: a label row (input, attr +s ...) over one row of faces per keyframe."""
    rows, cols = cells.shape[:2]
    sheet = Image.new("RGB", (LABEL * 3 + cols * CELL, LABEL + rows * CELL), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    heads = ["input"] + [f"{attr} {s:+g}" for s in strengths]
    for c, head in enumerate(heads):
        draw.text((LABEL * 3 + c * CELL + 6, 5), head, fill=(0, 0, 0), font=font)
    for r in range(rows):
        draw.text((4, LABEL + r * CELL + CELL // 2 - 6), f"#{int(keyframes[r])}", fill=(0, 0, 0), font=font)
        for c in range(cols):
            face = Image.fromarray(cells[r, c]).resize((CELL, CELL), Image.BICUBIC)
            sheet.paste(face, (LABEL * 3 + c * CELL, LABEL + r * CELL))
    return np.asarray(sheet)


def check_png_output(output: Path, video: Path) -> None:
    """Fail before any work on an output that cannot be the sheet."""
    if output.suffix.lower() != ".png":
        raise InputError(f"the preview is a PNG image; name the output *.png, got {output}")
    if output.is_dir():
        raise InputError(f"{output} is a folder; give a file name ending in .png")
    if output.resolve() == video.resolve():
        raise InputError(f"refusing to overwrite the input {video}")
    folder = next((p for p in [output.parent, *output.parent.parents] if p.exists()), Path("."))
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {output}: {folder} is not writable")


def run_preview(video: Path, output: Path, attr: str, *, strengths: tuple[float, ...] = DEFAULT_STRENGTHS,
                keyframes: int = 3, preset: str | None, weights_dir: Path | None, device: str, backend: str,
                opts: PipelineOptions) -> PreviewResult:
    """Analyse (or load) the video, invert only the keyframes, decode them at every strength."""
    started = time.perf_counter()
    if not video.is_file():
        raise InputError(f"video not found: {video}")
    if "=" in attr or "," in attr:
        raise InputError(f"preview takes one attribute name (the strengths come from --strengths), got {attr!r}")
    if keyframes < 1:
        raise InputError(f"--frames must be at least 1, got {keyframes}")
    check_png_output(output, video)
    dev = resolve_device(device)
    opts.device = dev
    opts.temporal_window = 1  # keyframes are far apart: per-frame attention, as the official model
    times, echo = StageTimes(), _echo(opts.quiet)
    weights = load_for_run(weights_dir, preset, dev, echo=echo)
    edits = [prepare_edit(weights, EditRequest([attr], strength=s), dev, opts.quiet) for s in strengths]
    eps_model = make_eps_model(weights, backend, dev, opts.precision, 1, opts.threads)
    analysis = analyse(video, weights, eps_model, opts, times, echo)
    try:
        enc = analysis.enc
        keys = pick_keyframes(enc.present, keyframes)
        every = np.arange(len(keys))
        crops = enc.crops.take(keys)
        if analysis.cache_hit:
            x_T, inverted = enc.x_T.take(keys), 0
        else:
            z_mean = torch.from_numpy(enc.z_id_mean).to(dev)
            with times.stage("encode (inversion)"):
                x_T = invert_batch(weights.model, eps_model, opts.sampler, crops, enc.z_lnd[keys], z_mean, every, dev)
            inverted = len(keys)
        columns = [crops]
        with times.stage("decode"):
            for edit in edits:
                z_id = edit(enc).z_id.to(dev)
                columns.append(decode_batch(weights.model, eps_model, opts.sampler, x_T, enc.z_lnd[keys], z_id, every, dev))
    finally:
        analysis.abort()  # a pending encoding lacks most x_T: never commit it to the cache
    cells = np.stack(columns, axis=1)
    with times.stage("write"):
        save_png_atomic(contact_sheet(cells, keys, strengths, attr), output)
    result = PreviewResult(output, keys, tuple(strengths), cells, x_T, inverted, time.perf_counter() - started)
    echo(f"preview: {len(keys)} keyframes ({', '.join(str(int(k)) for k in keys)}) x {len(strengths)} strengths of "
         f"{attr}, {inverted} inverted, {result.seconds:.1f} s; wrote {output}")
    return result
