"""Finds the compiled pixel extension `fvedit._pixelops`, or reports that there is none.

The extension is optional: without it `fvedit.pixels` runs the PyTorch twins. Set
FVEDIT_PIXELS=twin to ignore a built extension (for bisecting a pixel difference).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

from fvedit.errors import FveditError

ABI_VERSION = 2  # must equal kAbiVersion in csrc/bindings.cpp (2: paste_delta_inplace)

log = logging.getLogger("fvedit.pixels")

_UNSET = object()
_module: object = _UNSET
_missing_reason: str = ""  # why load() found no usable extension (for `fvedit info` and the CUDA tests)


def load() -> ModuleType | None:
    """The extension module, or None when it is not built (or disabled). Cached."""
    global _module
    if _module is _UNSET:
        _module = _find()
    return _module  # type: ignore[return-value]


def reset() -> None:
    """Forget the cached lookup (tests)."""
    global _module, _missing_reason
    _module, _missing_reason = _UNSET, ""


def _find() -> ModuleType | None:
    global _missing_reason
    if os.environ.get("FVEDIT_PIXELS", "").strip().lower() == "twin":
        _missing_reason = "disabled by FVEDIT_PIXELS=twin"
        return None
    try:
        from fvedit import _pixelops as mod
    except ImportError as err:
        mod = _load_shadowed_copy()
        if mod is None:
            _missing_reason = f"not built or not importable ({err})"
            return None
    if getattr(mod, "ABI_VERSION", None) != ABI_VERSION:
        _missing_reason = (
            f"stale build at {getattr(mod, '__file__', '?')} (ABI {getattr(mod, 'ABI_VERSION', None)}, need {ABI_VERSION})"
        )
        log.warning("fvedit: the C++ pixel extension is a %s; rebuild with `pip install -e .`", _missing_reason)
        return None
    return mod


def status() -> str:
    """One line on the extension for `fvedit info`: what is built, and what is missing and why.

    The extension must never be missing silently: a failed build (no Python.h, no nvcc, a CUDA
    compile error) shows here, and the CUDA tests fail on a GPU machine instead of skipping.
    """
    mod = load()
    if mod is None:
        hint = "" if _missing_reason.startswith("disabled") else "; reinstall with `pip install .`"
        return f"PyTorch twins (slow): the C++ extension is {_missing_reason or 'missing'}{hint}"
    where = getattr(mod, "__file__", "?")
    if not getattr(mod, "built_with_cuda", False):
        gpu = " A CUDA GPU is visible, so CUDA frames run on the slow twins." if _torch_cuda_available() else ""
        return f"cpp (CPU kernels only: built without CUDA, no nvcc at build time) from {where}.{gpu}"
    devices = mod.cuda_device_count()
    return f"cpp+cuda (CPU and CUDA kernels; {devices} CUDA device(s) visible to the driver) from {where}"


def _torch_cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _load_shadowed_copy() -> ModuleType | None:
    """Load `fvedit/_pixelops*.so` from another sys.path entry.

    After a non-editable `pip install .`, running from the source checkout imports the
    source `fvedit/` package, which has no compiled module, and shadows the installed
    copy that has one. The compiled module does not depend on the Python files, so load
    it from the installed tree.
    """
    import fvedit

    own = {Path(p).resolve() for p in fvedit.__path__}
    for entry in sys.path:
        pkg = Path(entry or ".") / "fvedit"
        try:
            if not pkg.is_dir() or pkg.resolve() in own:
                continue
        except OSError:
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = pkg / f"_pixelops{suffix}"
            if path.is_file():
                spec = importlib.util.spec_from_file_location("fvedit._pixelops", path)
                if spec is None or spec.loader is None:
                    continue
                mod = importlib.util.module_from_spec(spec)
                try:
                    spec.loader.exec_module(mod)
                except ImportError:
                    continue
                sys.modules["fvedit._pixelops"] = mod
                return mod
    return None


def cuda_kernels_built() -> bool:
    """True when the extension exists and was compiled with its CUDA kernels."""
    mod = load()
    return bool(mod is not None and getattr(mod, "built_with_cuda", False))


def require_cuda() -> ModuleType:
    """The extension, checked to have CUDA kernels and a visible GPU; else a clear error."""
    mod = load()
    if mod is None:
        raise FveditError("the C++ pixel extension is not built; reinstall fvedit with `pip install .`")
    if not getattr(mod, "built_with_cuda", False):
        raise FveditError("the C++ pixel extension was built without CUDA (no nvcc at build time)")
    if mod.cuda_device_count() == 0:
        raise FveditError("the CUDA pixel kernels need a GPU, but no CUDA device/driver is visible")
    return mod
