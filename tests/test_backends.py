"""UNet backends against the fp32 eager reference: per call, per decoded frame, batching, SWCFA.

All CPU tests use the `tiny` demo weights (seeded, zero-init layers re-randomised, so eps is
non-trivial) at 32x32 inputs (the UNet is fully convolutional; 32 px keeps every block type,
with attention at 8 and 4 px) to stay fast on two cores. CUDA tests skip without a GPU.
"""

from __future__ import annotations

import time

import pytest
import torch

from fvedit.errors import InputError
from fvedit.models.unet import AttentionBlock, ResBlock
from fvedit.runtime import device as runtime_device
from fvedit.runtime import fast_unet
from fvedit.runtime.backends import (
    BACKENDS,
    ORT_CPU_ONLY,
    UNetBackend,
    available_backends,
    check_inputs,
    eps_fn,
    make_backend,
    onnx_cuda_provider_available,
)
from fvedit.runtime.device import cudnn_benchmark, tf32_disabled, tf32_enabled
from fvedit.runtime.kernels import swcfa
from fvedit.diffusion.schedule import VPSchedule
from fvedit.diffusion.spec import SamplerSpec
from fvedit.weights.demo import demo_weights
from tolerances import assert_close_scaled, network_profile, network_rel_tolerance

S = 32
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def model():
    return demo_weights("tiny").model


@pytest.fixture(scope="module")
def inputs(model):
    gen = torch.Generator().manual_seed(7)
    b, d = 3, model.config.unet.cond_channels
    x = torch.randn(b, 3, S, S, generator=gen)
    t = torch.tensor([0.5, 431.25, 998.0])  # fractional timesteps, as DPM-Solver sends them
    cond = torch.randn(b, d, generator=gen)
    return x, t, cond


@pytest.fixture(scope="module")
def reference_eps(model, inputs):
    with torch.no_grad():
        return model.unet(*inputs)


@pytest.fixture(scope="module")
def profile(model, inputs) -> tuple[int, int]:
    """(rounded stages, longest reduction) of the tiny UNet at S px: the scale of every parity tolerance."""
    return network_profile(model.unet, *inputs)


def rel_tol(profile, dtype) -> float:
    """`network_rel_tolerance`: relative to the output's size (max-abs x max|ref|, RMS x RMS(ref))."""
    return network_rel_tolerance(dtype, *profile)


def fp32_tol(profile, ref: torch.Tensor) -> float:
    """Two fp32 runs of the same network with reordered sums: u32 sqrt(fan_in) per stage, sqrt(depth) stages."""
    return rel_tol(profile, torch.float32) * ref.abs().max().item()


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


# -- the reference backend ----------------------------------------------------------------------


def test_reference_backend_is_exactly_the_model(model, inputs, reference_eps):
    backend = make_backend("reference", model, "cpu")
    assert isinstance(backend, UNetBackend)
    assert backend.unet is model.unet
    assert torch.equal(backend(*inputs), reference_eps)
    # one cond row and one t value serve the whole batch, as in the official CLIP script
    x, t, cond = inputs
    with torch.no_grad():
        expected = model.unet(x, t[:1].expand(3), cond[:1].expand(3, -1))
    assert torch.equal(backend(x, t[:1], cond[:1]), expected)


@pytest.fixture
def keep_tf32_flags():
    """Put the process's TF32 settings back after a test that changes them."""
    saved = runtime_device._read_tf32_flags()
    yield
    runtime_device._write_tf32_flags(saved)


def allow_all_tf32() -> None:
    """The state an oracle must not run in: TF32 allowed in cuBLAS and cuDNN (legacy flags: any torch)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def test_reference_runs_with_tf32_off_and_restores_the_flags(model, inputs, reference_eps, keep_tf32_flags):
    backend = make_backend("reference", model, "cpu")
    seen = []
    handle = model.unet.register_forward_hook(lambda *_: seen.append(tf32_enabled()))
    try:
        allow_all_tf32()
        assert tf32_enabled() == {"matmul": True, "conv": True, "rnn": True}
        assert torch.equal(backend(*inputs), reference_eps)
        assert seen == [{"matmul": False, "conv": False, "rnn": False}]
        assert tf32_enabled() == {"matmul": True, "conv": True, "rnn": True}
        # a mixed state comes back as it was, and the legacy getters still read it
        torch.backends.cuda.matmul.allow_tf32 = False
        backend(*inputs)
        assert seen[-1] == {"matmul": False, "conv": False, "rnn": False}
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)
    finally:
        handle.remove()


def test_tf32_flags_come_back_when_the_reference_call_raises(model, inputs, keep_tf32_flags):
    backend = make_backend("reference", model, "cpu")

    def boom(*_):
        assert not any(tf32_enabled().values())
        raise RuntimeError("boom inside the oracle")

    handle = model.unet.register_forward_hook(boom)
    try:
        allow_all_tf32()
        with pytest.raises(RuntimeError, match="boom inside the oracle"):
            backend(*inputs)
    finally:
        handle.remove()
    assert tf32_enabled() == {"matmul": True, "conv": True, "rnn": True}


def test_tf32_disabled_nests(keep_tf32_flags):
    allow_all_tf32()
    with tf32_disabled():
        with tf32_disabled():
            assert not any(tf32_enabled().values())
        assert not any(tf32_enabled().values())
    assert all(tf32_enabled().values())


def test_cudnn_benchmark_scope_restores_even_on_error():
    before = torch.backends.cudnn.benchmark
    with pytest.raises(ValueError), cudnn_benchmark(not before):
        assert torch.backends.cudnn.benchmark is (not before)
        raise ValueError("inside")
    assert torch.backends.cudnn.benchmark is before


def test_windowed_reference_uses_the_swcfa_twin(model, monkeypatch):
    """On CUDA "auto" would pick the Triton kernel: the oracle must run the twin everywhere."""
    backends = []
    real = swcfa.windowed_frame_attention

    def spy(q, k, v, window, *, boundary="shrink", backend="auto"):
        backends.append(backend)
        return real(q, k, v, window, boundary=boundary, backend=backend)

    monkeypatch.setattr(swcfa, "windowed_frame_attention", spy)
    x = torch.randn(4, 3, S, S, generator=torch.Generator().manual_seed(2))
    make_backend("reference", model, "cpu", temporal_window=3)(x, torch.full((4,), 200.0), torch.randn(1, 128))
    n_attn = sum(isinstance(m, AttentionBlock) for m in model.unet.modules())
    assert backends == ["twin"] * n_attn


def test_auto_is_reference_on_cpu(model, inputs, reference_eps):
    backend = make_backend("auto", model, "cpu")
    assert backend.name == "reference" and "auto" in backend.describe()
    assert torch.equal(backend(*inputs), reference_eps)


def test_window_one_is_the_reference_exactly(model, inputs, reference_eps, profile):
    for name in ("reference", "torch"):
        backend = make_backend(name, model, "cpu", dtype="fp32", temporal_window=1)
        out = backend(*inputs)
        if name == "reference":
            assert torch.equal(out, reference_eps)
        else:
            assert_close_scaled(out, reference_eps, fp32_tol(profile, reference_eps), name)


# -- the torch backend ----------------------------------------------------------------------------


def test_torch_fp32_matches_reference_tightly(model, inputs, reference_eps, profile):
    backend = make_backend("torch", model, "cpu", dtype="fp32")
    assert backend.dtype == torch.float32 and "fused" in backend.describe()
    out = backend(*inputs)
    assert out.dtype == torch.float32 and out.shape == reference_eps.shape
    # Same math in fp32; only op order differs (GN affine folded into one multiply-add, SDPA's
    # fused softmax): measured 4e-6 max over the whole UNet, ~1/20 of the tolerance.
    assert_close_scaled(out, reference_eps, fp32_tol(profile, reference_eps), "torch fp32")


def test_torch_bf16_is_close_but_really_bf16(model, inputs, reference_eps, profile):
    backend = make_backend("torch", model, "cpu", dtype="bf16")
    assert backend.dtype == torch.bfloat16
    out = backend(*inputs)
    assert out.dtype == torch.float32
    err = rel_rms(out, reference_eps)
    # bf16 keeps 8 significant bits (unit roundoff 2^-8 = 0.4 %) and every stage rounds its
    # activations once: u_bf16 sqrt(depth) relative (measured 2.9 % RMS, tolerance ~11 %).
    tol = rel_tol(profile, torch.bfloat16)
    assert err < tol, (err, tol)
    assert_close_scaled(out, reference_eps, tol * reference_eps.abs().max().item(), "bf16")
    # far beyond anything an fp32 run can be off by: the low-precision path really ran
    assert err > 10 * rel_tol(profile, torch.float32), "bf16 run is as exact as fp32: the low-precision path did not run"


def test_torch_fp16_on_cpu_runs_fp32(model, inputs, reference_eps, profile):
    backend = make_backend("torch", model, "cpu", dtype="fp16")
    assert backend.dtype == torch.float32
    assert_close_scaled(backend(*inputs), reference_eps, fp32_tol(profile, reference_eps), "fp16 on CPU")


def test_fast_unet_shares_weights_in_fp32(model):
    """No weight copies beyond a dtype cast: in fp32 on the model's device every tensor is the module's."""
    fast = fast_unet.FastUNet(model.unet, torch.device("cpu"), torch.float32)
    for mod, (w, b) in fast._params.items():
        assert w.data_ptr() == mod.weight.data_ptr()
        assert b is None or b.data_ptr() == mod.bias.data_ptr()


def test_fused_op_runs_at_every_groupnorm_site(model, inputs, monkeypatch):
    """Every GN of the UNet goes through group_norm_silu: 3 per ResBlock (2 with AdaGN), 1 per
    attention (no SiLU), 1 in the output head."""
    calls = []
    real = fast_unet.group_norm_silu

    def spy(x, weight, bias, num_groups, eps=1e-5, *, scale=None, shift=None, act=True):
        calls.append((scale is not None, shift is not None, act))
        return real(x, weight, bias, num_groups, eps, scale=scale, shift=shift, act=act)

    monkeypatch.setattr(fast_unet, "group_norm_silu", spy)
    make_backend("torch", model, "cpu", dtype="fp32")(*inputs)
    n_res = sum(isinstance(m, ResBlock) for m in model.unet.modules())
    n_attn = sum(isinstance(m, AttentionBlock) for m in model.unet.modules())
    n_gn = sum(isinstance(m, torch.nn.GroupNorm) for m in model.unet.modules())
    assert len(calls) == n_gn == 3 * n_res + n_attn + 1
    assert calls.count((True, True, True)) == 2 * n_res
    assert calls.count((False, False, False)) == n_attn
    assert calls.count((False, False, True)) == n_res + 1


# -- CUDA graphs, cudnn.benchmark, torch.compile: the decisions -------------------------------------


def test_cuda_graph_and_cudnn_benchmark_defaults():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert fast_unet.use_cuda_graphs(cuda) and not fast_unet.use_cuda_graphs(cpu)
    assert not fast_unet.use_cuda_graphs(cuda, False)
    with pytest.raises(InputError, match="CUDA graphs need a CUDA device"):
        fast_unet.use_cuda_graphs(cpu, True)
    assert fast_unet.use_cudnn_benchmark(cuda) and not fast_unet.use_cudnn_benchmark(cuda, False)
    assert not fast_unet.use_cudnn_benchmark(cpu) and not fast_unet.use_cudnn_benchmark(cpu, True)


class _StubFastUNet:
    """Stands in for FastUNet so a "cuda" TorchBackend can be built on a CPU machine (no weights move)."""

    def __init__(self, unet, device, dtype, **kwargs):
        self.device, self.dtype, self.channels_last, self.kwargs = device, dtype, True, kwargs


@pytest.mark.parametrize("window", [1, 3])
def test_cuda_torch_backend_uses_graphs_and_cudnn_benchmark_for_any_window(model, inputs, window, monkeypatch):
    monkeypatch.setattr(fast_unet, "FastUNet", _StubFastUNet)
    backend = fast_unet.TorchBackend(model.unet, torch.device("cuda"), temporal_window=window)
    assert isinstance(backend.graphs, fast_unet.CudaGraphUNet) and backend.cudnn_benchmark
    text = backend.describe()
    assert "CUDA graphs" in text and "cudnn.benchmark" in text and (window == 1 or f"SWCFA w={window}" in text)
    # cudnn.benchmark is on during the call only (the graph runner swapped for a recorder, on CPU)
    seen = []
    backend.device = torch.device("cpu")
    backend.graphs = lambda x, t, c: (seen.append(torch.backends.cudnn.benchmark), x)[1]
    before = torch.backends.cudnn.benchmark
    backend(*inputs)
    assert seen == [True] and torch.backends.cudnn.benchmark is before
    off = fast_unet.TorchBackend(model.unet, torch.device("cuda"), temporal_window=window, cudnn_benchmark=False)
    assert not off.cudnn_benchmark and "cudnn.benchmark" not in off.describe()


def test_cpu_torch_backend_is_eager_without_cudnn_benchmark(model):
    backend = make_backend("torch", model, "cpu", dtype="fp32", temporal_window=3)
    assert backend.graphs is None and not backend.cudnn_benchmark and backend.compiled is None
    assert backend.describe().endswith("eager) on cpu")


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("torch", {"temporal_window": 3}, "per-frame attention only"),
        ("reference", {}, "torch backend only"),
        ("onnxruntime", {}, "torch backend only"),
        ("tensorrt", {}, "torch backend only"),
    ],
)
def test_compile_refuses_what_it_cannot_do(model, name, kwargs, match):
    with pytest.raises(InputError, match=match):
        make_backend(name, model, "cpu", dtype="fp32", compile=True, **kwargs)


def test_compile_is_lazy_uses_the_twin_and_auto_means_torch(model):
    backend = make_backend("auto", model, "cpu", dtype="fp32", compile=True)  # nothing compiles yet
    assert backend.name == "torch" and backend.compiled is not None and backend.runner is backend.compiled
    assert backend.fast.gn_backend == "twin" and "torch.compile (default)" in backend.describe()
    with pytest.raises(InputError, match="gn_backend='twin'"):
        fast_unet.CompiledUNet(fast_unet.FastUNet(model.unet, torch.device("cpu"), torch.float32))
    with pytest.raises(InputError, match="unknown GroupNorm backend"):
        fast_unet.FastUNet(model.unet, torch.device("cpu"), torch.float32, gn_backend="triton2")


@pytest.mark.slow  # inductor's C++ build on 2 cores: ~115 s with a cold cache, ~12 s warm
def test_compiled_fast_unet_matches_the_fp32_reference(model, monkeypatch):
    """torch.compile of the tiny fast UNet (inductor CPU, static shape) against the fp32 reference.

    Inductor fuses GroupNorm, SiLU, adds and concatenations and reorders their sums: still two fp32
    evaluations of one network, so the fp32 network tolerance holds. The Triton dispatcher is
    booby-trapped: compile mode must trace the PyTorch twin.
    """

    def trap(*args, **kwargs):
        raise AssertionError("compile mode called the Triton GroupNorm dispatcher")

    monkeypatch.setattr(fast_unet, "group_norm_silu", trap)
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(2, 3, S, S, generator=gen)
    t = torch.tensor([3.5, 700.25])
    cond = torch.randn(2, model.config.unet.cond_channels, generator=gen)
    ref = make_backend("reference", model, "cpu")(x, t, cond)
    backend = make_backend("torch", model, "cpu", dtype="fp32", compile=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    start = time.perf_counter()
    out = backend(x, t, cond)
    seconds = time.perf_counter() - start
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1, "no (or more than one) compiled graph"
    assert out.dtype == torch.float32 and ref.abs().max() > 0.5
    tol = network_rel_tolerance(torch.float32, *network_profile(model.unet, x, t, cond)) * ref.abs().max().item()
    err = assert_close_scaled(out, ref, tol, "compiled fp32")
    print(f"torch.compile + first call {seconds:.1f} s; max error {err:.2g}, tolerance {tol:.2g}")
    assert torch.equal(backend(x, t, cond), out), "a second call recompiled or ran something else"


# -- batching -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["reference", "torch"])
def test_batch_equals_single_calls(model, inputs, name, profile):
    backend = make_backend(name, model, "cpu", dtype="fp32")
    x, t, cond = inputs
    batched = backend(x, t, cond)
    singles = torch.cat([backend(x[i : i + 1], t[i : i + 1], cond[i : i + 1]) for i in range(x.shape[0])])
    # another batch size may pick other BLAS/conv blockings: reordered fp32 sums
    assert_close_scaled(batched, singles, fp32_tol(profile, singles), name)


# -- sliding-window cross-frame attention ------------------------------------------------------------


def test_window_three_reference_and_torch_agree_and_reach_only_neighbours(model, profile):
    gen = torch.Generator().manual_seed(3)
    frames, d = 6, model.config.unet.cond_channels
    x = torch.randn(frames, 3, S, S, generator=gen)
    t = torch.full((frames,), 500.0)
    cond = torch.randn(1, d, generator=gen)
    ref = make_backend("reference", model, "cpu", temporal_window=3)
    fast = make_backend("torch", model, "cpu", dtype="fp32", temporal_window=3)
    out = ref(x, t, cond)
    assert_close_scaled(fast(x, t, cond), out, fp32_tol(profile, out), "window 3")
    per_frame = make_backend("reference", model, "cpu")(x, t, cond)
    assert (out - per_frame).abs().max() > 1e-3, "window 3 gave per-frame attention"

    # Attention is the only op that mixes frames; each attention block reaches one frame
    # further, so a change in frame 0 reaches frames 0..n_attn and no further.
    n_attn = sum(isinstance(m, AttentionBlock) for m in model.unet.modules())
    assert n_attn + 1 < frames
    x2 = x.clone()
    x2[0] += 0.5
    out2 = ref(x2, t, cond)
    changed = [(out2[i] - out[i]).abs().max().item() > 0 for i in range(frames)]
    assert changed[0] and changed[1]
    assert not any(changed[n_attn + 1 :]), changed


# -- a whole decode through the sampler ---------------------------------------------------------------


def test_decoded_frames_match_reference(model, inputs, profile):
    """A short DPM-Solver++ decode with the backend as eps_fn, frame by frame against the reference.

    Each x0 prediction (x - sigma eps) / alpha multiplies eps errors by sigma/alpha (~156 at
    t = 999); the solver combines the predictions with O(1) weights and its x update contracts
    (sigma falls), so fp32 ends within sum_k sigma_k/alpha_k times the eps tolerance, per pixel
    (max) and in RMS; with the untrained demo weights ~88 % of the pixels end clamped at +-1,
    which only removes error. bf16 (eps off by a few % RMS) moves pixels near the clamp threshold
    by up to ~2, which is why bf16 is bounded by RMS and by the share of pixels off by more than
    0.1 (measured 0.04-0.09 and 0.4-1.7 % on three seeds).
    """
    _, _, cond = inputs
    x_T = torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(11))
    cond = cond[:1]
    # with DVA's x0 clamp: the untrained weights' x0 predictions run far outside [-1, 1], and the
    # clamp is what bounds how far the bf16 eps error can carry (the default decode does not clamp)
    spec = SamplerSpec("dpm", steps=3, clamp=True)
    calls = []  # (t, eps) of each reference call: the times and sizes the tolerance scales with
    reference = eps_fn(make_backend("reference", model, "cpu"), cond)

    def recording(x, t):
        calls.append((t, reference(x, t)))
        return calls[-1][1]

    ref = spec.decode(recording, x_T)
    fp32 = spec.decode(eps_fn(make_backend("torch", model, "cpu", dtype="fp32"), cond), x_T)
    bf16 = spec.decode(eps_fn(make_backend("torch", model, "cpu", dtype="bf16"), cond), x_T)
    assert ref.shape == fp32.shape == bf16.shape and ref.std() > 0.1
    sched, rel32 = VPSchedule(), rel_tol(profile, torch.float32)
    for i in range(x_T.shape[0]):
        gain = [float(sched.sigma(t[i].item()) / sched.alpha(t[i].item())) for t, _ in calls]
        tol_max = rel32 * sum(g * eps[i].abs().max().item() for g, (_, eps) in zip(gain, calls))
        tol_rms = rel32 * sum(g * eps[i].pow(2).mean().sqrt().item() for g, (_, eps) in zip(gain, calls))
        err32 = (fp32[i] - ref[i]).abs()
        assert_close_scaled(fp32[i], ref[i], tol_max, f"frame {i}")
        assert err32.pow(2).mean().sqrt() < tol_rms, (i, err32.pow(2).mean().sqrt().item(), tol_rms)
        err16 = (bf16[i] - ref[i]).abs()
        assert err16.pow(2).mean().sqrt() < 0.15, (i, err16.pow(2).mean().sqrt().item())
        assert (err16 > 0.1).float().mean() < 0.05, (i, (err16 > 0.1).float().mean().item())


# -- factory, inputs and errors ------------------------------------------------------------------------


CPU_ORT = ["AzureExecutionProvider", "CPUExecutionProvider"]  # the H200 image's onnxruntime 1.30


@pytest.mark.parametrize("providers,usable", [(CPU_ORT, False), (["CUDAExecutionProvider", *CPU_ORT], True)])
def test_onnxruntime_without_cuda_provider_is_unusable_on_cuda(model, providers, usable, monkeypatch, tmp_path):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(providers))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no export exists
    assert onnx_cuda_provider_available() is usable
    assert available_backends()["onnxruntime"] == ("yes" if usable else ORT_CPU_ONLY)
    # the refusal comes before any look for (or export of) a graph
    with pytest.raises(InputError, match="fvedit export" if usable else "no CUDA provider"):
        make_backend("onnxruntime", model, "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_backends()["onnxruntime"] == "yes"  # a CPU run is fine with the CPU build


def test_available_backends_names_every_backend():
    avail = available_backends()
    assert set(avail) == set(BACKENDS) - {"auto"}
    assert avail["reference"] == "yes"
    if not avail["tensorrt"].startswith("yes"):
        assert "install" in avail["tensorrt"] or "GPU" in avail["tensorrt"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="fastest"), "unknown backend 'fastest'.*reference, torch"),
        (dict(name="torch", dtype="fp8"), "unknown precision 'fp8'"),
        (dict(name="torch", temporal_window=0), "temporal-window"),
        (dict(name="onnxruntime", temporal_window=3), "reference or torch backend"),
        (dict(name="tensorrt", temporal_window=3), "reference or torch backend"),
    ],
)
def test_make_backend_rejects_bad_arguments(model, kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(InputError, match=match):
        make_backend(name, model, "cpu", **kwargs)


def test_tensorrt_backend_says_what_to_install(model):
    if available_backends()["tensorrt"].startswith("yes"):
        pytest.skip("TensorRT and a GPU are present")
    with pytest.raises(InputError, match="TensorRT|tensorrt"):
        make_backend("tensorrt", model, "cpu")


@pytest.mark.skipif(CUDA, reason="checks the no-GPU message")
def test_cuda_without_gpu_is_an_input_error(model):
    with pytest.raises(InputError, match="--device cpu"):
        make_backend("torch", model, "cuda")


def test_onnxruntime_without_export_says_to_export(model, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(InputError, match="fvedit export"):
        make_backend("onnxruntime", model, "cpu")


@pytest.mark.parametrize(
    "x_shape,t_len,cond_shape,match",
    [
        ((2, 4, 8, 8), 2, (2, 128), "x must be"),
        ((2, 3, 8, 8), 3, (2, 128), "1 or 2 values"),
        ((2, 3, 8, 8), 2, (2, 64), r"condition must be \[2 or 1, 128\]"),
        ((2, 3, 8, 8), 2, (3, 128), "condition must be"),
    ],
)
def test_check_inputs_rejects_bad_shapes(x_shape, t_len, cond_shape, match):
    with pytest.raises(InputError, match=match):
        check_inputs(torch.zeros(x_shape), torch.zeros(t_len), torch.zeros(cond_shape), 128, torch.device("cpu"))


# -- CUDA only --------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cuda_torch_backend_matches_reference(dtype):
    model = demo_weights("tiny", device="cuda").model
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 64, 64, generator=gen).cuda()
    t = torch.rand(4, generator=gen).cuda() * 999
    cond = torch.randn(4, 128, generator=gen).cuda()
    ref = make_backend("reference", model, "cuda")(x, t, cond)
    backend = make_backend("torch", model, "cuda", dtype=dtype)
    assert backend.fast.channels_last and backend.graphs is not None
    out = backend(x, t, cond)
    # every stage rounds its activations to fp16 (u = 2^-11) or bf16 (u = 2^-8, 8x coarser):
    # u sqrt(depth) relative, so the bf16 tolerances are 8x the fp16 ones
    rel = network_rel_tolerance(backend.dtype, *network_profile(model.unet, x, t, cond))
    assert rel_rms(out, ref) < rel, (rel_rms(out, ref), rel)
    # the graph replays the eager run's kernels (the algorithm choice may still differ)
    eager = backend.fast(x, t, cond)
    assert_close_scaled(out, eager, rel * eager.abs().max().item(), "graph vs eager")
    assert backend.graphs.captured == [(4, 64, 64, backend.dtype)]
    again = backend(x, t, cond)
    assert torch.equal(again, out), "graph replay is not deterministic"
    # a second batch size gets its own graph; batch of N == N single calls (other kernels at
    # batch 1: two low-precision runs that round differently)
    singles = torch.cat([backend(x[i : i + 1], t[i : i + 1], cond[i : i + 1]) for i in range(4)])
    assert_close_scaled(singles, out, rel * out.abs().max().item(), "batch 1 vs batch 4")
    assert len(backend.graphs.captured) == 2


@needs_cuda
def test_cuda_graph_output_is_not_aliased():
    model = demo_weights("tiny", device="cuda").model
    backend = make_backend("torch", model, "cuda", dtype="fp16")
    x = torch.randn(2, 3, 64, 64, device="cuda")
    t = torch.full((2,), 300.0, device="cuda")
    cond = torch.randn(1, 128, device="cuda")
    first = backend(x, t, cond)
    kept = first.clone()
    backend(torch.randn_like(x), t, cond)  # a replay must not overwrite the first result
    assert torch.equal(first, kept)


@needs_cuda
@pytest.mark.slow  # inductor compiles the tiny UNet's Triton kernels: about a minute on a fresh machine
def test_cuda_compiled_backend_under_graphs_matches_reference():
    model = demo_weights("tiny", device="cuda").model
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 64, 64, generator=gen).cuda()
    t = torch.tensor([12.0, 900.5]).cuda()
    cond = torch.randn(2, 128, generator=gen).cuda()
    ref = make_backend("reference", model, "cuda")(x, t, cond)
    backend = make_backend("torch", model, "cuda", dtype="fp16", compile=True)
    assert backend.graphs is not None and backend.cudnn_benchmark
    out = backend(x, t, cond)
    assert backend.graphs.captured == [(2, 64, 64, torch.float16)], "the compiled UNet was not captured"
    rel = network_rel_tolerance(torch.float16, *network_profile(model.unet, x, t, cond))
    assert rel_rms(out, ref) < rel, (rel_rms(out, ref), rel)
    assert torch.equal(backend(x, t, cond), out), "graph replay is not deterministic"


def test_tf32_allowed_sets_both_ways_and_restores():
    from fvedit.runtime.device import tf32_allowed, tf32_enabled

    before = tf32_enabled()
    with tf32_allowed(True):
        assert all(tf32_enabled().values())
        with tf32_allowed(False):
            assert not any(tf32_enabled().values())
        assert all(tf32_enabled().values())
    assert tf32_enabled() == before
