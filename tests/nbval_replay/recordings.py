"""The chapters' recorded references: where they live, which machine recorded each, which one a
machine is checked against, and how a chapter is executed to record one (as the book build does)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat

from . import BOOK, HERE, REPO, chapters

REFERENCES = HERE / "references"
RECORD_CMD = "python -m tests.nbval_replay.record book/{name}.md"


def is_chapter(path: Path) -> bool:
    return path.suffix == ".md" and path.resolve() in {c.resolve() for c in chapters()}


def reference_path(chapter: Path) -> Path:
    return REFERENCES / f"{chapter.stem}.ipynb"


def code_sources(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells if c.cell_type == "code"]


def read_chapter(chapter: Path):
    return jupytext.read(chapter)


def reference_mismatch(chapter: Path) -> str | None:
    """Why the chapter's reference cannot be used (missing, or code cells differ), or None."""
    ref = reference_path(chapter)
    how = f"re-record it with: {RECORD_CMD.format(name=chapter.stem)}"
    if not ref.exists():
        return f"chapter {chapter.name} has no nbval reference at {ref.relative_to(REPO)}; {how}"
    mine = code_sources(read_chapter(chapter))
    theirs = code_sources(nbformat.read(ref, as_version=4))
    if mine != theirs:
        first = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        return (
            f"the code cells of {chapter.relative_to(REPO)} no longer match its reference "
            f"{ref.relative_to(REPO)} ({len(mine)} vs {len(theirs)} code cells; first difference "
            f"at code cell {first}); {how}"
        )
    return None


def execute(chapter: Path, timeout: int = 600):
    """Execute a chapter the way the book build does (working directory book/, the cell timeout
    of the chapter's ``mystnb: execution_timeout`` front matter if it sets one) and return it."""
    import nbclient

    nb = read_chapter(chapter)
    timeout = nb.metadata.get("mystnb", {}).get("execution_timeout", timeout)
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}}
    )
    client.execute()
    return nb


def strip_volatile_metadata(nb) -> None:
    """Drop execution timestamps and the like so references diff cleanly."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)


# --- which reference a machine is checked against ----------------------------------------------
#
# A chapter's outputs are exactly reproducible only on the kind of machine they were recorded on:
# the math libraries pick different kernels (AMX, AVX-512 BF16, AVX2 ...) and split work over the
# threads differently, so sums are rounded in another order, a trained model differs in its last
# bits, and the numbers it prints differ a little. Each reference therefore records the machine it
# came from (``metadata.dgmbook.machine``). ``tests/references/<name>.ipynb`` is the primary
# reference (recorded on whatever machine last changed the chapter); ``tests/references/<machine
# slug>/<name>.ipynb`` are extra ones recorded on other kinds of machine. On a machine that matches
# one of them the chapter is compared strictly against it; on any other machine it is compared
# against the primary one in *portable* mode (:func:`portable_mismatch`).

ISA_FLAGS = (("amx_bf16", "amx"), ("avx512_bf16", "avx512_bf16"), ("avx512f", "avx512"), ("avx2", "avx2"))


def machine() -> dict:
    """What decides a chapter's exact floating-point results here: the CPU's vendor and the widest
    instruction set the math libraries use on it, the number of threads torch uses, torch's version,
    and the accelerator the chapters run on when ``$DGMBOOK_DEVICE`` names one (``"device"``: e.g.
    ``"cuda NVIDIA H100 80GB HBM3"``; absent on the CPU, as in every reference recorded on one), so
    that a chapter run on a GPU is compared in portable mode against the CPU's references."""
    import platform

    import torch

    from dgmbook import device as devices

    vendor, flags = platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id":
                vendor = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    isa = next((name for flag, name in ISA_FLAGS if flag in flags), "baseline")
    here = {"cpu": f"{vendor} {isa}", "threads": torch.get_num_threads(), "torch": torch.__version__}
    device = torch.device(devices.resolve())
    if device.type == "cuda":
        here["device"] = f"cuda {torch.cuda.get_device_name(device)}"
    elif device.type != "cpu":
        here["device"] = device.type
    return here


def describe(m: dict | None) -> str:
    if m is None:
        return "an unrecorded machine"
    on = f", on {m['device']}" if "device" in m else ""
    return f"{m['cpu']}, {m['threads']} thread(s), torch {m['torch']}{on}"


def machine_slug(m: dict) -> str:
    name = f"{m['cpu']} {m['threads']}t {m.get('device', '')}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def recorded_on(nb) -> dict | None:
    return nb.metadata.get("dgmbook", {}).get("machine")


def all_references(chapter: Path) -> list[Path]:
    """The primary reference, then the per-machine ones, of a chapter (those that exist)."""
    extra = sorted(REFERENCES.glob(f"*/{chapter.stem}.ipynb"))
    return [p for p in [reference_path(chapter), *extra] if p.exists()]


@dataclass
class Choice:
    path: Path
    strict: bool  # False: portable mode
    recorded_on: dict | None


def choose_reference(chapter: Path, here: dict | None = None) -> Choice | str:
    """The reference to check ``chapter`` against on machine ``here`` (default: this one), or why
    there is none: a current reference recorded on this kind of machine (strict), else the primary
    one (portable). A reference is current when its code cells are the chapter's."""
    here = machine() if here is None else here
    problem = reference_mismatch(chapter)  # the primary one must always be current
    if problem:
        return problem
    mine = code_sources(read_chapter(chapter))
    for path in all_references(chapter):
        nb = nbformat.read(path, as_version=4)
        if recorded_on(nb) == here and code_sources(nb) == mine:
            return Choice(path, True, here)
    primary = reference_path(chapter)
    return Choice(primary, False, recorded_on(nbformat.read(primary, as_version=4)))


def recording_target(chapter: Path, here: dict, primary: bool = False) -> Path:
    """Where a recording made on ``here`` goes: the primary reference if asked, if there is none,
    if it is stale (the chapter changed: this recording becomes the new primary) or if it was
    recorded on this kind of machine; else this machine's own reference."""
    path = reference_path(chapter)
    if primary or reference_mismatch(chapter) or recorded_on(nbformat.read(path, as_version=4)) == here:
        return path
    return REFERENCES / machine_slug(here) / path.name
