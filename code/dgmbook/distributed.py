"""Data-parallel training on several processes (``torchrun``, ``accelerate launch``).

The full runs are launched unchanged by either launcher::

    torchrun --nproc_per_node 4 -m dgmbook full summarization-scratch
    accelerate launch --num_processes 4 -m dgmbook full summarization-scratch

Both start one process per device and give it ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them (``init_process_group``
from the environment: gloo on CPUs, NCCL on GPUs). Plain ``torch.distributed`` rather
than an ``accelerate.Accelerator``: it works under both launchers, and with one process
nothing is wrapped (no optimizer wrapper, no autocast of its own, no data loader), so
the one-process path that the chapters run stays bit for bit what it was; device
placement is :mod:`dgmbook.device`'s and mixed precision
:func:`dgmbook.utils.autocast`'s.

How the training loops use it (all of it a no-op with one process):

* every rank draws the same shuffled batches (same seed) and trains on its share of each
  (:func:`shard`), so the global batch is the configured one whatever the process count;
* each rank's loss is weighted by its share of the batch's target tokens
  (:func:`token_weight`) before :class:`~torch.nn.parallel.DistributedDataParallel`
  averages the gradients, so the update is the one-process update of the whole batch;
* time budgets end on every rank at once (:func:`all_max` of the elapsed time), and
  validation losses are sums over every rank's share of the batches (:func:`all_sum`);
* rank 0 alone prints progress and writes the results file (:func:`is_main`).

Experiments made of many small independent runs (seeds, losses, strategies) split the
runs instead: each rank trains every ``world_size``-th run (:func:`deal`), and rank 0
gathers the results in order (:func:`collect`) and evaluates them.
"""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: str = "cpu") -> int:
    """Join the process group that a launcher set up (``WORLD_SIZE`` > 1 in the
    environment); a no-op with one process or when already joined. Returns the world
    size."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if cuda else "gloo")
    return world_size()


def seed_dropout(seed: int) -> None:
    """With several processes, reseed torch's generator per process, after the model's
    initialisation (the same on every process): each process draws its own dropout masks
    rather than the same masks on other examples. A no-op with one process."""
    if world_size() > 1:
        torch.manual_seed(seed + 1_000_003 * (rank() + 1))


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, **ddp_kwargs) -> torch.nn.Module:
    """``model`` itself with one process, else ``model`` in
    :class:`~torch.nn.parallel.DistributedDataParallel` (which averages gradients in
    ``backward``; it broadcasts rank 0's weights first). Train through the wrapper;
    evaluate and save ``model``."""
    if world_size() == 1:
        return model
    device = next(model.parameters()).device
    ids = [device] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel
    return ddp(model, device_ids=ids, **ddp_kwargs)


def shard(items: Sequence[T]) -> list[T] | None:
    """This rank's share of a global batch: every ``world_size``-th item from ``rank``.
    None when the batch has fewer items than processes (every rank skips it, as all see
    the same batches: with N processes, up to N - 1 examples per bucket of an epoch go
    untrained)."""
    world = world_size()
    if world == 1:
        return list(items)
    if len(items) < world:
        return None
    return list(items[rank() :: world])


def deal(n: int) -> range:
    """The indices of the ``n`` independent jobs this rank runs: every ``world_size``-th
    from ``rank`` (all of them with one process)."""
    return range(rank(), n, world_size())


def collect(mine: dict[int, T], n: int) -> list[T] | None:
    """The results of all ``n`` jobs in index order on rank 0, None on the others:
    ``mine`` maps the indices this rank was dealt (:func:`deal`) to its results, which
    every rank sends to rank 0 (pickled, so keep tensors on the CPU). With one process,
    ``mine``'s values in order."""
    if world_size() > 1:
        parts: list | None = [None] * world_size() if is_main() else None
        dist.gather_object(mine, parts, dst=0)
        if not is_main():
            return None
        mine = {i: r for part in parts for i, r in part.items()}
    if sorted(mine) != list(range(n)):
        raise ValueError(f"results for jobs {sorted(mine)}, expected 0 to {n - 1}")
    return [mine[i] for i in range(n)]


def _reduce(values: Sequence[float], op) -> list[float]:
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_sum(*values: float) -> list[float]:
    """The sums over ranks of ``values`` (the values themselves with one process)."""
    return _reduce(values, dist.ReduceOp.SUM) if world_size() > 1 else list(values)


def all_max(value: float) -> float:
    """The largest ``value`` of any rank: elapsed time, so that budgets end together."""
    return _reduce([value], dist.ReduceOp.MAX)[0] if world_size() > 1 else value


def token_weight(local_tokens: int) -> tuple[float, int]:
    """``(weight, global_tokens)``: multiply this rank's mean loss over its
    ``local_tokens`` by ``weight = world_size * local_tokens / global_tokens``; DDP's
    gradient average (a sum divided by ``world_size``) is then the gradient of the mean
    over all tokens."""
    if world_size() == 1:
        return 1.0, local_tokens
    total = int(all_sum(local_tokens)[0])
    return world_size() * local_tokens / total, total
