"""Run a Python command as on a machine without some packages (the lent GPU has no PyAV, no dlib).

    python tests/block_imports.py av,dlib,face_recognition_models -c "import fvedit.cli"
    python tests/block_imports.py av,dlib -m pytest tests/test_pixels.py

A meta-path finder refuses the named top-level modules with ImportError, exactly as when they are
not installed; everything else imports as usual. The rest of argv runs like `python ...`.
"""

from __future__ import annotations

import importlib.abc
import runpy
import sys


class BlockedImports(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"No module named {fullname!r} (blocked by tests/block_imports.py)")
        return None


def main(argv: list[str]) -> None:
    blocked, mode, target, *rest = argv
    sys.meta_path.insert(0, BlockedImports(set(blocked.split(","))))
    if mode == "-c":
        sys.argv = ["-c", *rest]
        exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    elif mode == "-m":
        sys.argv = [target, *rest]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        raise SystemExit("usage: block_imports.py NAMES (-c CODE | -m MODULE) [ARGS...]")


if __name__ == "__main__":
    main(sys.argv[1:])
