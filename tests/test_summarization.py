"""The summarization subpackage as a whole (dgmbook.summarization): its imports run one way
(data -> model -> decoding -> evaluation -> the three systems, hf for the two that use Hugging
Face), no system imports another, the run cache keys each system's runs by its own code only, and
the package docstring maps every module."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import dgmbook.summarization as package
from dgmbook.runcache import codekey

FOLDER = Path(importlib.util.find_spec("dgmbook.summarization").submodule_search_locations[0])
# a module may import only modules of a lower layer
LAYERS = {"data": 0, "model": 1, "decoding": 2, "evaluation": 3, "hf": 3,
          "scratch": 4, "bert2bert": 4, "llm": 4}
SYSTEMS = ("scratch", "bert2bert", "llm")


def summarization_imports(module: str) -> set[str]:
    """The sibling modules that ``module`` imports anywhere in its source (top level or inside a
    function; ``from . import x``, ``from .x import y``, absolute imports), read with ast."""
    tree = ast.parse((FOLDER / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                names = [node.module] if node.module else [a.name for a in node.names]
            elif node.level == 0 and (node.module or "").startswith("dgmbook.summarization"):
                rest = node.module.removeprefix("dgmbook.summarization").lstrip(".")
                names = [rest] if rest else [a.name for a in node.names]
            else:
                continue
            found.update(n.split(".")[0] for n in names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names
                         if a.name.startswith("dgmbook.summarization."))
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in FOLDER.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS)


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_run_one_way(module):
    imported = summarization_imports(module)
    assert imported <= set(LAYERS), imported - set(LAYERS)
    upward = {m for m in imported if LAYERS[m] >= LAYERS[module]}
    assert not upward, f"{module} imports {sorted(upward)}, which are not below it"


def test_no_system_imports_another_and_hf_serves_the_pretrained_ones():
    for system in SYSTEMS:
        assert not summarization_imports(system) & (set(SYSTEMS) - {system}), system
    users_of_hf = {m for m in LAYERS if "hf" in summarization_imports(m)}
    assert users_of_hf == {"bert2bert", "llm"}
    assert summarization_imports("decoding") == {"data"}  # not model: see the next test


def test_the_run_cache_keys_each_system_by_its_own_code():
    """The run cache keys a run by the package modules its function reaches through imports
    (dgmbook.runcache.codekey): editing the from-scratch trainer or the hand-written Transformer
    does not retrain BERT2BERT or re-run the LLM, and the reverse."""
    reached = {s: set(codekey.modules_reached(f"dgmbook.summarization.{s}")) for s in SYSTEMS}
    sub = "dgmbook.summarization."
    assert {sub + "scratch", sub + "model"}.isdisjoint(reached["bert2bert"] | reached["llm"])
    assert {sub + "bert2bert", sub + "llm", sub + "hf"}.isdisjoint(reached["scratch"])
    assert sub + "bert2bert" not in reached["llm"] and sub + "llm" not in reached["bert2bert"]
    shared = {sub + m for m in ("data", "decoding", "evaluation")}
    assert all(shared <= r for r in reached.values())


def test_the_package_docstring_maps_every_module_and_imports_nothing():
    """``__init__`` only maps the modules: importing one module (or reaching it, for the run
    cache, whose key counts a module's parent packages) must not bring in the others."""
    init = ast.parse((FOLDER / "__init__.py").read_text())
    assert not [n for n in ast.walk(init) if isinstance(n, (ast.Import, ast.ImportFrom))]
    for module in LAYERS:
        assert f"``{module}``" in package.__doc__, module
