"""Re-record the nbval reference outputs of chapters.

    python tests/record_references.py               # every chapter
    python tests/record_references.py book/kl.md    # one chapter

Each chapter is executed from scratch (working directory book/) and written, with its outputs,
to tests/references/<name>.ipynb. Review the diff before committing: it is what the tests will
demand from every later execution.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chapters import REFERENCES, chapters, execute, reference_path, strip_volatile_metadata  # noqa: E402


def main(argv: list[str]) -> int:
    targets = [Path(a).resolve() for a in argv] if argv else chapters()
    REFERENCES.mkdir(parents=True, exist_ok=True)
    for chapter in targets:
        start = time.perf_counter()
        nb = execute(chapter)
        strip_volatile_metadata(nb)
        nbformat.write(nb, reference_path(chapter))
        print(f"recorded {reference_path(chapter).name} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
