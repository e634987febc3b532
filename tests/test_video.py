"""Video IO: probe facts, frame-exact upright reading, timing/audio-preserving atomic writing."""

from __future__ import annotations

import inspect
import os
import signal
import struct
import subprocess
import sys
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from fvedit import synth
from fvedit.errors import FveditError, InputError
from fvedit.video import VideoReader, VideoWriter, check_output, iter_frames, probe, write_video
from fvedit.video.probe import orientation_from_display_matrix
from fvedit.video.reader import Frame
from fvedit.video.writer import pick_encoder


ONE = 1 << 16


# -- independent helpers (plain PyAV / NumPy, not fvedit code) -------------------------------


def decoded_frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def audio_packets(path: Path) -> list[tuple[bytes, Fraction]]:
    """Every audio packet's bytes and presentation time: equal lists mean a byte-exact remux."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [(bytes(p), p.pts * p.time_base) for p in container.demux(stream) if p.size]


def frame_times(path: Path) -> list[Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.pts * stream.time_base for f in container.decode(stream)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


def last_shown_frame(path: Path) -> tuple[Fraction, Fraction]:
    """(pts, duration) in seconds of the frame shown last, as FFmpeg decodes the file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        last = max(container.decode(stream), key=lambda f: f.pts)
        return last.pts * stream.time_base, last.duration * stream.time_base


def mp4_edit_duration(path: Path) -> Fraction:
    """The first track's (video's) presentation length in seconds from its MP4 edit list:
    what players take as the video's duration (ISO 14496-12 8.2.2 mvhd, 8.6.6 elst)."""
    data = path.read_bytes()
    mvhd = data.index(b"mvhd") + 4
    timescale = struct.unpack(">I", data[mvhd + (20 if data[mvhd] == 1 else 12) :][:4])[0]
    elst = data.index(b"elst") + 4
    version, count = data[elst], struct.unpack(">I", data[elst + 4 : elst + 8])[0]
    entry, total = elst + 8, 0
    for _ in range(count):
        total += struct.unpack(">Q" if version == 1 else ">I", data[entry : entry + (8 if version == 1 else 4)])[0]
        entry += 20 if version == 1 else 12
    return Fraction(total, timescale)


# -- probe ----------------------------------------------------------------------------------


def test_probe_cfr_with_audio(cfr_video):
    info = probe(cfr_video)
    assert (info.width, info.height, info.coded_width, info.coded_height) == (160, 120, 160, 120)
    assert info.frame_count == 24 == decoded_frame_count(cfr_video)
    assert info.fps == Fraction(25) and not info.is_vfr
    assert info.duration == pytest.approx(24 / 25)
    assert info.rotation == 0 and not info.mirrored
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert info.has_audio and (info.audio_codec, info.audio_sample_rate, info.audio_channels) == ("aac", 48000, 2)
    with av.open(str(cfr_video)) as container:  # the tone lasts exactly as long as the video
        audio = container.streams.audio[0]
        assert audio.duration * audio.time_base == Fraction(24, 25)


def test_probe_ntsc_rate_is_exact_fraction_and_silent(silent_video):
    info = probe(silent_video)
    assert info.fps == Fraction(30000, 1001)
    assert info.frame_count == 12 and not info.is_vfr
    assert not info.has_audio and info.audio_codec is None
    assert info.duration == pytest.approx(12 * 1001 / 30000)


def test_probe_detects_variable_frame_rate(vfr_video):
    info = probe(vfr_video)
    times = frame_times(vfr_video)
    assert info.is_vfr
    assert info.frame_count == 20 == len(times)
    assert len({b - a for a, b in zip(times, times[1:])}) > 1  # truly irregular input
    assert info.fps == Fraction(19) / (times[-1] - times[0])  # average rate from timestamps


def test_probe_odd_size(odd_video):
    info = probe(odd_video)
    assert (info.width, info.height) == (301, 207)
    assert info.frame_count == 12 == decoded_frame_count(odd_video)


def test_probe_rotation_swaps_displayed_size(rotated_video):
    path, rotation = rotated_video
    info = probe(path)
    assert info.rotation == rotation and not info.mirrored
    assert (info.width, info.height) == (160, 120)  # upright size
    quarter_turn = rotation in (90, 270)
    assert (info.coded_width, info.coded_height) == ((120, 160) if quarter_turn else (160, 120))


def test_synth_rotation_uses_the_phone_matrix_convention(rotated_video, tkhd_matrix):
    """A 90° clip must carry the same tkhd matrix an upright iPhone writes (a=0 b=1 c=-1 d=0)."""
    path, rotation = rotated_video
    a, b, _, c, d, *_ = tkhd_matrix(path)
    expected = {90: (0, ONE, -ONE, 0), 180: (-ONE, 0, 0, -ONE), 270: (0, -ONE, ONE, 0)}[rotation]
    assert (a, b, c, d) == expected


@pytest.mark.parametrize(
    "matrix, rotation, mirrored",
    [
        ((ONE, 0, 0, 0, ONE, 0, 0, 0, 1 << 30), 0, False),
        ((0, ONE, 0, -ONE, 0, 0, 0, 0, 1 << 30), 90, False),  # iPhone portrait
        ((-ONE, 0, 0, 0, -ONE, 0, 0, 0, 1 << 30), 180, False),
        ((0, -ONE, 0, ONE, 0, 0, 0, 0, 1 << 30), 270, False),
        ((-ONE, 0, 0, 0, ONE, 0, 0, 0, 1 << 30), 0, True),  # x' = -x: a horizontal mirror
    ],
)
def test_display_matrix_known_answers(matrix, rotation, mirrored):
    assert orientation_from_display_matrix(matrix).rotation_and_mirror == (rotation, mirrored)


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing", "no such file"),
        ("folder", "is a folder"),
        ("text", "not a video or is corrupt"),
        ("garbage", "not a video or is corrupt"),
        ("truncated", "not a video or is corrupt"),
        ("audio_only", "has no video stream"),
        ("empty", "has no video frames"),
    ],
)
def test_bad_inputs_raise_one_line_input_errors(bad_files, name, message):
    with pytest.raises(InputError, match=message) as err:
        probe(bad_files[name])
    assert "\n" not in str(err.value) and str(bad_files[name]) in str(err.value)
    with pytest.raises(InputError):
        VideoReader(bad_files[name])


# -- reader ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["cfr_video", "vfr_video", "odd_video", "silent_video"])
def test_reader_is_frame_exact_with_source_timestamps(request, fixture):
    path = request.getfixturevalue(fixture)
    info = probe(path)
    frames = list(iter_frames(path))
    assert len(frames) == info.frame_count == decoded_frame_count(path)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert [f.pts * info.time_base for f in frames] == frame_times(path)
    assert all(f.time == pytest.approx(float(f.pts * info.time_base)) for f in frames)
    for f in frames:
        assert f.rgb.dtype == np.uint8 and f.rgb.shape == (info.height, info.width, 3)
        assert f.rgb.flags.c_contiguous


def test_reader_pixels_match_the_rendered_scene(cfr_video):
    """Decoded frames are the synth renders up to x264 loss: proves colour and order."""
    scene = synth.FaceScene(width=160, height=120, frames=24)
    for frame in iter_frames(cfr_video):
        assert psnr(frame.rgb, scene.render(frame.index)) > 30


def test_reader_turns_rotated_frames_upright(rotated_video):
    path, _ = rotated_video
    scene = synth.FaceScene(width=160, height=120, frames=12)
    frames = list(iter_frames(path))
    assert len(frames) == 12
    for frame in frames[::4]:
        assert frame.rgb.shape == (120, 160, 3)
        assert psnr(frame.rgb, scene.render(frame.index)) > 30
        # the wrong turn would be far off (same shape for 180°, so compare its content too)
        assert psnr(np.rot90(frame.rgb, 2), scene.render(frame.index)) < 25


def test_reader_follows_a_phone_written_display_matrix(phone_marker_video):
    """Coded 64x48 with a top-left marker + iPhone matrix: upright is 48x64, marker top-right."""
    path, coded = phone_marker_video
    info = probe(path)
    assert (info.rotation, info.width, info.height) == (90, 48, 64)
    frame = next(iter_frames(path))
    assert frame.rgb.shape == (64, 48, 3)
    expected = np.rot90(coded, k=-1)  # numpy's k=-1 is a clockwise quarter turn
    assert psnr(frame.rgb, expected) > 35
    assert frame.rgb[:12, -12:].mean() > 200 and frame.rgb[:12, :12].mean() < 60


def test_reader_chunks_and_limits(cfr_video):
    chunks = list(iter_frames(cfr_video, chunk=5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 4]
    assert [f.index for c in chunks for f in c] == list(range(24))
    assert [f.index for f in iter_frames(cfr_video, max_frames=7)] == list(range(7))
    with pytest.raises(InputError, match="chunk"):
        iter_frames(cfr_video, chunk=0)
    with VideoReader(cfr_video) as reader:
        assert len(reader) == 24 and sum(1 for _ in reader) == 24


def test_reader_streams_without_holding_frames(media_dir):
    short = synth.make_no_face_video(media_dir / "short.mp4", frames=50, size=(160, 120))
    long = synth.make_no_face_video(media_dir / "long.mp4", frames=200, size=(160, 120))
    assert inspect.isgenerator(iter_frames(long))

    def peak_while_reading(path: Path) -> int:
        tracemalloc.start()
        count = sum(1 for _ in iter_frames(path))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert count == probe(path).frame_count
        return peak

    frame_bytes = 160 * 120 * 3
    short_peak, long_peak = peak_while_reading(short), peak_while_reading(long)
    assert long_peak < short_peak + 4 * frame_bytes  # holding 150 more frames would add 8.6 MB


# -- writer ---------------------------------------------------------------------------------


def round_trip(source: Path, out: Path, **options) -> Path:
    info = probe(source)
    return write_video(out, iter_frames(source), like=info, audio_from=source if info.has_audio else None, **options)


@pytest.mark.parametrize("fixture", ["cfr_video", "vfr_video"])
def test_round_trip_keeps_count_timing_size_and_audio_bytes(request, fixture, tmp_path):
    source = request.getfixturevalue(fixture)
    out = round_trip(source, tmp_path / "out.mp4", crf=12)
    before, after = probe(source), probe(out)
    assert after.frame_count == before.frame_count == decoded_frame_count(out)
    assert frame_times(out) == frame_times(source)  # every pts, exactly
    assert (after.fps, after.is_vfr, after.duration) == (before.fps, before.is_vfr, before.duration)
    assert (after.width, after.height, after.rotation) == (before.width, before.height, 0)
    assert after.has_audio and audio_packets(out) == audio_packets(source)  # stream copy, byte-exact
    for a, b in zip(iter_frames(source), iter_frames(out)):
        assert psnr(a.rgb, b.rgb) > 35
    assert leftovers(tmp_path) == []


def test_round_trip_of_rotated_input_is_upright_without_metadata(rotated_video, tmp_path):
    path, _ = rotated_video
    out = round_trip(path, tmp_path / "upright.mp4", crf=12)
    info = probe(out)
    assert (info.rotation, info.width, info.height, info.frame_count) == (0, 160, 120, 12)
    assert (info.coded_width, info.coded_height) == (160, 120)
    for a, b in zip(iter_frames(path), iter_frames(out)):
        assert psnr(a.rgb, b.rgb) > 35


def test_odd_size_round_trip_keeps_size_and_content(odd_sized_video, tmp_path):
    """301x207, 301x208 and 300x207 come back at exactly that size, unshifted, in probe and pixels."""
    source = probe(odd_sized_video)
    out = round_trip(odd_sized_video, tmp_path / "odd_out.mp4", crf=12)
    info = probe(out)
    assert (info.width, info.height, info.coded_width, info.coded_height) == (source.width, source.height) * 2
    assert info.frame_count == source.frame_count and frame_times(out) == frame_times(odd_sized_video)
    for a, b in zip(iter_frames(odd_sized_video), iter_frames(out), strict=True):
        assert b.rgb.shape == a.rgb.shape
        assert psnr(a.rgb, b.rgb) > 35
        assert psnr(a.rgb[:, 1:], b.rgb[:, :-1]) < psnr(a.rgb, b.rgb) - 3  # a one-pixel shift is far off


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov", ".m4v"])
@pytest.mark.parametrize("size", [(301, 207), (301, 208), (300, 207)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_odd_size_edges_are_the_written_pixels(tmp_path, suffix, size):
    """Bright last column/row beside dark ones: a padded, cropped or shifted edge would show."""
    width, height = size
    image = np.full((height, width, 3), 128, np.uint8)
    image[:, -1], image[:, -2], image[-1, :], image[-2, :] = 235, 16, 235, 16
    out = write_video(tmp_path / f"edge{suffix}", [image] * 3, fps=25, crf=12)
    info = probe(out)
    assert (info.width, info.height, info.frame_count) == (width, height, 3)
    for frame in iter_frames(out):
        got = frame.rgb.astype(int)
        assert got.shape == image.shape
        assert got[:-2, -1].mean() > 220 and got[:-2, -2].mean() < 30  # last column, its neighbour
        assert got[-1, :-2].mean() > 220 and got[-2, :-2].mean() < 30  # last row, its neighbour
        assert np.abs(got - image).max() <= 12


def test_odd_size_kept_exactly_with_yuv444p(odd_video, tmp_path):
    out = round_trip(odd_video, tmp_path / "odd444.mp4", pix_fmt="yuv444p")
    info = probe(out)
    assert (info.width, info.height, info.codec, info.pix_fmt) == (301, 207, "h264", "yuv444p")


def test_encoder_choice_keeps_every_size():
    assert pick_encoder(None, "yuv420p", 640, 360, ".mp4") == ("libx264", "yuv420p")
    assert pick_encoder(None, "yuv420p", 301, 207, ".mp4") == ("libvpx-vp9", "yuv420p")
    assert pick_encoder(None, "yuv420p", 300, 207, ".mkv") == ("libvpx-vp9", "yuv420p")
    assert pick_encoder(None, "yuv420p", 301, 208, ".mov") == ("libx264", "yuv444p")  # no VP9 in .mov
    assert pick_encoder(None, "yuv422p", 300, 207, ".mp4") == ("libx264", "yuv422p")  # 4:2:2 halves width only
    assert pick_encoder(None, "yuv444p", 301, 207, ".mp4") == ("libx264", "yuv444p")
    with pytest.raises(InputError, match="odd size 301x207"):
        pick_encoder("libx264", "yuv420p", 301, 207, ".mp4")
    with pytest.raises(InputError, match="unknown pixel format"):
        pick_encoder(None, "nonsense", 64, 64, ".mp4")


def test_vfr_round_trip_keeps_every_pts_and_the_last_duration(vfr_video, tmp_path):
    out = round_trip(vfr_video, tmp_path / "vfr_out.mp4", crf=12)
    assert frame_times(out) == frame_times(vfr_video)
    assert last_shown_frame(out) == last_shown_frame(vfr_video)  # 40 ms, not 60
    before, after = probe(vfr_video), probe(out)
    assert after.last_frame_duration_pts * after.time_base == before.last_frame_duration_pts * before.time_base
    assert mp4_edit_duration(out) == mp4_edit_duration(vfr_video) == Fraction(84, 100)  # the total duration
    assert after.duration == before.duration


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_odd_size_vfr_round_trip_keeps_every_duration(odd_vfr_video, tmp_path, suffix):
    """Odd sizes go to VP9, whose MP4 packet durations FFmpeg re-guesses; the probe must not."""
    out = round_trip(odd_vfr_video, tmp_path / f"odd_vfr{suffix}", crf=12)
    before, after = probe(odd_vfr_video), probe(out)
    assert (after.width, after.height, after.codec, after.frame_count) == (301, 207, "vp9", 23)

    def durations(path: Path, info) -> list[Fraction]:
        return [f.duration * info.time_base for f in iter_frames(path)]

    assert durations(out, after) == durations(odd_vfr_video, before)  # every frame, the last included
    assert after.last_frame_duration_pts * after.time_base == Fraction(1, 25)
    if suffix == ".mp4":  # Matroska moves the whole file by the AAC priming instead
        assert frame_times(out) == frame_times(odd_vfr_video)
        assert mp4_edit_duration(out) == mp4_edit_duration(odd_vfr_video)
        assert audio_packets(out) == audio_packets(odd_vfr_video)


@pytest.mark.parametrize("count", range(9, 33))
def test_last_frame_keeps_its_duration_behind_b_frames(tmp_path, count):
    """x264 usually codes the shown-last frame before trailing B-frames; it must still keep its length."""
    time_base, scene = Fraction(1, 90000), synth.FaceScene(width=96, height=64, frames=count)
    durations = synth.vfr_durations(count, Fraction(25), time_base)
    starts = [sum(durations[:i]) for i in range(count)]
    frames = [
        Frame(i, pts, float(pts * time_base), scene.render(i), duration)
        for i, (pts, duration) in enumerate(zip(starts, durations))
    ]
    out = write_video(tmp_path / "b.mp4", frames, fps=25, time_base=time_base)
    assert last_shown_frame(out) == (starts[-1] * time_base, durations[-1] * time_base)
    assert mp4_edit_duration(out) == (starts[-1] + durations[-1]) * time_base
    assert frame_times(out) == [pts * time_base for pts in starts]


def test_reader_durations_are_the_gaps_between_frames(vfr_video):
    """FFmpeg's own frame duration is the decode-order gap; the reader's is the display gap."""
    truth = synth.vfr_durations(20, Fraction(25), Fraction(1, 90000))
    frames = list(iter_frames(vfr_video))
    assert [f.duration for f in frames] == truth
    assert frames[-1].duration == probe(vfr_video).last_frame_duration_pts
    assert [f.duration for f in iter_frames(vfr_video, max_frames=3)] == truth[:3]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov", ".m4v"])
def test_metadata_tags_are_written(cfr_video, tmp_path, suffix):
    tags = {"comment": "made with untrained demo weights", "title": "ça marche"}
    out = write_video(tmp_path / f"tagged{suffix}", iter_frames(cfr_video, max_frames=3), like=probe(cfr_video),
                      metadata=tags)
    with av.open(str(out)) as container:
        read = {key.lower(): value for key, value in container.metadata.items()}  # Matroska: COMMENT
    assert {key: read.get(key) for key in tags} == tags


def test_metadata_a_container_would_drop_is_refused(cfr_video, tmp_path):
    frames = list(iter_frames(cfr_video, max_frames=2))
    with pytest.raises(InputError, match="drop the tag"):
        write_video(tmp_path / "x.mov", frames, like=probe(cfr_video), metadata={"description": "lost in .mov"})
    with pytest.raises(InputError, match="drop the tag"):
        write_video(tmp_path / "x.mp4", frames, like=probe(cfr_video), metadata={"fvedit_weights": "demo"})
    out = write_video(tmp_path / "x.mkv", frames, like=probe(cfr_video), metadata={"fvedit_weights": "demo"})
    with av.open(str(out)) as container:
        assert container.metadata.get("FVEDIT_WEIGHTS") == "demo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mkv"]


def test_plain_arrays_get_cfr_timestamps(tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(6)]
    out = write_video(tmp_path / "arrays.mp4", frames, fps=Fraction(30000, 1001))
    info = probe(out)
    assert (info.frame_count, info.fps, info.has_audio) == (6, Fraction(30000, 1001), False)
    assert (info.width, info.height) == (64, 48)
    assert frame_times(out) == [i * Fraction(1001, 30000) for i in range(6)]


@pytest.mark.parametrize("interrupt", [RuntimeError("model crashed"), KeyboardInterrupt()])
def test_failure_inside_writer_leaves_nothing_behind(cfr_video, tmp_path, interrupt):
    info = probe(cfr_video)
    target = tmp_path / "edited.mp4"
    with pytest.raises(type(interrupt)):
        with VideoWriter(target, info, audio_from=cfr_video) as writer:
            for frame in iter_frames(cfr_video):
                writer.write(frame)
                if frame.index == 10:
                    assert leftovers(tmp_path)  # work really goes to a partial file...
                    raise interrupt
    assert not target.exists() and leftovers(tmp_path) == []  # ...which is removed


def test_failed_write_keeps_the_previous_output(cfr_video, tmp_path):
    target = tmp_path / "edited.mp4"
    target.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with VideoWriter(target, probe(cfr_video)) as writer:
            writer.write(next(iter_frames(cfr_video)))
            raise RuntimeError("stop")
    assert target.read_bytes() == b"previous result" and leftovers(tmp_path) == []


def test_writer_refuses_to_overwrite_its_input(cfr_video, media_dir):
    before = cfr_video.read_bytes()
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        VideoWriter(cfr_video, probe(cfr_video))
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        VideoWriter(media_dir / "." / cfr_video.name, fps=25, width=160, height=120, audio_from=cfr_video)
    assert cfr_video.read_bytes() == before and leftovers(media_dir) == []


def test_writer_input_checks(cfr_video, tmp_path):
    info = probe(cfr_video)
    with VideoWriter(tmp_path / "a.mp4", info) as writer:
        with pytest.raises(InputError, match="160x120"):
            writer.write(np.zeros((100, 100, 3), np.uint8))
        with pytest.raises(InputError, match="uint8"):
            writer.write(np.zeros((120, 160, 3), np.float32))
        writer.write(np.zeros((120, 160, 3), np.uint8), pts=512)
        with pytest.raises(InputError, match="pts must increase"):
            writer.write(np.zeros((120, 160, 3), np.uint8), pts=512)
    assert probe(tmp_path / "a.mp4").frame_count == 1
    with pytest.raises(FveditError, match="no frames"):
        with VideoWriter(tmp_path / "b.mp4", info):
            pass
    assert not (tmp_path / "b.mp4").exists() and leftovers(tmp_path) == []
    with pytest.raises(InputError, match="fps"):
        VideoWriter(tmp_path / "c.mp4", width=16, height=16)
    with pytest.raises(InputError, match="already exists"):
        VideoWriter(tmp_path / "a.mp4", info, overwrite=False)


def test_audio_until_trims_whole_packets(cfr_video, tmp_path):
    first_half = iter_frames(cfr_video, max_frames=12)
    out = write_video(tmp_path / "half.mp4", first_half, like=probe(cfr_video), audio_from=cfr_video, audio_until=0.48)
    kept, source = audio_packets(out), audio_packets(cfr_video)
    assert kept == [p for p in source if p[1] < Fraction(48, 100)]
    assert probe(out).frame_count == 12


# -- synth ----------------------------------------------------------------------------------


def test_synth_is_deterministic(tmp_path):
    """Rendering is exact; x264 bytes can differ in rare runs, decoded pixels barely."""
    first, second = synth.FaceScene(frames=6, faces=2), synth.FaceScene(frames=6, faces=2)
    for index in range(6):
        np.testing.assert_array_equal(first.render(index), second.render(index))
    a = synth.make_face_video(tmp_path / "a.mp4", frames=6, size=(96, 64), vfr=True)
    b = synth.make_face_video(tmp_path / "b.mp4", frames=6, size=(96, 64), vfr=True)
    assert frame_times(a) == frame_times(b) and audio_packets(a) == audio_packets(b)
    for fa, fb in zip(iter_frames(a), iter_frames(b), strict=True):
        assert psnr(fa.rgb, fb.rgb) > 28  # neighbouring frames differ far more: ~14 dB


def test_synth_faces_are_found_by_a_real_detector():
    import dlib

    detector = dlib.get_frontal_face_detector()

    def iou(a, b) -> float:
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    for faces, size in ((1, (256, 256)), (3, (480, 200))):
        scene = synth.FaceScene(width=size[0], height=size[1], frames=8, faces=faces)
        for index in (0, 3):
            found = [(r.left(), r.top(), r.right(), r.bottom()) for r in detector(scene.render(index), 1)]
            truth = scene.face_boxes(index)
            assert len(found) == faces
            assert all(max(iou(t, f) for f in found) > 0.5 for t in truth)
    blank = synth.FaceScene(width=256, height=256, frames=8, faces=0)
    assert len(detector(blank.render(2), 1)) == 0


def test_synth_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="rotation_meta"):
        synth.make_face_video(tmp_path / "x.mp4", rotation_meta=45)
    with pytest.raises(ValueError, match="faces"):
        synth.FaceScene(faces=5)
    with pytest.raises(ValueError, match="motion"):
        synth.FaceScene(motion="spin")


def test_probe_decode_mode_agrees_with_packet_count(vfr_video, rotated_video):
    for path in (vfr_video, rotated_video[0]):
        assert probe(path, decode=True) == probe(path)


def test_still_image_is_not_a_video(tmp_path):
    from PIL import Image

    image = tmp_path / "face.png"
    Image.fromarray(synth.FaceScene(width=64, height=64).render(0)).save(image)
    with pytest.raises(InputError, match="still image"):
        probe(image)


def test_two_iterations_of_one_reader_are_independent(cfr_video):
    with VideoReader(cfr_video) as reader:
        first, second = iter(reader), iter(reader)
        a = [next(first).index for _ in range(3)]
        b = [f.index for f in second]
        assert a == [0, 1, 2] and b == list(range(24))
        assert next(first).index == 3
    assert list(iter_frames(cfr_video, max_frames=0)) == []
    with pytest.raises(InputError, match="max_frames"):
        iter_frames(cfr_video, max_frames=-1)


def test_mkv_output_keeps_frames_audio_and_sync(cfr_video, tmp_path):
    """Matroska forbids negative timestamps, so AAC priming (-1024 samples) shifts the whole
    file forward by that much; frame spacing and audio/video sync must survive unchanged."""
    out = round_trip(cfr_video, tmp_path / "out.mkv")
    src_video, out_video = frame_times(cfr_video), frame_times(out)
    shift = out_video[0] - src_video[0]
    assert probe(out).frame_count == 24 and 0 <= shift < Fraction(1, 40)
    assert out_video == [t + shift for t in src_video]  # 40 ms ticks are exact in 1/1000
    src_audio, out_audio = audio_packets(cfr_video), audio_packets(out)
    assert [p[0] for p in out_audio] == [p[0] for p in src_audio]
    assert all(abs(o[1] - s[1] - shift) <= Fraction(1, 1000) for o, s in zip(out_audio, src_audio))


def test_output_gets_ordinary_file_permissions(cfr_video, tmp_path):
    out = write_video(tmp_path / "perm.mp4", iter_frames(cfr_video, max_frames=2), like=probe(cfr_video))
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


# -- output preflight, partial files, folders ---------------------------------------------------


def one_line_naming(err: pytest.ExceptionInfo, path: Path) -> bool:
    message = str(err.value)
    return "\n" not in message and str(path) in message and ".partial" not in message


def test_preflight_refuses_the_input_by_any_name(cfr_video, tmp_path):
    hard, soft = tmp_path / "hard.mp4", tmp_path / "soft.mp4"
    os.link(cfr_video, hard)
    soft.symlink_to(cfr_video)
    for output in (cfr_video, hard, soft, cfr_video.parent / "." / cfr_video.name):
        with pytest.raises(InputError, match="refusing to overwrite the input") as err:
            check_output(output, inputs=[cfr_video])
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        VideoWriter(hard, probe(cfr_video))
    assert leftovers(tmp_path) == [] and leftovers(cfr_video.parent) == []


@pytest.mark.parametrize(
    "name, message",
    [("folder", "is a folder"), ("out.avi", "extension '.avi'"), ("out", "no extension"), ("OUT.MKV", None)],
)
def test_preflight_checks_the_name(tmp_path, name, message):
    target = tmp_path if name == "folder" else tmp_path / name
    if message is None:
        assert check_output(target).path == target
        return
    with pytest.raises(InputError, match=message) as err:
        check_output(target)
    assert one_line_naming(err, target)


@pytest.mark.parametrize("where", ["/proc/nonexistent-dir/out.mp4", "/proc/out.mp4", "file-as-folder"])
def test_preflight_names_the_users_path_when_nothing_can_be_created(tmp_path, where):
    """Works as root too: /proc takes no new files or folders, a file cannot hold a folder."""
    if where == "file-as-folder":
        (tmp_path / "notes.txt").write_text("a file, not a folder")
        target = tmp_path / "notes.txt" / "sub" / "out.mp4"
    else:
        target = Path(where)
    with pytest.raises(InputError, match="cannot") as err:
        check_output(target)
    assert one_line_naming(err, target) and err.value.exit_code == 2
    with pytest.raises(InputError) as err:
        VideoWriter(target, fps=25, width=16, height=16)
    assert one_line_naming(err, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["notes.txt"] if where == "file-as-folder" else [])


def test_preflight_creates_folders_and_cleanup_removes_only_those(tmp_path):
    (tmp_path / "kept").mkdir()
    target = tmp_path / "kept" / "new" / "deeper" / "out.mp4"
    plan = check_output(target)
    assert plan.created == (tmp_path / "kept" / "new", tmp_path / "kept" / "new" / "deeper")
    assert target.parent.is_dir() and leftovers(target.parent) == [] and not target.exists()
    plan.cleanup()
    plan.cleanup()  # twice is harmless
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())

    plan = check_output(target)
    (target.parent / "metrics.json").write_text("{}")  # someone else's file: its folders stay
    plan.cleanup()
    assert (target.parent / "metrics.json").exists()
    assert check_output(target).created == ()  # they exist now: not this run's to remove


def test_failed_write_into_a_missing_folder_removes_the_folders(cfr_video, tmp_path):
    target = tmp_path / "new" / "dir" / "edited.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(target, probe(cfr_video), audio_from=cfr_video) as writer:
            writer.write(next(iter_frames(cfr_video)))
            assert leftovers(target.parent)
            raise RuntimeError("model crashed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="cannot encode"):  # fails inside the constructor
        VideoWriter(target, probe(cfr_video), codec="no-such-codec")
    assert list(tmp_path.iterdir()) == []


def test_writer_errors_name_the_users_path(cfr_video, tmp_path, monkeypatch):
    real_open = av.open

    def full_disk(name, mode="r", **kwargs):
        if mode == "w":
            raise av.FFmpegError(28, "No space left on device", name)
        return real_open(name, mode, **kwargs)

    target = tmp_path / "out.mp4"
    with monkeypatch.context() as patch:
        patch.setattr(av, "open", full_disk)
        with pytest.raises(InputError) as err:
            VideoWriter(target, probe(cfr_video))
    assert one_line_naming(err, target) and str(err.value) == f"cannot write {target}: No space left on device"
    assert list(tmp_path.iterdir()) == []

    def muxer_fails(self, packet):
        raise av.FFmpegError(28, "No space left on device", str(self._temp))

    monkeypatch.setattr(VideoWriter, "_mux_one", muxer_fails)
    with pytest.raises(FveditError, match="No space left on device") as err:
        with VideoWriter(target, probe(cfr_video)) as writer:
            writer.write_all(iter_frames(cfr_video))
    assert one_line_naming(err, target)
    assert list(tmp_path.iterdir()) == []


def test_partials_of_killed_runs_are_removed_and_live_ones_kept(cfr_video, tmp_path, partial_holder):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # exited and reaped: its pid runs nothing now
    stale = tmp_path / f".out.partial-{dead.pid}-k3x9.mp4"
    stale.write_bytes(b"half a video")
    killed, _ = partial_holder(tmp_path, "out")
    live, kept = partial_holder(tmp_path, "out")
    killed.send_signal(signal.SIGKILL)  # kill -9 while it holds its claim
    killed.wait()
    assert len(leftovers(tmp_path)) == 3
    check_output(tmp_path / "out.mp4")  # the preflight already clears them...
    assert leftovers(tmp_path) == [kept.name]
    stale.write_bytes(b"again")
    write_video(tmp_path / "out.mp4", iter_frames(cfr_video, max_frames=2), like=probe(cfr_video))
    assert leftovers(tmp_path) == [kept.name]  # ...and so does the writer; the live run's stays
    assert live.poll() is None
