"""Small helpers shared by every chapter: seeding, quiet progress bars, bf16 autocast on CPU."""

from __future__ import annotations

import contextlib
import os
import random
import sys

import numpy as np
import torch
from tqdm.std import tqdm as _tqdm  # the plain-text bar: tqdm.auto would render a frozen widget

from .device import autocast_dtype

PROGRESS_ENV = "DGMBOOK_PROGRESS"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def progress_enabled() -> bool:
    """Bars show in a terminal (the CLI) and stay silent in notebooks and the book build, whose
    stderr is not a TTY (nbval compares stderr too). ``DGMBOOK_PROGRESS=1``/``0`` overrides."""
    env = os.environ.get(PROGRESS_ENV)
    if env is not None:
        return env.strip() not in ("0", "", "false", "no")
    return sys.stderr.isatty()


def progress(iterable=None, **kwargs):
    """``tqdm`` that is only drawn where it helps (see :func:`progress_enabled`)."""
    kwargs.setdefault("disable", not progress_enabled())
    kwargs.setdefault("dynamic_ncols", True)
    return _tqdm(iterable, **kwargs)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with torch on ``n`` intra-op threads, then restore the previous setting.
    The number of threads decides the order of a sum's terms, hence a result's last bits: runs
    that must not depend on the host fix it."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module, inference: bool = False):
    """Run the block with ``model`` in eval mode (no dropout), then restore the mode it had.
    ``inference=True`` also turns autograd off (``torch.inference_mode``: no bookkeeping at all,
    which matters when a decoding step is a few dozen small operations)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode() if inference else contextlib.nullcontext():
            yield model
    finally:
        model.train(was_training)


def autocast(enabled: bool = True, device: str | torch.device = "cpu"):
    """16-bit autocast on ``device`` (a device string such as "cuda:1", or a device):
    bf16 on the CPU (on this project's CPUs with AMX, bf16 matmuls run ~6x faster than
    fp32), the type that :func:`dgmbook.device.autocast_dtype` picks on a GPU."""
    if not enabled:
        return contextlib.nullcontext()
    device = torch.device(device)
    return torch.autocast(device.type, dtype=autocast_dtype(device))


def check_config(cfg, positive=(), nonnegative=(), choices: dict | None = None) -> None:
    """Raise a ``ValueError`` naming the field of configuration ``cfg`` whose value is out of
    range: ``positive`` fields must be > 0 (a sequence: every element), ``nonnegative`` >= 0,
    ``choices`` maps a field to its allowed values. ``None`` passes (an unset option)."""
    name = type(cfg).__name__

    def values(field):
        v = getattr(cfg, field)
        return v if isinstance(v, (tuple, list)) else [v]

    for field in positive:
        bad = [v for v in values(field) if v is not None and not v > 0]
        if bad:
            raise ValueError(f"{name}.{field} must be positive, got {getattr(cfg, field)!r}")
    for field in nonnegative:
        bad = [v for v in values(field) if v is not None and not v >= 0]
        if bad:
            raise ValueError(f"{name}.{field} must be >= 0, got {getattr(cfg, field)!r}")
    for field, allowed in (choices or {}).items():
        if getattr(cfg, field) not in allowed:
            raise ValueError(f"{name}.{field} must be one of {tuple(allowed)}, "
                             f"got {getattr(cfg, field)!r}")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
