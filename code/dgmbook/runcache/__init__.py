"""An on-disk cache of expensive runs (trained weights, metrics, curves).

A run is a function of the package, called with its arguments::

    from dgmbook import runcache, vae
    result = runcache.cached("vae", cfg, vae.train, cfg)

Its entry is keyed by the run's name, its configuration and a hash of the code it can execute:
the function's module and every package module that module reaches through imports
(:mod:`dgmbook.runcache.codekey`), so no list of modules is written by hand. So

* re-executing a chapter (the tests after the book build, a reader's second run) loads instead
  of retraining, and
* editing the code a run reaches, or changing one hyper-parameter, re-runs it; editing a module
  it does not reach does not.

The configuration must determine the arguments (pass the same ``cfg``, or the data it selects).

Entries are safetensors files with a JSON header (:mod:`dgmbook.runcache.entry`): loading one
executes no code, so an entry fetched from the published cache is as safe as a number. An entry
that cannot be read (truncated, corrupt, an older pickle) is reported and computed again.

Settings
--------
``DGMBOOK_CACHE``         the cache directory (default: the user cache directory, ``.../dgmbook/runs``).
``DGMBOOK_RERUN``         ``1``/``all`` re-runs every run; a comma-separated list of names re-runs those.
``DGMBOOK_REMOTE_CACHE``  the URL of a published run cache (``.../runcache/`` of the published book):
                          an entry missing here is fetched from there before anything is trained
                          (:mod:`dgmbook.runcache.remote`). Unset, empty or ``off``: never fetch.
``DGMBOOK_NO_TRAINING``   ``1``: a run that is in neither cache raises :class:`NotCached` instead of
                          running (for reading a chapter, and for CI's replay of the published cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import platformdirs
import torch

from . import codekey, entry, remote
from .codekey import NotAPackageFunction
from .entry import EntryError
from .remote import REMOTE_ENV, RemoteCacheError

CACHE_ENV = "DGMBOOK_CACHE"
RERUN_ENV = "DGMBOOK_RERUN"
NO_TRAINING_ENV = "DGMBOOK_NO_TRAINING"
CHAPTERS_DIR = "chapters"  # <cache>/chapters/<chapter>.json: the entries each chapter used

__all__ = [
    "CACHE_ENV", "NO_TRAINING_ENV", "RERUN_ENV", "REMOTE_ENV", "EntryError", "NotAPackageFunction",
    "NotCached", "RemoteCacheError", "RunCacheWarning", "cache_dir", "cached", "chapter_entries",
    "entry_meta", "entry_path", "rerun_requested", "run_key", "set_chapter",
]

T = TypeVar("T")


class NotCached(RuntimeError):
    """A run that neither the local nor the published cache holds, with ``DGMBOOK_NO_TRAINING=1``."""


class RunCacheWarning(UserWarning):
    """Something went wrong with the cache, not with the run: the run still returns its result."""


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("dgmbook")) / "runs"


def rerun_requested(name: str) -> bool:
    val = os.environ.get(RERUN_ENV, "").strip()
    if val.lower() in ("1", "all", "true", "yes"):
        return True
    return name in {v.strip() for v in val.split(",") if v.strip()}


def _jsonable(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return config


def _qualname(fn: Callable) -> str:
    fn = getattr(fn, "func", fn)
    return f"{fn.__module__}.{fn.__qualname__}"


def run_key(name: str, config: Any, fn: Callable) -> str:
    """The entry's key: the run's name, its configuration, its function and its code version."""
    version, _ = codekey.code_version(fn)
    blob = json.dumps({"name": name, "config": _jsonable(config), "function": _qualname(fn),
                       "code": version}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def entry_path(name: str, config: Any, fn: Callable) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"a run's name is one path component, not {name!r}")
    return cache_dir() / name / f"{run_key(name, config, fn)}{entry.SUFFIX}"


def entry_meta(name: str, config: Any, fn: Callable) -> dict | None:
    """The metadata stored in an entry (config, code version, modules, seconds it took), if any."""
    path = entry_path(name, config, fn)
    try:
        return entry.read_meta(path) if path.exists() else None
    except EntryError:
        return None


# --- which chapter is running (its entries make up its archive in the published cache) ----------

_chapter: str | None = None


def set_chapter(chapter: str | None) -> None:
    """Name the chapter whose cells run next: the entries it uses are listed under
    ``<cache>/chapters/<chapter>.json``, from which the publish step packs its archive."""
    global _chapter
    _chapter = chapter


def chapter_entries(chapter: str, root: Path | None = None) -> list[str]:
    """The entries (``name/key.safetensors``, relative to the cache) a chapter has used."""
    path = (root or cache_dir()) / CHAPTERS_DIR / f"{chapter}.json"
    return json.loads(path.read_text()) if path.exists() else []


def _note_use(path: Path) -> None:
    if _chapter is None:
        return
    root = cache_dir()
    rel = path.relative_to(root).as_posix()
    used = chapter_entries(_chapter, root)
    if rel in used:
        return
    record = root / CHAPTERS_DIR / f"{_chapter}.json"
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(used + [rel], indent=1))
        os.replace(tmp, record)
    except OSError:
        pass  # a read-only cache: reported where the entry itself could not be written


# --- the cache ------------------------------------------------------------------------------------

def cached(name: str, config: Any, fn: Callable[..., T], *args: Any, force: bool = False,
           **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, computed only if no entry for (name, config, fn's code) exists.

    ``fn`` is a function defined at the top level of a ``dgmbook`` module (not a lambda or a
    notebook function: the key must cover its code). Its result is a tree of dicts, lists and
    tuples of tensors, NumPy arrays, numbers and strings (:mod:`dgmbook.runcache.entry`).
    ``force=True`` (or ``DGMBOOK_RERUN``) computes it again and replaces the entry.
    """
    path = entry_path(name, config, fn)
    if not (force or rerun_requested(name)):
        if not path.exists():
            remote.fetch(path.relative_to(cache_dir()).as_posix(), cache_dir(), _chapter)
        if path.exists():
            try:
                result, _ = entry.load(path)
            except EntryError as e:
                warnings.warn(f"{e}; running {name!r} again", RunCacheWarning, stacklevel=2)
            else:
                _note_use(path)
                return result
    if os.environ.get(NO_TRAINING_ENV, "").strip().lower() in ("1", "true", "yes"):
        raise NotCached(f"run {name!r} ({_qualname(fn)}) is not in the run cache {cache_dir()}"
                        + (f" nor in the published one ({remote.remote_url()})" if remote.remote_url()
                           else "") + f", and ${NO_TRAINING_ENV} forbids running it here")
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    version, modules = codekey.code_version(fn)
    meta = {
        "name": name,
        "config": _jsonable(config),
        "function": _qualname(fn),
        "code_version": version,
        "modules": modules,
        "seconds": round(time.perf_counter() - start, 3),
        "torch": torch.__version__,
    }
    try:
        entry.save(path, result, meta)
    except OSError as e:
        warnings.warn(f"the run cache could not keep {name!r} ({e}); the result is used but will "
                      f"be computed again next time. Point ${CACHE_ENV} at a writable folder.",
                      RunCacheWarning, stacklevel=2)
    else:
        _note_use(path)
    return result
