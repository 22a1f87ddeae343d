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
import threading
from pathlib import Path

import pytest

from nbval_replay import REPO, chapters
from dgmbook import publish

HTML = REPO / "_build" / "html"
CHROMIUM, CHROMEDRIVER = publish.browser_paths()


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
    driver = publish.browser(window=(1280, 2000), logs=("browser",))
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


# --- what a reader sees at a laptop's size, in both themes ----------------------------------

READER_WINDOW = (1366, 768)

# Every element that would need a horizontal scrollbar: code cells and their outputs (text and
# HTML tables) and display equations. Reported with the first line that overflows.
OVERFLOW_JS = """
const out = [];
const article = document.querySelector('article') || document.body;
const wide = (el) => el.scrollWidth > el.clientWidth + 1;
article.querySelectorAll('div.cell pre, div.cell_output table, div.cell_output .output').forEach(el => {
  if (!wide(el)) return;
  const lines = (el.innerText || '').split('\\n');
  const longest = lines.reduce((a, b) => (b.length > a.length ? b : a), '');
  out.push([el.closest('.cell_output') ? 'output' : 'code', el.scrollWidth, el.clientWidth, longest]);
});
article.querySelectorAll('mjx-container[display="true"]').forEach(el => {
  const box = el.closest('div.math') || el.parentElement;
  if (wide(el) || el.scrollWidth > box.clientWidth + 1) {
    out.push(['equation', el.scrollWidth, box.clientWidth, (el.closest('[id]') || {}).id || '']);
  }
});
return out;
"""

# Contrast of the body text and of code against their backgrounds, and images that would sit
# transparent on a dark page.
THEME_JS = """
const lum = (c) => {
  const v = c.match(/[\\d.]+/g).slice(0, 3).map(Number).map(x => x / 255)
    .map(x => (x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4)));
  return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
};
const bg = (el) => {
  for (let e = el; e; e = e.parentElement) {
    const c = getComputedStyle(e).backgroundColor;
    if (c && !c.startsWith('rgba(0, 0, 0, 0)') && c !== 'transparent') return c;
  }
  return 'rgb(255, 255, 255)';
};
const ratio = (el) => {
  const a = lum(getComputedStyle(el).color), b = lum(bg(el));
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
};
const article = document.querySelector('article');
const para = article.querySelector('p');
const code = article.querySelector('div.cell_input pre');
const transparent = [];
article.querySelectorAll('div.cell_output img').forEach(img => {
  const c = document.createElement('canvas');
  c.width = Math.min(img.naturalWidth, 64); c.height = Math.min(img.naturalHeight, 64);
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0, c.width, c.height);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let clear = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] < 250) clear++;
  if (clear > d.length / 40 && lum(bg(img)) < 0.5) transparent.push(img.src);
});
return {text: ratio(para), code: code ? ratio(code) : 99, transparent: transparent,
        theme: document.documentElement.dataset.theme};
"""


@pytest.fixture(scope="module")
def reader(server):
    _require_browser()
    driver = publish.browser(window=READER_WINDOW)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.mark.parametrize("chapter", [c.stem for c in chapters()])
def test_nothing_scrolls_sideways_at_a_laptops_width(chapter, server, reader):
    reader.get(f"{server}/book/{chapter}.html")
    _wait_for_mathjax(reader)
    overflow = reader.execute_script(OVERFLOW_JS)
    assert not overflow, (f"{chapter}: at {READER_WINDOW[0]}x{READER_WINDOW[1]} these need a "
                          "horizontal scrollbar (kind, content width, visible width, widest line): "
                          + "; ".join(map(str, overflow)))


# Code-cell lines that the column would wrap: each input cell laid out unwrapped, as if the
# CSS's pre-wrap were off, and compared with its visible width. The chapters' lines are at most
# tests/test_anatomy.py's MAX_CODE_LINE characters; the book's CSS sizes code to hold them.
WRAPPED_CODE_JS = """
const out = [];
document.querySelectorAll('article div.cell_input pre').forEach(pre => {
  const keep = pre.style.whiteSpace;
  pre.style.whiteSpace = 'pre';
  if (pre.scrollWidth > pre.clientWidth + 1) {
    const lines = pre.innerText.split('\\n');
    out.push(lines.reduce((a, b) => (b.length > a.length ? b : a), ''));
  }
  pre.style.whiteSpace = keep;
});
return out;
"""


@pytest.mark.parametrize("chapter", [c.stem for c in chapters()])
def test_no_code_line_wraps_at_a_laptops_width(chapter, server, reader):
    reader.get(f"{server}/book/{chapter}.html")
    wrapped = reader.execute_script(WRAPPED_CODE_JS)
    assert not wrapped, (f"{chapter}: at {READER_WINDOW[0]}x{READER_WINDOW[1]} these code lines "
                         f"wrap ({len(wrapped)} cells; longest line of each): " + "; ".join(
                             f"{len(line)} chars: {line!r}" for line in wrapped))


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("chapter", [c.stem for c in chapters()])
def test_text_code_and_figures_are_legible_in_both_themes(chapter, theme, server, reader):
    reader.get(f"{server}/book/{chapter}.html")
    reader.execute_script(f"document.documentElement.dataset.theme = '{theme}';"
                          f"document.documentElement.dataset.mode = '{theme}';")
    seen = reader.execute_script(THEME_JS)
    assert seen["theme"] == theme
    assert seen["text"] >= 4.5 and seen["code"] >= 4.5, seen  # WCAG AA contrast
    assert not seen["transparent"], f"figures transparent on a dark background: {seen['transparent']}"
