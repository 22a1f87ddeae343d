"""The built HTML as a reader sees it: no MyST markup left as text, every glued value pasted,
every link and cross-reference resolved.

The strict build catches most markup errors, but not all: a role whose closing backtick is
missing (``{cite:t}`key}``) is valid Markdown, the literal text of a role, and renders as such.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from bs4 import BeautifulSoup

from nbval_replay import REPO, toc_files

HTML = REPO / "_build" / "html"
PDF_IN_SITE, PDF = "book.pdf", REPO / "_build" / "pdf" / "book.pdf"  # the introduction links it

# What MyST markup looks like when it was not rendered: a role `{name}` or `{name:sub}` followed
# by a backtick or a letter, a directive fence, a label definition, a substitution, a glue key.
LEFTOVERS = {
    "a role left as text": re.compile(r"\{[a-z][a-z0-9_-]*(?::[a-z0-9_-]+)?\}\s*`"),
    "a directive left as text": re.compile(r"(?:```|:::)\s*\{[a-z][a-z0-9_-]*\}"),
    "a label left as text": re.compile(r"^\([A-Za-z0-9_-]+\)=\s*$", re.M),
    "a substitution left as text": re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}"),
    "a glue role left as text": re.compile(r"\bglue:(?:text|md|any|figure|math)\b"),
}


def _pages() -> list[Path]:
    return [HTML / p.relative_to(REPO).with_suffix(".html") for p in toc_files()]


def _visible_prose(page: Path) -> tuple[BeautifulSoup, str]:
    """The page's article without code, outputs, math and scripts: the prose a reader reads."""
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    article = soup.select_one("article") or soup.body
    for tag in article.select("script, style, pre, code, .math, div.cell_output, "
                              "div.highlight, .MathJax, mjx-container"):
        tag.decompose()
    return soup, article.get_text(" ")


@pytest.fixture(scope="module", params=[p.stem for p in toc_files()])
def page(request):
    path = next(p for p in _pages() if p.stem == request.param)
    if not path.exists():
        pytest.fail(f"{path} was not built: build the book first (see README)")
    return path


def test_no_markup_is_left_as_text(page):
    _, text = _visible_prose(page)
    found = [(what, m.group(0)) for what, rx in LEFTOVERS.items() for m in rx.finditer(text)]
    assert not found, f"{page.name}: {found}"


# A glue role that pastes into a span of its own ({glue:text}, {glue}, {glue:any});
# {glue:md} pastes bare Markdown, which leaves nothing to count.
GLUE_SPAN_ROLE = re.compile(r"\{glue(?::(?:text|any))?\}`")
CODE_CELL = re.compile(r"^```\{code-cell\}.*?^```\s*$", re.S | re.M)


def test_every_glued_value_was_pasted(page):
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    pasted = soup.select(".pasted-text, .pasted-inline")
    # a glue key it cannot find, myst-nb renders as a warning box or as nothing at all (the
    # strict build fails on the warning; a build with --keep-going does not)
    missing = [t.get_text(" ", strip=True) for t in pasted if "not found" in t.get_text().lower()]
    assert not missing, missing
    source = REPO / page.relative_to(HTML).with_suffix(".md")
    roles = len(GLUE_SPAN_ROLE.findall(CODE_CELL.sub("", source.read_text(encoding="utf-8"))))
    assert len(pasted) == roles, (f"{page.name}: {roles} glue roles in the source, "
                                  f"{len(pasted)} values pasted")


def test_every_internal_link_resolves(page):
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    ids = {t["id"] for t in soup.select("[id]")}
    broken = []
    for a in soup.select("article a[href]"):
        href = a["href"]
        url = urlparse(href)
        if url.scheme or href.startswith(("mailto:", "//")):
            continue
        target = (page.parent / unquote(url.path)).resolve() if url.path else page
        if target == (HTML / PDF_IN_SITE).resolve():
            target = PDF  # written by `dgmbook pdf`; `dgmbook publish` puts it beside the site
        if url.path and not target.exists():
            broken.append(href)
        elif url.fragment and target == page and url.fragment not in ids:
            broken.append(href)
        elif url.fragment and target != page and target.suffix == ".html":
            other = BeautifulSoup(target.read_text(encoding="utf-8"), "html.parser")
            if not other.select_one(f'[id="{url.fragment}"]'):
                broken.append(href)
    # an unresolved cross-reference renders as plain text in a span, not as a link
    unresolved = [t.get_text() for t in soup.select("article span.xref, article .std-ref:not(a *)")
                  if not t.find_parent("a")]
    assert not broken and not unresolved, (broken, unresolved)
