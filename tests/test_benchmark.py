"""The measuring library (fvedit.benchmark), `fvedit bench`, the CI perf gate and the memory criterion."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fvedit import benchmark as bm
from fvedit.config import DVA256, TINY
from fvedit.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CI_GATE = ROOT / "bench" / "ci_gate.py"


# ------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101])
def test_percentile_matches_numpy(n):
    rng = np.random.default_rng(n)
    samples = rng.lognormal(-3, 1, n).tolist()
    for q in (0, 10, 50, 90, 99, 100):
        assert bm.percentile(samples, q) == pytest.approx(np.percentile(samples, q), rel=1e-12, abs=0)


def test_summarize_matches_numpy():
    rng = np.random.default_rng(0)
    s = (rng.random(17) * 0.3 + 0.01).tolist()
    got = bm.summarize(s, items_per_call=4)
    a = np.asarray(s)
    assert got["n"] == 17
    assert got["p50_ms"] == pytest.approx(1000 * np.median(a))
    assert got["p90_ms"] == pytest.approx(1000 * np.percentile(a, 90))
    assert got["mean_ms"] == pytest.approx(1000 * a.mean())
    assert got["min_ms"] == pytest.approx(1000 * a.min()) and got["max_ms"] == pytest.approx(1000 * a.max())
    assert got["ms_per_item"] == pytest.approx(1000 * np.median(a) / 4)
    assert got["items_per_s"] == pytest.approx(4 / np.median(a))


@pytest.mark.parametrize(
    "call",
    [
        lambda: bm.percentile([], 50),
        lambda: bm.percentile([1.0], 101),
        lambda: bm.summarize([], 1),
        lambda: bm.summarize([0.1], 0),
        lambda: bm.measure(lambda: None, repeats=0),
        lambda: bm.measure(lambda: None, timer="cuda-events"),
        lambda: bm.measure_interleaved({}),
        lambda: bm.resolve_backend_names(["fastest"]),
    ],
)
def test_bad_arguments_are_input_errors(call):
    with pytest.raises(InputError):
        call()


def test_measure_counts_calls_and_times_them():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.02)

    samples = bm.measure(fn, warmup=2, repeats=3)
    assert len(calls) == 5 and len(samples) == 3
    assert all(0.018 <= s < 0.5 for s in samples)


def test_measure_interleaved_alternates_order_and_separates_arms():
    order = []
    arms = {"fast": lambda: order.append("fast"), "slow": lambda: (order.append("slow"), time.sleep(0.03))}
    out = bm.measure_interleaved(arms, warmup=1, repeats=4)
    assert order == ["fast", "slow"] + ["fast", "slow", "slow", "fast"] * 2  # warm-up, then reversed every other round
    assert len(out["fast"]) == len(out["slow"]) == 4
    assert bm.percentile(out["slow"], 50) > 0.025 > bm.percentile(out["fast"], 50)


def test_measure_both_on_a_cpu_has_wall_samples_and_no_events():
    calls = []
    wall, events = bm.measure_both(lambda: (calls.append(1), time.sleep(0.01)), warmup=1, repeats=3, sync="cpu")
    assert len(calls) == 4 and len(wall) == 3 and events is None
    assert all(0.009 <= w < 0.5 for w in wall)
    order = []
    out = bm.measure_interleaved_both({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=0, repeats=2)
    assert order == ["a", "b", "b", "a"] and out["a"][1] is None and len(out["b"][0]) == 2
    assert bm.event_summary(None, 4) == {"p50_event_ms": None, "p90_event_ms": None, "min_event_ms": None,
                                         "ms_per_item_event": None}  # fmt: skip
    got = bm.event_summary([0.01, 0.03, 0.02], 2, prefix="encode_")
    assert got["encode_p50_event_ms"] == pytest.approx(20) and got["encode_ms_per_item_event"] == pytest.approx(10)
    assert got["encode_min_event_ms"] == pytest.approx(10)
    assert bm.timer_label("cpu") == bm.TIMER_WALL and "CUDA events" in bm.timer_label("cuda")


class _FakeEvent:
    """torch.cuda.Event stand-in: 'GPU time' is the host time between two records."""

    def __init__(self, enable_timing: bool = False):
        assert enable_timing
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def elapsed_time(self, other: "_FakeEvent") -> float:
        return 1000 * (other.t - self.t)


def test_the_cuda_branch_records_events_inside_the_wall_window(monkeypatch):
    """The CUDA path's wiring with torch.cuda faked: both clocks come back, events (s) within the wall time."""
    import torch

    synced = []
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: "stream")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    wall, events = bm.measure_both(lambda: time.sleep(0.01), warmup=0, repeats=2, sync="cuda")
    assert events is not None and len(events) == len(wall) == 2
    assert all(0.009 <= e <= w for e, w in zip(events, wall))
    assert len(synced) >= 4  # before and after every timed call


# ------------------------------------------------------------------------------------- compute


def test_unet_flops_known_answer_and_linear_in_batch():
    # 770.9 GFLOP / image for dva256: the analytic count in the reference notes (2 FLOP per MAC)
    assert bm.unet_flops(DVA256) == pytest.approx(770.9e9, rel=2e-3)
    one = bm.unet_flops(TINY)
    assert bm.unet_flops(TINY, batch=3) == pytest.approx(3 * one, rel=1e-9)


def test_tiny_flops_against_a_hand_count_of_its_convolutions():
    """Independent count for the tiny preset: every Conv2d's MACs from its shape and output size,
    walking the same UNet with forward hooks (no FlopCounterMode), plus the attention matmuls."""
    import torch

    from fvedit.models.unet import AttentionBlock, UNet

    unet = UNet(TINY.unet).eval()
    total = [0.0]

    def conv_hook(mod, inp, out):
        k = mod.weight.shape[2] * mod.weight.shape[3] if mod.weight.dim() == 4 else mod.weight.shape[2]
        total[0] += 2 * out.numel() * (mod.in_channels // mod.groups) * k

    def linear_hook(mod, inp, out):
        total[0] += 2 * out.numel() * mod.in_features

    def attn_hook(mod, inp, out):
        b, c, h, w = inp[0].shape
        total[0] += 2 * 2 * b * c * (h * w) ** 2  # q^T k and attn v

    for m in unet.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv1d)):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, torch.nn.Linear):
            m.register_forward_hook(linear_hook)
        elif isinstance(m, AttentionBlock):
            m.register_forward_hook(attn_hook)
    x, t, c = bm.unet_inputs(TINY, 1, "cpu")
    with torch.no_grad():
        unet(x, t, c)
    assert bm.unet_flops(TINY) == pytest.approx(total[0], rel=1e-6)


def test_matmul_rate_is_positive_and_machine_info_has_the_keys():
    assert 0 < bm.measured_matmul_tflops("cpu", n=256, repeats=3) < 100
    info = bm.machine_info("cpu")
    for key in ("cpu", "cpu_count", "torch", "torch_threads", "device", "cuda_device", "load_average", "pixel_backend"):
        assert key in info
    json.dumps(info)


def test_run_isolated_sees_what_the_child_holds():
    """The peak a fresh process reports moves by the memory it touched (the instrument of the memory test)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        base, held = pool.map(lambda mb: bm.run_isolated("hold_memory_child", {"mb": mb}, threads=1), (0, 160))
    assert held["held_mb"] == 160
    assert held["peak_host_mb"] - base["peak_host_mb"] == pytest.approx(160, abs=20)
    with pytest.raises(InputError):
        bm.run_isolated("_child_main", {})


def test_write_json_replaces_non_finite_and_reports_unwritable(tmp_path):
    path = bm.write_json(tmp_path / "a" / "b.json", {"x": float("inf"), "y": [np.float32(1.5)], "p": tmp_path})
    assert json.loads(path.read_text()) == {"x": None, "y": [1.5], "p": str(tmp_path)}
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot write benchmark JSON"):
        bm.write_json(blocker / "sub" / "c.json", {})


def test_write_json_is_atomic_a_failed_replace_keeps_the_old_file(tmp_path, monkeypatch):
    path = bm.write_json(tmp_path / "r.json", {"part": 1})
    bm.write_json(path, {"part": 2})
    assert json.loads(path.read_text()) == {"part": 2} and [p.name for p in tmp_path.iterdir()] == ["r.json"]

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bm.os, "replace", fail)
    with pytest.raises(InputError, match="No space left"):
        bm.write_json(path, {"part": 3})
    assert json.loads(path.read_text()) == {"part": 2} and [p.name for p in tmp_path.iterdir()] == ["r.json"]


# ------------------------------------------------------------------------------------- fvedit bench


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FVEDIT_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    monkeypatch.setenv("FVEDIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def test_bench_command_runs_on_tiny_and_writes_json(isolated):
    from fvedit.bench_cli import bench_command

    app = typer.Typer()
    app.command("bench")(bench_command)
    app.command("other")(lambda: None)  # two commands: `bench` is addressed by name as in fvedit
    out = isolated / "res" / "bench.json"
    args = ["bench", "--preset", "tiny", "--backend", "torch", "-b", "1", "-b", "2", "--steps", "2", "--frames", "3",
            "--repeats", "1", "--warmup", "0", "--threads", "1", "-o", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == bm.SCHEMA and doc["preset"] == "tiny" and doc["weights"].startswith("demo")
    for key in ("machine", "settings", "unet", "sampler", "pixels", "edit", "backends", "matmul_peak_tflops"):
        assert key in doc
    rows = {(r["backend"], r["batch"]): r for r in doc["unet"]["rows"]}
    assert set(rows) == {("reference", 1), ("torch", 1), ("reference", 2), ("torch", 2)}
    for (name, batch), r in rows.items():
        ref = rows[("reference", batch)]
        assert r["ratio_to_reference"] == pytest.approx(r["p50_ms"] / ref["p50_ms"])
        assert r["ms_per_frame"] == pytest.approx(r["p50_ms"] / batch * doc["unet"]["calls_per_frame"])
        assert r["tflops"] == pytest.approx(doc["unet_gflop_per_image"] * batch / r["p50_ms"])  # GFLOP/ms = TFLOP/s
    assert doc["unet"]["calls_per_frame"] == 4  # DPM-Solver++ 2 + 2
    assert {s["sampler"].split("-")[0] for s in doc["sampler"]} == {"dpm2", "ddim2"}
    edit = doc["edit"]
    assert edit["frames"] == 3 and edit["from_cache_hit"] is True and edit["peak_host_mb"] > 100
    assert "encode (inversion)" in edit["first_ms_per_frame"] and "encode (inversion)" not in edit["from_cache_ms_per_frame"]
    assert "ms/call p50" in res.output and "x reference" in res.output


def _bench_app() -> typer.Typer:
    from fvedit.bench_cli import bench_command

    app = typer.Typer()
    app.command("bench")(bench_command)
    app.command("other")(lambda: None)
    return app


def test_a_failing_whole_edit_keeps_the_unet_and_sampler_numbers(isolated, monkeypatch):
    """The JSON is on disk before the edit child runs; its failure is recorded, the exit code is 1."""
    video, faces = isolated / "clip.mp4", isolated / "clip.faces.npz"
    video.write_bytes(b"not read: the child is faked")
    faces.write_bytes(b"")
    out = isolated / "res" / "bench.json"
    seen = {}

    def failing_child(function, kwargs, **_):
        seen["on_disk"], seen["kwargs"] = json.loads(out.read_text()), dict(kwargs)
        raise bm.FveditError(f"benchmark child {function} failed (exit 1): dlib is not installed")

    monkeypatch.setattr(bm, "run_isolated", failing_child)
    args = ["bench", "--preset", "tiny", "--backend", "torch", "-b", "1", "--steps", "2", "--repeats", "1",
            "--warmup", "0", "--threads", "1", "--video", str(video), "--faces", str(faces), "-o", str(out)]  # fmt: skip
    res = CliRunner().invoke(_bench_app(), args)
    assert res.exit_code == 1, res.output
    assert "part(s) failed: edit" in str(res.exception) and str(out) in str(res.exception)
    assert {r["backend"] for r in seen["on_disk"]["unet"]["rows"]} == {"reference", "torch"}
    assert seen["on_disk"]["sampler"] and seen["on_disk"]["errors"] == {}
    assert seen["kwargs"]["video"] == str(video) and seen["kwargs"]["faces"] == str(faces)
    doc = json.loads(out.read_text())
    assert doc["errors"] == {"edit": "FveditError: benchmark child edit_video_child failed (exit 1): dlib is not installed"}
    assert doc["edit"] is None and len(doc["unet"]["rows"]) == 2 and doc["pixels"]["rows"]
    assert doc["settings"]["video"] == str(video) and doc["settings"]["faces"] == str(faces)
    assert "edit: FAILED" in res.output


def test_a_failing_unet_table_is_recorded_and_the_sampler_still_runs(isolated, monkeypatch):
    from fvedit.bench_cli import run_bench

    def broken(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    monkeypatch.setattr(bm, "bench_unet", broken)
    doc = run_bench(preset="tiny", backends=["torch"], batch_sizes=[1], steps=2, device="cpu", frames=0, weights_dir=None,
                    repeats=1, warmup=0, threads=1, pixels=False, json_out=isolated / "b.json")  # fmt: skip
    assert doc["errors"] == {"unet": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    assert doc["unet"] is None and doc["sampler"][0]["backend"] == "torch"  # the fallback: the first fast backend
    assert json.loads((isolated / "b.json").read_text())["errors"] == doc["errors"]


def _refuse_export():
    raise AssertionError("the ONNX exporter must not be imported here")


def test_all_on_cuda_without_the_onnx_cuda_provider_never_exports(isolated, monkeypatch):
    """`--backend all` on a (faked) CUDA device with a CPU-only onnxruntime: skipped with the reason, no export."""
    ort = pytest.importorskip("onnxruntime")
    from fvedit.bench_cli import run_bench

    monkeypatch.setattr(bm, "_runs_on_cuda", lambda device: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(bm, "_import_onnx_exporter", _refuse_export)
    doc = run_bench(preset="tiny", backends=["all"], batch_sizes=[1], steps=2, device="cpu", frames=0, weights_dir=None,
                    repeats=1, warmup=0, threads=1, pixels=False)  # fmt: skip
    assert "CUDAExecutionProvider" in doc["backends"]["onnxruntime"]["skipped"]
    assert "onnxruntime" not in {r["backend"] for r in doc["unet"]["rows"]} and doc["errors"] == {}
    assert "tensorrt" in doc["backends"]  # what 'all' left out is named too


def test_the_provider_check_is_what_stops_the_export(isolated, monkeypatch):
    """Control for the test above: with a CUDA provider the exporter is reached; bf16 has no ONNX export."""
    ort = pytest.importorskip("onnxruntime")
    from fvedit.weights.demo import demo_weights

    weights = demo_weights("tiny")
    monkeypatch.setattr(bm, "_runs_on_cuda", lambda device: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(bm, "_import_onnx_exporter", _refuse_export)
    _, notes = bm.build_backends(weights, ["onnxruntime"], "cpu", export_dir=isolated / "x", precision="bf16")
    assert "no bf16 ONNX export" in notes["onnxruntime"]["skipped"]
    with pytest.raises(AssertionError, match="exporter must not"):
        bm.build_backends(weights, ["onnxruntime"], "cpu", export_dir=isolated / "x", precision="fp16")


def test_precision_and_temporal_window_reach_the_backends_and_the_labels(isolated, monkeypatch):
    from fvedit.bench_cli import run_bench

    monkeypatch.setattr(bm, "_import_onnx_exporter", _refuse_export)
    doc = run_bench(preset="tiny", backends=["torch", "onnxruntime"], batch_sizes=[2], steps=2, device="cpu", frames=0,
                    weights_dir=None, repeats=1, warmup=0, threads=1, pixels=False, precision="bf16",
                    temporal_window=2)  # fmt: skip
    assert doc["settings"]["precision"] == "bf16" and doc["settings"]["temporal_window"] == 2
    rows = {r["backend"]: r for r in doc["unet"]["rows"]}
    assert rows["torch"]["label"] == "torch bf16 w2" and rows["torch"]["precision"] == "bf16"
    assert rows["reference"]["label"] == "reference fp32 w2"
    assert "--temporal-window 2" in doc["backends"]["onnxruntime"]["skipped"]
    assert rows["torch"]["p50_ms"] > 0 and rows["torch"]["p50_event_ms"] is None  # CPU: wall only
    assert doc["settings"]["timer"] == bm.TIMER_WALL and doc["sampler"][0]["encode_p50_event_ms"] is None
    from fvedit.weights.demo import demo_weights

    cpu_fp16 = bm.build_backends(demo_weights("tiny"), ["torch"], "cpu", precision="fp16")[0]["torch"]
    assert bm.backend_label("torch", cpu_fp16) == "torch fp32"  # what ran: a CPU runs fp16 as fp32


@pytest.mark.parametrize(
    "precision,video,faces,match",
    [("fp8", None, None, "--precision"), ("fp16", None, "f.npz", "--faces needs --video"),
     ("fp16", "missing.mp4", None, "no such file")],
)  # fmt: skip
def test_bad_bench_options_fail_before_any_work(tmp_path, precision, video, faces, match):
    from fvedit.bench_cli import _check_bench_inputs

    with pytest.raises(InputError, match=match):
        _check_bench_inputs(precision, video and tmp_path / video, faces and tmp_path / faces)


def test_the_edit_child_passes_faces_precision_and_window_to_the_options(tmp_path, monkeypatch):
    """edit_video_child -> run_edit: a --faces file ends up in PipelineOptions.faces (replay, no dlib)."""
    import types

    import fvedit.pipeline.jobs

    seen = []

    def fake_run_edit(video, output, request, *, opts, **kw):
        seen.append(opts)
        return types.SimpleNamespace(cache_hit=len(seen) > 1, times=types.SimpleNamespace(seconds={"encode": 1.0}),
                                     frames=5, info=types.SimpleNamespace(width=64, height=48))  # fmt: skip

    monkeypatch.setattr(fvedit.pipeline.jobs, "run_edit", fake_run_edit)
    res = bm.edit_video_child("clip.mp4", str(tmp_path), faces="clip.faces.npz", precision="bf16", temporal_window=3)
    assert [o.faces for o in seen] == [Path("clip.faces.npz")] * 2
    assert {(o.precision, o.temporal_window) for o in seen} == {("bf16", 3)}
    assert res["frames"] == 5 and res["size"] == "64x48" and res["from_cache"]["cache_hit"]
    seen.clear()
    bm.edit_video_child("clip.mp4", str(tmp_path))
    assert [o.faces for o in seen] == [None, None]


def test_failure_message_names_every_failed_part_in_order():
    from fvedit.bench_cli import failure_message

    msg = failure_message({"edit": "FveditError: x", "sampler": "RuntimeError: y"}, Path("r.json"))
    assert msg.startswith("bench part(s) failed: sampler, edit (sampler: RuntimeError: y)") and "r.json" in msg
    assert "\n" not in msg


# ------------------------------------------------------------------------------------- the CI gate


@pytest.fixture(scope="module")
def ci_gate():
    """bench/ci_gate.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fvedit_ci_gate", CI_GATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _gate(ci_gate, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "ci-bench.json"
    rc = ci_gate.main(["--out", str(out), "--no-onnx", "--edit-frames", "0", "--repeats", "3", "--batch", "1", *extra])
    return rc, (json.loads(out.read_text()) if out.is_file() else {})


def test_ci_gate_passes_a_normal_run_and_fails_an_injected_slowdown(ci_gate, tmp_path, monkeypatch, keep_threads, capsys):
    rc, doc = _gate(ci_gate, tmp_path / "normal")
    assert rc == 0, capsys.readouterr().out
    assert doc["gate"]["ok"] and doc["settings"]["injected_slowdown"] == {}
    names = {c["what"] for c in doc["gate"]["checks"]}
    assert "unet torch b1 / reference" in names and "pixels ext / twin" in names

    monkeypatch.setenv("FVEDIT_BENCH_SLOWDOWN", "torch=5,ext=40")
    rc, doc = _gate(ci_gate, tmp_path / "slow")
    assert rc == 1, capsys.readouterr().out
    failed = {c["what"] for c in doc["gate"]["checks"] if not c["ok"]}
    assert "unet torch b1 / reference" in failed
    if doc["pixels"]["ext_built"]:
        assert "pixels ext / twin" in failed
    assert "PERF GATE FAILED" in capsys.readouterr().err


def test_ci_gate_slowdown_spec_and_wrapper(ci_gate):
    assert ci_gate.parse_slowdown("torch=3, ext=20") == {"torch": 3.0, "ext": 20.0}
    for bad in ("torch=fast", "torch=0.5", "=3"):
        with pytest.raises(InputError, match="bad slowdown"):
            ci_gate.parse_slowdown(bad)
    fn = ci_gate.slowed(lambda x: (time.sleep(0.02), x)[1], 3.0)
    t0 = time.perf_counter()
    assert fn(7) == 7
    assert time.perf_counter() - t0 >= 0.055


# ------------------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_peak_memory_of_400_frames_within_20_percent_of_100(tmp_path):
    """Streaming: a 4x longer video must not need more than 1.2x the peak host memory.

    Each length runs in a fresh process (its own peak RSS), 160x120, DPM-Solver++ 2 steps, batch 16,
    with a stand-in eps (the UNet's memory is bounded by the batch, not the length); everything
    else is the real pipeline. bench/bench_edit.py runs 100 vs 1000 frames with the real UNet.

    Each pair runs twice and the lower peak of each length counts: a peak's noise is one-sided
    (a transient spike when the threads happen to hold their queues full at once; the 100-frame
    peak alone varied 595-646 MiB between runs here, and 1200 frames measured 694 MiB, so it is
    not growth), while growth with length would show in both runs.
    """
    results = [bm.memory_scaling([100, 400], batch=16, stand_in_unet=True, parallel=True, work_dir=tmp_path,
                                 timeout=600) for i in range(2)]
    for res in results:
        short, long = res["runs"]
        assert (short["frames"], long["frames"]) == (100, 400)
        assert res["ratio"] == pytest.approx(long["peak_host_mb"] / short["peak_host_mb"])
    short_mb = min(res["runs"][0]["peak_host_mb"] for res in results)
    long_mb = min(res["runs"][1]["peak_host_mb"] for res in results)
    assert long_mb / short_mb <= 1.2, f"peak host memory {short_mb:.0f} -> {long_mb:.0f} MiB"
