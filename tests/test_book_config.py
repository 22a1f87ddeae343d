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

from nbval_replay import REPO, chapters
from dgmbook.publish import NOTEBOOK_BRANCH, Site

HTML = REPO / "_build" / "html"


def _mini_book(root: Path, url: str, pages: list[Path]) -> Path:
    """The real _config.yml with the repository URL set and execution off, and the given pages."""
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["repository"]["url"] = url
    config["execute"]["execute_notebooks"] = "off"
    book = root / "book-root"
    (book / "book").mkdir(parents=True)
    (book / "_config.yml").write_text(yaml.safe_dump(config))
    toc = "".join(f"  - file: book/{p.stem}\n" for p in pages)
    (book / "_toc.yml").write_text(f"format: jb-book\nroot: book/intro\nchapters:\n{toc}")
    for f in [*pages, REPO / "book/favicon.svg", REPO / "references.bib"]:
        shutil.copy(f, book / f.relative_to(REPO))
    (book / "book" / "intro.md").write_text("# Intro\n")  # no {tableofcontents} parts needed
    subprocess.run(["git", "init", "-q"], cwd=book, check=True)
    return book


def _build(book: Path) -> Path:
    jb = Path(sys.executable).parent / "jupyter-book"
    # not strict: with execution off, the glued numbers are missing; only the buttons matter here
    proc = subprocess.run([str(jb), "build", str(book)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return book / "_build" / "html" / "book"


URL = "https://github.com/example-org/dgm-book"


@pytest.fixture(scope="module")
def built_with_url(tmp_path_factory):
    return _build(_mini_book(tmp_path_factory.mktemp("with-url"), URL, chapters()))


@pytest.mark.parametrize("chapter", [c.stem for c in chapters()])
def test_every_chapter_has_binder_and_colab_buttons(built_with_url, chapter):
    page = (built_with_url / f"{chapter}.html").read_text()
    assert f"https://mybinder.org/v2/gh/example-org/dgm-book/main?urlpath=lab/tree/book/{chapter}.md" in page
    assert f'href="{URL}"' in page  # repository button
    colab = re.findall(r'href="(https://colab\.research\.google\.com/[^"]+)"', page)
    assert colab == [Site(URL).colab_url(chapter)], colab
    # ... which opens a notebook that the publish folder holds (the deploy workflow puts
    # _build/publish/notebooks/ on the notebook branch)
    notebook = colab[0].split(f"/blob/{NOTEBOOK_BRANCH}/", 1)[1]
    publish_folder = REPO / "_build" / "publish"
    if not (publish_folder / "manifest.json").exists():
        pytest.fail(f"no publish folder at {publish_folder}: see tests/test_publish.py")
    assert (publish_folder / notebook).is_file(), notebook


def test_no_launch_buttons_without_a_url(tmp_path):
    page = (_build(_mini_book(tmp_path, "", [REPO / "book/kl.md"])) / "kl.html").read_text()
    assert "mybinder.org" not in page and "colab.research.google.com" not in page


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
