"""The book's configuration: launch buttons follow the one repository-URL setting; the built
book offers notebooks for download; the bibliography resolves."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chapters import REPO  # noqa: E402

HTML = REPO / "_build" / "html"


def _mini_book(tmp_path: Path, url: str) -> Path:
    """The real _config.yml with the repository URL set and execution off, and the KL chapter."""
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["repository"]["url"] = url
    config["execute"]["execute_notebooks"] = "off"
    book = tmp_path / "book-root"
    (book / "book").mkdir(parents=True)
    (book / "_config.yml").write_text(yaml.safe_dump(config))
    (book / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/kl\n")
    for f in ["book/intro.md", "book/kl.md", "book/favicon.svg", "references.bib"]:
        shutil.copy(REPO / f, book / f)
    (book / "book" / "intro.md").write_text("# Intro\n")  # no {tableofcontents} parts needed
    subprocess.run(["git", "init", "-q"], cwd=book, check=True)
    return book


def _build(book: Path) -> Path:
    jb = Path(sys.executable).parent / "jupyter-book"
    # not strict: with execution off, the glued numbers are missing; only the buttons matter here
    proc = subprocess.run([str(jb), "build", str(book)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return book / "_build" / "html" / "book" / "kl.html"


def test_launch_buttons_appear_when_the_repository_url_is_set(tmp_path):
    page = _build(_mini_book(tmp_path, "https://github.com/example-org/dgm-book")).read_text()
    assert "https://mybinder.org/v2/gh/example-org/dgm-book/main?urlpath=lab/tree/book/kl.md" in page
    assert 'href="https://github.com/example-org/dgm-book"' in page  # repository button


def test_no_launch_buttons_without_a_url(tmp_path):
    page = _build(_mini_book(tmp_path, "")).read_text()
    assert "mybinder.org" not in page


def test_repository_url_is_the_marked_setting():
    text = (REPO / "_config.yml").read_text()
    assert re.search(r">>> REPOSITORY URL.*\n(#.*\n)*repository:\n  url:", text)


def test_built_chapters_offer_their_notebook():
    page = HTML / "book" / "kl.html"
    if not page.exists():
        pytest.fail(f"no built book at {HTML}: build it first (see README)")
    assert "_sources/book/kl.ipynb" in page.read_text()
    assert (HTML / "_sources" / "book" / "kl.ipynb").exists()


def test_bibliography_lists_the_cited_papers():
    page = HTML / "book" / "bibliography.html"
    if not page.exists():
        pytest.fail(f"no built book at {HTML}: build it first (see README)")
    assert "Kullback" in page.read_text()
