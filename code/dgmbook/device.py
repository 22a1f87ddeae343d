"""Where the full runs train: one setting, ``DGMBOOK_DEVICE``.

* unset or ``cpu``: the CPU (the book's machine; every chapter trains here);
* ``auto``: ``cuda`` when a GPU is visible, else the CPU;
* any torch device string: ``cuda``, ``cuda:1``, ``mps`` ...

A bare ``cuda`` becomes ``cuda:$LOCAL_RANK`` (0 when unset), so that under ``torchrun``
or ``accelerate launch`` each process takes its own GPU. :func:`autocast_dtype` is the
16-bit type that suits a device: bf16 on the CPU and on GPUs that support it (Ampere and
later), else fp16 (whose small range wants gradient scaling, which the training loops do
not do: on such a GPU prefer ``bf16=False``).
"""

from __future__ import annotations

import os

import torch

ENV = "DGMBOOK_DEVICE"


def resolve(setting: str | None = None) -> str:
    """The device string for ``setting`` (default: ``$DGMBOOK_DEVICE``, else "cpu")."""
    if setting is None:
        setting = os.environ.get(ENV, "")
    setting = setting.strip().lower() or "cpu"
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(setting)  # a RuntimeError names a malformed string
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return str(device)


def autocast_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """bf16 on the CPU; on CUDA bf16 where the GPU supports it, else fp16."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16
