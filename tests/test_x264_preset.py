"""--x264-preset: the edit's video encoder speed, checked in the written stream itself.

x264 stores its settings in the stream (an SEI message: "... subme=N ..."); each preset has its
own subpel refinement level (medium 7, faster 4, veryfast 2), so the file says which preset made it.
"""

from __future__ import annotations

import re

import pytest

from fvedit.errors import InputError
from fvedit.video import VideoWriter
from helpers import run_cli

FAST = ["--preset", "tiny", "--steps", "2", "--device", "cpu", "--backend", "reference", "-q"]
SUBME = {"medium": 7, "faster": 4, "veryfast": 2}


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory):
    from fvedit.synth import make_face_video

    return make_face_video(tmp_path_factory.mktemp("x264") / "face.mp4", frames=6, size=(320, 240), face_scale=0.6,
                           audio=False)  # fmt: skip


def subme(path) -> int:
    found = re.search(rb"subme=(\d+)", path.read_bytes())
    assert found, "no x264 settings string in the stream"
    return int(found.group(1))


@pytest.mark.parametrize("preset", [None, "veryfast"])
def test_edit_writes_with_the_chosen_preset(preset, face_clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    extra = [] if preset is None else ["--x264-preset", preset]
    code, _, err = run_cli(["edit", str(face_clip), "-o", str(out), "--cache-dir", str(tmp_path / "c"), *extra, *FAST], capsys)
    assert code == 0, err
    assert subme(out) == SUBME[preset or "faster"]  # default: faster


def test_unknown_preset_is_one_line_before_any_work(face_clip, tmp_path, capsys):
    code, _, err = run_cli(["edit", str(face_clip), "-o", str(tmp_path / "o.mp4"), "--x264-preset", "ludicrous", *FAST],
                        capsys)  # fmt: skip
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "unknown --x264-preset 'ludicrous'" in lines[0]
    assert not (tmp_path / "o.mp4").exists()
    with pytest.raises(InputError, match="unknown x264 preset"):
        VideoWriter(tmp_path / "x.mp4", fps=25, width=16, height=16, preset="ludicrous")
