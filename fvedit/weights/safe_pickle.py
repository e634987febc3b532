"""Load `.ckpt` / `.pkl` / `.pth` files without ever running code from them.

Pickle files can name any importable callable and have the loader call it, so a downloaded
checkpoint is untrusted input. We first try `torch.load(weights_only=True)` (PyTorch's own
tensor-only unpickler). Lightning checkpoints usually fail that: they also pickle
`hyper_parameters` objects, callback and AMP-scaler state, etc. For those we fall back to a
restricted unpickler of our own: an explicit allowlist of tensor-rebuild functions, storages,
dtypes and plain containers; every other global becomes an inert placeholder class that only
records what it was given. Nothing outside the allowlist is ever imported or called.
"""

from __future__ import annotations

import io
import pickle
import types
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fvedit.errors import InputError


class Neutralized:
    """Stand-in for a global the allowlist refuses; records its arguments, executes nothing.

    A fresh subclass is made per refused name (see `_placeholder_type`), so pickle's NEWOBJ,
    REDUCE, BUILD, SETITEMS and APPENDS all land on these inert methods.
    """

    qualified_name: str = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Neutralized":
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        obj.__dict__["kwargs"] = kwargs
        obj.__dict__["state"] = None
        obj.__dict__["items"] = {}
        obj.__dict__["list_items"] = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["list_items"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["list_items"].extend(values)

    def __repr__(self) -> str:
        return f"<neutralized {self.qualified_name}>"


def _placeholder_type(module: str, name: str) -> type:
    qualified = f"{module}.{name}"
    return type(name, (Neutralized,), {"qualified_name": qualified, "__module__": "fvedit.neutralized"})


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Every (module, name) pair the fallback unpickler may resolve. All are inert to call."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): __import__("collections").OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
        ("_codecs", "encode"): __import__("_codecs").encode,  # bytes in protocol-2 pickles
        ("torch", "Size"): torch.Size,
        ("torch", "Tensor"): torch.Tensor,
        ("torch", "device"): torch.device,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    }
    for fname in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_device_tensor_from_numpy",
        "_rebuild_meta_tensor_no_storage",
    ):
        if hasattr(torch._utils, fname):
            allowed[("torch._utils", fname)] = getattr(torch._utils, fname)
    for attr in dir(torch):
        value = getattr(torch, attr, None)
        if isinstance(value, torch.dtype):
            allowed[("torch", attr)] = value
    for storage in ("UntypedStorage", "TypedStorage"):
        allowed[("torch", storage)] = getattr(torch, storage)
    try:
        import numpy as np

        try:
            from numpy._core import multiarray  # numpy >= 2
        except ImportError:
            from numpy.core import multiarray  # type: ignore[no-redef]
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[(mod, "_reconstruct")] = multiarray._reconstruct
            allowed[(mod, "scalar")] = multiarray.scalar
        allowed[("numpy", "ndarray")] = np.ndarray
        allowed[("numpy", "dtype")] = np.dtype
    except Exception:  # numpy missing or relocated: numpy objects become placeholders
        pass
    return allowed


@dataclass
class SafeLoadResult:
    """What came out of the file, and which globals were replaced by `Neutralized` stand-ins."""

    data: Any
    neutralized: list[str] = field(default_factory=list)
    used_fallback: bool = False


def _restricted_pickle_module(neutralized: list[str]) -> types.ModuleType:
    """A pickle-compatible module whose Unpickler resolves only allowlisted globals.

    It subclasses the pure-Python unpickler so BUILD can be guarded too: setting state on a
    *class* (e.g. `torch.Tensor`) would let a file patch library code, so it is refused.
    """
    allowed = _allowed_globals()

    class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
        dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

        def find_class(self, module: str, name: str) -> Any:
            key = (module, name)
            if key in allowed:
                return allowed[key]
            neutralized.append(f"{module}.{name}")
            return _placeholder_type(module, name)

        def load_build(self) -> None:
            target = self.stack[-2]
            if isinstance(target, type):
                raise pickle.UnpicklingError(f"refusing to set state on class {target.__qualname__}")
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

        dispatch[pickle.BUILD[0]] = load_build

    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    def loads(data: bytes, **kwargs: Any) -> Any:
        return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()

    module = types.ModuleType("fvedit_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.loads = loads  # type: ignore[attr-defined]
    return module


def safe_load(path: str | Path) -> SafeLoadResult:
    """Load a torch/pickle file onto the CPU without executing anything it names.

    Raises `InputError` if the file is missing or cannot be read as a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note about pickle protocol 4
            data = torch.load(path, map_location="cpu", weights_only=True)
        return SafeLoadResult(data=data)
    except pickle.UnpicklingError:
        pass  # an object outside torch's tensor-only allowlist (or a plain pickle): use ours
    except Exception as exc:
        if not zipfile.is_zipfile(path):
            pass  # not torch.save output; try it as a plain pickle below
        else:
            raise InputError(f"cannot read {path} as a PyTorch checkpoint: {_one_line(exc)}") from None

    neutralized: list[str] = []
    restricted = _restricted_pickle_module(neutralized)
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted)
        except RuntimeError as exc:
            if zipfile.is_zipfile(path) or "magic number" not in str(exc):
                raise
            with open(path, "rb") as f:  # a plain pickle (pickle.dump), not torch.save output
                data = restricted.load(f)
    except Exception as exc:
        raise InputError(f"cannot read {path} safely (restricted unpickler): {_one_line(exc)}") from None
    return SafeLoadResult(data=data, neutralized=sorted(set(neutralized)), used_fallback=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
