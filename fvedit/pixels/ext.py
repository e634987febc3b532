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

ABI_VERSION = 1  # must equal kAbiVersion in csrc/bindings.cpp

log = logging.getLogger("fvedit.pixels")

_UNSET = object()
_module: object = _UNSET


def load() -> ModuleType | None:
    """The extension module, or None when it is not built (or disabled). Cached."""
    global _module
    if _module is _UNSET:
        _module = _find()
    return _module  # type: ignore[return-value]


def reset() -> None:
    """Forget the cached lookup (tests)."""
    global _module
    _module = _UNSET


def _find() -> ModuleType | None:
    if os.environ.get("FVEDIT_PIXELS", "").strip().lower() == "twin":
        return None
    try:
        from fvedit import _pixelops as mod
    except ImportError:
        mod = _load_shadowed_copy()
    if mod is None:
        return None
    if getattr(mod, "ABI_VERSION", None) != ABI_VERSION:
        log.warning(
            "fvedit: the C++ pixel extension at %s is stale (ABI %s, need %s); rebuild with `pip install -e .`",
            getattr(mod, "__file__", "?"),
            getattr(mod, "ABI_VERSION", None),
            ABI_VERSION,
        )
        return None
    return mod


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
