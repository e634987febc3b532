"""ONNX export of the tiny UNet, onnxruntime against the reference, the TensorRT guard and cache key.

Two exports per session (fp32 with a dynamic batch axis, fp16 with a static batch of 2), each
~15 s of CPU: the dynamo exporter traces the whole network. TensorRT cannot be installed here, so
the engine build is covered up to its guard, and the cache-key logic on its own.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import sys
import types
import weakref
from pathlib import Path

import onnx
import pytest
import torch
import typer
from typer.testing import CliRunner

from fvedit.export import onnx_export, tensorrt_build
from fvedit.export.onnx_export import example_inputs, export_onnx, onnx_op_types, validate_onnx
from fvedit.errors import FveditError, InputError
from fvedit.runtime import export_cli
from fvedit.runtime.backends import make_backend
from fvedit.runtime.onnx_backend import (
    OnnxBackend,
    default_export_dir,
    find_exported_onnx,
    onnx_file_name,
    read_sidecar,
    weights_fingerprint,
)
from fvedit.runtime.tensorrt_backend import TensorRTBackend, engine_cache_key, engine_file_name, file_sha256
from fvedit.weights.demo import demo_weights
from tolerances import assert_close_scaled, network_profile, network_rel_tolerance

HAS_TENSORRT = False
try:  # the guard tests only make sense where TensorRT is absent (everywhere we test)
    import tensorrt  # noqa: F401

    HAS_TENSORRT = True
except ImportError:
    pass


@pytest.fixture(scope="module")
def weights():
    return demo_weights("tiny")


@pytest.fixture(scope="module")
def unet(weights):
    return weights.model.unet


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, unet):
    """The per-weights default folder under a private XDG_CACHE_HOME, as `fvedit export` writes it."""
    cache = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        folder = default_export_dir(unet)
    return cache, folder


@pytest.fixture(scope="module")
def fp32_onnx(export_dir, unet) -> Path:
    _, folder = export_dir
    return export_onnx(unet, folder / onnx_file_name("fp32", None))


@pytest.fixture(scope="module")
def fp16_onnx(export_dir, unet) -> Path:
    _, folder = export_dir
    return export_onnx(unet, folder / onnx_file_name("fp16", 2), fp16=True, batch=2)


@pytest.fixture(scope="module")
def profile(unet) -> tuple[int, int]:
    """(rounded stages, longest reduction) of the tiny UNet at its 64 px: the parity tolerances' scale."""
    return network_profile(unet, *example_inputs(unet, 2))


def validation_reference(unet, batch: int) -> torch.Tensor:
    """The reference output `validate_onnx` compares against (its inputs: example_inputs, seed 1)."""
    with torch.no_grad():
        return unet(*example_inputs(unet, batch, seed=1))


def random_inputs(unet, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    s, d = unet.cfg.image_size, unet.cfg.cond_channels
    return torch.randn(batch, 3, s, s, generator=gen), torch.rand(batch, generator=gen) * 999, torch.randn(batch, d, generator=gen)


# -- the graph -------------------------------------------------------------------------------------


def test_fp32_graph_has_native_groupnorm_and_only_standard_ops(fp32_onnx, unet):
    model = onnx.load(str(fp32_onnx))
    onnx.checker.check_model(model)
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 21)}
    ops = onnx_op_types(fp32_onnx)
    n_gn = sum(isinstance(m, torch.nn.GroupNorm) for m in unet.modules())
    assert ops["GroupNormalization"] == n_gn
    assert "InstanceNormalization" not in ops
    # no custom domains (Triton, ORT contrib, ...): every node is a standard ONNX op
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert all(onnx.defs.has(op) for op in ops)
    # dynamic batch axis shared by all inputs; the image size is static
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["x"][1:] == [3, unet.cfg.image_size, unet.cfg.image_size]
    assert isinstance(dims["x"][0], str) and dims["x"][0] == dims["t"][0] == dims["cond"][0]
    # weights inside the file: its sha256 identifies them (TensorRT cache key)
    assert not list(fp32_onnx.parent.glob("*.data"))


def test_sidecar_names_weights_precision_and_batch(fp32_onnx, fp16_onnx, unet):
    meta32, meta16 = read_sidecar(fp32_onnx), read_sidecar(fp16_onnx)
    assert meta32["weights_fingerprint"] == meta16["weights_fingerprint"] == weights_fingerprint(unet)
    assert (meta32["precision"], meta32["batch"], meta32["opset"]) == ("fp32", "dynamic", 21)
    assert (meta16["precision"], meta16["batch"]) == ("fp16", 2)


# -- numerics in onnxruntime ---------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2])
def test_fp32_onnxruntime_matches_reference_at_two_batch_sizes(fp32_onnx, unet, profile, batch):
    # same fp32 math, different kernels (reordered sums): u32 sqrt(fan-in) per stage over
    # sqrt(stages), relative to max|reference| (measured ~1e-5 on |eps| ~ 1.5)
    rel = network_rel_tolerance(torch.float32, *profile)
    err = validate_onnx(fp32_onnx, unet, batch, tol=rel)  # raises above rel * max|reference|
    assert err <= rel * validation_reference(unet, batch).abs().max().item()


def test_fp16_graph_keeps_groupnorm_and_softmax_in_fp32(fp16_onnx):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp16_onnx)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == f16 for n in convs), "convolution weights are not fp16"
    for n in model.graph.node:
        if n.op_type in ("GroupNormalization", "Softmax"):
            assert types[n.input[0]] == f32, f"{n.op_type} runs in {types[n.input[0]]}"
    assert [types[i.name] for i in model.graph.input] == [f32, f32, f32]
    assert types[model.graph.output[0].name] == f32


def test_fp16_onnxruntime_is_close_and_static_batch_runs_in_chunks(fp16_onnx, unet, profile):
    # fp16 has 11 significant bits (unit roundoff 4.9e-4) and every stage rounds its activations:
    # u16 sqrt(stages) relative to max|eps| (measured 5-7e-3 on |eps| ~ 1.5). It must also really
    # be fp16: off by far more than an fp32 graph can be.
    scale = validation_reference(unet, 2).abs().max().item()
    err = validate_onnx(fp16_onnx, unet, 2, tol=network_rel_tolerance(torch.float16, *profile))
    assert err > 10 * network_rel_tolerance(torch.float32, *profile) * scale, err
    # 3 frames through a batch-2 graph: a chunk of 2, then 1 frame padded to 2; frames are
    # independent, so the result is exactly the two direct runs
    backend = OnnxBackend(fp16_onnx, "cpu", unet=unet)
    assert backend.static_batch == 2 and backend.precision == "fp16"
    x, t, cond = random_inputs(unet, 3, seed=3)
    out = backend(x, t, cond[:1])
    assert out.shape == x.shape
    torch.testing.assert_close(out[:2], backend(x[:2], t[:2], cond[:1]), atol=0, rtol=0)
    torch.testing.assert_close(out[2:], backend(x[2:], t[2:], cond[:1]), atol=0, rtol=0)


# -- the onnxruntime backend ----------------------------------------------------------------------


def test_backend_finds_the_export_for_these_weights(export_dir, fp32_onnx, unet, weights, profile, monkeypatch):
    cache, _ = export_dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert find_exported_onnx(unet, "fp32") == fp32_onnx
    backend = make_backend("onnxruntime", weights.model, "cpu", dtype="fp16")  # CPU runs the fp32 graph
    assert backend.name == "onnxruntime" and backend.static_batch is None and backend.precision == "fp32"
    assert "CPUExecutionProvider" in backend.describe()
    x, t, cond = random_inputs(unet, 2, seed=9)
    with torch.no_grad():
        ref = unet(x, t, cond)
    tol = network_rel_tolerance(torch.float32, *profile) * ref.abs().max().item()
    assert_close_scaled(backend(x, t, cond), ref, tol, "onnxruntime fp32")
    with pytest.raises(InputError, match="takes 64x64"):
        backend(torch.zeros(1, 3, 32, 32), t[:1], cond[:1])


def test_backend_refuses_an_export_of_other_weights(fp32_onnx):
    other = demo_weights("tiny", seed=1).model.unet
    with pytest.raises(InputError, match="other weights"):
        OnnxBackend(fp32_onnx, "cpu", unet=other)


def test_backend_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        OnnxBackend(tmp_path / "nope.onnx")
    x = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["image"], ["y"])], "g", [x], [y])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)], ir_version=10), str(foreign))
    with pytest.raises(InputError, match="not an fvedit UNet export"):
        OnnxBackend(foreign)


def test_export_rejects_old_opsets(unet, tmp_path):
    with pytest.raises(InputError, match="opset 17"):
        export_onnx(unet, tmp_path / "u.onnx", opset=17)


# -- `fvedit export` ------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(export_cli.export_command)
    return app


def test_export_command_validates_and_explains_tensorrt(fp32_onnx, tmp_path, monkeypatch):
    """The command's flow with the (already tested) exporter swapped for a copy of the fixture file."""
    calls = []

    def fake_export_all(unet, out_dir, **kwargs):
        calls.append(kwargs)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        dst = Path(out_dir) / fp32_onnx.name
        shutil.copy(fp32_onnx, dst)
        shutil.copy(fp32_onnx.with_suffix(".json"), dst.with_suffix(".json"))
        return [dst]

    monkeypatch.setattr(onnx_export, "export_all", fake_export_all)
    monkeypatch.setenv("FVEDIT_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    result = CliRunner().invoke(_cli(), ["--preset", "tiny", "--out-dir", str(tmp_path / "out"), "--batch", "1", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert calls == [dict(fp16=False, batches=[1, 2], dynamic=True, opset=21)]
    out = result.output
    assert "demo weights" in out
    assert out.count("max |onnxruntime - reference|") == 2 and "tolerance 0.001 x max|reference|" in out
    if not HAS_TENSORRT:
        # the TensorRT note comes after the ONNX step and names the ONNX file
        assert out.index("TensorRT is not installed") > out.rindex("max |onnxruntime")
        assert str(tmp_path / "out" / fp32_onnx.name) in out and "fvedit export --tensorrt" in out
        monkeypatch.setattr(onnx_export, "validate_onnx", lambda *a, **k: 0.0)  # checked above
        forced = CliRunner().invoke(_cli(), ["--preset", "tiny", "--out-dir", str(tmp_path / "out"), "--batch", "1", "--tensorrt"])
        assert isinstance(forced.exception, FveditError) and "TensorRT is not installed" in str(forced.exception)


# -- TensorRT: guard and cache key ----------------------------------------------------------------


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown without TensorRT")
def test_build_engine_without_tensorrt_says_what_to_do(fp32_onnx):
    with pytest.raises(FveditError) as info:
        tensorrt_build.build_engine(fp32_onnx)
    msg = str(info.value)
    assert "TensorRT is not installed" in msg and str(fp32_onnx) in msg
    assert 'pip install "fvedit[tensorrt]"' in msg and "fvedit export --tensorrt" in msg
    assert "\n" not in msg


def test_engine_cache_key_changes_with_each_input(fp32_onnx):
    base = dict(onnx_sha256=file_sha256(fp32_onnx), precision="fp16", batch_profile=(1, 4, 16),
                gpu_name="NVIDIA H100 80GB HBM3", trt_version="10.9.0.34")  # fmt: skip
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**base) and len(key) == 64
    variants = dict(
        onnx_sha256="0" * 64, precision="fp32", batch_profile=(1, 8, 16), gpu_name="NVIDIA H200", trt_version="10.13.0"
    )
    keys = {key}
    for field, value in variants.items():
        changed = engine_cache_key(**{**base, field: value})
        assert changed not in keys, field
        keys.add(changed)
    assert engine_file_name(key) == f"unet-{key[:24]}.plan"
    with pytest.raises(InputError, match="min <= opt <= max"):
        engine_cache_key(**{**base, "batch_profile": (4, 1, 16)})
    with pytest.raises(InputError, match="precision"):
        engine_cache_key(**{**base, "precision": "int3"})


def test_onnx_sha256_tracks_file_content(fp32_onnx, tmp_path):
    copy = tmp_path / "copy.onnx"
    shutil.copy(fp32_onnx, copy)
    assert file_sha256(copy) == file_sha256(fp32_onnx)
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    assert file_sha256(copy) != file_sha256(fp32_onnx)


# -- TensorRT: object lifetimes, with a fake tensorrt module --------------------------------------


def fake_tensorrt(freed: list[str]):
    """A `tensorrt` stand-in with TensorRT's lifetime rule built in: the engine refuses to work
    once the runtime that deserialised it has been garbage-collected (it holds only a weakref to
    it, as a real engine holds no Python reference to its runtime). `freed` records the order in
    which runtime, engine and context are collected."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0.34"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class Context:
        def __init__(self, engine):
            self.engine = engine
            weakref.finalize(self, freed.append, "context")

    class Engine:
        names = ("x", "t", "cond", "eps")

        def __init__(self, runtime):
            self._runtime = weakref.ref(runtime)
            weakref.finalize(self, freed.append, "engine")

        def _alive(self):
            assert self._runtime() is not None, "the TensorRT runtime died before its engine"

        @property
        def num_io_tensors(self):
            self._alive()
            return len(self.names)

        def get_tensor_name(self, i):
            self._alive()
            return self.names[i]

        def get_tensor_mode(self, name):
            self._alive()
            return TensorIOMode.OUTPUT if name == "eps" else TensorIOMode.INPUT

        def create_execution_context(self):
            self._alive()
            return Context(self)

    made: list[weakref.ref] = []

    class Runtime:
        def __init__(self, logger):
            made.append(weakref.ref(self))
            weakref.finalize(self, freed.append, "runtime")

        def deserialize_cuda_engine(self, data):
            return Engine(self)

    trt.Logger, trt.Runtime, trt.TensorIOMode = Logger, Runtime, TensorIOMode
    trt.made = made  # weakrefs to every Runtime created (for the test, not TensorRT's API)
    return trt


def test_tensorrt_runtime_outlives_engine_and_contexts(tmp_path, monkeypatch):
    freed: list[str] = []
    trt = fake_tensorrt(freed)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())  # no GPU here
    plan = tmp_path / "unet-test.plan"
    plan.write_bytes(b"serialized engine")
    backend = TensorRTBackend(plan, "cuda", cond_dim=128)
    gc.collect()
    (runtime,) = trt.made
    assert runtime() is not None and backend.runtime is runtime(), "the runtime was a temporary"
    assert freed == []
    backend.engine.create_execution_context()  # the engine still works after a collection
    gc.collect()
    freed.clear()
    del backend
    gc.collect()
    # children first: the context, then the engine, then the runtime that made it
    assert freed == ["context", "engine", "runtime"]
    assert runtime() is None
