"""`fvedit reconstruct`: the autoencoder round trip on one face image.

Align the face, split it into identity, landmarks and x_T (encode), decode it back from the same
condition, and report how close the reconstruction is. This is DVA's reconstruction path without
an edit: the quickest way to see that weights, encoders and sampler fit together.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fvedit.pipeline.crop import crops_to_tensor, cut_crops, supersample_factor, tensor_to_crops
from fvedit.errors import InputError
from fvedit.face.align import compute_quads
from fvedit.weights.loading import load_for_run
from fvedit.progress import StageTimes, console, progress_bar
from fvedit.runtime.device import resolve_device
from fvedit.diffusion.spec import SamplerSpec


@dataclass
class ReconstructResult:
    output: Path
    psnr_db: float
    times: StageTimes
    is_demo: bool
    max_abs_error: float = float("nan")  # float decode(encode(x)) - x, in the model's [-1, 1] range


def load_image(path: Path | None) -> np.ndarray:
    """RGB uint8 [H,W,3]; None gives scikit-image's astronaut portrait (ships offline)."""
    if path is None:
        from skimage import data

        return np.ascontiguousarray(data.astronaut())
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"cannot read {path} as an image ({err.__class__.__name__}); give a PNG or JPEG") from None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def save_png_atomic(img: np.ndarray, out: Path) -> None:
    """Write through a temporary file in the target folder, then rename: never a half-written PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".partial.png", dir=out.parent)
    os.close(fd)
    try:
        Image.fromarray(img).save(tmp, format="PNG")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_reconstruct(
    *,
    image: Path | None,
    output: Path,
    sampler: str = "dpm",
    steps: int = 15,
    preset: str | None = None,
    weights_dir: Path | None = None,
    device: str = "auto",
    quiet: bool = False,
) -> ReconstructResult:
    from fvedit.face.detect import DlibDetector

    spec = SamplerSpec(sampler, steps)
    say = (lambda *_: None) if quiet else console.print
    times = StageTimes()
    dev = resolve_device(device)
    with times.stage("load weights"):
        weights = load_for_run(weights_dir, preset, dev, echo=lambda m: console.print(m, style="yellow"))
    model, size = weights.model, weights.config.image_size

    with times.stage("align"):
        frame = load_image(image)
        faces = DlibDetector().detect(frame)
        if not faces:
            raise InputError(f"no face found in {image or 'the astronaut image'}; give a photo with a visible frontal face")
        face = max(faces, key=lambda f: f.area)
        quads = compute_quads(face.landmarks68[None], sigmas=(0.0, 0.0))
        crop = cut_crops(frame[None], quads, size, supersample_factor(quads, size))

    x0 = crops_to_tensor(crop, dev)
    with torch.no_grad():
        with times.stage("encoders"):
            z_id = model.encoder.id_forward(x0)
            z_face = model.encoder.forward_with_id(z_id, x0)

        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model.unet(x, t, z_face)

        with times.stage("encode (inversion)"), progress_bar("encode", spec.encode_calls, quiet=quiet, unit="call") as adv:
            x_T = spec.encode(eps_fn, x0, progress=lambda done, total: adv(1))
        with times.stage("decode"), progress_bar("decode", spec.decode_calls, quiet=quiet, unit="call") as adv:
            x_rec = spec.decode(eps_fn, x_T, progress=lambda done, total: adv(1))

    rec = tensor_to_crops(x_rec)[0]
    value = psnr(crop[0], rec)
    max_abs = float((x_rec.float() - x0).abs().max())  # float round trip, before rounding to uint8
    scale = max(1, 256 // size)
    side_by_side = np.concatenate([crop[0], rec], axis=1).repeat(scale, 0).repeat(scale, 1)
    with times.stage("write"):
        save_png_atomic(side_by_side, output)

    say(f"model: {weights.config.name} ({'untrained demo weights' if weights.is_demo else 'imported weights'}) on {dev}")
    say(f"sampler: {spec.key}, {spec.encode_calls} + {spec.decode_calls} UNet calls at {size}x{size}")
    exact = f"; float max abs round-trip error {max_abs:.2e}" if spec.name == "bdia" else ""
    say(f"reconstruction PSNR: {value:.2f} dB (face crop){exact}")
    for name, sec in times.seconds.items():
        say(f"  {name:<20} {sec * 1000:8.1f} ms")
    say(f"wrote {output}")
    return ReconstructResult(output=output, psnr_db=value, max_abs_error=max_abs, times=times, is_demo=weights.is_demo)
