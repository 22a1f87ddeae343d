"""The nbval replay of the book's chapters: every chapter is replayed cell by cell and each output
compared with a recorded reference.

* :mod:`.plugin`      the pytest plugin (``-p nbval_replay.plugin`` in pytest.ini): collects each
                      chapter of ``book/`` and replays it, strictly or in portable mode;
* :mod:`.recordings`  where references live, which machine recorded each, which one a machine is
                      checked against, how a chapter is executed to record one;
* :mod:`.portable`    the portable comparison (numbers within a tolerance) for other machines;
* :mod:`.record`      the command that records references:
                      ``python -m tests.nbval_replay.record book/<name>.md``;
* ``references/``     the recorded references; ``sanitize.cfg`` the output nbval ignores.
"""

from __future__ import annotations

from pathlib import Path

from dgmbook import publish

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BOOK = REPO / "book"


def toc_files() -> list[Path]:
    """The pages listed in _toc.yml, in order."""
    return publish.toc_pages(REPO)


def chapters() -> list[Path]:
    """The executable chapters: notebooks listed in the table of contents (a draft in book/ that
    is not in _toc.yml is neither built nor tested)."""
    return publish.chapters(REPO)
