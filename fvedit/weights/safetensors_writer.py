"""Write `.safetensors` files byte-for-byte reproducibly.

`safetensors.torch.save_file` keeps `__metadata__` in a Rust `HashMap`, whose iteration order
is seeded at random for every map (per process *and* per call), so a file with two or more
metadata entries comes out with its header in a different order from one write to the next,
and its sha256 changes although the tensors are equal. The format itself is simple (8-byte
little-endian header length, a JSON header padded with spaces to a multiple of 8, then the raw
tensor bytes back to back), so we write it here with every order fixed:

* metadata keys sorted;
* tensors ordered as safetensors orders them (largest dtype first, then by name), which keeps
  every tensor aligned to its item size and makes the output identical to the library's
  whenever the library's own output is deterministic;
* compact JSON exactly as the library writes it.

The input dict's order, the Python hash seed and shared storages therefore do not matter.
Files written here are read by `safetensors.safe_open` like any other.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

# safetensors' dtype names, in the order safetensors lays tensors out (descending dtype).
_DTYPE_ORDER: tuple[tuple[str, str], ...] = (
    ("uint64", "U64"),
    ("int64", "I64"),
    ("float64", "F64"),
    ("float32", "F32"),
    ("uint32", "U32"),
    ("int32", "I32"),
    ("bfloat16", "BF16"),
    ("float16", "F16"),
    ("uint16", "U16"),
    ("int16", "I16"),
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
    ("int8", "I8"),
    ("uint8", "U8"),
    ("bool", "BOOL"),
)
_DTYPES: dict[torch.dtype, tuple[int, str]] = {
    getattr(torch, attr): (rank, code)
    for rank, (attr, code) in enumerate(_DTYPE_ORDER)
    if isinstance(getattr(torch, attr, None), torch.dtype)
}


def _layout(tensors: dict[str, Tensor]) -> list[str]:
    """Tensor names in file order: by dtype rank (alignment), then name; never by dict order."""
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"safetensors keys must be strings, got {name!r}")
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {tensor.dtype} cannot be stored in safetensors here")
    return sorted(tensors, key=lambda name: (_DTYPES[tensors[name].dtype][0], name))


def safetensors_header(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The length prefix and padded JSON header for `tensors` (same bytes for the same content)."""
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata keys and values must be strings")
        header["__metadata__"] = {key: metadata[key] for key in sorted(metadata)}
    offset = 0
    for name in _layout(tensors):
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPES[tensor.dtype][1],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text


def _write_tensor(f: BinaryIO, tensor: Tensor) -> None:
    """Raw little-endian bytes of one tensor, streamed (no second copy of the whole file in memory)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel():
        f.write(memoryview(flat.view(torch.uint8).numpy()))


def write_safetensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (+ string `metadata`) to `path` as a reproducible safetensors file.

    Tensors that share memory are fine: each one's bytes are written separately.
    """
    if sys.byteorder != "little":
        raise RuntimeError("writing safetensors needs a little-endian machine")
    with open(path, "wb") as f:
        f.write(safetensors_header(tensors, metadata))
        for name in _layout(tensors):
            _write_tensor(f, tensors[name])
