"""Offline model export: the reference UNet to ONNX (`onnx_export`), ONNX to TensorRT (`tensorrt_build`).

Run through `fvedit export` (`fvedit.runtime.export_cli`) or `python export/export_unet.py`; see export/README.md.
"""

from fvedit.export.onnx_export import DEFAULT_OPSET, export_all, export_onnx, onnx_op_types, validate_onnx
from fvedit.export.tensorrt_build import build_engine

__all__ = ["DEFAULT_OPSET", "build_engine", "export_all", "export_onnx", "onnx_op_types", "validate_onnx"]
