"""The edit pipeline: one module per stage, one scheduler, and the jobs the CLI runs.

    options.py    what a run is asked to do (PipelineOptions) and reports (EditSummary)
    align.py      stage: decode -> detect -> track + smooth -> quads
    crop.py       stage: crop warp (area-filtered) -> identity + landmark encoders
    batches.py    which frames share a UNet batch; the fade next to frames without the face
    invert.py     stage: crops -> x_T (conditioned on the video's mean identity)
    decode.py     stage: x_T -> edited crops (with the one edited identity)
    paste.py      stage: masks, feathering, paste-back into the full frame
    cache.py      the encode cache (everything before x_T, and x_T), reused by re-edits
    streaming.py  the two thread helpers the scheduler overlaps stages with
    scheduler.py  runs the stages over a video (analysis, then one invert/decode/paste/write pass)
    jobs.py       what `fvedit edit/encode/demo/align` do: load weights, run, summarise

Names are imported lazily (PEP 562), so `import fvedit.pipeline.paste` does not pull in the
scheduler and its video dependencies.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PipelineOptions": "options", "EditSummary": "options", "EditIdentity": "options",
    "FrameBatch": "batches", "plan_batches": "batches", "fade_weights": "batches", "FADE_FRAMES": "batches",
    "Analysis": "scheduler", "analyse": "scheduler", "encode_video": "scheduler", "edit_video": "scheduler",
    "decode_and_paste": "scheduler", "STREAM_DEPTH": "scheduler",
    "alignment_notes": "align", "face_detectors": "align", "detection_workers": "align", "POOL_MIN_FRAMES": "align",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fvedit.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fvedit.pipeline.{module}"), name)
