"""Load `.ckpt` / `.pkl` / `.pth` files without ever running code from them.

Pickle files can name any importable callable and have the loader call it, so a downloaded
checkpoint is untrusted input. We first try `torch.load(weights_only=True)` (PyTorch's own
tensor-only unpickler). Lightning checkpoints usually fail that: they also pickle
`hyper_parameters` objects (the official release's config classes, Lightning's
`AttributeDict`), so we fall back to a restricted unpickler of our own. It never imports a
module and never calls anything outside a short allowlist; every global the file names falls
in exactly one of three classes (`global_policy`):

* **allowed**: tensor-rebuild functions, storages, dtypes, `torch.Size`/`device`, plain
  containers (`collections.OrderedDict`, `set`, ...) and numpy's array reconstructors. These
  are resolved to the real objects; all of them are inert to call.
* **refused**: anything else from a module that exists on every machine that runs fvedit, i.e.
  the Python standard library (`builtins`, `os`/`posix`/`nt`, `subprocess`, `functools`, ...)
  or one of `CODE_PACKAGES` (torch, numpy, fvedit's other dependencies, well-known
  code-loading libraries). Those modules hold the functions a malicious pickle calls
  (`posix.system`, `builtins.eval`/`exec`/`getattr`/`__import__`, `subprocess.Popen`,
  `torch.load`, ...); what legitimate checkpoints use from them is on the other two lists. Any such global *anywhere* in the file (called, instantiated or merely
  referenced) makes `safe_load` raise `InputError` naming the file, the global and where it
  sits (`hyper_parameters.conf.foo`); the whole file is read with inert placeholders first,
  so nothing from it runs even while we look for that place.
* **neutralized**: globals from any other module -- the official repository's own classes
  (`templates.TrainConfig`, `choices.TrainMode`, ...), Lightning's `AttributeDict`,
  `__main__` classes -- and a few plain-data stdlib types (`STDLIB_DATA`: `argparse.Namespace`,
  `pathlib` paths, `datetime`, ...). They become inert `Neutralized` placeholders that only
  record their arguments and state, and are reported (`SafeLoadResult.neutralized`).

Why by module and not by opcode: a class instance arrives as NEWOBJ (or REDUCE) of the class
plus BUILD, a function call as REDUCE of the function -- but enums also arrive as REDUCE of
their class, and telling a class from a function would mean importing its module, which runs
code. No placeholder is ever called, so neutralizing is safe for any name; refusing is for
names that are certainly real code on every machine that runs fvedit, which is what a
malicious file relies on. The lists are fixed (never looked up in what this machine has
installed), so a file gets the same verdict everywhere.
Python-2 names (`__builtin__`, `copy_reg`, ...) are mapped to their Python-3 modules first.
"""

from __future__ import annotations

import _compat_pickle
import functools
import io
import pickle
import sys
import types
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from fvedit.errors import InputError

Policy = Literal["allowed", "neutralized", "refused"]

# Top-level packages installed wherever fvedit runs (its dependencies and theirs, packaging
# tools) or known for code-loading functions: their globals are refused unless allowlisted.
CODE_PACKAGES: frozenset[str] = frozenset(
    {
        "fvedit", "torch", "numpy", "scipy", "safetensors", "typer", "click", "rich", "av", "PIL",
        "skimage", "dlib", "face_recognition_models", "cv2", "sympy", "mpmath", "jinja2",
        "markupsafe", "networkx", "fsspec", "filelock", "triton", "onnx", "onnxruntime", "pip",
        "setuptools", "pkg_resources", "_pytest", "pytest", "IPython", "dill", "cloudpickle",
        "joblib", "yaml", "pandas",
    }
)  # fmt: skip

# Standard-library classes that are plain data: neutralized (placeholders, noted), not refused.
STDLIB_DATA: frozenset[tuple[str, str]] = frozenset(
    {
        ("argparse", "Namespace"),
        ("types", "SimpleNamespace"),
        ("collections", "defaultdict"),
        ("collections", "deque"),
        ("collections", "Counter"),
        ("datetime", "datetime"),
        ("datetime", "date"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("fractions", "Fraction"),
        ("uuid", "UUID"),
        ("copyreg", "_reconstructor"),  # protocol 0/1 form of "make an empty instance of <class>"
        ("builtins", "object"),  # its base-class argument
    }
    | {("pathlib", cls) for cls in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")}
)

_MAX_NAME = 120


class Neutralized:
    """Stand-in for a global the allowlist does not resolve; records its arguments, executes nothing.

    A fresh subclass is made per name (see `_placeholder_type`), so pickle's NEWOBJ,
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


class Refused(Neutralized):
    """Placeholder for a refused global: just as inert, and marks where the file used it."""

    def __repr__(self) -> str:
        return f"<refused {self.qualified_name}>"


def _placeholder_type(qualified: str, refused: bool) -> type:
    name = qualified.rsplit(".", 1)[-1]
    base = Refused if refused else Neutralized
    return type(name, (base,), {"qualified_name": qualified, "__module__": "fvedit.neutralized"})


def _printable(text: str) -> str:
    """A name from the file, safe to put in a one-line message (no control characters, bounded)."""
    shown = text if text.isprintable() else ascii(text)[1:-1]
    return shown if len(shown) <= _MAX_NAME else shown[: _MAX_NAME - 3] + "..."


def normalize_global(module: str, name: str) -> tuple[str, str]:
    """Python-2 spellings (`__builtin__.eval`, `copy_reg._reconstructor`) -> Python-3 names."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def global_policy(module: str, name: str) -> Policy:
    """Whether the restricted unpickler resolves, neutralizes or refuses `module.name` (see module doc)."""
    module, name = normalize_global(module, name)
    if (module, name) in _allowed_globals():
        return "allowed"
    if (module, name) in STDLIB_DATA or (module, name) in _torch_vetted_data():
        return "neutralized"
    root = module.split(".", 1)[0]
    if root in sys.stdlib_module_names or root in CODE_PACKAGES:
        return "refused"
    return "neutralized"


@functools.lru_cache(maxsize=1)
def _torch_vetted_data() -> frozenset[tuple[str, str]]:
    """Globals torch's own weights-only loader accepts (legacy tensor types, qtensor rebuilds...).

    We do not resolve the ones missing from our allowlist (torch checks them further when it
    calls them, we would not), but they are data, so they are neutralized rather than refused.
    """
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        names = _get_allowed_globals()
    except Exception:  # private API moved: those names are then simply refused
        names = {}
    return frozenset((k.rsplit(".", 1)[0], k.rsplit(".", 1)[1]) for k in names if "." in k)


@functools.lru_cache(maxsize=1)
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


@dataclass
class _Seen:
    """The globals one restricted load met, by policy (names already made printable)."""

    neutralized: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)


def _restricted_pickle_module(seen: _Seen) -> types.ModuleType:
    """A pickle-compatible module whose Unpickler resolves only allowlisted globals.

    It subclasses the pure-Python unpickler so BUILD can be guarded too: setting state on a
    *class* (e.g. `torch.Tensor`) would let a file patch library code, so it is refused.
    Refused globals do not stop the load here: they become inert `Refused` placeholders, so
    `safe_load` can afterwards say where in the file they were.
    """
    allowed = _allowed_globals()

    class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
        dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

        def find_class(self, module: str, name: str) -> Any:
            key = normalize_global(str(module), str(name))
            if key in allowed:
                return allowed[key]
            qualified = _printable(f"{key[0]}.{key[1]}")
            refused = global_policy(*key) == "refused"
            (seen.refused if refused else seen.neutralized).add(qualified)
            return _placeholder_type(qualified, refused)

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


# --------------------------------------------------------------------------------------------
# Where a refused global sits


def _join(path: str, key: Any) -> str:
    """`a.b` for identifier keys (dict keys, attributes), `a['x.y']` / `a[3]` otherwise."""
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{_printable(repr(key))}]"


def _state_children(state: Any, path: str) -> Iterator[tuple[Any, str]]:
    """BUILD state: an attribute dict, a (dict, slots-dict) pair, or anything `__setstate__` takes."""
    parts = state if isinstance(state, tuple) and len(state) == 2 and all(
        p is None or isinstance(p, dict) for p in state
    ) else (state,)
    for part in parts:
        if isinstance(part, dict):
            for key, value in part.items():
                yield value, _join(path, key)
        elif part is not None:
            yield part, f"{path}.<state>"


def _children(obj: Any, path: str) -> Iterator[tuple[Any, str]]:
    """The objects directly inside `obj` that a pickle can place a global in, with their paths."""
    if isinstance(obj, Neutralized):
        d = obj.__dict__
        for i, arg in enumerate(d["args"]):
            yield arg, f"{path}(arg {i})"
        for key, value in d["kwargs"].items():
            yield value, f"{path}({_printable(str(key))}=)"
        yield from _state_children(d["state"], path)
        for key, value in d["items"].items():
            yield value, _join(path, key)
        for i, value in enumerate(d["list_items"]):
            yield value, f"{path}[{i}]"
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool, bytes, type(None))):
                yield key, f"{path} (a dict key)"
            yield value, _join(path, key)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield value, f"{path}[{i}]"
    elif isinstance(obj, (set, frozenset)):
        for value in obj:
            yield value, f"{path} (a set member)"


def locate_refused(data: Any) -> dict[str, str]:
    """qualified name -> path of its first use, for every `Refused` placeholder reachable in `data`.

    Depth-first in the file's own order; shared and cyclic references are visited once.
    """
    found: dict[str, str] = {}
    visited: set[int] = set()
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        obj, path = stack.pop()
        if isinstance(obj, type):
            if issubclass(obj, Refused):
                found.setdefault(obj.qualified_name, path or "the top level")
            continue
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        if isinstance(obj, Refused):
            found.setdefault(obj.qualified_name, path or "the top level")
        stack.extend(reversed(list(_children(obj, path))))
    return found


def _refusal(path: Path, refused: set[str], data: Any) -> InputError:
    """The one-line error for a file that names code: which globals, where, and that none ran."""
    where = locate_refused(data) if data is not None else {}
    named = [f"{name} at {place}" for name, place in where.items()]
    named += [f"{name} (place unknown)" for name in sorted(refused - set(where))]
    shown = ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
    return InputError(
        f"refusing to load {path}: it references {shown}, which can run code when unpickled; "
        "no code from the file was run"
    )


# --------------------------------------------------------------------------------------------


def safe_load(path: str | Path) -> SafeLoadResult:
    """Load a torch/pickle file onto the CPU without executing anything it names.

    Raises `InputError` if the file is missing, cannot be read as a checkpoint, or names a
    refused global (see the module docstring).
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

    seen = _Seen()
    restricted = _restricted_pickle_module(seen)
    try:
        data = _restricted_load(path, restricted)
    except Exception as exc:
        if seen.refused:  # e.g. an allowlisted function choked on a placeholder argument
            raise _refusal(path, seen.refused, None) from None
        raise InputError(f"cannot read {path} safely (restricted unpickler): {_one_line(exc)}") from None
    if seen.refused:
        raise _refusal(path, seen.refused, data)
    return SafeLoadResult(data=data, neutralized=sorted(seen.neutralized), used_fallback=True)


def _restricted_load(path: Path, restricted: types.ModuleType) -> Any:
    """torch.load through the restricted pickle module; plain `pickle.dump` files too."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted)
    except RuntimeError as exc:
        if zipfile.is_zipfile(path) or "magic number" not in str(exc):
            raise
        with open(path, "rb") as f:  # a plain pickle (pickle.dump), not torch.save output
            return restricted.load(f)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
