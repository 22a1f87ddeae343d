"""Data for tests that must not read MNIST: small, made up, learnable in seconds."""

import torch


def digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 'digits' ``([n, 28, 28] in [-1, 1], labels [n])``: digit k is a bright
    vertical bar at columns 1 + 2k .. 3 + 2k over faint noise (trivially separable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(10, (n,), generator=g)
    x = torch.full((n, 28, 28), -1.0) + 0.1 * torch.rand(n, 28, 28, generator=g)
    for i, k in enumerate(y.tolist()):
        x[i, :, 1 + 2 * k:4 + 2 * k] = 1.0
    return x, y
