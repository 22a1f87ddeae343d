"""The on-disk format of one run-cache entry: a safetensors file that loads without executing code.

A cached result is a tree of containers (dict, list, tuple) whose leaves are tensors, NumPy
arrays and plain values (str, int, float, bool, None, NumPy scalars). The tensors go into the
safetensors body; the tree goes into the safetensors header as JSON, with each tensor replaced by
a reference to it. Reading an entry parses JSON and copies tensor bytes: there is no pickle, so
an entry from anywhere (a download, a shared disk) can do no more than hold wrong numbers.

    save(path, result, meta)        # atomic: a killed writer never leaves half an entry
    result, meta = load(path)       # EntryError if the file is not a readable entry

The JSON tags (keys starting ``"__"``) keep what plain JSON would lose: tuples, dicts whose keys
are not strings, non-finite floats and NumPy types.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "dgmbook-runcache/2"
SUFFIX = ".safetensors"


class EntryError(RuntimeError):
    """A file that is not a readable run-cache entry (truncated, corrupt, another format, or a
    pickle that an older version of the cache wrote). Nothing in it was executed."""


# --- the tree <-> JSON + tensors -----------------------------------------------------------------

def encode(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(tree, tensors)``: a JSON-able tree and the tensors it refers to by name."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any, where: str) -> Any:
        if isinstance(x, np.generic):  # before float: np.float64 is a float
            return {"__npscalar__": x.dtype.str, "value": enc(x.item(), where)}
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int) and not isinstance(x, bool):
            return x
        if isinstance(x, float):
            return x if math.isfinite(x) else {"__float__": repr(x)}
        if isinstance(x, torch.Tensor):
            if x.is_sparse or x.layout != torch.strided:
                raise TypeError(f"{where}: the run cache stores dense tensors only, not {x.layout}")
            name = f"t{len(tensors)}"
            tensors[name] = x.detach().to("cpu").contiguous().clone()
            return {"__tensor__": name}
        if isinstance(x, np.ndarray):
            if x.dtype == object:
                raise TypeError(f"{where}: the run cache cannot store a NumPy array of objects")
            name = f"t{len(tensors)}"
            tensors[name] = torch.from_numpy(np.ascontiguousarray(x).copy())
            return {"__ndarray__": name}
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{where}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: enc(v, f"{where}[{k!r}]") for k, v in x.items()}
            return {"__items__": [[enc(k, f"{where} key"), enc(v, f"{where}[{k!r}]")]
                                  for k, v in x.items()]}
        raise TypeError(
            f"{where}: the run cache cannot store a {type(x).__module__}.{type(x).__qualname__}; "
            "return tensors, NumPy arrays, numbers, strings and dicts/lists/tuples of them "
            "(a model's state_dict, not the model)")

    return enc(obj, "result"), tensors


def decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(tree, list):
        return [decode(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__ndarray__" in tree:
        return tensors[tree["__ndarray__"]].numpy()
    if "__float__" in tree:
        return float(tree["__float__"])
    if "__npscalar__" in tree:
        return np.dtype(tree["__npscalar__"]).type(decode(tree["value"], tensors))
    if "__tuple__" in tree:
        return tuple(decode(v, tensors) for v in tree["__tuple__"])
    if "__items__" in tree:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in tree["__items__"]}
    return {k: decode(v, tensors) for k, v in tree.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


# --- files -----------------------------------------------------------------------------------------

def save(path: Path, result: Any, meta: dict) -> None:
    """Write an entry atomically (a temporary file in the same folder, then a rename)."""
    tree, tensors = encode(result)
    header = {"format": FORMAT, "meta": json.dumps(meta, default=str), "result": json.dumps(tree)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=header)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_meta(path: Path) -> dict:
    """The metadata of an entry without loading its tensors."""
    return _open(path, tensors=False)[1]


def load(path: Path) -> tuple[Any, dict]:
    """``(result, meta)`` of an entry; :class:`EntryError` if it is not a readable entry."""
    return _open(path, tensors=True)


def _open(path: Path, tensors: bool) -> tuple[Any, dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise EntryError(f"run-cache entry {path} is not in the format {FORMAT!r}")
            meta = json.loads(header["meta"])
            if not tensors:
                return None, meta
            data = {k: f.get_tensor(k) for k in f.keys()}
            result = decode(json.loads(header["result"]), data)
    except EntryError:
        raise
    except Exception as e:  # safetensors' own error types, JSON errors, a missing tensor ...
        raise EntryError(
            f"run-cache entry {path} is unreadable ({type(e).__name__}: {e}); it is truncated, "
            "corrupt, or was written by an older version of the cache (a pickle, never loaded)"
        ) from None
    return result, meta
