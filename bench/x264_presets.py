"""x264 presets at one crf: encode time, file size and PSNR against the frames given to the encoder.

    python bench/x264_presets.py .gpucheck/clip.mp4 [--frames 50] [--crf 18] [--threads 2]

Why: the whole edit writes 1080p through x264, and `medium` costs more per frame than the rest of
the host stages. This measures what a faster preset gives up, on the clip as decoded and on the same
frames with a light grain (noise sigma 3, as on real camera footage), so `--x264-preset`'s default can
be chosen on evidence. Prints a table; --json-out writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from fvedit.video import VideoWriter, iter_frames, probe

PRESETS = ("medium", "fast", "faster", "veryfast")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def encode(frames: list[np.ndarray], like, preset: str, crf: int, threads: int, path: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    with VideoWriter(path, like, width=like.width, height=like.height, crf=crf, preset=preset, threads=threads) as w:
        for frame in frames:
            w.write(frame)
    seconds = time.perf_counter() - t0
    decoded = [f.rgb for f in iter_frames(path)]
    return {"ms_per_frame": 1000 * seconds / len(frames), "kib_per_frame": path.stat().st_size / 1024 / len(frames),
            "psnr_db": float(np.mean([psnr(a, b) for a, b in zip(decoded, frames)]))}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("video", type=Path)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--crf", type=int, default=18)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    info = probe(args.video)
    clean = [f.rgb for _, f in zip(range(args.frames), iter_frames(args.video))]
    rng = np.random.default_rng(0)
    grain = [np.clip(f + rng.normal(0, 3, f.shape), 0, 255).astype(np.uint8) for f in clean]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, frames in (("as decoded", clean), ("with grain", grain)):
            for preset in PRESETS:
                r = encode(frames, info, preset, args.crf, args.threads, Path(tmp) / f"{preset}.mp4")
                rows.append({"clip": name, "preset": preset, **r})
                print(f"{name:<11} {preset:<9} {r['ms_per_frame']:7.1f} ms/frame {r['kib_per_frame']:8.1f} KiB/frame "
                      f"{r['psnr_db']:6.2f} dB", flush=True)  # fmt: skip
    if args.json_out:
        args.json_out.write_text(json.dumps({"video": str(args.video), "frames": len(clean), "crf": args.crf,
                                             "threads": args.threads, "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
