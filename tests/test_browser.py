"""The built book in a real browser: headless Chromium (Debian's chromium + chromium-driver)
loads every chapter page from a local HTTP server and checks that

* MathJax typeset the math (MathJax's output elements are in the DOM, none of its error nodes),
* every image loaded (complete, with a non-zero natural width),
* the browser console has no errors,
* the exercise solutions are on the page.

Run it after building the book:
    .venv/bin/jupyter-book build --all -W -n --keep-going . && .venv/bin/python -m pytest tests/test_browser.py
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chapters import REPO, chapters  # noqa: E402

HTML = REPO / "_build" / "html"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _require_browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test, but chromium/chromedriver are not installed")
        pytest.skip("install Debian's chromium and chromium-driver to run the browser test")


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail(f"no built book at {HTML}: build it first with "
                    "`.venv/bin/jupyter-book build --all -W -n --keep-going .`")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic", "--window-size=1280,2000"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait_for_mathjax(driver, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "return window.MathJax && MathJax.startup && MathJax.startup.promise "
        "? (MathJax.startup.promise.then(() => { window.__mjdone = true; }), window.__mjdone === true) "
        ": false"))


@pytest.mark.parametrize("chapter", [c.stem for c in chapters()])
def test_chapter_page_renders(chapter, server, browser):
    page = HTML / "book" / f"{chapter}.html"
    assert page.exists(), f"{page} was not built"
    browser.get(f"{server}/book/{chapter}.html")
    _wait_for_mathjax(browser)

    typeset = browser.execute_script("return document.querySelectorAll('mjx-container').length")
    raw_tex = browser.execute_script(
        "return Array.from(document.querySelectorAll('.math')).filter("
        "e => !e.querySelector('mjx-container')).length")
    errors = browser.execute_script("return document.querySelectorAll('mjx-merror').length")
    assert typeset > 0, "no MathJax output in the DOM: math was not typeset"
    assert raw_tex == 0, f"{raw_tex} math blocks were left as raw TeX"
    assert errors == 0, f"{errors} MathJax errors on the page"

    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0])")
    broken = [src for src, ok in images if not ok]
    assert not broken, f"images that did not load: {broken}"
    figures = [src for src, _ in images if "/_images/" in src]
    assert figures, "the chapter shows no figures"

    solutions = browser.execute_script("return document.querySelectorAll('.solution').length")
    exercises = browser.execute_script("return document.querySelectorAll('.exercise').length")
    assert exercises > 0 and solutions == exercises, (exercises, solutions)

    console = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not console, f"console errors: {console}"


def test_math_is_served_offline(server, browser):
    """MathJax comes from the book itself (sphinx-mathjax-offline), not from a CDN."""
    browser.get(f"{server}/book/{chapters()[0].stem}.html")
    scripts = browser.execute_script("return Array.from(document.scripts).map(s => s.src)")
    mathjax = [s for s in scripts if "mathjax" in s.lower()]
    assert mathjax and all(s.startswith(server) for s in mathjax), mathjax
