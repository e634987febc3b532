"""Measure what an edit did: identity consistency (TL-ID, TG-ID, preservation), face-region
reconstruction quality (PSNR, SSIM, MS-SSIM) and temporal consistency (optical-flow warping error).

`compute_metrics(original, edited, weights, device)` runs everything over two videos (streamed)
and returns a `MetricsReport`; `print_report`, `write_json` and `write_plot` present it.
"""

from fvedit.metrics.identity import IdentityMetrics, identity_metrics
from fvedit.metrics.image import ms_ssim, psnr, ssim
from fvedit.metrics.report import MetricsReport, print_report, write_json, write_plot
from fvedit.metrics.run import compute_metrics

__all__ = [
    "IdentityMetrics",
    "MetricsReport",
    "compute_metrics",
    "identity_metrics",
    "ms_ssim",
    "print_report",
    "psnr",
    "ssim",
    "write_json",
    "write_plot",
]
