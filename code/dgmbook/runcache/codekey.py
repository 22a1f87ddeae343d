"""Which code a cached run depends on: the package modules its function reaches through imports.

A run is a function of the ``dgmbook`` package. Its module, every ``dgmbook`` module that module
imports (at the top or inside a function, absolute or relative), and so on transitively, are the
code the run can execute; their source is hashed into the entry's key. No list is written by
hand, so none can be forgotten: editing a module the run reaches re-runs it, and editing any other
module does not.

The import graph is read from the source with :mod:`ast` (nothing is imported to build it). It
over-approximates what a run executes (a module counts as a whole), which can only cost a re-run,
never serve a stale result. The run cache itself (``dgmbook.runcache``) is left out: how a result
is stored cannot change what the run computes.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
from pathlib import Path
from typing import Callable

PACKAGE = "dgmbook"
# the packages whose functions the cache runs, by name: their folder (tests add a toy package)
PACKAGES: dict[str, Path] = {PACKAGE: Path(__file__).resolve().parents[1]}
EXCLUDED = (f"{PACKAGE}.runcache",)

# module name -> (stat signature of its file, the package modules it imports directly)
_IMPORTS: dict[str, tuple[tuple, frozenset[str]]] = {}


class NotAPackageFunction(TypeError):
    """The cache runs only functions of the package: their code is what the key hashes."""


def _in_package(name: str) -> bool:
    return name.split(".")[0] in PACKAGES and not any(
        name == e or name.startswith(e + ".") for e in EXCLUDED)


def _origin(module: str) -> Path | None:
    """The source file of a package module, found on disk (nothing is imported), or None."""
    top, *parts = module.split(".")
    root = PACKAGES.get(top)
    if root is None:
        return None
    candidates = [root.joinpath(*parts, "__init__.py")]
    if parts:
        candidates.append(root.joinpath(*parts[:-1], parts[-1] + ".py"))
    return next((c for c in candidates if c.is_file()), None)


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def direct_imports(module: str) -> frozenset[str]:
    """The package modules that ``module`` imports (its parent packages included)."""
    path = _origin(module)
    if path is None:
        return frozenset()
    st = path.stat()
    sig = (str(path), st.st_size, st.st_mtime_ns)
    hit = _IMPORTS.get(module)
    if hit and hit[0] == sig:
        return hit[1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node)
            found.add(target)
            # `from pkg import name`: name may be a submodule
            found.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    parents = {module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)}
    reached = frozenset(m for m in found | parents
                        if _in_package(m) and m != module and _origin(m) is not None)
    _IMPORTS[module] = (sig, reached)
    return reached


def modules_reached(module: str) -> list[str]:
    """``module`` and every package module it reaches through imports, sorted."""
    seen, todo = {module}, [module]
    while todo:
        for m in direct_imports(todo.pop()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return sorted(seen)


def function_module(fn: Callable) -> str:
    """The package module that defines ``fn``; :class:`NotAPackageFunction` for anything else
    (a lambda or a function defined in a notebook cell, a library function)."""
    target = inspect.unwrap(getattr(fn, "func", fn))  # functools.partial -> its function
    module = getattr(target, "__module__", None) or ""
    qualname = getattr(target, "__qualname__", repr(target))
    if not _in_package(module) or "<lambda>" in qualname or "<locals>" in qualname:
        raise NotAPackageFunction(
            f"runcache.cached runs functions defined at the top level of a {PACKAGE} module, so "
            f"that the key can cover their code; got {qualname!r} from module {module!r}. Move "
            f"the computation into the package and pass its arguments: "
            f"cached(name, config, {PACKAGE}.module.function, *args)")
    return module


def code_version(fn: Callable) -> tuple[str, list[str]]:
    """``(hash, modules)``: a hash of the source of every module ``fn`` reaches, and their names."""
    modules = modules_reached(function_module(fn))
    h = hashlib.sha256()
    for m in modules:
        h.update(m.encode() + b"\0")
        h.update(_origin(m).read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16], modules
