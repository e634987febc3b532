"""Measure what an edit did: identity consistency (TL-ID, TG-ID, preservation), face-region
reconstruction quality (PSNR, SSIM, MS-SSIM) and temporal consistency (optical-flow warping error).

`compute_metrics(original, edited, weights, device)` runs everything over two videos (streamed)
and returns a `MetricsReport`; `print_report`, `write_json` and `write_plot` present it.

The names are imported on first use (PEP 562), so `import fvedit.metrics.cli`, which the CLI
does at start-up, needs neither PyAV nor OpenCV: `fvedit info` and `fvedit bench` run without them.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "IdentityMetrics": "identity",
    "identity_metrics": "identity",
    "ms_ssim": "image",
    "psnr": "image",
    "ssim": "image",
    "MetricsReport": "report",
    "print_report": "report",
    "write_json": "report",
    "write_plot": "report",
    "compute_metrics": "run",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'fvedit.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fvedit.metrics.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
