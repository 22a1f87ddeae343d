"""The nbval replay harness: the choice of reference per machine (nbval_replay.recordings) and
the portable comparison (nbval_replay.portable)."""

from __future__ import annotations

import nbformat
import pytest

from nbval_replay import portable, recordings

INTEL = {"cpu": "GenuineIntel amx", "threads": 2, "torch": "2.14.1"}
AMD = {"cpu": "AuthenticAMD avx512_bf16", "threads": 2, "torch": "2.14.1"}
LAPTOP = {"cpu": "GenuineIntel avx2", "threads": 8, "torch": "2.14.1"}

CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A chapter

```{code-cell} ipython3
print(1 + 1)
```
"""


def test_portable_mismatch_accepts_small_differences_in_numbers_only():
    ref = "method        acc\nsupervised  0.950 ± 0.003   150\n"
    assert portable.portable_mismatch(ref, ref) is None
    assert portable.portable_mismatch(ref, "method        acc\nsupervised  0.949 ± 0.004   160\n") is None
    # column padding that moves with a number's width is not a difference
    assert portable.portable_mismatch("x   9.9 |", "x  10.1 |") is None
    assert portable.portable_mismatch("nan", "nan") is None


@pytest.mark.parametrize("test, why", [
    ("method        acc\nsupervised  0.950 ± 0.003   250\n", "not within"),  # 250 vs 150
    ("method        acc\nreinforce   0.950 ± 0.003   150\n", "text around the numbers"),
    ("method        acc\nsupervised  0.950 ± 0.003\n", "text around the numbers"),  # a number lost
    ("method        acc\nsupervised  nan ± 0.003   150\n", "not within"),
])
def test_portable_mismatch_rejects(test, why):
    ref = "method        acc\nsupervised  0.950 ± 0.003   150\n"
    assert why in portable.portable_mismatch(ref, test)


def test_portable_tolerance_is_relative_plus_a_few_units_of_the_last_digit_shown():
    rtol, atol, digits = portable.PORTABLE_RTOL, portable.PORTABLE_ATOL, portable.PORTABLE_DIGITS
    assert portable.last_digit("3.14") == pytest.approx(0.01)
    assert portable.last_digit("150") == 1 and portable.last_digit("1.5e-06") == pytest.approx(1e-7)
    # a full-precision float: the absolute floor
    assert portable.portable_mismatch("0.000000", f"{0.9 * atol:.6f}") is None
    assert portable.portable_mismatch("0.000000", f"{1.1 * atol:.6f}") is not None
    # a number printed with one decimal: a few units of 0.1
    assert portable.portable_mismatch("forgetting -0.1", "forgetting -0.3") is None
    assert portable.portable_mismatch("forgetting -0.1", f"forgetting {-0.1 - (digits + 1) * 0.1:.1f}") is not None
    # large numbers: relative
    assert portable.portable_mismatch("1000.0", f"{1000 * (1 + 0.9 * rtol):.1f}") is None
    assert portable.portable_mismatch("1000.0", f"{1000 * (1 + 1.1 * rtol):.1f}") is not None
    # a glued value is judged by the last digit the prose shows of it
    assert portable.portable_mismatch("0.7699966430664062", "0.6299972534179688") is not None
    assert portable.portable_mismatch("0.7699966430664062", "0.6299972534179688", unit=0.1) is None


def test_glue_units_reads_the_formats_the_prose_uses(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("a {glue:text}`acc:.1f`% b {glue:text}`acc:.2f` c {glue:text}`share:.0%` "
                    "d {glue:text}`n` e {glue:text}`loss:.3f`")
    units = portable.glue_units(page)
    assert units == pytest.approx({"acc": 0.01, "share": 0.01, "loss": 0.001})


@pytest.fixture
def book(tmp_path, monkeypatch):
    """A repository with one chapter and its primary reference, recorded on INTEL."""
    monkeypatch.setattr(recordings, "REPO", tmp_path)
    monkeypatch.setattr(recordings, "REFERENCES", tmp_path / "tests" / "references")
    chapter = tmp_path / "book" / "demo.md"
    chapter.parent.mkdir()
    chapter.write_text(CHAPTER)
    record(chapter, recordings.REFERENCES / "demo.ipynb", INTEL)
    return chapter


def record(chapter, path, machine, source=None):
    nb = recordings.read_chapter(chapter)
    if source is not None:
        next(c for c in nb.cells if c.cell_type == "code").source = source
    nb.metadata["dgmbook"] = {"machine": machine}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def test_strict_on_the_recording_machine_portable_elsewhere(book):
    choice = recordings.choose_reference(book, INTEL)
    assert choice.strict and choice.path.name == "demo.ipynb"
    choice = recordings.choose_reference(book, AMD)
    assert not choice.strict and choice.path == recordings.REFERENCES / "demo.ipynb"
    assert choice.recorded_on == INTEL


def test_a_machine_with_its_own_current_reference_is_checked_strictly_against_it(book):
    own = recordings.REFERENCES / recordings.machine_slug(AMD) / "demo.ipynb"
    assert recordings.recording_target(book, AMD) == own
    record(book, own, AMD)
    choice = recordings.choose_reference(book, AMD)
    assert choice.strict and choice.path == own
    assert not recordings.choose_reference(book, LAPTOP).strict


def test_a_stale_per_machine_reference_is_ignored(book):
    own = recordings.REFERENCES / recordings.machine_slug(AMD) / "demo.ipynb"
    record(book, own, AMD, source="print(2 + 2)")  # recorded for older code
    choice = recordings.choose_reference(book, AMD)
    assert not choice.strict and choice.path.name == "demo.ipynb" and choice.path.parent == recordings.REFERENCES


def test_a_stale_primary_reference_fails_and_is_replaced_by_the_next_recording(book):
    record(book, recordings.REFERENCES / "demo.ipynb", INTEL, source="print(2 + 2)")
    problem = recordings.choose_reference(book, INTEL)
    assert isinstance(problem, str) and "re-record it with" in problem
    # whatever machine records next writes the primary reference
    assert recordings.recording_target(book, AMD) == recordings.REFERENCES / "demo.ipynb"


def test_a_gpu_run_is_compared_in_portable_mode(book, monkeypatch):
    """The same host with the chapters on a GPU is another kind of machine: portable against
    the CPU's reference, and its own recording goes to a folder of its own."""
    import torch

    from dgmbook import device as devices

    monkeypatch.setattr(devices, "resolve", lambda setting=None: "cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU 80GB")
    monkeypatch.setattr(recordings, "ISA_FLAGS", ())  # whatever this CPU is: "baseline"
    here = recordings.machine()
    assert here["device"] == "cuda Some GPU 80GB"
    on_cpu = {k: v for k, v in here.items() if k != "device"}
    record(book, recordings.REFERENCES / "demo.ipynb", on_cpu)  # recorded here, on the CPU
    assert recordings.choose_reference(book, on_cpu).strict
    assert not recordings.choose_reference(book, here).strict
    assert recordings.machine_slug(here).endswith("-cuda-some-gpu-80gb")
    assert recordings.describe(here).endswith(", on cuda Some GPU 80GB")


def test_machine_describes_this_one():
    here = recordings.machine()
    assert set(here) == {"cpu", "threads", "torch"} and here["threads"] >= 1
    assert "/" not in recordings.machine_slug(here)
