"""pytest plugin for the book (loaded by pytest.ini with `-p nbval_chapters`, so that it applies
to book/ as well as tests/; a conftest.py in tests/ would only see tests/).

* Every MyST chapter in ``book/`` is collected directly. Its code cells are checked against the
  committed reference ``tests/references/<name>.ipynb`` (a stale or missing reference fails with the
  command that re-records it); then nbval replays the reference cell by cell in a fresh kernel,
  strictly comparing every output (stdout, stderr, text and HTML results; images are not compared).
* At the end, the time each chapter took is printed.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import IPyNbCell, IPyNbFile, find_comment_markers, find_metadata_tags

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chapters import is_chapter, reference_mismatch, reference_path  # noqa: E402

# The chapters read data from the data root and must not show progress bars or hub traffic.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")


class StaleReference(pytest.Item):
    """Stands in for a chapter's cells when its reference is missing or out of date."""

    def __init__(self, *, message: str, **kwargs):
        super().__init__(**kwargs)
        self.message = message

    def runtest(self):
        raise StaleReferenceError(self.message)

    def repr_failure(self, excinfo):
        return str(excinfo.value)

    def reportinfo(self):
        return self.path, 0, f"{self.path.name}::reference"


class StaleReferenceError(Exception):
    pass


class ChapterFile(IPyNbFile):
    """A MyST chapter, replayed by nbval against its recorded reference notebook.

    The kernel starts in book/ (nbval uses the collected file's folder), like the book build.
    """

    def collect(self):
        chapter = Path(self.path)
        problem = reference_mismatch(chapter)
        if problem:
            yield StaleReference.from_parent(self, name="reference", message=problem)
            return
        self.nb = nbformat.read(reference_path(chapter), as_version=4)
        cell_num = 0
        for cell in self.nb.cells:
            if cell.cell_type != "code":
                continue
            options = defaultdict(bool, find_metadata_tags(cell.metadata))
            options.update(dict(find_comment_markers(cell.source)))
            options.setdefault("check", self.compare_outputs)
            yield IPyNbCell.from_parent(self, name=f"Cell {cell_num}", cell_num=cell_num, cell=cell,
                                        options=options)
            cell_num += 1


def pytest_collect_file(file_path: Path, parent):
    if is_chapter(file_path):
        return ChapterFile.from_parent(parent, path=file_path)
    return None


# --- time per chapter ------------------------------------------------------------------------

_chapter_seconds: dict[str, float] = defaultdict(float)
_chapter_start: dict[str, float] = {}


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.startswith("book/"):
        _chapter_seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if _chapter_seconds:
        terminalreporter.section("time per chapter (nbval replay)")
        for path, secs in sorted(_chapter_seconds.items()):
            terminalreporter.write_line(f"{secs:8.1f} s  {path}")
