"""Full vs delta paste on an HD face: face-region sharpness of the output relative to the input,
and temporal consistency (`fvedit.metrics`: TL-ID / TG-ID and the optical-flow warping error).

Sharpness is the variance of the Laplacian of the luma inside the central part of each frame's
face quad, at full resolution, output over input (1 = as sharp as the source). The full paste
scales the decoded model-size crop into the frame; the delta paste adds only edit - input crop.
Runs with the built-in demo weights (UNTRAINED: the "edit" is not a real attribute change, so only
the sharpness of what is kept is meaningful here), BDIA sampling, no attribute (a reconstruction)
and --attr young. TL-ID / TG-ID then come from the untrained identity net too: they show that the
two modes are measured alike, not which keeps identity better. The warping error needs no weights
(Farneback flow on the frames): its excess over the input's own is the flicker a mode adds.

    python bench/paste_sharpness.py --frames 6          # CPU, a few minutes at 1920x1080
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fvedit.diffusion.spec import SamplerSpec  # noqa: E402
from fvedit.metrics import compute_metrics  # noqa: E402
from fvedit.pipeline import PipelineOptions  # noqa: E402
from fvedit.pipeline.cache import load_encoding  # noqa: E402
from fvedit.pipeline.jobs import EditRequest, run_edit  # noqa: E402
from fvedit.synth import make_face_video  # noqa: E402
from fvedit.video import iter_frames  # noqa: E402
from fvedit.weights.loading import load_for_run  # noqa: E402


def sharpness(rgb: np.ndarray, quad: np.ndarray, inner: float = 0.5) -> float:
    """Variance of the Laplacian of the luma in the central `inner` fraction of the quad's box."""
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    (x0, y0), (x1, y1) = quad.min(0), quad.max(0)
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * inner / 2, (y1 - y0) * inner / 2
    ys = slice(max(int(cy - hh), 0), int(cy + hh))
    xs = slice(max(int(cx - hw), 0), int(cx + hw))
    return float(ndimage.laplace(luma[ys, xs]).var())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--weights-dir", type=Path, default=None, help="imported weights (default: the tiny demo weights)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        video = make_face_video(work / "hd.mp4", frames=args.frames, size=(w, h), face_scale=0.6, audio=False)
        inputs = [f.rgb for f in iter_frames(video)]
        preset = None if args.weights_dir else "tiny"
        weights = load_for_run(args.weights_dir, preset, torch.device("cpu"), echo=lambda m: None)
        print("| paste | edit | sharpness out/in (mean, min) | frames equal to input | TL-ID | TG-ID "
              "| warp error excess |")
        print("|---|---|---|---|---|---|---|")
        for attrs in ([], ["young"]):
            for mode in ("full", "delta"):
                opts = PipelineOptions(sampler=SamplerSpec("bdia", args.steps), batch_size=4, cache_dir=work / "cache",
                                       quiet=True, paste=mode)
                out = work / f"{mode}-{'-'.join(attrs) or 'none'}.mp4"
                summary = run_edit(video, out, EditRequest(attrs), preset=preset, weights_dir=args.weights_dir, device="cpu",
                                   backend="reference", opts=opts)
                enc = load_encoding(work / "cache", summary.cache_folder.name)
                quads = enc.quads
                m = compute_metrics(video, out, weights, "cpu", quads=enc.quads, landmarks=enc.landmarks).summary()
                outputs = [f.rgb for f in iter_frames(out)]
                ratios = [sharpness(o, q) / sharpness(i, q) for o, i, q in zip(outputs, inputs, quads)]
                same = sum(np.array_equal(o, i) for o, i in zip(outputs, inputs))
                print(f"| {mode} | {' '.join(attrs) or 'none (reconstruction)'} | {np.mean(ratios):.3f}, "
                      f"{np.min(ratios):.3f} | {same}/{len(inputs)} (after H.264) | {m['tl_id']:.4f} | "
                      f"{m['tg_id']:.4f} | {m['warp_error_excess']:.5f} |", flush=True)


if __name__ == "__main__":
    main()
