"""Where the full runs train: one setting, ``DGMBOOK_DEVICE``.

* unset or ``cpu``: the CPU (the book's machine; every chapter trains here);
* ``auto``: ``cuda`` when a GPU is visible, else the CPU;
* any torch device string: ``cuda``, ``cuda:1``, ``mps`` ...

A bare ``cuda`` becomes ``cuda:$LOCAL_RANK`` (0 when unset), so that under ``torchrun``
or ``accelerate launch`` each process takes its own GPU. :func:`autocast_dtype` is the
16-bit type that suits a device: bf16 on the CPU and on GPUs that support it (Ampere and
later), else fp16 (whose small range wants gradient scaling, which the training loops do
not do: on such a GPU prefer ``bf16=False``).

The chapters' training and evaluation functions take ``device=None`` (this setting, read when
they are called) and hand every result back on the CPU, so that run-cache entries and chapters
do not depend on where a run trained. A model handed to an evaluation is used where it lives
when that is the device, else a copy goes there (:func:`module_on`): the caller's model never
moves. The random numbers a loop draws itself (orders, batches, latent vectors) are drawn on
the CPU, as on the book's machine, and then moved; those drawn inside a model (dropout, a VAE's
reparameterization noise) are the device's. On the CPU every result is bit for bit what it was
before there was a setting.
"""

from __future__ import annotations

import copy
import itertools
import os

import torch

ENV = "DGMBOOK_DEVICE"


def resolve(setting: str | torch.device | None = None) -> str:
    """The device string for ``setting`` (default: ``$DGMBOOK_DEVICE``, else "cpu"); a string
    that names no device raises a ``RuntimeError`` that quotes it."""
    if setting is None:
        setting = os.environ.get(ENV, "")
    setting = str(setting).strip().lower() or "cpu"
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(setting)
    except RuntimeError as err:
        msg = f"not a torch device: {setting!r} (from ${ENV} or a device= argument)"
        raise RuntimeError(f"{msg}: {err}") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return str(device)


def autocast_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """bf16 on the CPU; on CUDA bf16 where the GPU supports it, else fp16."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def module_on(module: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """``module`` itself where its parameters and buffers live on ``device``, else a copy there
    (the caller's module stays where it is; its mode, train or eval, comes along)."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    if first is None or first.device == torch.device(device):
        return module
    return copy.deepcopy(module).to(device)
