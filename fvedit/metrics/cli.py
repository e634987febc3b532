"""`fvedit metrics ORIGINAL EDITED`: the numbers of an edit, as a table, JSON and a plot.

The lead registers it with `app.command(name="metrics")(metrics_command)` in `fvedit/cli.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fvedit.errors import InputError


def metrics_command(
    original: Path = typer.Argument(..., help="The source video."),
    edited: Path = typer.Argument(..., help="Its edit (or reconstruction): same frame count and size."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary and every per-frame curve to this JSON file."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG plot of identity similarity, warping error and PSNR per frame, worst frames ringed."),
    weights_dir: Optional[Path] = typer.Option(
        None, "--weights-dir",
        help="Folder with imported weights (their identity net is used). Default: $FVEDIT_WEIGHTS_DIR, else "
        "~/.cache/fvedit/weights; without weights the untrained demo identity net is used and the output says so.",
    ),
    preset: Optional[str] = typer.Option(None, "--preset", help="Model size for the demo weights: 'tiny' or 'dva256' (default: the imported weights' size, else tiny on a CPU)."),
    device: str = typer.Option("auto", "--device", help="Where to run the identity net: 'auto', 'cpu', 'cuda' or 'cuda:N'."),
    flow: str = typer.Option("farneback", "--flow", help="Optical flow for the warping error: 'farneback' (OpenCV, offline) or 'raft' (torchvision RAFT-large; its weights must already be in $TORCH_HOME/hub/checkpoints)."),
    region: str = typer.Option("face", "--region", help="'face': inside the landmark hull of the original's face; 'full': whole aligned crop (quality) and whole frame (warping)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the result table and errors: no progress bars, no notes."),
) -> None:
    """Measure an edit against its original: TL-ID, TG-ID, identity preservation, face PSNR/SSIM/MS-SSIM, warping error."""
    from fvedit.weights.loading import load_for_run
    from fvedit.metrics.flow import check_flow_available
    from fvedit.metrics.report import print_report, write_json, write_plot
    from fvedit.metrics.run import REGIONS, compute_metrics
    from fvedit.progress import console
    from fvedit.runtime.device import resolve_device

    for path in (original, edited):
        if not path.is_file():
            raise InputError(f"video not found: {path}")
    if region not in REGIONS:
        raise InputError(f"unknown --region {region!r}: use 'face' (landmark hull) or 'full' (whole crop/frame)")
    check_flow_available(flow)  # before loading any weights
    dev = resolve_device(device)
    say = (lambda m: None) if quiet else (lambda m: console.print(m, style="yellow", highlight=False))
    weights = load_for_run(weights_dir, preset, dev, echo=say)
    report = compute_metrics(original, edited, weights, dev, flow=flow, region=region, quiet=quiet)
    print_report(report, notes=not quiet)
    if json_out is not None:
        typer.echo(f"wrote {write_json(report, json_out)}")
    if plot_out is not None:
        typer.echo(f"wrote {write_plot(report, plot_out)}")
