"""The first call of every chapter: ``session.start("vae")``.

It seeds every random number generator, names the chapter for the run cache (the entries the
chapter uses become its archive in the published cache; see :mod:`dgmbook.runcache.remote`), and,
when ``DGMBOOK_MEMORY_LOG`` names a folder, records the chapter's peak memory there.

Peak memory is what a reader's machine must hold: the kernel process and every process it starts
(worker processes included), summed as proportional set size (shared pages split between the
processes that share them), sampled once a second by a daemon thread. The CUDA libraries
that PyPI's build of PyTorch maps are not counted: Binder, whose limit this is checked against,
installs the CPU build, which has none (:func:`cuda_library_bytes`). The record,
``<folder>/<chapter>.json``, is rewritten whenever the peak grows, so it is current even if the
kernel is killed. CI sets the setting for the book build and the tests check the records against
Binder's memory limit.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import torch

from . import runcache
from .utils import seed_everything

MEMORY_ENV = "DGMBOOK_MEMORY_LOG"
# Once a second: five samples a second slowed BERT2BERT's fine-tuning by 12-25% here (reading a
# process's smaps_rollup walks its memory map under the lock that the training process's own
# allocations need); once a second costs nothing measurable
SAMPLE_SECONDS = 1.0

_monitor: "MemoryMonitor | None" = None


def start(chapter: str, seed: int = 0) -> torch.Generator:
    """Begin chapter ``chapter``: seed everything with ``seed`` (returns the seeded generator),
    name the chapter for the run cache, and start the memory record if it is asked for."""
    global _monitor
    runcache.set_chapter(chapter)
    folder = os.environ.get(MEMORY_ENV, "").strip()
    if folder and _monitor is None:
        _monitor = MemoryMonitor(Path(folder) / f"{chapter}.json", chapter)
        _monitor.start()
    return seed_everything(seed)


# Libraries that only the CUDA build of PyTorch maps (CI installs PyPI's build, which is the CUDA
# one; Binder installs the CPU build): about 0.3 GB of a kernel's memory once torch is imported.
CUDA_LIBRARIES = re.compile(r"/(nvidia|triton)/|/libtorch_cuda|/libc10_cuda|/libcudnn|/libcublas"
                            r"|/libnccl|/libcusparse|/libcufft|/libcurand|/libnvrtc|/libnvJitLink")
_cuda_pss: dict[int, tuple[float, int]] = {}  # pid -> (when measured, bytes)


def cuda_library_bytes(pid: int, max_age: float = 10.0) -> int:
    """The proportional set size of the CUDA libraries a process maps (0 for the CPU build),
    re-read from ``/proc/<pid>/smaps`` at most every ``max_age`` seconds: parsing every mapping
    is slow, and library pages change little once loaded."""
    now = time.monotonic()
    hit = _cuda_pss.get(pid)
    if hit and now - hit[0] < max_age:
        return hit[1]
    total, counting = 0, False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                    counting = bool(CUDA_LIBRARIES.search(line))
                elif counting and line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    _cuda_pss[pid] = (now, total)
    return total


def process_tree_bytes(pid: int | None = None, without_cuda: bool = True) -> int:
    """Memory held by a process and all its descendants: the sum of their proportional set sizes
    (resident size where the kernel does not report it), less the CUDA libraries a CPU build of
    PyTorch would not map (``without_cuda``)."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", None) or info.rss
            if without_cuda:
                total -= cuda_library_bytes(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total


def _running_cell() -> int | None:
    """The execution count of the notebook cell running now (None outside IPython): where a
    chapter's peak happened, for whoever has to bring it down."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return getattr(shell, "execution_count", None)


class MemoryMonitor(threading.Thread):
    """Samples :func:`process_tree_bytes` of this process and writes the peak to ``path``."""

    def __init__(self, path: Path, chapter: str, interval: float = SAMPLE_SECONDS):
        super().__init__(name="dgmbook-memory", daemon=True)
        self.path, self.chapter, self.interval = path, chapter, interval
        self.peak = 0
        self._stop = threading.Event()

    def sample(self) -> None:
        now = process_tree_bytes()
        if now > self.peak * 1.005 or self.peak == 0:
            self.peak = max(now, self.peak)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            record = {"chapter": self.chapter, "peak_bytes": self.peak, "cell": _running_cell()}
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.path)

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # never let the record disturb the chapter
                pass

    def stop(self) -> None:
        self._stop.set()
