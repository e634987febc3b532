"""Export the UNet to ONNX (and TensorRT where installed) from a source checkout.

The same as `fvedit export`; kept here so the export step is visible at the top of the repository:

    python export/export_unet.py --fp16 --batch 8
The implementation lives in `fvedit/export/` (installed with the package).
"""

import typer

from fvedit.runtime.export_cli import export_command

if __name__ == "__main__":
    typer.run(export_command)
