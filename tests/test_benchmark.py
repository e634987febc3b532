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
    """
    res = bm.memory_scaling([100, 400], batch=16, stand_in_unet=True, parallel=True, work_dir=tmp_path, timeout=600)
    short, long = res["runs"]
    assert (short["frames"], long["frames"]) == (100, 400)
    assert res["ratio"] == pytest.approx(long["peak_host_mb"] / short["peak_host_mb"])
    assert res["ratio"] <= 1.2, f"peak host memory {short['peak_host_mb']:.0f} -> {long['peak_host_mb']:.0f} MiB"
