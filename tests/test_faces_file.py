"""Faces files: `fvedit align` records the detector's answers, `--faces` replays them without dlib.

Real dlib on generated clips for the recording (tiny preset, demo weights, CPU for the edits); the
replay is checked bit for bit against the detector run, and in a process where dlib cannot be imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fvedit.errors import InputError
from fvedit.face.align import align_video
from fvedit.face.detect import Face
from fvedit.face.faces_file import SCHEMA, RecordingDetector, ReplayDetector, load_faces
from fvedit.pipeline.jobs import EditRequest, run_align, run_edit
from fvedit.pipeline import PipelineOptions
from fvedit.diffusion.spec import SamplerSpec
from fvedit.synth import make_face_video, make_no_face_video
from fvedit.video import iter_frames
from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(preset="tiny", weights_dir=None, device="cpu", backend="reference")
FAST_CLI = ["--steps", "2", "--preset", "tiny", "--device", "cpu", "--backend", "reference", "-b", "4"]
LEAVES = range(6, 12)


pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faces")
    common = dict(size=(320, 240), fps=25, face_scale=0.6, audio=False)
    return {
        "blur": make_face_video(root / "blur.mp4", frames=10, blurred_frames=(3, 4), **common),
        "leaves": make_face_video(root / "leaves.mp4", frames=18, hidden_frames=LEAVES, **common),
        "other_size": make_face_video(root / "other_size.mp4", frames=10, **dict(common, size=(256, 192))),
        "other_count": make_face_video(root / "other_count.mp4", frames=8, **common),
        "same_shape": make_face_video(root / "same_shape.mp4", frames=10, motion="still", **common),
        "phone": make_face_video(root / "phone.mp4", frames=6, rotation_meta=90, **common),
        "no_face": make_no_face_video(root / "none.mp4", frames=4, size=(320, 240)),
    }


@pytest.fixture(scope="module")
def faces_files(clips, tmp_path_factory) -> dict[str, Path]:
    """Faces files recorded with dlib: the blur clip (default --max-gap and --max-gap 0) and the leaves clip."""
    root = tmp_path_factory.mktemp("faces-files")
    return {
        "blur": run_align(clips["blur"], root / "blur.faces.npz", quiet=True)[0],
        "blur_gap0": run_align(clips["blur"], root / "blur0.faces.npz", max_gap=0, quiet=True)[0],
        "leaves": run_align(clips["leaves"], root / "leaves.faces.npz", quiet=True)[0],
    }


def frames_of(video: Path):
    return (f.rgb for f in iter_frames(video))


def replay(video: Path, faces: Path, **kw):
    return align_video(frames_of(video), ReplayDetector(faces), **kw)


def assert_same_alignment(a, b) -> None:
    for name in ("quads", "landmarks", "present", "detected", "faces_seen"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert tuple(a.reacquired) == tuple(b.reacquired)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# -- recording and replaying -----------------------------------------------------------------------


def test_a_replay_reproduces_the_recorded_alignment_and_its_recheck(clips, faces_files):
    faces = load_faces(faces_files["blur"])
    assert (faces.frames, faces.width, faces.height, faces.detector) == (10, 320, 240, "dlib")
    assert faces.can_recheck and faces.rechecks, "the blur must make dlib miss and re-check a frame"
    rechecked = sorted(faces.rechecks)
    assert all(not faces.detected[i] for i in rechecked)
    assert faces.present.all() and not faces.detected.all()
    again = replay(clips["blur"], faces_files["blur"])
    assert_same_alignment(again, faces)  # the file's own arrays are the dlib run's
    # and a fresh dlib run gives the same, so the file is what the detector says
    from fvedit.face.detect import DlibDetector

    assert_same_alignment(align_video(frames_of(clips["blur"]), DlibDetector()), again)


def test_rechecks_that_found_nothing_round_trip_too(clips, faces_files):
    faces = load_faces(faces_files["leaves"])
    empty = [i for i, answers in faces.rechecks.items() if all(not found for _, found in answers)]
    assert set(empty) == set(LEAVES), "each frame without the person is re-checked and nothing is found"
    again = replay(clips["leaves"], faces_files["leaves"])
    assert_same_alignment(again, faces)
    assert again.absent_frames.tolist() == list(LEAVES)


def test_a_phone_video_is_recorded_at_its_upright_size(clips, tmp_path):
    path, alignment = run_align(clips["phone"], tmp_path / "phone.faces.npz", quiet=True)
    from fvedit.video import probe

    faces, info = load_faces(path), probe(clips["phone"])
    assert (info.coded_width, info.coded_height, info.rotation) == (240, 320, 90)  # stored on its side
    assert (faces.width, faces.height) == (320, 240)  # the upright frames the tracker saw
    assert alignment.present.all()
    assert_same_alignment(replay(clips["phone"], path), faces)


def test_recording_and_replay_with_a_fake_detector():
    """The identity bookkeeping and the refusals, without dlib or video."""
    lm = np.stack([np.linspace(40, 60, 68), np.linspace(30, 70, 68)], axis=1)

    class Fake:
        name = "fake"

        def detect(self, frame):
            return [Face((30.0, 30.0, 70.0, 70.0), 1.0, lm)] if frame[0, 0, 0] == 0 else []

        def detect_near(self, frame, box):
            return [Face(tuple(box), 0.1, lm)]

    frames = [np.full((100, 100, 3), v, np.uint8) for v in (0, 9, 0)]
    rec = RecordingDetector(Fake())
    alignment = align_video(iter(frames), rec, max_gap=2)
    assert [len(d) for d in rec.detections] == [1, 0, 1] and [r[0] for r in rec.rechecks] == [1]
    assert alignment.present.all() and alignment.num_bridged == 1

    class NoRecheck:
        name = "plain"

        def detect(self, frame):
            return Fake().detect(frame)

    assert not hasattr(RecordingDetector(NoRecheck()), "detect_near")  # so the tracker never asks


def test_a_replay_refuses_what_was_not_recorded(clips, faces_files):
    det = ReplayDetector(faces_files["blur"])
    frames = list(frames_of(clips["blur"]))
    for frame in frames:
        det.detect(frame)
    with pytest.raises(InputError, match="holds 10 frames"):
        det.detect(frames[0])
    with pytest.raises(InputError, match="frame 0 was not re-checked") as err:
        det.detect_near(frames[0], (1.0, 2.0, 3.0, 4.0))
    assert "--max-gap 25" in str(err.value) and "\n" not in str(err.value)
    i = min(det.faces.rechecks)
    with pytest.raises(InputError, match=f"frame {i} was re-checked around another box"):
        det.detect_near(frames[i], (1.0, 2.0, 3.0, 4.0))
    with pytest.raises(InputError, match="never handed to detect"):
        det.detect_near(frames[i].copy(), det.faces.rechecks[i][0][0])
    with pytest.raises(InputError, match="made for 320x240 frames but frame 0 is 256x192"):
        ReplayDetector(faces_files["blur"]).detect(np.zeros((192, 256, 3), np.uint8))
    # --max-gap 0 at align time: nothing was re-checked, so a replay that bridges cannot go on
    with pytest.raises(InputError, match="not re-checked.*--max-gap 0"):
        replay(clips["blur"], faces_files["blur_gap0"], max_gap=25)
    plain = replay(clips["blur"], faces_files["blur_gap0"], max_gap=0)
    assert plain.num_absent == 1 and plain.num_bridged == 0


# -- the edit with --faces ---------------------------------------------------------------------


def edit_opts(cache: Path, **kw) -> PipelineOptions:
    return PipelineOptions(sampler=SamplerSpec("dpm", 2), batch_size=4, cache_dir=cache, quiet=True, **kw)


def test_an_edit_with_faces_writes_the_same_frames_and_shares_the_cache(clips, faces_files, tmp_path, recorded, monkeypatch):
    video = clips["blur"]
    with_dlib = run_edit(video, tmp_path / "a.mp4", EditRequest(["young"]), opts=edit_opts(tmp_path / "c1"), **FAST)
    frames_dlib = [f.copy() for f in recorded]
    recorded.clear()

    from fvedit.face import detect

    def no_detector(*args, **kwargs):
        raise AssertionError("a replay must not build a face detector")

    monkeypatch.setattr(detect, "make_detector", no_detector)
    replayed = run_edit(video, tmp_path / "b.mp4", EditRequest(["young"]),
                        opts=edit_opts(tmp_path / "c2", faces=faces_files["blur"]), **FAST)
    assert not replayed.cache_hit and replayed.bridged == with_dlib.bridged >= 1
    assert len(recorded) == len(frames_dlib) == 10
    assert all(np.array_equal(a, b) for a, b in zip(frames_dlib, recorded))
    assert any(not np.array_equal(a, f.rgb) for a, f in zip(recorded, iter_frames(video)))  # it did edit
    # keyed by the detector the file recorded, whatever opts.detector says (a replay needs none)
    shared = run_edit(video, None, EditRequest([]), **FAST,
                      opts=edit_opts(tmp_path / "c1", faces=faces_files["blur"], detector="insightface"))
    assert shared.cache_hit, "a replay of dlib's answers gives dlib's encoding: the same cache entry"


def test_the_whole_edit_runs_where_dlib_cannot_be_imported(clips, faces_files, tmp_path):
    env = dict(os.environ, FVEDIT_WEIGHTS_DIR=str(tmp_path / "none"), FVEDIT_CACHE_DIR=str(tmp_path / "cache"))
    base = [sys.executable, str(ROOT / "tests" / "block_imports.py"), "dlib,face_recognition_models", "-m", "fvedit.cli"]
    probe = "import sys\ntry:\n    import dlib\nexcept ImportError:\n    sys.exit(3)\n"
    assert subprocess.run([*base[:3], "-c", probe], env=env, cwd=ROOT).returncode == 3  # the block works
    out = tmp_path / "out.mp4"
    faces = ["--faces", str(faces_files["blur"])]
    res = subprocess.run([*base, "encode", str(clips["blur"]), *faces, "-q", *FAST_CLI], capture_output=True, text=True,
                         timeout=600, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr  # tracking, smoothing, crops, encoders, inversion
    res = subprocess.run([*base, "edit", str(clips["blur"]), *faces, "-o", str(out), "-a", "young", "--from-cache",
                          *FAST_CLI], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr  # decode, paste, write
    assert "hit, inversion skipped" in " ".join(res.stderr.split())
    assert out.is_file() and len(list(iter_frames(out))) == 10
    # control: without --faces the same process needs dlib and says so in one line
    res = subprocess.run([*base, "encode", str(clips["blur"]), "--no-cache", "-q", *FAST_CLI], capture_output=True, text=True,
                         timeout=600, env=env, cwd=ROOT)
    assert res.returncode == 2 and len(error_lines(res.stderr)) == 1 and "needs dlib" in res.stderr


# -- bad input: one line, exit 2, before any slow work -------------------------------------------


def _rewrite(src: Path, dst: Path, drop: str | None = None, **replace) -> Path:
    with np.load(src) as d:
        arrays = {k: d[k] for k in d.files if k != drop}
    arrays.update(replace)
    np.savez(dst, **arrays)
    return dst


BAD_FILES = {
    "missing": (lambda src, p: p, "faces file not found"),
    "garbage": (lambda src, p: (p.write_bytes(os.urandom(300)), p)[1], "cannot read faces file"),
    "npy": (lambda src, p: (np.save(p.with_suffix(".npy"), np.zeros(3)), p.with_suffix(".npy").rename(p), p)[2],
            "single array, not an .npz"),
    "no_array": (lambda src, p: _rewrite(src, p, drop="det_box"), "has no array 'det_box'"),
    "bad_shape": (lambda src, p: _rewrite(src, p, det_box=np.zeros((9, 5))), "'det_box' is float64 [9, 5]; expected float [K=9, 4]"),
    "short_rows": (lambda src, p: _rewrite(src, p, present=np.ones(9, bool)), "'present' is bool [9]; expected bool [N=10]"),
    "objects": (lambda src, p: _rewrite(src, p, face=np.array([{"a": 1}], dtype=object)), "cannot read array 'face'"),
    "nan": (lambda src, p: _rewrite(src, p, quads=np.full((10, 4, 2), np.nan)), "'quads' holds NaN"),
    "not_ours": (lambda src, p: _rewrite(src, p, format=np.array("other")), "not a faces file"),
    "newer": (lambda src, p: _rewrite(src, p, version=np.int64(2)), "format version 2"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_faces_file_is_one_line(kind, faces_files, tmp_path):
    make, expected = BAD_FILES[kind]
    path = make(faces_files["blur"], tmp_path / "bad.npz")
    with pytest.raises(InputError) as err:
        load_faces(path)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def no_slow_work(monkeypatch):
    """Fail the test if the edit gets as far as loading weights."""
    import fvedit.pipeline.jobs

    def slow(*args, **kwargs):
        raise AssertionError("the bad --faces file was noticed only after the slow work began")

    monkeypatch.setattr(fvedit.pipeline.jobs, "_run_edit", slow)


@pytest.mark.parametrize(
    "video,faces,args,expected",
    [
        ("other_count", "blur", [], "made for 10 frames at 320x240 but {video} has 8 frames at 320x240"),
        ("other_size", "blur", [], "made for 10 frames at 320x240 but {video} has 10 frames at 256x192"),
        ("same_shape", "blur", [], "was made from another file than {video} (its sha256 differs"),
        ("blur", "garbage", [], "cannot read faces file"),
        ("blur", "blur_gap0", [], "frame 4 was not re-checked"),
        ("blur", "blur", ["--face", "3"], "face index 3 requested"),
    ],
)
@pytest.mark.parametrize("command", ["edit", "encode"])
def test_a_mismatched_faces_file_stops_the_cli_with_one_line(command, video, faces, args, expected, clips, faces_files,
                                                            tmp_path, capsys, no_slow_work):
    path = faces_files.get(faces) or (tmp_path / "garbage.npz")
    if faces == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    out = ["-o", str(tmp_path / "o.mp4")] if command == "edit" else []
    code, _, err = run_cli([command, str(clips[video]), "--faces", str(path), *out, *args, *FAST_CLI], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert expected.format(video=clips[video]) in lines[0]
    if "re-checked" in expected:
        assert "--max-gap 0" in lines[0]
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "cache").exists()


# -- the align command ---------------------------------------------------------------------------


def test_align_help_lists_every_array_and_explains_every_option(capsys):
    import typer

    from fvedit.cli import app

    code, out, _ = run_cli(["align", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    missing = [name for name in SCHEMA if name not in flat]
    assert not missing, f"align --help does not document {missing}"
    for param in typer.main.get_command(app).commands["align"].params:
        if param.param_type_name == "option":
            assert (param.help or "").strip(), param.opts
    for command in ("edit", "encode"):
        _, out, _ = run_cli([command, "--help"], capsys)
        assert "--faces" in out


def test_align_cli_writes_next_to_the_video_and_says_what_it_found(clips, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(clips["leaves"].read_bytes())
    code, _, err = run_cli(["align", str(video), "--max-gap", "3"], capsys)
    assert code == 0, err
    target = tmp_path / "clip.faces.npz"
    assert "18 frames, 12 with the face (0 bridged), 6 without" in " ".join(err.split())
    faces = load_faces(target)
    assert faces.settings.max_gap == 3 and faces.absent_frames.tolist() == list(LEAVES)
    assert not faces.rechecks  # a 6-frame absence is longer than --max-gap 3: nothing to re-check
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.faces.npz", "clip.mp4"]  # no partials


def test_align_cli_failure_leaves_no_file_and_keeps_the_old_one(clips, tmp_path, capsys):
    target = tmp_path / "faces.npz"
    target.write_bytes(b"old")
    code, _, err = run_cli(["align", str(clips["no_face"]), "-o", str(target)], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "no face found" in err
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["faces.npz"]
    code, _, err = run_cli(["align", str(clips["blur"]), "-o", str(clips["blur"])], capsys)
    assert code == 2 and "refusing to overwrite the input" in err
    code, _, err = run_cli(["align", str(tmp_path / "nope.mp4")], capsys)
    assert code == 2 and "video not found" in err
