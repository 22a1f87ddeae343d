"""An on-disk cache for expensive runs (trained weights, metrics, curves).

A run is keyed by its name, its configuration and the *version of the code it depends on* (a hash
of the source files of the modules you name), so that

* re-executing a chapter (the book build after the tests, a second build) loads instead of
  retraining, and
* editing the training code, or changing one hyper-parameter, invalidates the entry.

Settings
--------
``DGMBOOK_CACHE``  the cache directory (default: the user cache directory, ``.../dgmbook/runs``).
``DGMBOOK_RERUN``  ``1``/``all`` forces every run to recompute; a comma-separated list of run
                   names forces just those.

Example::

    from dgmbook import runcache, vae
    result = runcache.cached("vae", cfg, lambda: vae.train(cfg), code=[vae])
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, TypeVar

import platformdirs
import torch

CACHE_ENV = "DGMBOOK_CACHE"
RERUN_ENV = "DGMBOOK_RERUN"

T = TypeVar("T")


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("dgmbook")) / "runs"


def _source_files(module: ModuleType) -> list[Path]:
    path = Path(inspect.getfile(module))
    if path.name == "__init__.py":  # a package: every module in it
        return sorted(path.parent.rglob("*.py"))
    return [path]


def code_version(modules: Iterable[ModuleType | Callable]) -> str:
    """A hash of the source of the given modules (or of the modules defining the given callables)."""
    h = hashlib.sha256()
    files: set[Path] = set()
    for m in modules:
        if not isinstance(m, ModuleType):
            m = inspect.getmodule(m)
        files.update(_source_files(m))
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _jsonable(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return config


def run_key(name: str, config: Any, modules: Iterable[ModuleType | Callable]) -> str:
    blob = json.dumps(
        {"name": name, "config": _jsonable(config), "code": code_version(modules)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def rerun_requested(name: str) -> bool:
    val = os.environ.get(RERUN_ENV, "").strip()
    if val.lower() in ("1", "all", "true", "yes"):
        return True
    return name in {v.strip() for v in val.split(",") if v.strip()}


def entry_path(name: str, config: Any, code: Iterable[ModuleType | Callable]) -> Path:
    return cache_dir() / name / f"{run_key(name, config, code)}.pt"


def cached(
    name: str,
    config: Any,
    fn: Callable[[], T],
    *,
    code: Iterable[ModuleType | Callable],
    force: bool = False,
) -> T:
    """Return ``fn()``, computing it only if no entry for (name, config, code version) exists.

    ``code`` lists the modules the run depends on (their source is hashed into the key).
    The result must be picklable by :func:`torch.save` (tensors, state dicts, lists, numbers).
    """
    code = list(code)
    path = entry_path(name, config, code)
    if path.exists() and not force and not rerun_requested(name):
        return torch.load(path, weights_only=False)["result"]
    start = time.perf_counter()
    result = fn()
    meta = {
        "name": name,
        "config": _jsonable(config),
        "code_version": code_version(code),
        "seconds": round(time.perf_counter() - start, 3),
        "torch": torch.__version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"result": result, "meta": meta}, tmp)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written entry
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str))
    return result


def entry_meta(name: str, config: Any, code: Iterable[ModuleType | Callable]) -> dict | None:
    """The metadata stored beside an entry (config, code version, seconds it took), if any."""
    path = entry_path(name, config, list(code)).with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else None
