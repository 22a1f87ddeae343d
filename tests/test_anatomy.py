"""Every chapter has the same anatomy: a label, an overview, derivations with checks, the
experiments, the homework's questions as exercises with solutions, and a summary."""

from __future__ import annotations

import re

import pytest

from nbval_replay import chapters


@pytest.mark.parametrize("chapter", chapters(), ids=lambda p: p.stem)
def test_chapter_anatomy(chapter):
    text = chapter.read_text(encoding="utf-8")
    body = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S).lstrip()
    assert re.match(rf"\({re.escape(chapter.stem)}\)=\n# ", body), "a label, then the title"
    h2 = re.findall(r"^## (.+)$", body, flags=re.M)
    assert h2 and h2[0] == "Overview", f"the first section is the overview, not {h2[:1]}"
    assert h2[-1] == "Summary", f"the last section is the summary, not {h2[-1]!r}"
    assert "assert " in body, "derivations are checked by code that runs"
    exercises = re.findall(r"^```\{exercise\}.*\n:label: (\S+)", body, flags=re.M)
    solutions = re.findall(r"^```\{solution\} (\S+)", body, flags=re.M)
    assert exercises, "the homework's questions are exercises"
    assert sorted(exercises) == sorted(solutions), "every exercise has exactly one solution"


MAX_CODE_LINE = 88  # what the book's column shows whole


@pytest.mark.parametrize("chapter", chapters(), ids=lambda p: p.stem)
def test_code_cells_fit_the_column(chapter):
    """Code lines short enough to show whole in the book's column, without wrapping."""
    long, inside = [], False
    for number, line in enumerate(chapter.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```{code-cell}"):
            inside = True
        elif line.startswith("```"):
            inside = False
        elif inside and len(line) > MAX_CODE_LINE:
            long.append(f"line {number} ({len(line)} characters)")
    assert not long, f"code lines over {MAX_CODE_LINE} characters: {', '.join(long)}"
