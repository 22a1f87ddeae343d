"""pytest plugin for the book (loaded by pytest.ini with `-p nbval_replay.plugin`, so that it
applies to book/ as well as tests/; a conftest.py in tests/ would only see tests/).

* Every MyST chapter in ``book/`` is collected directly. Its code cells are checked against the
  committed reference ``tests/nbval_replay/references/<name>.ipynb`` (a stale or missing reference fails with the
  command that re-records it); then nbval replays the reference cell by cell in a fresh kernel and
  compares every output (stdout, stderr, text and HTML results; images are not compared):
  strictly on the kind of machine the reference was recorded on, in portable mode elsewhere
  (every number within a tolerance, the text around them equal; see ``recordings.choose_reference``
  and ``portable.portable_mismatch``).
* ``DGMBOOK_REPLAY=published`` (what ``.ci/run`` sets): the replay reads trained runs from the
  publish folder (``python -m dgmbook publish``), served on 127.0.0.1, not from the build's run
  cache: each chapter starts with an empty cache of its own, fetches its archive, and fails if any
  run would have to train (``DGMBOOK_NO_TRAINING``). So the published cache passes the same
  comparison as the book, at no extra execution.
* At the end, the time each chapter took is printed.
"""

from __future__ import annotations

import functools
import http.server
import os
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import IPyNbCell, IPyNbFile, find_comment_markers, find_metadata_tags, transform_streams_for_comparison

from . import REPO
from .portable import MACHINE_DEPENDENT_TAG, glue_units, portable_mismatch
from .recordings import choose_reference, describe, is_chapter, machine, read_chapter

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


REPLAY_ENV = "DGMBOOK_REPLAY"
PUBLISH = REPO / "_build" / "publish"
_published: dict = {}  # in published mode: the server, its URL, the folder of per-chapter caches


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def pytest_configure(config):
    mode = os.environ.get(REPLAY_ENV, "").strip()
    if mode not in ("", "local", "published"):
        raise pytest.UsageError(f"{REPLAY_ENV} must be 'published' or 'local', not {mode!r}")
    if mode != "published":
        return
    if not (PUBLISH / "runcache" / "index.json").exists():
        raise pytest.UsageError(f"{REPLAY_ENV}=published, but {PUBLISH} has no run cache: build "
                                "the book, then run `python -m dgmbook pdf` and `python -m dgmbook publish`")
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(PUBLISH)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _published.update(server=httpd, url=f"http://127.0.0.1:{httpd.server_address[1]}/runcache/",
                      caches=Path(tempfile.mkdtemp(prefix="dgmbook-replay-")))
    os.environ["DGMBOOK_REMOTE_CACHE"] = _published["url"]
    os.environ["DGMBOOK_NO_TRAINING"] = "1"


def pytest_unconfigure(config):
    if "server" in _published:
        _published.pop("server").shutdown()


class ChapterFile(IPyNbFile):
    """A MyST chapter, replayed by nbval against its recorded reference notebook.

    The kernel starts in book/ (nbval uses the collected file's folder), like the book build.
    """

    def setup(self):
        if _published:  # an empty run cache of its own: everything comes from the published one
            os.environ["DGMBOOK_CACHE"] = str(_published["caches"] / Path(self.path).stem)
        super().setup()

    def collect(self):
        chapter = Path(self.path)
        choice = choose_reference(chapter)
        if isinstance(choice, str):
            yield StaleReference.from_parent(self, name="reference", message=choice)
            return
        _choices[str(chapter.relative_to(REPO))] = choice
        self.portable, self.choice_machine = not choice.strict, choice.recorded_on
        self.glue_units = glue_units(chapter)
        self.nb = nbformat.read(choice.path, as_version=4)
        chapter_tags = [c.metadata.get("tags", []) for c in read_chapter(chapter).cells if c.cell_type == "code"]
        cell_num = 0
        for cell in self.nb.cells:
            if cell.cell_type != "code":
                continue
            options = defaultdict(bool, find_metadata_tags(cell.metadata))
            options.update(dict(find_comment_markers(cell.source)))
            options.setdefault("check", self.compare_outputs)
            yield ChapterCell.from_parent(self, name=f"Cell {cell_num}", cell_num=cell_num, cell=cell,
                                          options=options, machine_dependent=MACHINE_DEPENDENT_TAG in chapter_tags[cell_num])
            cell_num += 1


class ChapterCell(IPyNbCell):
    """A chapter cell. In portable mode (the reference was recorded on another kind of machine) an
    output that differs from the reference still agrees if only its numbers differ, each within the
    tolerance of ``portable.portable_mismatch`` (for a glued value, measured in the last digit the
    prose shows of it). A cell tagged ``machine-dependent`` in the chapter
    (it prints what a chaotic computation gave: text a trained model generated, statistics of a
    training run in which a seed may stall or not, both of which change with the last bits) only
    has to produce the same kinds and number of outputs there; the assertions in it still hold
    its claims on every machine."""

    def __init__(self, *args, machine_dependent: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.machine_dependent = machine_dependent

    def compare_outputs(self, test, ref, skip_compare=None):
        if super().compare_outputs(test, ref, skip_compare):
            return True
        # a machine-dependent cell differs even between two runs on one machine (wall-clock
        # times): it gets the lenient comparison in strict mode too
        if not (self.parent.portable or self.machine_dependent):
            return False
        strict_traceback = self.comparison_traceback
        self.comparison_traceback = []
        skip = skip_compare or self.parent.skip_compare
        flat, names = [], defaultdict(list)  # names: the glue name of each reference value, per key
        for side, outputs in enumerate((transform_streams_for_comparison(ref), transform_streams_for_comparison(test))):
            values = defaultdict(list)
            for out in outputs:
                glued = out.get("metadata", {}).get("scrapbook", {}).get("name")
                for key, value in out.items():
                    if key in skip:
                        continue
                    items = value.items() if key == "data" else [(key, value)]
                    for k, v in items:
                        if k not in skip:
                            values[k].append(self.sanitize(v))
                            if side == 0:
                                names[k].append(glued)
            flat.append(values)
        ref_values, test_values = flat
        problem = None
        if set(ref_values) != set(test_values):
            problem = f"output kinds differ: {sorted(ref_values)} vs {sorted(test_values)}"
        else:
            for key, refs in ref_values.items():
                if len(refs) != len(test_values[key]):
                    problem = f"{len(test_values[key])} outputs of kind {key!r}, reference {len(refs)}"
                    break
                if self.machine_dependent:
                    continue
                for a, b, name in zip(refs, test_values[key], names[key]):
                    problem = portable_mismatch(a, b, unit=self.parent.glue_units.get(name))
                    if problem:
                        problem = f"{key}: {problem}"
                        break
                if problem:
                    break
        if problem is None:
            return True
        self.comparison_traceback = [
            f"portable mode (reference recorded on {describe(self.parent.choice_machine)}, this is "
            f"{describe(machine())}): {problem}", *strict_traceback,
        ]
        return False


_choices: dict = {}


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
    if _choices:
        terminalreporter.section("chapter references")
        terminalreporter.write_line(f"this machine: {describe(machine())}")
        for path, choice in sorted(_choices.items()):
            mode = "strict" if choice.strict else f"portable (recorded on {describe(choice.recorded_on)})"
            terminalreporter.write_line(f"  {path}: {choice.path.relative_to(REPO)}, {mode}")
    if _chapter_seconds:
        how = (f"from an empty run cache and the published one at {_published['url']}"
               if _published else "from the local run cache")
        terminalreporter.section(f"time per chapter (nbval replay, {how})")
        for path, secs in sorted(_chapter_seconds.items()):
            terminalreporter.write_line(f"{secs:8.1f} s  {path}")
