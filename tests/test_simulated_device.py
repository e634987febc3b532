"""The simulated device (fvedit.runtime.simulated) and the pipeline measurement built on it
(fvedit.benchmark.pipeline_child, `fvedit bench --pipeline`): mechanics only, no speed numbers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from fvedit import benchmark as bm
from fvedit.config import DVA256, TINY
from fvedit.errors import InputError
from fvedit.runtime.simulated import (
    SimulatedDevice,
    SimulatedEncoder,
    SimulatedUNet,
    simulated_weights,
)
from helpers import run_cli


def _inputs(b: int, size: int = 16, cond: int = 512, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=gen), torch.rand(b, generator=gen) * 999, torch.randn(b, cond, generator=gen)


# ------------------------------------------------------------------------------------------ stand-ins


def test_unet_charges_batch_times_ms_per_call_and_records_its_intervals():
    unet = SimulatedUNet(ms_per_frame=1.5, asynchronous=False)
    t0 = time.perf_counter()
    for b in (1, 4, 2):
        unet(*_inputs(b))
    t1 = time.perf_counter()
    clock = unet.clock
    assert clock.calls == 3
    assert clock.busy_s == pytest.approx((1 + 4 + 2) * 1.5 / 1000, rel=1e-12)  # as charged, not as slept
    spans = clock.intervals
    assert len(spans) == 3 and all(t0 <= a <= b <= t1 for a, b in spans)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2))
    assert [b - a >= 0.999 * need / 1000 for (a, b), need in zip(spans, (1.5, 6.0, 3.0))] == [True] * 3  # it slept
    assert clock.busy_between(t0, t1) == pytest.approx(sum(b - a for a, b in spans))
    assert clock.busy_between(t1, t1 + 1) == 0.0
    clock.reset()
    assert (clock.busy_s, clock.calls, clock.intervals) == (0.0, 0, [])


def test_an_asynchronous_unet_queues_its_calls_back_to_back_and_synchronize_waits_for_them():
    """Like CUDA launches: the calls return at once, the device runs them one after the other
    from the first call on, and synchronize() returns when the last one is done."""
    unet = SimulatedUNet(ms_per_frame=20.0)  # asynchronous by default
    x, t, c = _inputs(2)
    t0 = time.perf_counter()
    outs = [unet(x, t, c) for _ in range(3)]  # 3 x 40 ms of device time
    queued = time.perf_counter()
    unet.synchronize()
    done = time.perf_counter()
    spans = unet.clock.intervals
    assert queued - t0 < 0.040  # far less than the 120 ms queued (the host ran ahead)
    assert done - t0 >= 0.120 - 1e-3 and done >= spans[-1][1] - 1e-3
    assert all(spans[i][1] == spans[i + 1][0] for i in range(2))  # back to back, never overlapping
    assert [round(b - a, 9) for a, b in spans] == [0.04] * 3
    assert torch.equal(outs[0], SimulatedUNet(0, asynchronous=False)(x, t, c))  # the same values either way
    t1 = time.perf_counter()
    unet(x, t, c)  # queued on an idle device: it starts now, not at the old queue's end
    assert unet.clock.intervals[-1][0] >= t1
    unet.synchronize()


def test_unet_output_is_deterministic_of_the_right_shape_and_depends_on_t_and_cond():
    unet = SimulatedUNet(0)
    x, t, c = _inputs(3)
    eps = unet(x, t, c)
    assert eps.shape == x.shape and eps.dtype == x.dtype
    assert torch.equal(eps, SimulatedUNet(0)(x.clone(), t.clone(), c.clone()))
    assert not torch.equal(eps, unet(x, t + 100, c)) and not torch.equal(eps, unet(x, t, c + 1))
    assert unet(x.half(), t, c).dtype == torch.float16
    assert unet.name == "simulated" and unet.dtype == torch.float32 and "simulated" in unet.describe()


def test_busy_between_clips_intervals_to_the_window():
    clock = SimulatedDevice()
    clock._intervals = [(1.0, 2.0), (3.0, 5.0)]  # a known timeline
    assert clock.busy_between(0.0, 10.0) == 3.0
    assert clock.busy_between(1.5, 4.0) == pytest.approx(1.5)
    assert clock.busy_between(2.0, 3.0) == 0.0


def test_work_from_two_threads_never_overlaps_on_the_device():
    unet = SimulatedUNet(2.0)
    x, t, c = _inputs(2)
    threads = [threading.Thread(target=lambda: [unet(x, t, c) for _ in range(3)]) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    spans = sorted(unet.clock.intervals)
    assert len(spans) == 6 and unet.clock.busy_s == pytest.approx(6 * 2 * 2.0 / 1000)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(5))


@pytest.mark.parametrize("cfg", [TINY, DVA256], ids=["tiny", "dva256"])
def test_encoders_have_the_models_shapes_split_their_time_and_are_deterministic(cfg):
    enc = SimulatedEncoder(cfg.encoder, ms_per_frame=2.0)
    x, _, _ = _inputs(5, size=32)
    z_id, z_lnd = enc.id_forward(x), enc.lnd_forward(x)
    assert z_id.shape == (5, cfg.encoder.id_dim) and z_lnd.shape == (5, cfg.encoder.lnd_dim)
    assert torch.allclose(z_id.norm(dim=1), torch.ones(5)) and bool(((z_lnd > 0) & (z_lnd < 1)).all())
    assert enc.clock.calls == 2 and enc.clock.busy_s == pytest.approx(5 * 2.0 / 1000)  # ms per frame in all
    again = SimulatedEncoder(cfg.encoder, ms_per_frame=0)
    assert torch.equal(z_id, again.id_forward(x)) and torch.equal(z_lnd, again.lnd_forward(x))
    z_face = enc.fuse(z_id[:1], z_lnd)
    assert z_face.shape == (5, cfg.unet.cond_channels)
    assert enc.clock.calls == 2  # fusing costs no device time
    with pytest.raises(InputError):
        enc.fuse(z_id, z_lnd[:, :10])
    with pytest.raises(InputError, match="face parser"):
        enc.face_mask(x)


def test_simulated_weights_share_one_clock_and_are_marked_apart_from_the_demo_weights():
    from fvedit.pipeline.cache import weights_fingerprint

    weights, unet = simulated_weights("dva256", 1.0, encoder_ms=0.5)
    assert weights.is_demo and weights.config.image_size == 256 and weights.classifier is None
    assert weights.model.encoder.clock is unet.clock
    weights.model.encoder.id_forward(torch.zeros(2, 3, 8, 8))
    unet(*_inputs(2))
    assert unet.clock.busy_s == pytest.approx((2 * 0.5 * 0.5 + 2 * 1.0) / 1000)
    assert weights_fingerprint(weights.manifest) != "demo:dva256:seed0"
    with pytest.raises(InputError):
        simulated_weights("huge", 1.0)
    with pytest.raises(InputError):
        SimulatedUNet(-1)


def test_marked_stage_times_keep_the_first_start_of_each_stage():
    times = bm.MarkedStageTimes()
    with times.stage("a"):
        pass
    first = times.first_start["a"]
    with times.stage("a"):
        pass
    assert times.first_start["a"] == first and set(times.seconds) == {"a"}


# ------------------------------------------------------------------------------ pipeline measurement


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory) -> tuple[Path, Path, Path]:
    """8 frames of 160x120 with a face, its faces file (dlib once) and a work folder."""
    from fvedit.pipeline.jobs import run_align

    root = tmp_path_factory.mktemp("simulated")
    video = bm.make_bench_video(root / "clip.mp4", 8, 160, 120)
    faces, _ = run_align(video, root / "clip.faces.npz", quiet=True)
    return video, faces, root / "work"


def _check_phases(r: dict, frames: int) -> None:
    assert r["frames"] == frames and r["present_frames"] == frames and r["faces_replayed"]
    assert r["analyse_ms_per_frame"] >= 0 and r["edit_ms_per_frame"] > 0
    assert r["analyse_ms_per_frame"] + r["edit_ms_per_frame"] <= r["wall_ms_per_frame"] * (1 + 1e-9)
    assert 0 < r["device_busy_edit"] <= 1 and 0 < r["device_busy"] <= 1
    assert r["device_ms_per_frame"] <= r["wall_ms_per_frame"]
    assert Path(r["output"]).is_file()


def test_pipeline_first_edit_then_re_edit_from_the_cache(small_clip):
    video, faces, work = small_clip
    first = bm.bench_pipeline(video, ms=1.0, threads=1, batch=4, steps=2, faces=faces, work_dir=work, timeout=120)
    _check_phases(first, 8)
    assert not first["from_cache"] and not first["cache_hit"] and first["calls_per_frame"] == 4
    # every present frame: 2 + 2 UNet calls of 1 ms and 1 ms of encoders
    assert first["device_ms_per_frame"] == pytest.approx(5.0)
    assert first["device_calls"] == 2 * (2 + 2) + 2 * 2  # 2 batches: 4 UNet calls and 2 encoder calls each
    for stage in ("probe", "track + align", "crop + encoders", "encode (inversion)", "decode", "paste", "write"):
        assert stage in first["stages_ms_per_frame"]
    again = bm.bench_pipeline(video, ms=1.0, threads=1, batch=4, steps=2, faces=faces, work_dir=work,
                              from_cache=True, timeout=120)  # fmt: skip
    _check_phases(again, 8)
    assert again["from_cache"] and again["cache_hit"] and again["calls_per_frame"] == 2
    assert again["device_ms_per_frame"] == pytest.approx(2.0)  # decoding only; the untimed fill is not counted
    assert "encode (inversion)" not in again["stages_ms_per_frame"] and "load cache" in again["stages_ms_per_frame"]
    assert again["analyse_ms_per_frame"] < first["analyse_ms_per_frame"]


def test_pipeline_child_refuses_an_unknown_pipeline_option(small_clip, tmp_path):
    video, faces, _ = small_clip
    with pytest.raises(InputError, match="no field 'nonsense'"):
        bm.pipeline_child(str(video), str(tmp_path), ms=0, steps=2, faces=str(faces), options={"nonsense": 1})


# --------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--pipeline", "{clip}"], "--pipeline needs --simulate-device-ms"),
        (["--simulate-device-ms", "2.3"], "--simulate-device-ms needs --pipeline"),
        (["--frames-from-cache"], "--frames-from-cache needs --pipeline"),
        (["--pipeline", "{clip}", "--simulate-device-ms", "1", "-b", "4", "-b", "8"], "one batch size"),
        (["--pipeline", "{missing}", "--simulate-device-ms", "1"], "no such file"),
    ],
)
def test_bench_pipeline_option_errors_are_one_line_before_any_work(tmp_path, capsys, monkeypatch, args, expected):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"never read")

    def no_work(*a, **k):
        raise AssertionError("measured although the options are wrong")

    monkeypatch.setattr(bm, "run_isolated", no_work)
    monkeypatch.setattr(bm, "machine_info", no_work)
    argv = [a.format(clip=clip, missing=tmp_path / "none.mp4") for a in args]
    code, _, err = run_cli(["bench", *argv, "-o", str(tmp_path / "b.json")], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err
    assert not (tmp_path / "b.json").exists()


def test_bench_pipeline_writes_the_json_and_a_table(tmp_path, capsys, monkeypatch):
    """The command passes its options to the measurement and writes what it returns (faked here:
    the measurement itself is tested above)."""
    clip, faces = tmp_path / "clip.mp4", tmp_path / "clip.faces.npz"
    clip.write_bytes(b"x")
    faces.write_bytes(b"x")
    seen = {}
    fake = {"frames": 3, "size": "160x120", "ms": 2.3, "calls_per_frame": 30, "batch": 4, "threads": 2,
            "from_cache": True, "cache_hit": True, "wall_ms_per_frame": 50.0, "device_ms_per_frame": 34.5,
            "analyse_ms_per_frame": 1.0, "edit_ms_per_frame": 49.0, "device_busy_edit": 0.7,
            "stages_ms_per_frame": {"decode": 40.0}}  # fmt: skip

    def fake_child(function, kwargs, **kw):
        seen.update(function=function, kwargs=dict(kwargs), threads=kw.get("threads"))
        return fake

    monkeypatch.setattr(bm, "run_isolated", fake_child)
    out_json = tmp_path / "res" / "p.json"
    code, out, err = run_cli(["bench", "--pipeline", str(clip), "--simulate-device-ms", "2.3", "--threads", "2",
                               "--frames-from-cache", "--faces", str(faces), "-b", "4", "-o", str(out_json)], capsys)
    assert code in (0, None), err
    assert seen["function"] == "pipeline_child" and seen["threads"] == 2
    kw = seen["kwargs"]
    assert (kw["ms"], kw["from_cache"], kw["batch"], kw["steps"], kw["faces"]) == (2.3, True, 4, 15, str(faces))
    doc = json.loads(out_json.read_text())
    assert doc["schema"] == bm.SCHEMA and doc["pipeline"] == fake and doc["settings"]["simulate_device_ms"] == 2.3
    assert "unet" not in doc and "edit" not in doc  # only the pipeline part ran
    assert "device busy in edit" in out and "0.700" in out and str(out_json) in out
