"""Re-record the nbval reference outputs of chapters.

    python -m tests.nbval_replay.record               # every chapter
    python -m tests.nbval_replay.record book/kl.md    # one chapter
    python -m tests.nbval_replay.record --primary book/kl.md   # this machine's is the primary one

Each chapter is executed from scratch (working directory book/) and written, with its outputs and
the machine it ran on (``metadata.dgmbook.machine``), to

* ``tests/nbval_replay/references/<name>.ipynb``, the primary reference, when there is none, when the chapter's
  code changed since it was recorded, when it was recorded on this kind of machine, or with
  ``--primary``;
* else ``tests/nbval_replay/references/<machine slug>/<name>.ipynb``, this kind of machine's own reference.

A new primary reference makes the per-machine ones of older code stale; they are deleted. Review
the diff before committing: it is what the tests will demand from every later execution (strictly
on the machine kinds recorded, in portable mode elsewhere: see recordings.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat

from . import REPO, chapters
from .recordings import (
    all_references, code_sources, describe, execute, machine, read_chapter, recording_target,
    reference_path, strip_volatile_metadata,
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", type=Path, help="book/<name>.md (default: every chapter)")
    parser.add_argument("--primary", action="store_true", help="write the primary reference")
    args = parser.parse_args(argv)
    here = machine()
    print(f"recording on {describe(here)}")
    for chapter in [c.resolve() for c in args.chapters] or chapters():
        start = time.perf_counter()
        target = recording_target(chapter, here, args.primary)
        nb = execute(chapter)
        strip_volatile_metadata(nb)
        nb.metadata["dgmbook"] = {"machine": here}
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        print(f"recorded {target.relative_to(REPO)} in {time.perf_counter() - start:.1f} s")
        if target == reference_path(chapter):
            mine = code_sources(read_chapter(chapter))
            for other in all_references(chapter)[1:]:
                if code_sources(nbformat.read(other, as_version=4)) != mine:
                    other.unlink()
                    print(f"deleted {other.relative_to(REPO)}: recorded for older code")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
