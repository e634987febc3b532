"""The weights layer: official-checkpoint import, safe unpickling, manifest/verify, demo, fetch, CLI.

Fake checkpoints are built from the `tiny` preset in the *official* layout (independent of the
importer's mapping table): `model.*` and `ema_model.*` copies with different values, the
duplicated landmark features, the unused ImageNet head and the usual Lightning extras.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import enum
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import types
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fvedit.config import TINY
from fvedit.errors import FveditError, InputError
from fvedit.weights import (
    DEMO_NOTICE,
    demo_weights,
    describe_weights_dir,
    import_dva,
    list_weights,
    load_weights,
    resolve_weights_dir,
    safe_load,
    verify_weights,
)
from fvedit.weights import fetch as fetch_mod
from fvedit.weights.cli import app
from fvedit.weights.importer import map_official_state_dict
from fvedit.weights.safe_pickle import global_policy
from fvedit.weights.safetensors_writer import write_safetensors
from fvedit.weights.store import MANIFEST_NAME, MODEL_FILE

LND_FVEDIT = "encoder.lndnet.backbone.features."
LND_OFFICIAL = "encoder.lndnet.backbone.pretrain_net.features."
LND_DUPLICATE = "encoder.lndnet.backbone.base_net.0."
ID_DIM = TINY.encoder.id_dim


class HParams(dict):
    """Stands in for Lightning's AttributeDict: a class outside any safe allowlist."""


class Payload:
    """Unpickling this runs `touch marker` unless the loader refuses to call os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Call:
    """Unpickling this calls `func(*args)`: how a malicious pickle runs any function it names."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class Conf:
    """A plain config object holding whatever it is given, like the official TrainConfig."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


# The official hyper_parameters hold the official repo's own dataclasses and enums (modules
# `templates`, `choices`), which fvedit does not have: recreated here under those names.
class TrainMode(enum.Enum):
    diffusion = "diffusion"


@dataclasses.dataclass
class ModelConf:
    net_ch: int = 32
    attn: tuple = (16,)


@dataclasses.dataclass
class TrainConfig:
    name: str = "dva"
    train_mode: TrainMode = TrainMode.diffusion
    model_conf: ModelConf = dataclasses.field(default_factory=ModelConf)
    base_dir: Path = Path("checkpoints")
    args: argparse.Namespace = dataclasses.field(default_factory=lambda: argparse.Namespace(gpus=[0]))


# ---------------------------------------------------------------------------------------------
# Fake official files


def _random_fvedit_state(seed: int) -> dict[str, torch.Tensor]:
    from fvedit.models import build_model

    gen = torch.Generator().manual_seed(seed)
    sd = build_model(TINY).state_dict()
    return {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else torch.full(v.shape, seed + 7)
        for k, v in sd.items()
    }


def _to_official(fv: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """fvedit names -> official names, written out by hand (not via the importer's table)."""
    out: dict[str, torch.Tensor] = {}
    last_channel = None
    for k, v in fv.items():
        if k.startswith("unet."):
            out[k[len("unet.") :]] = v
        elif k.startswith(LND_FVEDIT):
            rest = k[len(LND_FVEDIT) :]
            out[LND_OFFICIAL + rest] = v
            out[LND_DUPLICATE + rest] = v  # the same tensor, as in the official file
        else:
            out[k] = v
        if k == "encoder.lndnet.backbone.linear7.conv.weight":
            last_channel = v.shape[0]
    gen = torch.Generator().manual_seed(seed + 99)
    out["encoder.lndnet.backbone.pretrain_net.classifier.1.weight"] = torch.randn(1000, last_channel, generator=gen)
    out["encoder.lndnet.backbone.pretrain_net.classifier.1.bias"] = torch.randn(1000, generator=gen)
    return out


def _lightning(state_dict: dict, **extra) -> dict:
    ckpt = {
        "epoch": 51,
        "global_step": 1_000_000,
        "pytorch-lightning_version": "1.6.1",
        "state_dict": collections.OrderedDict(state_dict),
        "hyper_parameters": HParams(name="dva", lr=1e-4, net_ch=32),
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-4}]}],
        "lr_schedulers": [],
        "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 17},
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.1), "dirpath": "checkpoints/x"}},
    }
    ckpt.update(extra)
    return ckpt


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Paths of a fake official release for `tiny`, plus the tensors written into it."""
    root = tmp_path_factory.mktemp("official")
    ema_fv = _random_fvedit_state(1)
    online_fv = _random_fvedit_state(2)
    ema = _to_official(ema_fv, 1)
    online = _to_official(online_fv, 2)
    sd = {**{f"model.{k}": v for k, v in online.items()}, **{f"ema_model.{k}": v for k, v in ema.items()}}
    sd["x_T"] = torch.randn(2, 3, 8, 8)  # a LitModel buffer outside model./ema_model.
    ckpt = root / "epoch=51-step=1000000.ckpt"
    torch.save(_lightning(sd), ckpt)

    gen = torch.Generator().manual_seed(5)
    latent = {
        "conds": torch.randn(64, ID_DIM, generator=gen),
        "conds_mean": torch.randn(ID_DIM, generator=gen),
        "conds_std": torch.rand(ID_DIM, generator=gen) + 0.5,
    }
    latent_path = root / "latent.pkl"
    torch.save(latent, latent_path)

    cls = {
        "classifier.weight": torch.randn(40, ID_DIM, generator=gen),
        "classifier.bias": torch.randn(40, generator=gen),
        "ema_classifier.weight": torch.randn(40, ID_DIM, generator=gen),
        "ema_classifier.bias": torch.randn(40, generator=gen),
        "conds_mean": latent["conds_mean"][None, :].clone(),
        "conds_std": latent["conds_std"][None, :].clone(),
    }
    cls_path = root / "last.ckpt"
    torch.save(_lightning(cls), cls_path)
    return {
        "ckpt": ckpt,
        "latent": latent_path,
        "classifier": cls_path,
        "ema_fv": ema_fv,
        "online_fv": online_fv,
        "ema": ema,
        "latent_data": latent,
        "cls_data": cls,
    }


@pytest.fixture(scope="module")
def imported(official, tmp_path_factory):
    out = tmp_path_factory.mktemp("weights")
    report = import_dva(
        official["ckpt"],
        out_dir=out,
        latent_path=official["latent"],
        classifier_path=official["classifier"],
        preset="tiny",
    )
    return out, report


@pytest.fixture(scope="module")
def loaded(imported):
    return load_weights(imported[0])


def _copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# ---------------------------------------------------------------------------------------------
# Import


def test_import_takes_the_ema_copy_exactly(official, loaded):
    sd = loaded.model.state_dict()
    assert set(sd) == set(official["ema_fv"])
    for key, value in official["ema_fv"].items():
        assert torch.equal(sd[key], value.to(sd[key].dtype)), key
    differing = sum(not torch.equal(sd[k], official["online_fv"][k].to(sd[k].dtype)) for k in sd)
    assert differing == len(sd)  # nothing came from the online `model.*` copy
    # spot-check the renaming against the official names directly
    assert torch.equal(sd["unet.out.2.weight"], official["ema"]["out.2.weight"])
    assert torch.equal(sd[LND_FVEDIT + "0.0.weight"], official["ema"][LND_OFFICIAL + "0.0.weight"])
    assert not loaded.is_demo and loaded.model.config == TINY
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())


def test_import_classifier_and_id_stats(official, loaded):
    cls = official["cls_data"]
    assert torch.equal(loaded.classifier.weight, cls["classifier.weight"])  # not the EMA copy
    assert torch.equal(loaded.classifier.bias, cls["classifier.bias"])
    assert torch.equal(loaded.classifier.conds_mean, cls["conds_mean"][0])
    assert loaded.classifier.conds_std.shape == (ID_DIM,)
    assert torch.equal(loaded.id_stats.mean, official["latent_data"]["conds_mean"])
    assert torch.equal(loaded.id_stats.std, official["latent_data"]["conds_std"])
    z = torch.nn.functional.normalize(torch.randn(3, ID_DIM), dim=1)
    expected = ((z - cls["conds_mean"]) / cls["conds_std"]) @ cls["classifier.weight"].T + cls["classifier.bias"]
    torch.testing.assert_close(loaded.classifier(z), expected)
    assert loaded.classifier.attribute_index("Mustache") == 22 and loaded.classifier.attribute_index("eyeglasses") == 15
    with pytest.raises(InputError, match="unknown attribute"):
        loaded.classifier.attribute_index("Beardy")


def test_manifest_contents(official, imported):
    out, report = imported
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest == report.manifest
    assert manifest["demo"] is False and manifest["format_version"] == 1
    assert manifest["config"] == json.loads(json.dumps(TINY.to_dict()))
    assert set(manifest["files"]) == {"model.safetensors", "classifier.safetensors", "id_stats.safetensors"}
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    ckpt_entry = manifest["files"]["model.safetensors"]
    assert ckpt_entry["source"] == str(official["ckpt"].resolve())
    assert ckpt_entry["source_sha256"] == hashlib.sha256(official["ckpt"].read_bytes()).hexdigest()
    assert "created" not in manifest and "fvedit_version" in manifest  # no import time: reproducible
    assert any("HParams" in note for note in report.notes)  # hyper_parameters were neutralised
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    tensors = load_file(out / MODEL_FILE)
    assert all(t.dtype == torch.float32 for k, t in tensors.items() if not k.endswith("num_batches_tracked"))


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _import_official(official, out: Path):
    paths = {"latent_path": official["latent"], "classifier_path": official["classifier"]}
    return import_dva(official["ckpt"], out_dir=out, preset="tiny", **paths)


def test_two_imports_give_identical_files(official, imported, tmp_path):
    """Same inputs -> byte-identical safetensors and manifest (was: random metadata order + import time)."""
    again = _import_official(official, tmp_path / "again")
    assert again.manifest == imported[1].manifest
    hashes = _file_hashes(tmp_path / "again")
    assert set(hashes) == {MANIFEST_NAME, "model.safetensors", "classifier.safetensors", "id_stats.safetensors"}
    assert hashes == _file_hashes(imported[0])
    for name, entry in again.manifest["files"].items():
        assert entry["sha256"] == hashes[name]


_IMPORT_IN_A_SUBPROCESS = (
    "import sys; from fvedit.weights import import_dva; "
    "import_dva(sys.argv[1], out_dir=sys.argv[2], latent_path=sys.argv[3], classifier_path=sys.argv[4], preset='tiny')"
)


def test_import_is_reproducible_across_processes_and_hash_seeds(official, imported, tmp_path):
    """Two fresh interpreters with different PYTHONHASHSEED (and this one) write the same bytes."""
    hashes = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}"
        args = [str(official["ckpt"]), str(out), str(official["latent"]), str(official["classifier"])]
        subprocess.run(
            [sys.executable, "-c", _IMPORT_IN_A_SUBPROCESS, *args],
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            timeout=600,
        )
        hashes.append(_file_hashes(out))
    assert hashes[0] == hashes[1] == _file_hashes(imported[0])


def test_safetensors_writer_is_order_independent_and_standard(tmp_path):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 3, generator=gen)
    tensors = {
        "b.weight": base,
        "a.view": base[1],  # shares storage with b.weight
        "count": torch.tensor(7),
        "mask": torch.tensor([True, False]),
        "half": torch.randn(5, generator=gen).half(),
        "empty": torch.zeros(0, 2),
    }
    meta = {"format": "pt", "fvedit_config": '{"name": "tiny"}', "z": "1"}
    write_safetensors(tensors, tmp_path / "a.safetensors", meta)
    write_safetensors(dict(reversed(tensors.items())), tmp_path / "b.safetensors", dict(reversed(meta.items())))
    data = (tmp_path / "a.safetensors").read_bytes()
    assert data == (tmp_path / "b.safetensors").read_bytes()
    loaded = load_file(tmp_path / "a.safetensors")
    assert set(loaded) == set(tensors)
    assert all(loaded[k].dtype == v.dtype and torch.equal(loaded[k], v) for k, v in tensors.items())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        assert f.metadata() == meta
    # with one metadata entry the library is deterministic too, and writes exactly these bytes
    from safetensors.torch import save

    one = {"format": "pt"}
    write_safetensors(tensors, tmp_path / "c.safetensors", one)
    assert (tmp_path / "c.safetensors").read_bytes() == save({k: v.clone() for k, v in tensors.items()}, one)


def _ema_copy(official) -> dict[str, torch.Tensor]:
    return dict(official["ema"])


def test_missing_key_is_named(official):
    ema = _ema_copy(official)
    del ema["input_blocks.1.0.in_layers.2.weight"]
    with pytest.raises(InputError, match=r"1 missing key \(unet\.input_blocks\.1\.0\.in_layers\.2\.weight\)"):
        map_official_state_dict(ema, TINY)


def test_unknown_key_is_named(official):
    ema = _ema_copy(official)
    ema["input_blocks.99.0.weight"] = torch.zeros(3)
    ema["latent_net.0.weight"] = torch.zeros(3)
    with pytest.raises(InputError, match=r"2 unknown keys \(.*input_blocks\.99\.0\.weight.*latent_net\.0\.weight"):
        map_official_state_dict(ema, TINY)


def test_misshaped_key_is_named(official):
    ema = _ema_copy(official)
    ema["out.2.weight"] = torch.zeros(3, 7, 3, 3)
    expected = r"1 mis-shaped key \(unet\.out\.2\.weight \[3,7,3,3\] \(expected \[3,32,3,3\]\)"
    with pytest.raises(InputError, match=expected):
        map_official_state_dict(ema, TINY)


def test_all_problems_in_one_error_with_counts(official):
    ema = _ema_copy(official)
    removed = sorted(k for k in ema if k.startswith("middle_block."))[:5]
    for k in removed:
        del ema[k]
    ema["bogus.a"] = torch.zeros(1)
    ema["out.0.weight"] = torch.zeros(5)
    with pytest.raises(InputError) as info:
        map_official_state_dict(ema, TINY)
    msg = str(info.value)
    assert msg.startswith("checkpoint does not match preset tiny:")
    assert "5 missing keys" in msg and "... 2 more" in msg
    assert "1 unknown key (bogus.a)" in msg and "1 mis-shaped key (unet.out.0.weight [5]" in msg
    assert "\n" not in msg


def test_landmark_duplicate_must_equal_its_twin(official):
    ema = _ema_copy(official)
    key = LND_DUPLICATE + "0.0.weight"
    ema[key] = ema[key] + 1
    with pytest.raises(InputError, match="duplicate .*base_net.0.0.0.weight differs"):
        map_official_state_dict(ema, TINY)


def test_failed_import_leaves_previous_weights_untouched(official, imported, tmp_path):
    out = _copy_dir(imported[0], tmp_path / "w")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.ckpt"
    ema = _ema_copy(official)
    del ema["out.2.bias"]
    torch.save(_lightning({f"ema_model.{k}": v for k, v in ema.items()}), bad)
    with pytest.raises(InputError, match="missing key"):
        import_dva(bad, out_dir=out, preset="tiny")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(InputError, match="no 'ema_model."):
        torch.save({"state_dict": {"model.out.2.bias": torch.zeros(3)}}, bad)
        import_dva(bad, out_dir=tmp_path / "fresh", preset="tiny")
    assert not (tmp_path / "fresh" / MANIFEST_NAME).exists()


def test_interrupted_write_leaves_no_temp_files(official, imported, tmp_path, monkeypatch):
    import fvedit.weights.importer as importer

    out = _copy_dir(imported[0], tmp_path / "w")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(importer, "sha256_file", disk_full)  # fails after the temp files exist
    with pytest.raises(FveditError, match="cannot write weights to .*No space left"):
        import_dva(official["ckpt"], out_dir=out, preset="tiny")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_import_requires_matching_preset(official, tmp_path):
    with pytest.raises(InputError, match="does not match preset dva256"):
        import_dva(official["ckpt"], out_dir=tmp_path, preset="dva256")
    with pytest.raises(InputError, match="unknown preset"):
        import_dva(official["ckpt"], out_dir=tmp_path, preset="huge")


# ---------------------------------------------------------------------------------------------
# Safe unpickling


def test_torch_load_would_run_the_payload(tmp_path):
    """Control: the payload is real, so the tests below would notice if it ran."""
    marker = tmp_path / f"pwned_{uuid.uuid4().hex}"
    path = tmp_path / "evil.ckpt"
    torch.save({"x": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


PAYLOADS = {
    "system": (lambda m: Payload(m), f"{os.system.__module__}.system"),  # posix.system on Linux
    "eval": (lambda m: Call(eval, f"open({str(m)!r}, 'w').close()"), "builtins.eval"),
    "popen": (lambda m: Call(subprocess.Popen, ["touch", str(m)]), "subprocess.Popen"),
}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_code_in_hyper_parameters_is_refused_and_not_run(kind, tmp_path):
    make, qualified = PAYLOADS[kind]
    marker = tmp_path / f"pwned_{uuid.uuid4().hex}"
    path = tmp_path / "evil.ckpt"
    weights = {"ema_model.w": torch.randn(4, 4)}
    torch.save(_lightning(weights, hyper_parameters=HParams(conf=Conf(foo=make(marker)))), path)
    with pytest.raises(InputError) as info:
        import_dva(path, out_dir=tmp_path / "w", preset="tiny")
    msg = str(info.value)
    assert msg == (
        f"refusing to load {path}: it references {qualified} at hyper_parameters.conf.foo, which can run "
        "code when unpickled; no code from the file was run"
    )
    assert info.value.exit_code == 2
    time.sleep(0.2)  # a Popen that had been started would have touched the marker by now
    assert not marker.exists() and not (tmp_path / "w").exists()


def test_cli_refuses_code_with_one_line_exit_2(tmp_path):
    marker = tmp_path / f"pwned_{uuid.uuid4().hex}"
    path = tmp_path / "evil.ckpt"
    torch.save(_lightning({"ema_model.w": torch.zeros(1)}, extra=[{"cb": Payload(marker)}]), path)
    res = CliRunner().invoke(app, ["import-dva", "--ckpt", str(path), "--weights-dir", str(tmp_path / "w")])
    assert res.exit_code == 2
    err = res.stderr.splitlines()[-1]
    assert err.startswith(f"error: refusing to load {path}: it references {os.system.__module__}.system at extra[0].cb")
    assert err.endswith("no code from the file was run") and res.stderr.count("\n") == 2  # "importing ..." + error
    assert not marker.exists()


def test_referenced_or_hidden_code_is_refused(tmp_path):
    """Not only calls: a bare reference, several at once, and one the loaded data no longer reaches."""
    path = tmp_path / "ref.ckpt"
    sneaky = Call(getattr, Call(__import__, "os"), "system")  # getattr(__import__("os"), "system")
    torch.save(_lightning({}, hyper_parameters={"act": os.system, "f": sneaky}), path)
    with pytest.raises(InputError) as info:
        safe_load(path)
    assert (
        f"it references {os.system.__module__}.system at hyper_parameters.act, builtins.getattr at "
        "hyper_parameters.f, builtins.__import__ at hyper_parameters.f(arg 0), which can run code"
    ) in str(info.value)
    hidden = tmp_path / "hidden.pkl"
    hidden.write_bytes(b"cposix\nsystem\n0N.")  # GLOBAL posix.system, POP it, return None
    with pytest.raises(InputError, match=r"references posix\.system \(place unknown\).*no code from the file"):
        safe_load(hidden)
    py2 = tmp_path / "py2.pkl"
    py2.write_bytes(b"c__builtin__\neval\n(S'1+1'\ntR.")  # Python-2 spelling of builtins.eval
    with pytest.raises(InputError, match=r"references builtins\.eval at the top level"):
        safe_load(py2)


def test_official_like_config_is_neutralised_and_imports(official, tmp_path, monkeypatch):
    """Unknown classes (the official `templates.TrainConfig`, enums, Namespace, paths) are data: kept inert."""
    sd = {f"ema_model.{k}": v for k, v in official["ema"].items()}
    path = tmp_path / "official_like.ckpt"
    with monkeypatch.context() as m:  # pickle the classes under the official module names
        for module, classes in {"templates": (TrainConfig, ModelConf), "choices": (TrainMode,)}.items():
            mod = types.ModuleType(module)
            for cls in classes:
                m.setattr(cls, "__module__", module)
                setattr(mod, cls.__name__, cls)
            m.setitem(sys.modules, module, mod)
        hparams = HParams(conf=TrainConfig(), lr=1e-4)
        torch.save(_lightning(sd, hyper_parameters=hparams), path)
        torch.save({"conf": TrainConfig()}, tmp_path / "plain.pkl", pickle_protocol=0)  # copyreg path
    result = safe_load(path)
    conf = result.data["hyper_parameters"].items["conf"]
    assert type(conf).qualified_name == "templates.TrainConfig" and conf.state["name"] == "dva"
    assert type(conf.state["train_mode"]).qualified_name == "choices.TrainMode"
    assert conf.state["train_mode"].args == ("diffusion",)  # an enum: REDUCE of its class, recorded
    assert {"templates.TrainConfig", "templates.ModelConf", "choices.TrainMode", "argparse.Namespace"} <= set(
        result.neutralized
    )
    assert any(name.endswith("Path") for name in result.neutralized)
    report = import_dva(path, out_dir=tmp_path / "w", preset="tiny")
    assert any("templates.TrainConfig" in note for note in report.notes)
    assert verify_weights(tmp_path / "w").ok
    assert "templates.TrainConfig" in safe_load(tmp_path / "plain.pkl").neutralized


def test_global_policy():
    refused = [
        ("posix", "system"), ("nt", "system"), ("os", "system"), ("builtins", "eval"), ("builtins", "exec"),
        ("builtins", "getattr"), ("builtins", "__import__"), ("__builtin__", "eval"), ("subprocess", "Popen"),
        ("functools", "partial"), ("importlib", "import_module"), ("torch", "load"), ("torch.hub", "load"),
        ("numpy.testing._private.utils", "runstring"), ("collections", "namedtuple"), ("fvedit.weights", "x"),
    ]  # fmt: skip
    neutralized = [
        ("templates", "TrainConfig"), ("choices", "TrainMode"), ("__main__", "Config"),
        ("pytorch_lightning.utilities.parsing", "AttributeDict"), ("argparse", "Namespace"),
        ("pathlib", "PosixPath"), ("torch", "FloatTensor"),
    ]  # fmt: skip
    allowed = [("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch", "float32")]
    assert [global_policy(*g) for g in refused] == ["refused"] * len(refused)
    assert [global_policy(*g) for g in neutralized] == ["neutralized"] * len(neutralized)
    assert [global_policy(*g) for g in allowed] == ["allowed"] * len(allowed)


def test_lightning_extras_are_neutralised_tensors_kept(tmp_path):
    path = tmp_path / "extras.ckpt"
    weights = {"ema_model.w": torch.randn(4, 4), "ema_model.n": torch.arange(3)}
    torch.save(_lightning(weights), path)
    result = safe_load(path)
    assert result.used_fallback and any(name.endswith("HParams") for name in result.neutralized)
    assert result.data["hyper_parameters"].items == {"name": "dva", "lr": 1e-4, "net_ch": 32}
    assert torch.equal(result.data["state_dict"]["ema_model.w"], weights["ema_model.w"])
    assert torch.equal(result.data["state_dict"]["ema_model.n"], weights["ema_model.n"])
    assert result.data["native_amp_scaling_state"]["_growth_tracker"] == 17


def test_payload_inside_state_dict_is_refused(official, tmp_path):
    marker = tmp_path / f"pwned_{uuid.uuid4().hex}"
    ema = _ema_copy(official)
    ema["out.2.weight"] = Payload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(_lightning({f"ema_model.{k}": v for k, v in ema.items()}), path)
    with pytest.raises(InputError, match=r"system at state_dict\['ema_model\.out\.2\.weight'\]"):
        import_dva(path, out_dir=tmp_path / "w", preset="tiny")
    assert not marker.exists()


def test_plain_pickle_cannot_patch_classes(tmp_path):
    path = tmp_path / "patch.pkl"
    # GLOBAL torch.Tensor, {'evil': 1}, BUILD: would set torch.Tensor.evil with a naive loader
    path.write_bytes(b"ctorch\nTensor\n(dS'evil'\nI1\nsb.")
    with pytest.raises(InputError, match="refusing to set state on class"):
        safe_load(path)
    assert not hasattr(torch.Tensor, "evil")


def test_safe_load_errors(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        safe_load(tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(InputError, match="junk.ckpt"):
        safe_load(junk)


# ---------------------------------------------------------------------------------------------
# Store: verify, list, load checks, directory resolution


def test_verify_detects_a_flipped_byte(imported, tmp_path):
    out = _copy_dir(imported[0], tmp_path / "w")
    assert verify_weights(out).ok
    path = out / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    info = verify_weights(out)
    status = {f.name: f.status for f in info.files}
    assert not info.ok and status[MODEL_FILE] == "sha256 mismatch"
    assert status["classifier.safetensors"] == "ok"
    assert {f.name: f.status for f in list_weights(out).files}[MODEL_FILE] == "ok"  # list does not hash


def test_missing_or_truncated_file(imported, tmp_path):
    out = _copy_dir(imported[0], tmp_path / "w")
    (out / "id_stats.safetensors").unlink()
    assert {f.name: f.status for f in verify_weights(out).files}["id_stats.safetensors"] == "missing"
    with pytest.raises(InputError, match="id_stats.safetensors: missing"):
        load_weights(out)
    assert "problems: id_stats.safetensors missing" in describe_weights_dir(out)
    assert "untrained demo weights" in describe_weights_dir(tmp_path / "nothing")
    out2 = _copy_dir(imported[0], tmp_path / "w2")
    (out2 / MODEL_FILE).write_bytes((out2 / MODEL_FILE).read_bytes()[:-10])
    with pytest.raises(InputError, match="size mismatch"):
        load_weights(out2)


def test_load_rejects_a_model_file_with_wrong_keys(imported, tmp_path):
    out = _copy_dir(imported[0], tmp_path / "w")
    tensors = load_file(out / MODEL_FILE)
    for key in sorted(tensors)[:3]:
        del tensors[key]
    tensors["unet.extra.weight"] = torch.zeros(2)
    save_file(tensors, out / MODEL_FILE)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["files"][MODEL_FILE].update(
        size=(out / MODEL_FILE).stat().st_size, sha256=hashlib.sha256((out / MODEL_FILE).read_bytes()).hexdigest()
    )
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    expected = r"checkpoint does not match preset tiny: 3 missing keys \(.*\); 1 unknown key \(unet\.extra\.weight\)"
    with pytest.raises(InputError, match=expected):
        load_weights(out)


def test_load_checks_manifest_and_preset(imported, tmp_path):
    out = _copy_dir(imported[0], tmp_path / "w")
    with pytest.raises(InputError, match="for model config 'tiny', not preset 'dva256'"):
        load_weights(out, preset="dva256")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["format_version"] = 99
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="format version 99"):
        load_weights(out)
    with pytest.raises(InputError, match="no weights in .*import-dva"):
        load_weights(tmp_path / "empty")


def test_weights_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("FVEDIT_WEIGHTS_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_weights_dir(tmp_path / "cli") == tmp_path / "cli"
    assert resolve_weights_dir(None) == tmp_path / "env"
    monkeypatch.delenv("FVEDIT_WEIGHTS_DIR")
    assert resolve_weights_dir(None) == tmp_path / "xdg" / "fvedit" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_weights_dir(None) == tmp_path / "home" / ".cache" / "fvedit" / "weights"


# ---------------------------------------------------------------------------------------------
# Demo weights


def test_demo_weights_are_deterministic_and_leave_global_rng_alone():
    rng_before = torch.get_rng_state()
    a = demo_weights("tiny", seed=3)
    b = demo_weights("tiny", seed=3)
    assert torch.equal(rng_before, torch.get_rng_state())
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert torch.equal(a.id_stats.std, b.id_stats.std)
    c = demo_weights("tiny", seed=4)
    assert not torch.equal(sa["unet.input_blocks.0.0.weight"], c.model.state_dict()["unet.input_blocks.0.0.weight"])
    # the official zero-init layers are randomised, so eps is not trivially 0
    assert sa["unet.out.2.weight"].abs().sum() > 0
    assert a.is_demo and a.manifest["demo"] is True
    assert "untrained demo weights" in DEMO_NOTICE
    assert torch.allclose(a.id_stats.std, torch.full((ID_DIM,), ID_DIM**-0.5))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z_face = a.model.encoder(x)
    eps = a.model.unet(x, torch.tensor([500]), z_face)
    assert eps.shape == x.shape and eps.abs().max() > 0 and torch.isfinite(eps).all()


# ---------------------------------------------------------------------------------------------
# Fetch: offline failure and HTTP Range resume against a local server


class _Server:
    """A 127.0.0.1 HTTP server for one payload, with Range support and fault injection."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.ranges: list[str | None] = []
        self.ignore_range = False
        self.drop_after: int | None = None  # close the first response after this many bytes
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = server.files[self.path.lstrip("/").split("?")[0]]
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                if server.drop_after is not None:
                    chunk, server.drop_after = chunk[: server.drop_after], None
                    self.wfile.write(chunk)
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    payload = os.urandom(300_000)
    srv = _Server({"blob.bin": payload})
    yield srv, payload
    srv.close()


def test_fetch_offline_fails_fast_with_instructions(tmp_path):
    files = (fetch_mod.RemoteFile("ckpt", "x.ckpt", "http://127.0.0.1:9/x.ckpt"),)
    t0 = time.perf_counter()
    with pytest.raises(FveditError, match="download the files manually and run `fvedit weights import-dva`"):
        fetch_mod.fetch_official(tmp_path, files=files, connect_timeout=2.0)
    assert time.perf_counter() - t0 < 5.0
    how_to = fetch_mod.manual_instructions(tmp_path, files)
    assert "http://127.0.0.1:9/x.ckpt" in how_to and "import-dva --ckpt" in how_to


def test_download_resumes_from_part_file(server, tmp_path):
    srv, payload = server
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(payload[:123_456])
    fetch_mod.download(srv.url("blob.bin"), dest, sha256=hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload and not (tmp_path / "blob.bin.part").exists()
    assert srv.ranges == ["bytes=123456-"]


def test_download_restarts_when_range_is_ignored(server, tmp_path):
    srv, payload = server
    srv.ignore_range = True
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 1000)  # garbage that must not survive
    fetch_mod.download(srv.url("blob.bin"), dest)
    assert dest.read_bytes() == payload


def test_download_resumes_after_a_dropped_connection(server, tmp_path):
    srv, payload = server
    srv.drop_after = 50_000
    dest = tmp_path / "blob.bin"
    fetch_mod.download(srv.url("blob.bin"), dest)
    assert dest.read_bytes() == payload
    assert srv.ranges == [None, "bytes=50000-"]


def test_download_complete_part_and_bad_checksum(server, tmp_path):
    srv, payload = server
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(payload)  # already complete: server answers 416
    fetch_mod.download(srv.url("blob.bin"), dest)
    assert dest.read_bytes() == payload
    other = tmp_path / "other.bin"
    with pytest.raises(FveditError, match="sha256 .* does not match"):
        fetch_mod.download(srv.url("blob.bin"), other, sha256="0" * 64)
    assert not other.exists() and not (tmp_path / "other.bin.part").exists()


def test_fetch_official_downloads_and_imports(official, tmp_path):
    names = {"ckpt": official["ckpt"], "latent": official["latent"], "classifier": official["classifier"]}
    srv = _Server({p.name: p.read_bytes() for p in names.values()})
    try:
        files = tuple(fetch_mod.RemoteFile(role, p.name, srv.url(p.name)) for role, p in names.items())
        report = fetch_mod.fetch_official(tmp_path, files=files, preset="tiny")
    finally:
        srv.close()
    assert (tmp_path / "downloads" / official["ckpt"].name).read_bytes() == official["ckpt"].read_bytes()
    assert set(report.manifest["files"]) == {"model.safetensors", "classifier.safetensors", "id_stats.safetensors"}
    assert verify_weights(tmp_path).ok


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_import_list_verify(official, tmp_path):
    runner = CliRunner()
    out = tmp_path / "w"
    res = runner.invoke(
        app,
        ["import-dva", "--ckpt", str(official["ckpt"]), "--latent", str(official["latent"]),
         "--classifier", str(official["classifier"]), "--weights-dir", str(out), "--preset", "tiny"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "imported weights for preset tiny" in res.stdout
    res = runner.invoke(app, ["list", "--weights-dir", str(out)])
    assert res.exit_code == 0 and "model.safetensors" in res.stdout and "preset tiny" in res.stdout
    res = runner.invoke(app, ["verify", "--weights-dir", str(out)])
    assert res.exit_code == 0 and "all 3 files match" in res.stdout
    data = bytearray((out / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF
    (out / MODEL_FILE).write_bytes(bytes(data))
    res = runner.invoke(app, ["verify", "--weights-dir", str(out)])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: 1 weights file(s) failed verification") and res.stderr.count("\n") == 1


def test_cli_errors_and_env_dir(tmp_path, monkeypatch):
    runner = CliRunner()
    res = runner.invoke(app, ["import-dva", "--ckpt", str(tmp_path / "missing.ckpt"), "--weights-dir", str(tmp_path)])
    assert res.exit_code == 2 and res.stderr == f"error: checkpoint not found: {tmp_path / 'missing.ckpt'}\n"
    monkeypatch.setenv("FVEDIT_WEIGHTS_DIR", str(tmp_path / "envdir"))
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0 and f"no weights in {tmp_path / 'envdir'}" in res.stdout
    res = runner.invoke(app, ["verify"])
    assert res.exit_code == 2 and "error: no weights in" in res.stderr


def test_cli_fetch_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(
        fetch_mod, "OFFICIAL_FILES", (fetch_mod.RemoteFile("ckpt", "x.ckpt", "http://127.0.0.1:9/x.ckpt"),)
    )
    res = CliRunner().invoke(app, ["fetch", "--weights-dir", str(tmp_path), "--timeout", "2"])
    assert res.exit_code == 1
    assert res.stderr.startswith("error: cannot download http://127.0.0.1:9/x.ckpt")
    assert "http://127.0.0.1:9/x.ckpt" in res.stderr and "import-dva --ckpt" in res.stderr
