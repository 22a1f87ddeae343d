"""A small Sphinx extension for the book build (listed in ``_config.yml``).

* **Launch buttons from one setting.** ``_config.yml``'s ``repository: url:`` turns the Binder
  and Colab launch buttons and the repository button on; left empty, all are removed (the theme
  would otherwise fail on a notebook page with no repository to launch from).
* **Colab opens the published notebook.** The theme points Colab at the page's source file, which
  for a MyST Markdown chapter Colab cannot read; the button opens instead the executed notebook
  that ``python -m dgmbook publish`` writes and the deploy workflow puts on the branch
  :data:`dgmbook.publish.NOTEBOOK_BRANCH` (see :meth:`dgmbook.publish.Site.colab_url`).
* **No duplicate inline scripts.** sphinx-thebe and sphinx-togglebutton register their inline
  configuration scripts twice under this Sphinx; the second ``const`` declaration is a
  JavaScript error in the browser console, so exact duplicates are dropped from each page.
* **Notebook download.** Every chapter page offers its executed notebook (``.ipynb``) from the
  download button, whether or not launch buttons are on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

LAUNCH_PROVIDERS = ("binderhub_url", "jupyterhub_url", "thebe", "colab_url", "jupyterlite_url")


def configure_launch_buttons(app, config):
    options = config.html_theme_options
    url = (options.get("repository_url") or "").strip()
    options["use_repository_button"] = bool(url)
    if not url:
        launch = dict(options.get("launch_buttons") or {})
        for key in LAUNCH_PROVIDERS:
            launch.pop(key, None)
        options["launch_buttons"] = launch
        options.pop("repository_url", None)


def point_colab_at_published_notebooks(app, pagename, templatename, context, doctree):
    from .publish import Site

    url = (app.config.html_theme_options.get("repository_url") or "").strip()
    colab = Site(url).colab_url(Path(pagename).name)
    if colab is None:
        return
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []) if isinstance(group, dict) else []:
            if button.get("text") == "Colab":
                button["url"] = colab


def offer_executed_notebook(app, pagename, templatename, context, doctree):
    if "kernelspec" not in app.env.metadata.get(pagename, {}):
        return
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.exists():
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for js in context.get("script_files", []):
        # the same script registered twice differs only in priority, or in None vs '' filename
        key = (getattr(js, "filename", js) or None, repr(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique


def share_html_handlers(app):
    """Give the singlehtml builder (the PDF's) every node handler registered for html. Sphinx
    looks up a builder's handlers by its name first and falls back to its format only when none
    exist; sphinx-exercise registers its nodes for "singlehtml", so every other extension's html
    handlers (the LaTeX/PDF extension's hidden cells among them) went missing there."""
    handlers = app.registry.translation_handlers
    if "singlehtml" in handlers:
        for name, pair in handlers.get("html", {}).items():
            handlers["singlehtml"].setdefault(name, pair)


def add_stylesheet(app):
    """The book's own CSS (``dgmbook/static/dgmbook.css``: code and outputs wrap)."""
    static = str(Path(__file__).with_name("static"))
    if static not in app.config.html_static_path:
        app.config.html_static_path.append(static)
    app.add_css_file("dgmbook.css")


def setup(app):
    app.connect("builder-inited", share_html_handlers)
    app.connect("builder-inited", add_stylesheet)
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    app.connect("config-inited", configure_launch_buttons, priority=900)
    app.connect("html-page-context", offer_executed_notebook, priority=400)
    # after the theme's launch buttons (priority 501)
    app.connect("html-page-context", point_colab_at_published_notebooks, priority=502)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
