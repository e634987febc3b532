"""`fvedit export`: the UNet to ONNX (validated against the reference), then to TensorRT when present.

The lead registers it with `app.command("export")(export_command)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer



def _import_exporters():
    from fvedit.export import onnx_export, tensorrt_build

    return onnx_export, tensorrt_build


def _tensorrt_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def export_command(
    preset: Optional[str] = typer.Option(
        None, "--preset", help="Model size of the demo weights ('tiny' or 'dva256') when no weights are imported."
    ),
    weights_dir: Optional[Path] = typer.Option(
        None, "--weights-dir", help="Folder with imported weights (manifest.json + safetensors). Default: "
        "$FVEDIT_WEIGHTS_DIR, else ~/.cache/fvedit/weights; without weights the demo weights are exported (and said so).",
    ),
    out_dir: Optional[Path] = typer.Option(
        None, "--out-dir", "-o", help="Where to write the .onnx files (and engines/). Default: the per-weights cache "
        "folder that `--backend onnxruntime` and `--backend tensorrt` read.",
    ),
    fp16: bool = typer.Option(
        False, "--fp16/--fp32", help="fp16 graph (GroupNorm statistics, softmax and time embedding stay fp32; "
        "inputs/outputs fp32). Default fp32.",
    ),
    batch: Optional[List[int]] = typer.Option(
        None, "--batch", "-b", help="Batch size; repeat for several (default 1 and 4). The graph is validated at each; "
        "with --static-batch one file per size; the TensorRT profile spans min..max.",
    ),
    dynamic: bool = typer.Option(
        True, "--dynamic-batch/--static-batch", help="One graph with a dynamic batch axis (default), or one static graph "
        "per --batch (fastest TensorRT engines, CUDA-graph friendly).",
    ),
    opset: int = typer.Option(
        21, "--opset", help="ONNX opset. 21 (default) has native GroupNormalization (TensorRT >= 10.9); "
        "18 decomposes GroupNorm into InstanceNormalization for older TensorRT.",
    ),
    tensorrt: Optional[bool] = typer.Option(
        None, "--tensorrt/--no-tensorrt", help="Build TensorRT engines after the ONNX step. Default: when TensorRT "
        "is importable (otherwise say how to get it and exit 0); --tensorrt makes a missing TensorRT an error.",
    ),
    tol: Optional[float] = typer.Option(
        None, "--tol", help="Max allowed |onnxruntime - reference| on random inputs, as a fraction of "
        "max|reference| (default 1e-3 fp32, 6e-2 fp16).",
    ),
    device: str = typer.Option(
        "cpu", "--device", help="Where the weights load and the reference runs for validation: 'cpu' (default), "
        "'cuda', 'cuda:N' or 'auto'. onnxruntime validates on the CPU.",
    ),
) -> None:
    """Export the UNet to ONNX, check it against the reference in onnxruntime, then build TensorRT engines."""
    from fvedit.weights.loading import load_for_run
    from fvedit.runtime.device import resolve_device
    from fvedit.runtime.onnx_backend import check_ort_available, default_export_dir

    onnx_export, tensorrt_build = _import_exporters()
    check_ort_available()
    batches = sorted(set(batch or [1, 4]))
    if batches[0] < 1 or batches[-1] > onnx_export.MAX_DYNAMIC_BATCH:
        raise typer.BadParameter(f"batch sizes must be 1..{onnx_export.MAX_DYNAMIC_BATCH}", param_hint="--batch")
    dev = resolve_device(device)
    weights = load_for_run(weights_dir, preset, dev, echo=typer.echo)
    unet = weights.model.unet
    out = out_dir if out_dir is not None else default_export_dir(unet)
    precision = "fp16" if fp16 else "fp32"

    typer.echo(f"exporting the {unet.cfg.image_size}px UNet ({precision}, opset {opset}, "
               f"{'dynamic batch' if dynamic else 'static batch ' + ','.join(map(str, batches))}) to {out}")
    paths = onnx_export.export_all(unet, out, fp16=fp16, batches=batches, dynamic=dynamic, opset=opset)
    for path in paths:
        size_mb = path.stat().st_size / 2**20
        checks = batches if dynamic else [int(path.stem.rsplit("-b", 1)[1])]
        for b in checks:
            limit = tol if tol is not None else onnx_export.DEFAULT_TOL[precision]
            err = onnx_export.validate_onnx(path, unet, b, limit)
            typer.echo(f"{path.name} ({size_mb:.0f} MB): batch {b}: max |onnxruntime - reference| = {err:.2e} "
                       f"(tolerance {limit:g} x max|reference|)")

    want = tensorrt if tensorrt is not None else _tensorrt_importable()
    if tensorrt is None and not want:
        from fvedit.runtime.tensorrt_backend import tensorrt_missing_message

        typer.echo(f"ONNX export done. {tensorrt_missing_message(paths[0] if len(paths) == 1 else paths[0].parent)}")
        return
    if not want:
        return
    for path in paths:
        profile = (batches[0], batches[-1], batches[-1]) if dynamic else None
        tensorrt_build.build_engine(path, batch_profile=profile, log=typer.echo)
