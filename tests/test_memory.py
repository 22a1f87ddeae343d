"""Every chapter fits Binder's memory: the peak that ``dgmbook.session`` recorded while the book
build executed it (the kernel and any worker processes it started, as proportional set size)
stays under 2 GiB. ``.ci/run`` sets ``DGMBOOK_MEMORY_LOG`` for its build; elsewhere the records
exist only if the build was run with it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nbval_replay import REPO, chapters

BINDER_BYTES = 2 * 2**30  # mybinder.org's memory limit
RECORDS = Path(os.environ.get("DGMBOOK_MEMORY_LOG") or REPO / ".cache" / "memory")


@pytest.mark.parametrize("chapter", [c.stem for c in chapters()])
def test_chapter_fits_binder_memory(chapter):
    record = RECORDS / f"{chapter}.json"
    if not record.exists():
        msg = (f"no memory record {record}: build the book with DGMBOOK_MEMORY_LOG={RECORDS} "
               "(bash .ci/run does)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    peak = json.loads(record.read_text())["peak_bytes"]
    assert peak <= BINDER_BYTES, (f"{chapter} peaked at {peak / 2**30:.2f} GiB, over Binder's "
                                  f"{BINDER_BYTES / 2**30:.0f} GiB")


def test_the_monitor_counts_worker_processes(tmp_path):
    """A child process holding 200 MB shows up in the parent's record."""
    import subprocess
    import sys
    import time

    from dgmbook.session import MemoryMonitor, process_tree_bytes

    before = process_tree_bytes()
    child = subprocess.Popen([sys.executable, "-c",
                              "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]);"
                              " time.sleep(30)"])
    try:
        monitor = MemoryMonitor(tmp_path / "x.json", "x", interval=0.05)
        deadline = time.time() + 20
        while time.time() < deadline:
            monitor.sample()
            if monitor.peak - before > 150 * 2**20:
                break
            time.sleep(0.1)
        record = json.loads((tmp_path / "x.json").read_text())
        assert record["chapter"] == "x" and record["peak_bytes"] - before > 150 * 2**20
    finally:
        child.kill()
