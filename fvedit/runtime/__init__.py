"""Runtime helpers: device choice now; the fast backends (Triton, ONNX, TensorRT) live here later."""
