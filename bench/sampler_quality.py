"""Sampler budget vs video reconstruction quality: UNet calls per frame against PSNR/SSIM/MS-SSIM and TL-ID/TG-ID.

Each sampler setting runs a full `fvedit edit` with no edit (encode to x_T, decode with the
mean identity, paste back, write H.264): a reconstruction of the video. `fvedit.metrics` then
compares it with the source: face-region PSNR/SSIM/MS-SSIM on aligned crops (at the model's
size by default, so the sampler's error is not hidden under an upsampling floor), TL-ID/TG-ID
and identity preservation, and the warping error the reconstruction adds.

    python bench/sampler_quality.py --frames 8 --preset tiny          # CPU, a few minutes
    python bench/sampler_quality.py --frames 24 --preset dva256 --device cuda --weights-dir ~/dva

With the built-in demo weights (no imported weights) the model is UNTRAINED: its "reconstruction"
is noise-like and the numbers only exercise the machinery (and show that every setting runs);
they say nothing about DVA's real quality. Import the official weights for real numbers.
Settings: DDIM 100/50/20 (the official sampler; encode T-1 + decode T calls) and multistep
DPM-Solver++ 10/15/20 (N calls each way), each with its own inversion (encode pairing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fvedit.pipeline.cache import load_encoding  # noqa: E402
from fvedit.pipeline.jobs import EditRequest, run_edit  # noqa: E402
from fvedit.weights.loading import load_for_run  # noqa: E402
from fvedit.metrics import compute_metrics  # noqa: E402
from fvedit.pipeline import PipelineOptions  # noqa: E402
from fvedit.runtime.device import resolve_device  # noqa: E402
from fvedit.diffusion.spec import SamplerSpec  # noqa: E402
from fvedit.synth import make_face_video  # noqa: E402

SETTINGS = [("ddim", 100), ("ddim", 50), ("ddim", 20), ("dpm", 20), ("dpm", 15), ("dpm", 10)]


def parse_settings(text: str) -> list[tuple[str, int]]:
    """'ddim100,dpm15' -> [('ddim', 100), ('dpm', 15)]."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name = item.rstrip("0123456789")
        out.append((name, int(item[len(name):])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8, help="length of the generated face video")
    ap.add_argument("--preset", default="tiny", help="model size of the demo weights (tiny or dva256)")
    ap.add_argument("--weights-dir", type=Path, default=None, help="imported weights (default: demo weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default="reference", help="UNet backend, as `fvedit edit --backend`")
    ap.add_argument("--settings", default=",".join(f"{n}{s}" for n, s in SETTINGS), help="e.g. ddim100,dpm15")
    ap.add_argument("--quality-size", type=int, default=None, help="crop side for PSNR/SSIM/MS-SSIM (default: the model's size)")
    ap.add_argument("--video", type=Path, default=None, help="use this video instead of the generated one")
    args = ap.parse_args()

    dev = resolve_device(args.device)
    weights = load_for_run(args.weights_dir, args.preset, dev, echo=lambda m: print(m, file=sys.stderr))
    quality_size = args.quality_size or weights.config.image_size
    with tempfile.TemporaryDirectory(prefix="fvedit-sampler-quality-") as tmp:
        tmp = Path(tmp)
        video = args.video or make_face_video(tmp / "source.mp4", frames=args.frames, size=(320, 240), audio=False, face_scale=0.6)
        rows = []
        for name, steps in parse_settings(args.settings):
            spec = SamplerSpec(name, steps)
            opts = PipelineOptions(sampler=spec, batch_size=max(1, min(args.frames, 8)), cache_dir=tmp / "cache", quiet=True)
            out = tmp / f"recon-{spec.key}.mp4"
            t0 = time.perf_counter()
            summary = run_edit(video, out, EditRequest([]), preset=args.preset, weights_dir=args.weights_dir,
                               device=str(dev), backend=args.backend, opts=opts)
            seconds = time.perf_counter() - t0
            enc = load_encoding(tmp / "cache", summary.cache_folder.name)
            report = compute_metrics(video, out, weights, dev, quality_size=quality_size,
                                     quads=enc.quads, landmarks=enc.landmarks)
            rows.append((spec, seconds / summary.frames, report.summary()))
            print(f"done {spec.key}: {seconds:.1f} s", file=sys.stderr)

    kind = "UNTRAINED demo weights: numbers only exercise the machinery" if weights.is_demo else "imported weights"
    print(f"\nreconstruction of a {args.frames}-frame video, model {weights.config.name} ({kind}); "
          f"face-region metrics on {quality_size} px aligned crops")
    head = f"{'sampler':<16}{'calls/frame':>12}{'s/frame':>9}{'PSNR dB':>9}{'SSIM':>8}{'MS-SSIM':>9}{'TL-ID':>8}{'TG-ID':>8}{'ID pres':>9}{'warp +':>10}"
    print(head)
    print("-" * len(head))
    for spec, sec, s in rows:
        calls = f"{spec.encode_calls}+{spec.decode_calls}"
        print(f"{spec.key:<16}{calls:>12}{sec:>9.2f}{s['psnr_db_mean']:>9.2f}{s['ssim_mean']:>8.4f}{s['ms_ssim_mean']:>9.4f}"
              f"{s['tl_id']:>8.4f}{s['tg_id']:>8.4f}{s['identity_preservation']:>9.4f}{s['warp_error_excess']:>10.5f}")


if __name__ == "__main__":
    main()
