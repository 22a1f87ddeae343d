"""Recorded results of long "full" runs: written by the CLI, committed, read by the chapters.

A results file is JSON holding the run's configuration, its metrics, the code revision, the
hardware it ran on and its wall time, so that a chapter can show it beside the live book run.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).parent / "results"


def summary(values) -> dict:
    """Per-seed values of a full run's metric, their mean and standard error (sample standard
    deviation / sqrt(n)), as JSON: the standard error of one value is None (JSON has no NaN)."""
    vals = [float(v) for v in values]
    n = len(vals)
    mean = math.fsum(vals) / n
    se = (math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1) / n)
          if n > 1 else None)
    return {"values": vals, "mean": mean, "se": se}


def results_path(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def code_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS_DIR.parent,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=RESULTS_DIR.parent,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> dict[str, Any]:
    info = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(name: str, config: dict, metrics: dict, wall_seconds: float,
                  directory: Path | None = None, revision: str | None = None) -> Path:
    """Write ``results/NAME.json``. ``revision``: the code revision the run started from (a run
    can last hours, and the checkout may move meanwhile); by default, :func:`code_revision` now."""
    path = (directory or RESULTS_DIR) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "config": config,
        "metrics": metrics,
        "code_revision": revision or code_revision(),
        "hardware": hardware(),
        "wall_seconds": round(wall_seconds, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
        tmp.replace(path)  # atomic: a results file is whole or absent, never half written
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_results(name: str) -> dict:
    path = results_path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"no recorded results {name!r} at {path}; produce them with `python -m dgmbook full {name}`"
        )
    return json.loads(path.read_text())
