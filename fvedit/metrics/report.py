"""What `fvedit metrics` hands back: the numbers (`MetricsReport`), a terminal table, JSON and a PNG plot.

The plot is drawn with PIL (no matplotlib dependency): three stacked panels over the frame
index, each with the original video's curve in grey as the baseline where one exists:
identity similarity to the first frame, warping error of each frame pair, and face-region
PSNR. The worst frames of each panel are ringed in red, so a person sees at a glance where
an edit flickers or loses the face.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.table import Table

from fvedit.errors import InputError
from fvedit.metrics.identity import IdentityMetrics
from fvedit.metrics.image import PSNR_CAP_DB

WORST_K = 3
# Plot colours (RGB); tests look for them.
EDITED_ID_COLOUR = (31, 119, 180)  # blue
EDITED_WARP_COLOUR = (255, 127, 14)  # orange
PSNR_COLOUR = (44, 160, 44)  # green
BASELINE_COLOUR = (160, 160, 160)  # grey: the original video
WORST_COLOUR = (214, 39, 40)  # red rings
AXIS_COLOUR = (60, 60, 60)
GRID_COLOUR = (230, 230, 230)


@dataclass
class MetricsReport:
    """Every number `compute_metrics` measured, per frame and summarised."""

    original: Path
    edited: Path
    frames: int
    width: int
    height: int
    model: str  # preset of the identity net's weights
    demo_weights: bool  # True: the identity net is untrained, identity numbers only exercise the code
    flow: str  # optical flow method
    region: str  # "face" (landmark hull) or "full" (whole crop / whole frame)
    quality_size: int  # side of the aligned crops PSNR/SSIM/MS-SSIM are measured on
    ms_ssim_scales: int
    identity: IdentityMetrics
    psnr: np.ndarray  # [N] dB, capped (identical crops score the cap); NaN on frames without the face
    ssim: np.ndarray  # [N]
    ms_ssim: np.ndarray  # [N]
    warp_original: np.ndarray  # [N-1] error of pair (t, t+1) in the original: the flow's own residual
    warp_edited: np.ndarray  # [N-1] the same pairs in the edit (NaN unless both frames have the face)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def warp_excess(self) -> np.ndarray:
        """[N-1] warping error the edit added over the original's."""
        return self.warp_edited - self.warp_original

    def summary(self) -> dict[str, float]:
        idm = self.identity
        return {
            "tl_id": idm.tl_id,
            "tg_id": idm.tg_id,
            "identity_preservation": idm.preservation,
            "tl_cos_original": idm.tl_original,
            "tl_cos_edited": idm.tl_edited,
            "tg_cos_original": idm.tg_original,
            "tg_cos_edited": idm.tg_edited,
            # the two published forms under their own names: DVA and STIT report the ratio to the
            # source's own consistency (~1.0), DiffFERV the edited video's raw cosines (0.6-0.75)
            "tl_id_ratio_dva_stit": idm.tl_id,
            "tg_id_ratio_dva_stit": idm.tg_id,
            "tl_id_cosine_diffferv": idm.tl_edited,
            "tg_id_cosine_diffferv": idm.tg_edited,
            "psnr_db_mean": _mean(self.psnr),
            "psnr_db_min": _min(self.psnr),
            "ssim_mean": _mean(self.ssim),
            "ssim_min": _min(self.ssim),
            "ms_ssim_mean": _mean(self.ms_ssim),
            "ms_ssim_min": _min(self.ms_ssim),
            "warp_error_edited": _mean(self.warp_edited),
            "warp_error_original": _mean(self.warp_original),
            "warp_error_excess": _mean(self.warp_excess),
        }

    def worst_frames(self, k: int = WORST_K) -> dict[str, list[int]]:
        """Indices of the k worst frames per curve (warping: index t is the pair t -> t+1).

        identity: where the edit's similarity to its first frame falls furthest below the
        original's; warp: the largest excess error; psnr: the lowest. Identity and warp list
        only frames where the edit is worse than the original.
        """
        idm = self.identity
        return {
            "identity": _lowest(idm.sim_to_first_edited - idm.sim_to_first_original, k, below=-1e-6),
            "warp": _lowest(-self.warp_excess, k, below=-1e-9),
            "psnr": _lowest(self.psnr, k, below=PSNR_CAP_DB),
        }

    def to_dict(self) -> dict:
        idm = self.identity
        return _json_safe({
            "original": str(self.original),
            "edited": str(self.edited),
            "frames": self.frames,
            "size": [self.width, self.height],
            "settings": {
                "model": self.model,
                "demo_weights": self.demo_weights,
                "flow": self.flow,
                "region": self.region,
                "quality_crop_px": self.quality_size,
                "ms_ssim_scales": self.ms_ssim_scales,
            },
            "summary": self.summary(),
            "worst_frames": self.worst_frames(),
            "per_frame": {
                "identity_sim_to_first_edited": idm.sim_to_first_edited,
                "identity_sim_to_first_original": idm.sim_to_first_original,
                "identity_sim_to_original": idm.sim_to_original,
                "psnr_db": self.psnr,
                "ssim": self.ssim,
                "ms_ssim": self.ms_ssim,
            },
            "per_pair": {  # entry t: frames t and t+1
                "warp_error_edited": self.warp_edited,
                "warp_error_original": self.warp_original,
            },
            "notes": self.notes,
            "seconds": self.seconds,
        })


def _mean(a: np.ndarray) -> float:
    """Mean of the measured values; NaN marks frames that were not measured (no face there)."""
    a = np.asarray(a, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(np.mean(a)) if a.size else float("nan")


def _min(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(np.min(a)) if a.size else float("nan")


def _lowest(values: np.ndarray, k: int, below: float = math.inf) -> list[int]:
    """Indices of the k smallest finite values, only those < `below` (an edit that is not worse is no "worst")."""
    v = np.asarray(values, dtype=np.float64)
    order = [int(i) for i in np.argsort(v, kind="stable") if np.isfinite(v[i]) and v[i] < below]
    return order[:k]


def _json_safe(obj):
    """Arrays to lists, NaN/inf to null (JSON has neither)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(report: MetricsReport, path: Path) -> Path:
    """All per-frame curves and the summary as JSON (NaN written as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    return path


# ------------------------------------------------------------------------------------- table


def _fmt(v: float, spec: str = ".4f") -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, spec)


def metrics_table(report: MetricsReport) -> Table:
    """The summary as a rich table: metric, value, what it was compared with."""
    s, worst = report.summary(), report.worst_frames(1)
    region = "face" if report.region == "face" else "whole crop"
    title = f"{report.edited.name} vs {report.original.name}: {report.frames} frames, {report.width}x{report.height}"
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("detail")
    table.add_row("TL-ID (ratio; DVA, STIT)", _fmt(s["tl_id"]), f"adjacent-frame identity cosine of the edit / of the original ({_fmt(s['tl_cos_edited'])} / {_fmt(s['tl_cos_original'])})")
    table.add_row("TL-ID (cosine; DiffFERV)", _fmt(s["tl_id_cosine_diffferv"]), "the edit's raw adjacent-frame identity cosine")
    table.add_row("TG-ID (ratio; DVA, STIT)", _fmt(s["tg_id"]), f"all-pairs identity cosine of the edit / of the original ({_fmt(s['tg_cos_edited'])} / {_fmt(s['tg_cos_original'])})")
    table.add_row("TG-ID (cosine; DiffFERV)", _fmt(s["tg_id_cosine_diffferv"]), "the edit's raw all-pairs identity cosine")
    table.add_row("ID preservation", _fmt(s["identity_preservation"]), "cosine of the two videos' mean identities")
    at = lambda key: f" (frame {worst[key][0]})" if worst[key] else ""  # noqa: E731
    table.add_row(f"PSNR ({region})", f"{_fmt(s['psnr_db_mean'], '.2f')} dB", f"min {_fmt(s['psnr_db_min'], '.2f')} dB{at('psnr')}; {report.quality_size} px aligned crops")
    table.add_row(f"SSIM ({region})", _fmt(s["ssim_mean"]), f"min {_fmt(s['ssim_min'])}")
    table.add_row(f"MS-SSIM ({region})", _fmt(s["ms_ssim_mean"]), f"min {_fmt(s['ms_ssim_min'])}; {report.ms_ssim_scales} scales")
    pair = f" (worst pair {worst['warp'][0]}->{worst['warp'][0] + 1})" if worst["warp"] else ""
    table.add_row(
        f"warping error ({'face' if report.region == 'face' else 'frame'})",
        _fmt(s["warp_error_edited"], ".5f"),
        f"original {_fmt(s['warp_error_original'], '.5f')} (the flow's own error); excess {_fmt(s['warp_error_excess'], '+.5f')}{pair}; {report.flow} flow",
    )
    return table


def print_report(report: MetricsReport, console: Console | None = None, *, notes: bool = True) -> None:
    """The table, the worst frames and (unless `notes` is False) the notes, on stdout."""
    out = console or Console(highlight=False)
    out.print(metrics_table(report))
    worst = report.worst_frames()
    out.print(
        "worst frames: identity " + (", ".join(map(str, worst["identity"])) or "-")
        + "; warping pairs " + (", ".join(f"{t}->{t + 1}" for t in worst["warp"]) or "-")
        + "; PSNR " + (", ".join(map(str, worst["psnr"])) or "-")
    )
    for note in report.notes if notes else []:
        out.print(f"note: {note}")


# -------------------------------------------------------------------------------------- plot


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


@dataclass
class _Panel:
    title: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the plotting area
    lo: float
    hi: float
    n_frames: int

    def xy(self, x: float, y: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        fx = x / max(self.n_frames - 1, 1) if self.n_frames > 1 else 0.5
        fy = (y - self.lo) / (self.hi - self.lo)
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)


def _range(*series: np.ndarray, floor: float = -math.inf) -> tuple[float, float]:
    """y-axis limits around the finite values with a little margin, not below `floor`."""
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in series])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-3)
    return max(lo - pad, min(floor, lo)), hi + pad


def _polyline(draw: ImageDraw.ImageDraw, panel: _Panel, xs: np.ndarray, ys: np.ndarray, colour, width: int) -> None:
    """Connect finite points; NaNs break the line; a lone point becomes a dot."""
    run: list[tuple[float, float]] = []
    for x, y in list(zip(xs, ys)) + [(0.0, float("nan"))]:
        if math.isfinite(y):
            run.append(panel.xy(x, y))
            continue
        if len(run) == 1:
            (px, py), r = run[0], width + 1
            draw.ellipse((px - r, py - r, px + r, py + r), fill=colour)
        elif len(run) > 1:
            draw.line(run, fill=colour, width=width, joint="curve")
        run = []


def _draw_axes(draw: ImageDraw.ImageDraw, panel: _Panel, font, small, label_fmt: str, show_x: bool) -> None:
    x0, y0, x1, y1 = panel.box
    for frac in (0.25, 0.5, 0.75):
        gy = y1 - frac * (y1 - y0)
        draw.line([(x0, gy), (x1, gy)], fill=GRID_COLOUR, width=1)
    draw.rectangle((x0, y0, x1, y1), outline=AXIS_COLOUR, width=1)
    draw.text((x0, y0 - 4), panel.title, fill=AXIS_COLOUR, font=font, anchor="lb")
    for value in (panel.lo, (panel.lo + panel.hi) / 2, panel.hi):
        _, py = panel.xy(0, value)
        draw.text((x0 - 6, py), format(value, label_fmt), fill=AXIS_COLOUR, font=small, anchor="rm")
    if show_x:
        n = panel.n_frames
        step = max(1, int(math.ceil(n / 10)))
        for t in range(0, n, step):
            px, _ = panel.xy(t, panel.lo)
            draw.line([(px, y1), (px, y1 + 4)], fill=AXIS_COLOUR, width=1)
            draw.text((px, y1 + 6), str(t), fill=AXIS_COLOUR, font=small, anchor="mt")
        draw.text(((x0 + x1) / 2, y1 + 22), "frame", fill=AXIS_COLOUR, font=small, anchor="mt")


def _mark(draw: ImageDraw.ImageDraw, panel: _Panel, x: float, y: float, label: str, small) -> None:
    if not math.isfinite(y):
        return
    px, py = panel.xy(x, y)
    r = 6
    draw.ellipse((px - r, py - r, px + r, py + r), outline=WORST_COLOUR, width=2)
    draw.text((px + r + 2, py - r - 2), label, fill=WORST_COLOUR, font=small, anchor="ld")


def write_plot(report: MetricsReport, path: Path, size: tuple[int, int] = (960, 720)) -> Path:
    """PNG of the three per-frame curves with the worst frames ringed; returns the path."""
    width, height = size
    if width < 320 or height < 240:
        raise InputError(f"plot size must be at least 320x240 pixels, got {width}x{height}")
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(15), _font(12)
    n = report.frames
    frames = np.arange(n, dtype=np.float64)
    pairs = frames[:-1] + 0.5
    idm = report.identity
    worst = report.worst_frames()

    header = f"{report.edited.name} vs {report.original.name}"
    if report.demo_weights:
        header += "  (untrained demo identity net)"
    draw.text((12, 10), header, fill=AXIS_COLOUR, font=font, anchor="lt")
    left, right, top, bottom, gap = 78, width - 24, 62, height - 48, 40
    panel_h = (bottom - top - 2 * gap) / 3
    boxes = [(left, int(top + i * (panel_h + gap)), right, int(top + i * (panel_h + gap) + panel_h)) for i in range(3)]

    id_panel = _Panel("identity similarity to frame 0 (blue: edit, grey: original)", boxes[0],
                      *_range(idm.sim_to_first_edited, idm.sim_to_first_original), n)
    warp_panel = _Panel("warping error per frame pair (orange: edit, grey: original)", boxes[1],
                        *_range(report.warp_edited, report.warp_original, floor=0.0), n)
    psnr_panel = _Panel(f"PSNR of the {'face region' if report.region == 'face' else 'crop'}, dB", boxes[2], *_range(report.psnr), n)

    _draw_axes(draw, id_panel, font, small, ".3f", False)
    _polyline(draw, id_panel, frames, idm.sim_to_first_original, BASELINE_COLOUR, 2)
    _polyline(draw, id_panel, frames, idm.sim_to_first_edited, EDITED_ID_COLOUR, 2)
    for t in worst["identity"]:
        _mark(draw, id_panel, t, idm.sim_to_first_edited[t], str(t), small)

    _draw_axes(draw, warp_panel, font, small, ".3g", False)
    _polyline(draw, warp_panel, pairs, report.warp_original, BASELINE_COLOUR, 2)
    _polyline(draw, warp_panel, pairs, report.warp_edited, EDITED_WARP_COLOUR, 2)
    for t in worst["warp"]:
        _mark(draw, warp_panel, t + 0.5, report.warp_edited[t], f"{t}-{t + 1}", small)

    _draw_axes(draw, psnr_panel, font, small, ".1f", True)
    _polyline(draw, psnr_panel, frames, report.psnr, PSNR_COLOUR, 2)
    for t in worst["psnr"]:
        _mark(draw, psnr_panel, t, report.psnr[t], str(t), small)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
