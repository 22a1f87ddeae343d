"""Print how long each chapter took to execute in the book build (from jupyter-cache's records)
and, beside it, its peak memory (the records ``dgmbook.session`` wrote under $DGMBOOK_MEMORY_LOG).

    python .ci/chapter_times.py _build/.jupyter_cache [.cache/memory]
"""

import json
import sys
from pathlib import Path

from jupyter_cache import get_cache


def main(path: str, memory: str | None = None) -> int:
    cache = get_cache(path)
    peaks = {}
    if memory and Path(memory).is_dir():
        for rec in Path(memory).glob("*.json"):
            peaks[rec.stem] = json.loads(rec.read_text())
    print("time and peak memory per chapter (book build; memory: the kernel and its workers):")
    latest = {}  # a cache that saw several builds keeps a record per version of a chapter
    for rec in cache.list_cache_records():
        name = Path(rec.uri).stem
        if name not in latest or rec.created > latest[name].created:
            latest[name] = rec
    for name, rec in sorted(latest.items()):
        secs = (rec.data or {}).get("execution_seconds")
        time_txt = f"{secs:8.1f} s" if secs is not None else "       ? s"
        peak = peaks.get(name, {})
        mem_txt = f"{peak['peak_bytes'] / 2**30:6.2f} GiB" if peak else "     ? GiB"
        cell = f"  (peak in code cell {peak['cell']})" if peak.get("cell") else ""
        print(f"  {time_txt}  {mem_txt}  {name}{cell}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
