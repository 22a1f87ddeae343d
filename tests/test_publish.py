"""The publish folder (``python -m dgmbook publish``, which ``.ci/run`` assembles from its build):
every chapter's page, notebook and run-cache archive is there and matches the manifest's sum; the
site opened from the folder in headless Chromium shows math and figures and requests nothing from
outside the folder; the PDF holds every chapter's title and figures."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import unicodedata
import threading
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

from nbval_replay import REPO, chapters
from dgmbook import publish

OUT = REPO / "_build" / "publish"


def _require_folder():
    if not (OUT / "manifest.json").exists():
        pytest.fail(f"no publish folder at {OUT}: build the book, then run `python -m dgmbook pdf` "
                    "and `python -m dgmbook publish` (bash .ci/run does all three)")


@pytest.fixture(scope="module")
def manifest():
    _require_folder()
    return json.loads((OUT / "manifest.json").read_text())


def test_every_file_matches_the_manifest(manifest):
    assert publish.verify(OUT) == []
    on_disk = {p.relative_to(OUT).as_posix() for p in OUT.rglob("*") if p.is_file()}
    assert on_disk - {"manifest.json"} == set(manifest["files"])
    assert re.fullmatch(r"[0-9a-f]{40}", manifest["revision"])


def test_every_chapter_has_its_page_notebook_and_archive(manifest):
    listed = {c["chapter"]: c for c in manifest["chapters"]}
    assert list(listed) == [c.stem for c in chapters()]
    for name, c in listed.items():
        assert c["page"] == f"book/{name}.html" and c["notebook"] == f"notebooks/{name}.ipynb"
        assert c["archive"] and c["archive"] in manifest["files"], name
    index = json.loads((OUT / "runcache" / "index.json").read_text())
    for name, c in listed.items():
        archive = index["archives"][name]
        assert c["archive"] == f"runcache/{archive['file']}"
        assert archive["sha256"] == manifest["files"][c["archive"]]["sha256"]
        assert archive["file"].endswith(f"-{manifest['revision'][:12]}.tar.gz")


def test_notebooks_are_executed_and_install_the_published_revision(manifest):
    site = publish.read_site(REPO)
    for c in manifest["chapters"]:
        nb = nbformat.read(OUT / c["notebook"], as_version=4)
        nbformat.validate(nb)
        first = nb.cells[0]
        assert first.cell_type == "code" and first.metadata["tags"] == [publish.INSTALL_TAG]
        assert 'importlib.util.find_spec("dgmbook") is None' in first.source
        assert publish.install_source(site, manifest["revision"]) in first.source
        weights = "--no-deps" in first.source
        assert weights == (c["chapter"] in publish.WEIGHTS_CHAPTERS), c["chapter"]
        code = [cell for cell in nb.cells[1:] if cell.cell_type == "code"]
        assert sum(bool(cell.outputs) for cell in code) >= len(code) // 2, c["chapter"]
        assert not any(o.get("output_type") == "error" for cell in code for o in cell.outputs)


def test_the_install_cell_points_at_the_published_cache():
    site = publish.Site("https://github.com/Example-Org/dgm-book")
    src = publish.install_cell_source(site, "0" * 40, "vae", [])
    assert "git+https://github.com/Example-Org/dgm-book@" + "0" * 40 + "#subdirectory=code" in src
    assert 'os.environ.setdefault("DGMBOOK_REMOTE_CACHE", ' \
           '"https://example-org.github.io/dgm-book/runcache/")' in src
    compile(src, "install-cell", "exec")
    assert site.colab_url("vae") == ("https://colab.research.google.com/github/Example-Org/dgm-book/"
                                     f"blob/{publish.NOTEBOOK_BRANCH}/notebooks/vae.ipynb")
    assert publish.Site("https://gitlab.com/a/b").colab_url("vae") is None


# --- the site, opened from the folder ----------------------------------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    _require_folder()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_Quiet, directory=str(OUT)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from test_browser import _require_browser

    _require_browser()
    driver = publish.browser(logs=("performance", "browser"))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


@pytest.mark.parametrize("page", ["index.html"] + [f"book/{c.stem}.html" for c in chapters()])
def test_the_site_needs_nothing_outside_the_folder(page, site, browser):
    from test_browser import _wait_for_mathjax

    _requests(browser)  # drop what earlier pages logged
    browser.get(f"{site}/{page}")
    _wait_for_mathjax(browser)
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # lazy images
    outside = [u for u in _requests(browser)
               if urlparse(u).scheme not in ("data", "blob", "about", "chrome-extension")
               and not u.startswith(site + "/")]
    assert not outside, f"{page} requested {outside}"
    if page == "index.html":
        return
    typeset = browser.execute_script("return document.querySelectorAll('mjx-container').length")
    assert typeset > 0 and not browser.execute_script("return document.querySelectorAll('mjx-merror').length")
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0])")
    assert images and all(ok for _, ok in images), [src for src, ok in images if not ok]


def test_the_introduction_links_the_pdf(site, browser):
    browser.get(f"{site}/book/intro.html")
    links = browser.execute_script("return Array.from(document.links).map(a => a.href)")
    assert f"{site}/book.pdf" in links
    assert (OUT / "book.pdf").stat().st_size > 100_000


# --- the PDF ---------------------------------------------------------------------------------

def _title(chapter: Path) -> str:
    return next(line[2:].strip() for line in chapter.read_text().splitlines() if line.startswith("# "))


def _words(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)  # the PDF's ligatures: "ﬁne" is "fine"
    return " ".join(re.findall(r"[A-Za-z0-9]+", text)).lower()


def test_the_pdf_has_every_chapter_and_its_figures(manifest):
    from pypdf import PdfReader

    reader = PdfReader(OUT / "book.pdf")
    text = _words(" ".join(page.extract_text() or "" for page in reader.pages))
    for chapter in chapters():
        assert _words(_title(chapter)) in text, _title(chapter)
    images = sum(len(page.images) for page in reader.pages)
    figures = sum(len(re.findall(r'<img [^>]*src="[^"]*_images/', (OUT / c["page"]).read_text()))
                  for c in manifest["chapters"])
    assert figures > 0 and images >= figures, (images, figures)
