"""dgmbook: the tested code behind the executable textbook *Deep generative models and learning
beyond supervised gradients*. Chapters import from here; see the package README for a map."""

__version__ = "0.1.0"


def _import_tqdm_auto_quietly() -> None:
    """Libraries the book uses (``transformers``, ``huggingface_hub``) import ``tqdm.auto``. In a
    Jupyter kernel without ``ipywidgets`` that import warns "IProgress not found" on stderr, which
    the strict book build rejects. The book never draws a widget bar (see
    :func:`dgmbook.utils.progress`), so import it once here with that warning silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.auto  # noqa: F401


_import_tqdm_auto_quietly()
