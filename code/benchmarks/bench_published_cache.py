"""A reader's wait: every chapter executed from an empty run cache, with the published run cache
reachable (the publish folder served on 127.0.0.1), timed from the kernel's start to the chapter's
last cell. The target is under 60 s per chapter on the project's 2-core machine.

    python -m dgmbook publish                                    # first: the publish folder
    DGMBOOK_DATA=../shared/data python code/benchmarks/bench_published_cache.py [CHAPTER ...]

Each chapter gets a fresh, empty cache, fetches its archive (pooch, sha256 check), and must not
train anything (``DGMBOOK_NO_TRAINING=1`` makes a missing run an error). The data are read from
``DGMBOOK_DATA`` as in CI: what is measured is the chapter, not a download of MNIST. Printed per
chapter: the wall time, the CPU time of the kernel and its workers, and the archive's size.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET_SECONDS = 60.0


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def run_chapter(chapter: Path, timeout: int = 600) -> float:
    """Execute a chapter as the book build does (working directory book/); return wall seconds."""
    import jupytext
    import nbclient

    nb = jupytext.read(chapter)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(chapter.parent)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def main(argv=None) -> int:
    sys.path.insert(0, str(REPO / "code"))
    from dgmbook import publish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="chapter names (default: all)")
    parser.add_argument("--publish", default=str(REPO / "_build" / "publish"))
    args = parser.parse_args(argv)
    folder = Path(args.publish)
    index = json.loads((folder / "runcache" / "index.json").read_text())
    if not os.environ.get("DGMBOOK_DATA"):
        print("set DGMBOOK_DATA (e.g. ../shared/data): the benchmark measures the chapters, "
              "not data downloads", file=sys.stderr)
        return 2
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/runcache/"
    wanted = [c for c in publish.chapters(REPO) if not args.chapters or c.stem in args.chapters]
    print(f"published run cache: {folder} (revision {index['revision']}), served at {url}")
    print(f"{'chapter':26s} {'wall s':>8s} {'CPU s':>8s} {'archive MB':>11s}  target {TARGET_SECONDS:.0f} s")
    over = []
    for chapter in wanted:
        with tempfile.TemporaryDirectory(prefix="dgmbook-bench-") as cache:
            os.environ.update({"DGMBOOK_CACHE": cache, "DGMBOOK_REMOTE_CACHE": url,
                               "DGMBOOK_NO_TRAINING": "1", "HF_HUB_OFFLINE": "1",
                               "TRANSFORMERS_OFFLINE": "1"})
            cpu0 = os.times()
            seconds = run_chapter(chapter)
            cpu1 = os.times()
        cpu = (cpu1.children_user + cpu1.children_system) - (cpu0.children_user + cpu0.children_system)
        archive = index["archives"].get(chapter.stem)
        mb = f"{archive['size'] / 1e6:11.1f}" if archive else f"{'none':>11s}"
        flag = "ok" if seconds < TARGET_SECONDS else "OVER"
        print(f"{chapter.stem:26s} {seconds:8.1f} {cpu:8.1f} {mb}  {flag}", flush=True)
        if seconds >= TARGET_SECONDS:
            over.append(chapter.stem)
    httpd.shutdown()
    print("all chapters under the target" if not over else f"over the target: {', '.join(over)}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
