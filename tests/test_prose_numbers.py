"""No measured number is typed into a chapter's prose: a decimal number in the text outside math,
code and glue fails, unless it is on the allow-list below with the reason it must be literal.

A number a chapter reports comes from executed code (``glue``) or from a results file; typed into
the prose it goes stale the day the code changes, and no test would notice."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nbval_replay import chapters

# Decimal numbers that must be literal, per chapter: (the number, why). Keep this short.
ALLOWED: dict[str, dict[str, str]] = {
    "*": {
    },
}

DECIMAL = re.compile(r"(?<![\w.])[-+−]?\d+\.\d+(?![\w.]*\d)")


def prose(text: str) -> str:
    """The chapter's Markdown with everything that is not prose blanked out: front matter, code
    cells and fenced blocks, directive options, math, inline code, roles (glue, cite, ref ...),
    link targets, labels and HTML comments."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    # fenced blocks: ```{code-cell}, ```python, ```{math} ...; keep the prose of admonitions,
    # exercises and solutions (their body is Markdown), drop their options
    def fence(m):
        head, body = m.group(1), m.group(2)
        if re.match(r"\{(exercise|solution|note|admonition|tip|warning|important|seealso|"
                     r"dropdown|figure|margin|topic|prf:[a-z]+)\}", head):
            return "\n".join(line for line in body.splitlines() if not line.startswith(":"))
        return " "
    text = re.sub(r"^(?:```|~~~|:::)+(\{?[^\n]*)\n(.*?)^(?:```|~~~|:::)+\s*$", fence, text,
                  flags=re.S | re.M)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", " ", text, flags=re.S)
    text = re.sub(r"(?<!\\)\$[^$\n]+?(?<!\\)\$", " ", text)
    text = re.sub(r"\{[a-z][\w:-]*\}`[^`]*`", " ", text)  # roles: glue, cite, ref, math, doc ...
    text = re.sub(r"`[^`\n]*`", " ", text)  # inline code
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"^\([\w-]+\)=\s*$", " ", text, flags=re.M)  # labels
    return text


def typed_decimals(path: Path) -> list[tuple[int, str]]:
    allowed = {**ALLOWED["*"], **ALLOWED.get(path.stem, {})}
    found = []
    for lineno, line in enumerate(prose(path.read_text(encoding="utf-8")).splitlines(), 1):
        for m in DECIMAL.finditer(line):
            if m.group(0).lstrip("+-−") not in allowed:
                found.append((lineno, line.strip()))
    return found


@pytest.mark.parametrize("chapter", chapters(), ids=lambda p: p.stem)
def test_no_decimal_number_is_typed_into_the_prose(chapter):
    found = typed_decimals(chapter)
    assert not found, (f"{chapter.name}: decimal numbers typed into the prose (glue them, or add "
                       "them to ALLOWED with the reason): "
                       + "; ".join(f"{text[:100]!r}" for _, text in found))


def test_the_filter_keeps_prose_and_drops_the_rest():
    md = ("---\nkernelspec: x\n---\nA loss of 0.46 nats.\n\n```{code-cell} ipython3\nx = 0.5\n```\n"
          "Math $x = 1.5$ and $$y = 2.5$$ and {glue:text}`v:.2f` and `3.5` stay out.\n\n"
          "```{exercise} Title\n:label: ex-1\nAsk about 7.25 here.\n```\n")
    text = prose(md)
    assert "0.46" in text and "7.25" in text
    assert not any(n in text for n in ("0.5", "1.5", "2.5", "3.5", "v:.2f", "ex-1"))
