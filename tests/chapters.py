"""Shared helpers for the chapter references: which files are chapters, where their nbval
references live, and how to execute a chapter exactly as the book build does."""

from __future__ import annotations

import os
from pathlib import Path

import jupytext
import nbformat

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
REFERENCES = REPO / "tests" / "references"
RECORD_CMD = "python tests/record_references.py book/{name}.md"


def toc_files() -> list[Path]:
    """The pages listed in _toc.yml, in order."""
    import yaml

    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return [REPO / f"{f}.md" for f in files]


def is_notebook(path: Path) -> bool:
    """A MyST Markdown notebook (jupytext front matter with a kernelspec)."""
    head = path.read_text(encoding="utf-8")[:600]
    return head.startswith("---") and "kernelspec:" in head


def chapters() -> list[Path]:
    """The executable chapters: notebooks listed in the table of contents (a draft in book/ that
    is not in _toc.yml is neither built nor tested)."""
    return [p for p in toc_files() if p.exists() and is_notebook(p)]


def is_chapter(path: Path) -> bool:
    return path.suffix == ".md" and path.resolve() in {c.resolve() for c in chapters()}


def reference_path(chapter: Path) -> Path:
    return REFERENCES / f"{chapter.stem}.ipynb"


def code_sources(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells if c.cell_type == "code"]


def read_chapter(chapter: Path):
    return jupytext.read(chapter)


def reference_mismatch(chapter: Path) -> str | None:
    """Why the chapter's reference cannot be used (missing, or code cells differ), or None."""
    ref = reference_path(chapter)
    how = f"re-record it with: {RECORD_CMD.format(name=chapter.stem)}"
    if not ref.exists():
        return f"chapter {chapter.name} has no nbval reference at {ref.relative_to(REPO)}; {how}"
    mine = code_sources(read_chapter(chapter))
    theirs = code_sources(nbformat.read(ref, as_version=4))
    if mine != theirs:
        first = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        return (
            f"the code cells of {chapter.relative_to(REPO)} no longer match its reference "
            f"{ref.relative_to(REPO)} ({len(mine)} vs {len(theirs)} code cells; first difference "
            f"at code cell {first}); {how}"
        )
    return None


def execute(chapter: Path, timeout: int = 600):
    """Execute a chapter the way the book build does (working directory book/, the cell timeout
    of the chapter's ``mystnb: execution_timeout`` front matter if it sets one) and return it."""
    import nbclient

    nb = read_chapter(chapter)
    timeout = nb.metadata.get("mystnb", {}).get("execution_timeout", timeout)
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}}
    )
    client.execute()
    return nb


def strip_volatile_metadata(nb) -> None:
    """Drop execution timestamps and the like so references diff cleanly."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
