"""Choose and load the weights a command runs on: imported weights if present, else the demo model."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from fvedit.errors import InputError
from fvedit.weights.demo import DEMO_NOTICE, demo_weights
from fvedit.weights.store import LoadedWeights, load_weights, resolve_weights_dir

MANIFEST = "manifest.json"


def default_preset(device: torch.device) -> str:
    """The official size on a GPU; the tiny one on a CPU, where dva256 takes ~15 s per UNet call."""
    return "dva256" if device.type == "cuda" else "tiny"


def load_for_run(
    weights_dir: Path | None,
    preset: str | None,
    device: torch.device,
    echo: Callable[[str], None] = print,
) -> LoadedWeights:
    """Imported weights from `--weights-dir`/env/cache when a manifest is there, else demo weights.

    An explicitly named weights folder without a manifest is an error rather than a silent
    fall-back, so a typo never turns a real edit into a demo one.
    """
    folder = resolve_weights_dir(weights_dir)
    if (folder / MANIFEST).is_file():
        return load_weights(folder, device, preset=preset)
    if weights_dir is not None:
        raise InputError(
            f"no imported weights in {folder} (no {MANIFEST}): run `fvedit weights import-dva --weights-dir {folder}` "
            "or leave out --weights-dir to use the demo weights"
        )
    weights = demo_weights(preset or default_preset(device), device=device)
    echo(f"note: {DEMO_NOTICE}")
    return weights
