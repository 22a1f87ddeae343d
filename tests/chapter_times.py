"""Print how long each chapter took to execute in the book build (from jupyter-cache's records).

    python tests/chapter_times.py _build/.jupyter_cache
"""

import sys
from pathlib import Path

from jupyter_cache import get_cache


def main(path: str) -> int:
    cache = get_cache(path)
    rows = []
    for rec in cache.list_cache_records():
        secs = (rec.data or {}).get("execution_seconds")
        rows.append((Path(rec.uri).name, secs))
    print("time per chapter (book build, execution only):")
    for name, secs in sorted(rows):
        print(f"  {secs:8.1f} s  {name}" if secs is not None else f"       ?    {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "_build/.jupyter_cache"))
