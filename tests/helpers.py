"""Small shared test helpers (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

KEYS_FILE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dva_state_dict_keys.txt"


@lru_cache(maxsize=1)
def official_keys() -> dict[str, tuple[int, ...]]:
    """Every official parameter/buffer name (after `ema_model.`) with its shape."""
    if not KEYS_FILE.is_file():
        raise FileNotFoundError(
            f"{KEYS_FILE} is missing: the tests need the shared reference folder beside the repository"
        )
    keys: dict[str, tuple[int, ...]] = {}
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip():
            continue
        name, shape = line.split()
        keys[name] = tuple(int(s) for s in shape.strip("[]").split(",") if s)
    return keys


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `fvedit ARGS` in-process: (exit code, stdout, stderr); a normal end counts as 0."""
    import pytest

    from fvedit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, out, err
