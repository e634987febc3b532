"""`fvedit edit` end to end on generated face videos with the tiny preset and demo weights."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from fvedit.cli import main
from fvedit.pipeline.jobs import EditRequest, run_edit
from fvedit.pipeline import PipelineOptions
from fvedit.diffusion.spec import SamplerSpec
from fvedit.synth import make_face_video, make_no_face_video
from fvedit.video import VideoWriter, iter_frames, probe

FAST = dict(preset="tiny", weights_dir=None, device="cpu", backend="reference")


pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture(scope="module")
def face_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pipe") / "talk.mp4"
    return make_face_video(path, frames=6, size=(320, 240), fps=25, audio=True, face_scale=0.6)


def opts(tmp_path: Path, **kw) -> PipelineOptions:
    base = dict(sampler=SamplerSpec("dpm", 2), batch_size=4, cache_dir=tmp_path / "cache", quiet=True)
    base.update(kw)
    return PipelineOptions(**base)


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(audio=0) if p.size]


def test_edit_keeps_frames_timing_size_and_audio(face_video, tmp_path, recorded):
    out = tmp_path / "out.mp4"
    summary = run_edit(face_video, out, EditRequest(["young"]), opts=opts(tmp_path), **FAST)
    src, dst = probe(face_video), probe(out)
    assert (dst.frame_count, dst.width, dst.height, dst.fps) == (src.frame_count, src.width, src.height, src.fps)
    assert [f.time for f in iter_frames(out)] == pytest.approx([f.time for f in iter_frames(face_video)], abs=1e-3)
    assert dst.has_audio and audio_packets(out) == audio_packets(face_video)
    assert summary.frames == 6 and not summary.cache_hit
    assert len(recorded) == 6


def test_pixels_outside_the_face_are_untouched_and_the_face_changes(face_video, tmp_path, recorded):
    summary = run_edit(face_video, tmp_path / "out.mp4", EditRequest(["young"]), opts=opts(tmp_path), **FAST)
    from fvedit.pipeline.cache import load_encoding

    enc = load_encoding(tmp_path / "cache", summary.cache_folder.name)
    for frame, out, quad in zip(iter_frames(face_video), recorded, enc.quads):
        changed = np.any(frame.rgb != out, axis=-1)
        assert changed.sum() > 100  # the (demo) edit really replaced the face
        ys, xs = np.nonzero(changed)
        x0, y0 = quad.min(0) - 1
        x1, y1 = quad.max(0) + 1
        assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
        # Inside the crop the mask keeps the frame too: far fewer pixels change than the quad covers.
        area = np.linalg.norm(quad[3] - quad[0]) * np.linalg.norm(quad[1] - quad[0])
        assert changed.sum() < 0.8 * area


def test_same_settings_same_output_and_second_edit_reuses_cache(face_video, tmp_path, recorded):
    first = run_edit(face_video, tmp_path / "a.mp4", EditRequest(["young"]), opts=opts(tmp_path), **FAST)
    frames_a = [f.copy() for f in recorded]
    recorded.clear()
    second = run_edit(face_video, tmp_path / "b.mp4", EditRequest(["young"]), opts=opts(tmp_path), **FAST)
    assert not first.cache_hit and second.cache_hit
    assert "encode (inversion)" in first.times.seconds and "encode (inversion)" not in second.times.seconds
    assert all(np.array_equal(a, b) for a, b in zip(frames_a, recorded))
    recorded.clear()
    run_edit(face_video, tmp_path / "c.mp4", EditRequest(["old=0.6"]), opts=opts(tmp_path), **FAST)
    assert any(not np.array_equal(a, c) for a, c in zip(frames_a, recorded))


def test_one_edited_identity_for_every_frame(face_video, tmp_path, monkeypatch):
    """Temporal consistency by construction: every decoded frame gets the same edited z_id, every
    inversion the same mean identity; on a first edit each batch is inverted, then decoded."""
    import fvedit.pipeline.scheduler as scheduler
    from fvedit.models.encoders import DVAEncoder

    stages: list[str] = []
    seen: list[tuple[str, torch.Tensor]] = []
    original = DVAEncoder.fuse

    def spy(self, z_id, z_lnd):
        seen.append((stages[-1], z_id.detach().clone()))
        return original(self, z_id, z_lnd)

    for name in ("invert_batch", "decode_batch"):
        def tagged(*args, _stage=getattr(scheduler, name), _name=name, **kwargs):
            stages.append(_name)
            return _stage(*args, **kwargs)

        monkeypatch.setattr(scheduler, name, tagged)
    monkeypatch.setattr(DVAEncoder, "fuse", spy)
    run_edit(face_video, tmp_path / "o.mp4", EditRequest(["young=0.5"]), opts=opts(tmp_path, batch_size=2), **FAST)
    assert stages == ["invert_batch", "decode_batch"] * 3  # 6 frames in batches of 2
    decode_ids = [z for stage, z in seen if stage == "decode_batch"]
    encode_ids = [z for stage, z in seen if stage == "invert_batch"]
    assert len(decode_ids) == len(encode_ids) == 3
    assert all(torch.equal(decode_ids[0], z) for z in decode_ids)
    assert all(torch.equal(encode_ids[0], z) for z in encode_ids)
    assert not torch.equal(encode_ids[0], decode_ids[0])  # the edit moved the identity


@pytest.mark.parametrize("window", [1, 3])
def test_a_first_edit_inverts_as_encode_does_and_writes_what_a_re_edit_writes(face_video, tmp_path, recorded, window):
    """The first edit inverts each batch just before decoding it (x_T goes to the cache on the way);
    its cache must equal `fvedit encode`'s bit for bit, and its frames those of a re-edit from that
    encode's cache. With cross-frame attention (window 3) a batch's run reaches into the next one,
    so the next batch must be inverted first."""
    from fvedit.pipeline.cache import load_encoding

    kw = dict(batch_size=2, temporal_window=window)
    encoded = run_edit(face_video, None, EditRequest([]), opts=opts(tmp_path / "a", **kw), **FAST)
    first = run_edit(face_video, tmp_path / "first.mp4", EditRequest(["young"]), opts=opts(tmp_path / "b", **kw), **FAST)
    first_frames = [f.copy() for f in recorded]
    recorded.clear()
    again = run_edit(face_video, tmp_path / "again.mp4", EditRequest(["young"]), opts=opts(tmp_path / "a", **kw), **FAST)
    assert not encoded.cache_hit and not first.cache_hit and again.cache_hit
    a = load_encoding(tmp_path / "a" / "cache", encoded.cache_folder.name)
    b = load_encoding(tmp_path / "b" / "cache", first.cache_folder.name)
    assert np.any(a.x_T[:] != 0) and np.array_equal(a.x_T[:], b.x_T[:]) and np.array_equal(a.crops[:], b.crops[:])
    assert len(recorded) == len(first_frames) == 6
    assert all(np.array_equal(x, y) for x, y in zip(first_frames, recorded))


def test_corrupt_cache_is_rebuilt_not_trusted(face_video, tmp_path):
    first = run_edit(face_video, None, EditRequest([]), opts=opts(tmp_path), **FAST)
    xt = first.cache_folder / "x_T.npy"
    data = bytearray(xt.read_bytes())
    data[-5] ^= 0xFF
    xt.write_bytes(bytes(data))
    again = run_edit(face_video, None, EditRequest([]), opts=opts(tmp_path), **FAST)
    assert not again.cache_hit
    third = run_edit(face_video, None, EditRequest([]), opts=opts(tmp_path), **FAST)
    assert third.cache_hit


def test_vfr_and_rotated_phone_video_keep_timing_and_come_out_upright(tmp_path, recorded):
    vfr = make_face_video(tmp_path / "vfr.mp4", frames=5, size=(320, 240), fps=25, vfr=True, face_scale=0.6)
    run_edit(vfr, tmp_path / "vfr_out.mp4", EditRequest(["smile"]), opts=opts(tmp_path), **FAST)
    assert [f.pts for f in iter_frames(tmp_path / "vfr_out.mp4")] == [f.pts for f in iter_frames(vfr)] or [
        f.time for f in iter_frames(tmp_path / "vfr_out.mp4")
    ] == pytest.approx([f.time for f in iter_frames(vfr)], abs=1e-3)
    phone = make_face_video(tmp_path / "phone.mp4", frames=4, size=(240, 320), fps=30, rotation_meta=90, face_scale=0.6)
    run_edit(phone, tmp_path / "phone_out.mp4", EditRequest(["smile"]), opts=opts(tmp_path), **FAST)
    info = probe(tmp_path / "phone_out.mp4")
    assert (info.width, info.height, info.rotation) == (240, 320, 0)


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return (exc.value.code or 0), out + err


def test_cli_edit_side_by_side_and_summary(face_video, tmp_path, capsys):
    out = tmp_path / "sbs.mp4"
    code, text = run_cli([
        "edit", str(face_video), "-o", str(out), "--attr", "young=0.3,eyeglasses=0.5", "--side-by-side",
        "--steps", "2", "--preset", "tiny", "--device", "cpu", "--backend", "reference",
    ], capsys)
    assert code == 0, text
    assert "UNTRAINED demo weights" in text and "ms/frame" in text and "young" in text
    info = probe(out)
    assert (info.width, info.height, info.frame_count) == (640, 240, 6)


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda d: d / "missing.mp4", "not found"),
        (lambda d: (d / "notes.mp4").write_text("hello") and d / "notes.mp4", "video"),
        (lambda d: make_no_face_video(d / "noface.mp4", frames=3, size=(160, 120)), "no face"),
    ],
)
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys, make, expected):
    path = make(tmp_path)
    code, text = run_cli(["edit", str(path), "-o", str(tmp_path / "o.mp4"), "--steps", "2", "--preset", "tiny",
                          "--device", "cpu"], capsys)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and expected in errors[0].lower(), text
    assert not (tmp_path / "o.mp4").exists() and not list(tmp_path.glob(".o.partial*"))


def test_cli_argument_errors(face_video, tmp_path, capsys):
    base = ["edit", str(face_video), "-o", str(tmp_path / "o.mp4"), "--steps", "2", "--preset", "tiny", "--device", "cpu"]
    code, text = run_cli(base + ["--attr", "youngg"], capsys)
    assert code == 2 and "did you mean" in text.lower()
    code, text = run_cli(base + ["--attr", "young", "--text", "a beard"], capsys)
    assert code == 2 and "not both" in text
    code, text = run_cli(base + ["--from-cache"], capsys)
    assert code == 2 and "fvedit encode" in text
    code, text = run_cli(base + ["--paste", "soft"], capsys)
    assert code == 2 and "unknown --paste 'soft': use full or delta" in text
    code, text = run_cli(["edit", str(face_video), "-o", str(face_video), "--preset", "tiny"], capsys)
    assert code == 2 and "overwrite" in text
    assert not (tmp_path / "o.mp4").exists()


def test_encode_then_edit_from_cache(face_video, tmp_path, capsys):
    common = ["--steps", "2", "--preset", "tiny", "--device", "cpu", "--backend", "reference"]
    code, text = run_cli(["encode", str(face_video), *common], capsys)
    assert code == 0, text
    code, text = run_cli(["edit", str(face_video), "-o", str(tmp_path / "o.mp4"), "--attr", "old", "--from-cache", *common], capsys)
    assert code == 0, text
    assert "hit, inversion skipped" in text


def test_attrs_lists_all_forty(capsys):
    code, text = run_cli(["attrs"], capsys)
    assert code == 0 and text.count("\n") >= 41 and "young" in text and "eyeglasses" in text


def test_torch_backend_with_temporal_window_runs_and_keys_its_own_cache(face_video, tmp_path, recorded):
    ref = run_edit(face_video, tmp_path / "r.mp4", EditRequest(["young"]), opts=opts(tmp_path), **FAST)
    frames_ref = [f.copy() for f in recorded]
    recorded.clear()
    fast = dict(FAST, backend="torch")
    windowed = run_edit(face_video, tmp_path / "w.mp4", EditRequest(["young"]),
                        opts=opts(tmp_path, temporal_window=3, batch_size=3), **fast)
    assert windowed.frames == ref.frames == 6 and not windowed.cache_hit  # other backend + window: other encoding
    assert windowed.cache_folder != ref.cache_folder
    assert len(recorded) == 6 and any(not np.array_equal(a, b) for a, b in zip(frames_ref, recorded))


def test_cli_edit_with_metrics_writes_json_and_plot(face_video, tmp_path, capsys):
    out = tmp_path / "m.mp4"
    code, text = run_cli(["edit", str(face_video), "-o", str(out), "--attr", "young", "--metrics", "--steps", "2",
                          "--preset", "tiny", "--device", "cpu", "--backend", "reference"], capsys)
    assert code == 0, text
    import json

    data = json.loads(out.with_suffix(".metrics.json").read_text())
    assert "TL-ID" in json.dumps(data) or "tl_id" in json.dumps(data).lower()
    assert out.with_suffix(".metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_problems_fail_before_any_work(face_video, tmp_path, capsys):
    base = ["edit", str(face_video), "--steps", "2", "--preset", "tiny", "--device", "cpu"]
    code, text = run_cli(base + ["-o", str(tmp_path / "o.xyz")], capsys)
    assert code == 2 and "has the extension '.xyz'; use .mp4" in text
    code, text = run_cli(base + ["-o", str(tmp_path / "o.mp4"), "--side-by-side", "--metrics"], capsys)
    assert code == 2 and "side-by-side" in text
    code, text = run_cli(base + ["-o", str(tmp_path / "o.mp4"), "--no-cache", "--from-cache"], capsys)
    assert code == 2 and "contradict" in text
    assert not (tmp_path / "cache").exists()  # nothing was encoded


def test_unwritable_cache_folder_falls_back_with_a_note(face_video, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    code, text = run_cli(["edit", str(face_video), "-o", str(tmp_path / "o.mp4"), "--steps", "2", "--preset", "tiny",
                          "--device", "cpu", "--backend", "reference", "--cache-dir", str(blocker / "sub")], capsys)
    assert code == 0, text
    assert "cannot write the encode cache folder" in text and (tmp_path / "o.mp4").exists()


def test_window_encodings_are_keyed_by_batch_size(face_video, tmp_path):
    a = run_edit(face_video, None, EditRequest([]), opts=opts(tmp_path, temporal_window=3, batch_size=2), **FAST)
    b = run_edit(face_video, None, EditRequest([]), opts=opts(tmp_path, temporal_window=3, batch_size=3), **FAST)
    c = run_edit(face_video, None, EditRequest([]), opts=opts(tmp_path, temporal_window=1, batch_size=2), **FAST)
    d = run_edit(face_video, None, EditRequest([]), opts=opts(tmp_path, temporal_window=1, batch_size=3), **FAST)
    assert a.cache_folder != b.cache_folder and c.cache_folder == d.cache_folder and d.cache_hit


def test_output_that_cannot_be_written_fails_before_alignment(face_video, tmp_path, capsys, monkeypatch):
    """A hard link to the input, or a place where no file can be created, fails in milliseconds."""
    import fvedit.pipeline.align as pipeline_align

    def no_alignment(*a, **k):
        raise AssertionError("alignment started although the output cannot be written")

    monkeypatch.setattr(pipeline_align, "align_video", no_alignment)
    link = tmp_path / "link.mp4"
    import os

    os.link(face_video, link)
    for target, words in ((link, "refusing to overwrite the input"), (Path("/proc/fvedit-test/out.mp4"), "/proc/fvedit-test/out.mp4")):
        code, text = run_cli(["edit", str(face_video), "-o", str(target), "--steps", "2", "--preset", "tiny",
                              "--device", "cpu"], capsys)
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and words in errors[0] and ".partial" not in errors[0], text
    assert not (tmp_path / "cache").exists()


def test_failed_run_into_a_missing_folder_removes_the_folder(tmp_path, capsys):
    noface = make_no_face_video(tmp_path / "noface.mp4", frames=3, size=(160, 120))
    target = tmp_path / "new" / "deeper" / "o.mp4"
    code, _ = run_cli(["edit", str(noface), "-o", str(target), "--steps", "2", "--preset", "tiny", "--device", "cpu"], capsys)
    assert code == 2 and not (tmp_path / "new").exists()


def test_demo_weight_outputs_are_tagged_and_threads_reach_the_encoder(face_video, tmp_path, monkeypatch):
    seen: dict = {}
    original = VideoWriter.__init__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(VideoWriter, "__init__", spy)
    out = tmp_path / "tagged.mp4"
    run_edit(face_video, out, EditRequest(["young"]), opts=opts(tmp_path, threads=1), **FAST)
    assert seen["threads"] == 1
    with av.open(str(out)) as container:
        assert "UNTRAINED demo weights" in container.metadata.get("comment", "")


def test_demo_keeps_its_cache_in_its_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FVEDIT_CACHE_DIR")
    code, text = run_cli(["demo", "-o", str(tmp_path / "demo"), "--frames", "3", "--steps", "2", "--preset", "tiny",
                          "--device", "cpu", "--threads", "1"], capsys)
    assert code == 0, text
    assert (tmp_path / "demo" / "edited.mp4").exists() and list((tmp_path / "demo" / "cache").iterdir())
    assert "cache/" in text


@pytest.mark.parametrize("size", [(321, 240), (320, 241)], ids=["odd-width", "odd-height"])
def test_odd_sizes_come_back_exactly(tmp_path, size, capsys):
    video = make_face_video(tmp_path / "odd.mp4", frames=3, size=size, face_scale=0.6, audio=False)
    out = tmp_path / "odd_out.mp4"
    code, text = run_cli(["edit", str(video), "-o", str(out), "--steps", "2", "--preset", "tiny", "--device", "cpu",
                          "--backend", "reference"], capsys)
    assert code == 0, text
    info = probe(out)
    assert (info.width, info.height, info.frame_count) == (*size, 3)
    assert all(f.rgb.shape[:2] == (size[1], size[0]) for f in iter_frames(out))
    assert f"{size[0]}x{size[1]}" in text  # and the summary says the size it wrote


def test_bdia_keeps_the_state_pair_in_the_cache_and_re_edits_from_it(face_video, tmp_path, recorded):
    """`--sampler bdia` caches both states per frame ([N, 6, S, S]) under its own key, and a
    re-edit from that cache writes the same frames as the first edit."""
    from fvedit.pipeline.cache import load_encoding

    o = opts(tmp_path, sampler=SamplerSpec("bdia", 3), batch_size=2)
    first = run_edit(face_video, tmp_path / "first.mp4", EditRequest(["young"]), opts=o, **FAST)
    first_frames = [f.copy() for f in recorded]
    recorded.clear()
    again = run_edit(face_video, tmp_path / "again.mp4", EditRequest(["young"]), opts=o, **FAST)
    assert not first.cache_hit and again.cache_hit
    enc = load_encoding(tmp_path / "cache", first.cache_folder.name)
    assert enc.x_T.shape[1] == 6 and np.any(enc.x_T[:][:, 3:] != enc.x_T[:][:, :3])
    assert len(recorded) == len(first_frames) == 6
    assert all(np.array_equal(x, y) for x, y in zip(first_frames, recorded))


def test_delta_paste_of_an_exact_reconstruction_returns_the_input_frames(face_video, tmp_path, recorded):
    """`--paste delta` adds only edit - input crop. With BDIA's exact inversion, a run without an
    attribute decodes each crop back to itself (round trip well under half an 8-bit level), so
    every frame must come back bit for bit; `--paste full` resamples the face and cannot."""
    inputs = [f.rgb.copy() for f in iter_frames(face_video)]
    sampler = SamplerSpec("bdia", 3)
    run_edit(face_video, tmp_path / "delta.mp4", EditRequest([]), opts=opts(tmp_path, sampler=sampler, paste="delta"), **FAST)
    delta = [f.copy() for f in recorded]
    recorded.clear()
    run_edit(face_video, tmp_path / "full.mp4", EditRequest([]), opts=opts(tmp_path, sampler=sampler, paste="full"), **FAST)
    assert len(delta) == len(recorded) == len(inputs) == 6
    assert all(np.array_equal(a, b) for a, b in zip(delta, inputs))
    assert not all(np.array_equal(a, b) for a, b in zip(recorded, inputs))


def test_stage_outputs_are_c_order_and_any_layout_decodes_alike():
    """The UNet returns a strided x_T; a strided input takes other conv kernels and changes the
    decode's rounding. invert_batch returns C order (as the cache stores it) and decode_batch gives
    any layout of the same values the C-order result, so x_T handed over in memory (the Ray
    workers' invert + decode) decodes as x_T read back from the cache."""
    from fvedit.pipeline.decode import decode_batch
    from fvedit.pipeline.invert import invert_batch
    from fvedit.pipeline.jobs import make_eps_model
    from fvedit.weights.loading import load_for_run

    dev = torch.device("cpu")
    w = load_for_run(None, "tiny", dev, echo=lambda m: None)
    eps = make_eps_model(w, "reference", dev, "fp32", 1, None)
    s = w.config.image_size
    g = np.random.default_rng(0)
    crops = g.integers(0, 256, (2, s, s, 3), dtype=np.uint8)
    z_lnd = g.normal(size=(2, w.config.encoder.lnd_dim)).astype(np.float32)
    z = torch.from_numpy(g.normal(size=w.config.encoder.id_dim).astype(np.float32))
    keep, spec = np.arange(2), SamplerSpec("dpm", 2)
    x_T = invert_batch(w.model, eps, spec, crops, z_lnd, z, keep, dev)
    assert x_T.flags.c_contiguous and np.abs(x_T).max() > 0
    strided = np.ascontiguousarray(x_T.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # channels-last layout
    assert not strided.flags.c_contiguous and np.array_equal(strided, x_T)
    a = decode_batch(w.model, eps, spec, x_T, z_lnd, z, keep, dev)
    b = decode_batch(w.model, eps, spec, strided, z_lnd, z, keep, dev)
    assert np.array_equal(a, b)
