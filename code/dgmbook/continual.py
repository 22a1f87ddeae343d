"""Continual learning on permuted MNIST: naive fine-tuning, Elastic Weight Consolidation (EWC)
and rehearsal (replay), with the accuracy matrix and the costs each strategy pays.

The setting (chapter "Continual learning on permuted MNIST")::

    task t = MNIST with its 784 pixels shuffled by a fixed permutation pi_t (pi_0 = identity)
    train task 0, then task 1, ... with one network and one optimizer;
    R[i, j] = test accuracy on task j after training task i        (the accuracy matrix)

Strategies

* ``naive``  plain SGD on each new task (fine-tuning);
* ``ewc``    the new task's loss plus ``(lambda/2) sum_i F_i (theta_i - theta*_i)^2`` for every
             earlier task (Kirkpatrick et al. 2017), F the diagonal Fisher at that task's end;
* ``replay`` the new task's data concatenated with a memory of earlier tasks' examples
             (everything when ``buffer_size is None``: full rehearsal; else a task-balanced buffer).

Everything a chapter runs is ``run(Config(...))``: a plain dict of tensors and numbers that the
run cache can store. Inputs are kept as uint8 (what a replay memory really has to store) and
normalised per batch. Runs train on ``$DGMBOOK_DEVICE`` (:mod:`dgmbook.device`; the CPU by
default) or a ``device=`` argument: data and replay memory stay on the CPU, each batch moves to
the device, random numbers are drawn on the CPU (the CNN's dropout excepted), and the results
come back on the CPU. The building blocks (Fisher, EWC, an epoch of training) run where the
model they are given lives.

The full experiment (:func:`full_experiment`: the chapter's ten-task strategies over
three seeds, at one and three epochs per task, and its Fisher comparison over the same
seeds) records its results in code/dgmbook/results/continual-learning.json::

    python -m dgmbook full continual-learning
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from . import device as devices
from . import distributed, recorded, runcache
from .utils import autocast, check_config, count_parameters, eval_mode, seed_everything

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
N_PIXELS = 28 * 28

# ---------------------------------------------------------------------------------------------
# tasks


def task_permutation(task: int, seed: int = 0) -> torch.Tensor:
    """The pixel permutation of task ``task``: identity for task 0, else ``randperm(784)`` from a
    generator seeded by ``(seed, task)``, so a task's permutation never depends on how many
    tasks a run has. Returns int64 ``[784]``."""
    if task == 0:
        return torch.arange(N_PIXELS)
    g = torch.Generator().manual_seed(10_007 * seed + task)
    return torch.randperm(N_PIXELS, generator=g)


@dataclass
class PermutedMNIST:
    """Base images (flattened uint8) and labels; task ``t`` is the same images, pixels permuted.

    Every task uses the same underlying images, as in the ContinualAI tutorial: what changes
    between tasks is only the input "domain" (a domain-incremental benchmark)."""

    x_train: torch.Tensor  # uint8 [N, 784]
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor  # uint8 [M, 784]
    y_test: torch.Tensor  # int64 [M]
    seed: int = 0

    def train(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_train[:, task_permutation(task, self.seed)], self.y_train

    def test(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_test[:, task_permutation(task, self.seed)], self.y_test


@functools.lru_cache(maxsize=2)
def _mnist(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from .data import load_image_dataset

    x, y = load_image_dataset("MNIST", train=train)
    return x.reshape(len(x), N_PIXELS), y


def load_permuted_mnist(n_train: int | None = None, n_test: int | None = None,
                        seed: int = 0) -> PermutedMNIST:
    """MNIST (optionally a seeded random subset of ``n_train`` / ``n_test`` images) as the base of
    a permuted-MNIST sequence."""
    (xtr, ytr), (xte, yte) = _mnist(True), _mnist(False)
    g = torch.Generator().manual_seed(seed)
    if n_train is not None and n_train < len(xtr):
        idx = torch.randperm(len(xtr), generator=g)[:n_train]
        xtr, ytr = xtr[idx], ytr[idx]
    if n_test is not None and n_test < len(xte):
        idx = torch.randperm(len(xte), generator=g)[:n_test]
        xte, yte = xte[idx], yte[idx]
    return PermutedMNIST(xtr, ytr, xte, yte, seed)


def to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [B, 784] -> standardised float32 [B, 784]."""
    return (x.float() / 255.0 - MNIST_MEAN) / MNIST_STD


# ---------------------------------------------------------------------------------------------
# models


class CourseCNN(nn.Module):
    """The ContinualAI tutorial's CNN: conv(1->10, k5) - maxpool - ReLU - conv(10->20, k5) +
    Dropout2d - maxpool - ReLU - fc 320->50 - ReLU - dropout - fc 50->10 (21,840 parameters)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 28, 28)  # [B, 784] -> [B, 1, 28, 28]
        x = F.relu(F.max_pool2d(self.conv1(x), 2))  # [B, 10, 12, 12]
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))  # [B, 20, 4, 4]
        x = F.relu(self.fc1(x.flatten(1)))  # [B, 50]
        x = F.dropout(x, training=self.training)
        return self.fc2(x)  # [B, 10] logits


class MLP(nn.Module):
    """784 - hidden - hidden - 10 with ReLU: blind to pixel order (see :func:`permute_first_layer`)."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(N_PIXELS, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, 784] -> [B, 10]


def permute_first_layer(mlp: MLP, perm: torch.Tensor) -> MLP:
    """A copy of ``mlp`` whose first-layer columns are permuted so that ``new(x[:, perm]) ==
    mlp(x)``: for an MLP, a permuted task is the same task with relabelled weights."""
    new = copy.deepcopy(mlp)
    with torch.no_grad():
        w = new.net[0].weight  # [hidden, 784]
        w.copy_(mlp.net[0].weight[:, perm])  # column j now reads pixel perm[j]
    return new


def make_model(cfg: "Config") -> nn.Module:
    if cfg.model == "cnn":
        return CourseCNN()
    if cfg.model == "mlp":
        return MLP(cfg.hidden)
    raise ValueError(f"unknown model {cfg.model!r}: use 'mlp' or 'cnn'")


# ---------------------------------------------------------------------------------------------
# the Fisher information and the EWC penalty


def _per_example_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per-example gradients of -log p(y_n | x_n) for a float batch x [B, 784], y [B]:
    {name: [B, *param.shape]} (torch.func.vmap over the functional model)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def nll(p, xn, yn):
        return F.cross_entropy(functional_call(model, p, (xn[None],)), yn[None])

    return vmap(grad(nll), in_dims=(None, 0, 0))(params, x, y)


def _linear_only(model: nn.Module) -> bool:
    """True when every parameter belongs to an nn.Linear (then squared per-example gradients
    have the cheap closed form used in :func:`squared_grad_sum`)."""
    owned = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear)
                for p in m.parameters(recurse=False))
    return owned == count_parameters(model)


def squared_grad_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     weight: torch.Tensor | None = None) -> dict:
    """``sum_n w_n (d(-log p(y_n|x_n)) / d theta)^2`` over a float batch x [B, 784], y [B] (weights
    w [B], default 1), as {name: tensor shaped like the parameter}.

    For a linear layer ``out = a W^T + b`` the per-example gradient is the outer product
    ``delta_n a_n^T`` (delta_n = dloss_n/dout_n), so the sum of its squares is
    ``(delta^2)^T (a^2)``: two matrix products instead of B materialised gradients. Models with
    other layers (the CNN) fall back to per-example gradients from ``torch.func.vmap``."""
    w = torch.ones(len(x), device=x.device) if weight is None else weight
    if not _linear_only(model):
        g = _per_example_grads(model, x, y)
        return {k: torch.einsum("b,b...->...", w, v.pow(2)) for k, v in g.items()}
    acts: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(mod, inp, out):  # remember the layer's input a [B, in] and output [B, out]
        out.retain_grad()
        acts[mod] = (inp[0].detach(), out)

    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    handles = [m.register_forward_hook(keep) for m in layers.values()]
    try:
        with torch.enable_grad():
            F.cross_entropy(model(x), y, reduction="sum").backward()  # delta_n is per example
    finally:
        for h in handles:
            h.remove()
    sq = {}
    for name, m in layers.items():
        a, out = acts[m]
        d2 = out.grad.pow(2) * w[:, None]  # [B, out]
        sq[f"{name}.weight"] = d2.T @ a.pow(2)  # [out, in]
        if m.bias is not None:
            sq[f"{name}.bias"] = d2.sum(0)  # [out]
    model.zero_grad(set_to_none=True)
    return {k: sq[k] for k, _ in model.named_parameters()}


def fisher_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str = "sampled",
                    batch_size: int = 256, generator: torch.Generator | None = None) -> dict:
    """The diagonal Fisher information ``F_i = E_x E_{y ~ p(y|x)} [(d log p(y|x) / d theta_i)^2]``
    at the model's current parameters, estimated on the uint8 inputs ``x`` [N, 784].

    mode
      ``"exact"``     the expectation over y taken exactly (sum over the 10 classes, 10 backward
                      passes per example): the true Fisher of the empirical input distribution;
      ``"sampled"``   one label per example drawn from the model, y ~ p(y|x): an unbiased
                      Monte-Carlo estimate of the true Fisher (what EWC uses);
      ``"empirical"`` the data labels y instead of model samples (the "empirical Fisher": a
                      different matrix, equal to the Fisher only when the model fits p(y|x));
      ``"course"``    the ContinualAI tutorial's shortcut: the *square of the summed* mini-batch
                      gradients of the mean loss, ``(sum_b grad mean_b loss)^2``, data labels.

    Returns {name: tensor shaped like the parameter}. The model is evaluated in eval mode
    (dropout off) and in float32, where it lives (``x`` and ``y`` may be on the CPU: each batch
    moves to the model; the sampled labels are drawn on the CPU, from ``generator``).
    """
    device = next(model.parameters()).device
    with eval_mode(model):
        params = dict(model.named_parameters())
        fisher = {k: torch.zeros_like(v) for k, v in params.items()}
        n = len(x)
        if mode == "course":
            model.zero_grad(set_to_none=True)
            for s in range(0, n, batch_size):
                xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
                F.cross_entropy(model(to_input(xb)), yb).backward()
            fisher = {k: v.grad.detach().pow(2) for k, v in params.items()}
            model.zero_grad(set_to_none=True)
        elif mode in ("exact", "sampled", "empirical"):
            for s in range(0, n, batch_size):
                xb = to_input(x[s:s + batch_size].to(device))  # [B, 784]
                with torch.no_grad():
                    probs = F.softmax(model(xb), dim=-1)  # [B, 10]
                if mode == "exact":
                    for c in range(probs.shape[1]):  # weight example n's squared gradient by p(c|x_n)
                        yc = torch.full((len(xb),), c, dtype=torch.long, device=device)
                        sq = squared_grad_sum(model, xb, yc, probs[:, c])
                        for k in fisher:
                            fisher[k] += sq[k]
                else:
                    yb = (torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1)
                          if mode == "sampled" else y[s:s + batch_size]).to(device)
                    sq = squared_grad_sum(model, xb, yb)
                    for k in fisher:
                        fisher[k] += sq[k]
            fisher = {k: v / n for k, v in fisher.items()}
        else:
            raise ValueError(f"unknown Fisher mode {mode!r}")
    return fisher


class EWC:
    """The EWC penalty ``(lam/2) sum_t sum_i F_t,i (theta_i - theta*_t,i)^2`` over consolidated tasks.

    A sum of diagonal quadratics is one diagonal quadratic plus a constant:
    ``sum_t F_t (theta - a_t)^2 = F (theta - abar)^2 + c`` with ``F = sum_t F_t`` and
    ``abar = sum_t F_t a_t / F``. So the object stores two parameter-sized tensors however many
    tasks it has seen (the constant does not affect training).

    ``max_curvature`` (optional) caps each coordinate's penalty curvature ``lam F_i``. SGD with
    step size eta on a quadratic of curvature h moves a coordinate all the way to its anchor
    when ``eta h = 1`` and oscillates ever more wildly past ``eta h = 2`` (with momentum beta,
    ``2 (1 + beta)``); capping at ``1/eta`` leaves such coordinates as frozen as SGD can make them
    while keeping the iteration stable for any lambda."""

    def __init__(self, lam: float, max_curvature: float | None = None):
        self.lam = lam
        self.max_curvature = max_curvature
        self.fisher: dict[str, torch.Tensor] = {}  # sum_t F_t
        self.f_theta: dict[str, torch.Tensor] = {}  # sum_t F_t * theta*_t
        self.anchor: dict[str, torch.Tensor] = {}  # abar
        self.curv: dict[str, torch.Tensor] = {}  # lam * F (capped)
        self.n_tasks = 0

    def consolidate(self, model: nn.Module, fisher: dict) -> None:
        """Add a finished task: its Fisher ``fisher`` and the model's current parameters theta*."""
        for k, p in model.named_parameters():
            f, th = fisher[k].detach(), p.detach()
            self.fisher[k] = self.fisher.get(k, 0) + f
            self.f_theta[k] = self.f_theta.get(k, 0) + f * th
            tot = self.fisher[k]
            self.anchor[k] = torch.where(tot > 0, self.f_theta[k] / tot.clamp_min(1e-30), th)
            c = self.lam * tot
            self.curv[k] = c if self.max_curvature is None else c.clamp_max(self.max_curvature)
        self.n_tasks += 1

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``(1/2) sum_i lam F_i (theta_i - abar_i)^2`` (0 before the first consolidation)."""
        if not self.n_tasks:
            return torch.zeros(())
        total = sum((self.curv[k] * (p - self.anchor[k]).pow(2)).sum()
                    for k, p in model.named_parameters())
        return 0.5 * total

    def capped_fraction(self) -> float:
        """Fraction of coordinates whose curvature ``lam F_i`` hit ``max_curvature``."""
        if self.max_curvature is None or not self.n_tasks:
            return 0.0
        n = sum(v.numel() for v in self.curv.values())
        return sum((v >= self.max_curvature).sum().item() for v in self.curv.values()) / n

    def nbytes(self) -> int:
        """Memory the strategy keeps beyond the model: F and F*theta* (the anchor is derived)."""
        return sum(v.numel() * v.element_size() for v in (*self.fisher.values(), *self.f_theta.values()))


# ---------------------------------------------------------------------------------------------
# rehearsal


class ReplayBuffer:
    """A task-balanced memory of past examples, stored as uint8 pixels and int64 labels.

    ``capacity=None`` keeps everything (full rehearsal). Otherwise every seen task holds
    ``capacity // n_tasks`` examples (the first tasks one more when it does not divide): adding a
    task shrinks the older tasks' shares, so ``len(buffer) <= capacity`` always."""

    def __init__(self, capacity: int | None, seed: int = 0):
        self.capacity = capacity
        self.g = torch.Generator().manual_seed(seed)
        self.xs: list[torch.Tensor] = []  # per task, uint8 [n_t, 784], in random order
        self.ys: list[torch.Tensor] = []

    def add_task(self, x: torch.Tensor, y: torch.Tensor) -> None:
        order = torch.randperm(len(x), generator=self.g)
        if self.capacity is not None:  # no task can ever keep more than its first share
            order = order[: self.capacity]
        self.xs.append(x[order])
        self.ys.append(y[order])
        if self.capacity is not None:
            t, q, r = len(self.xs), self.capacity // len(self.xs), self.capacity % len(self.xs)
            for i in range(t):
                keep = q + (1 if i < r else 0)
                self.xs[i], self.ys[i] = self.xs[i][:keep], self.ys[i][:keep]

    def __len__(self) -> int:
        return sum(len(y) for y in self.ys)

    def parts(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The stored examples as per-task tensors (no copy)."""
        return list(self.xs), list(self.ys)

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.xs:
            return torch.zeros(0, N_PIXELS, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
        return torch.cat(self.xs), torch.cat(self.ys)

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() + y.numel() for x, y in zip(self.xs, self.ys))  # 1-byte labels suffice


# ---------------------------------------------------------------------------------------------
# training and evaluation


@dataclass
class Config:
    model: str = "mlp"  # "mlp" (784-hidden-hidden-10) or "cnn" (the tutorial's CNN)
    hidden: int = 256
    strategy: str = "naive"  # "naive" | "ewc" | "replay"
    n_tasks: int = 3
    n_train: int | None = None  # training images per task (None: all 60,000)
    n_test: int | None = None  # test images per task (None: all 10,000)
    epochs: int = 1  # epochs per task (over the task's data, plus the replayed memory)
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    ewc_lambda: float = 100.0  # the lambda of (lambda/2) sum_i F_i (theta_i - theta*_i)^2
    ewc_cap: float | None = 1.0  # cap lambda F_i at ewc_cap / lr (see EWC); None: no cap
    fisher: str = "sampled"  # "sampled" | "empirical" | "exact" | "course" (see fisher_diagonal)
    fisher_n: int = 1000  # examples of each finished task the Fisher is estimated on
    buffer_size: int | None = None  # replay: None keeps all past data (full rehearsal)
    seed: int = 0
    bf16: bool = True  # bf16 autocast for the forward/backward passes (the Fisher stays fp32)
    tasks: list[int] | None = field(default=None)  # task ids to learn in order (None: 0..n_tasks-1)

    def __post_init__(self) -> None:
        check_config(self, positive=("hidden", "n_tasks", "n_train", "n_test", "epochs",
                                     "batch_size", "lr", "fisher_n", "ewc_cap"),
                     nonnegative=("momentum", "ewc_lambda", "buffer_size"),
                     choices={"model": ("mlp", "cnn"), "strategy": ("naive", "ewc", "replay"),
                              "fisher": ("sampled", "empirical", "exact", "course")})

    def task_ids(self) -> list[int]:
        return list(self.tasks) if self.tasks is not None else list(range(self.n_tasks))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool = True,
             batch_size: int = 2000, device: str | None = None) -> float:
    """Fraction of uint8 inputs x [N, 784] classified as y [N], on ``device`` (default
    ``$DGMBOOK_DEVICE``; the model stays where it is, a copy goes there)."""
    device = devices.resolve(device)
    model = devices.module_on(model, device)
    with eval_mode(model):
        correct = 0
        for s in range(0, len(x), batch_size):
            xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
            with autocast(bf16, device):
                logits = model(to_input(xb))
            correct += (logits.argmax(-1) == yb).sum().item()
    return correct / len(x)


class ConcatRows:
    """Several tensors as one along dim 0, without copying them into one: ``len`` and indexing
    by a LongTensor of row numbers, as ``torch.cat(parts)[idx]`` gives (the same values, in the
    same order). Rehearsal trains on a task plus every stored past example; concatenating them
    would hold the memory twice (for ten permuted-MNIST tasks, about 0.9 GB more)."""

    def __init__(self, parts: list[torch.Tensor]):
        self.parts = parts
        self.starts = torch.tensor([0, *torch.tensor([len(p) for p in parts]).cumsum(0).tolist()])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        which = torch.searchsorted(self.starts[1:], idx, right=True)  # [B]: the part of each row
        out = torch.empty((len(idx), *self.parts[0].shape[1:]), dtype=self.parts[0].dtype)
        for k in which.unique().tolist():
            rows = which == k
            out[rows] = self.parts[k][idx[rows] - self.starts[k]]
        return out


def train_epochs(model, opt, x, y, cfg: Config, g: torch.Generator, ewc: EWC | None = None) -> int:
    """``cfg.epochs`` shuffled passes of mini-batch SGD over uint8 x [N, 784], y [N] (tensors, or
    :class:`ConcatRows`), adding the EWC penalty when given. Returns the number of
    example-gradients computed. Trains where the model lives: the order is drawn on the CPU
    (from ``g``) and each batch moves to the model's device."""
    device = next(model.parameters()).device
    model.train()
    seen = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            with autocast(cfg.bf16, device):
                logits = model(to_input(xb))  # [B, 10]
            loss = F.cross_entropy(logits.float(), yb)
            if ewc is not None:
                loss = loss + ewc.penalty(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
    return seen


def run(cfg: Config, data: PermutedMNIST | None = None, device: str | None = None) -> dict:
    """Learn the tasks ``cfg.task_ids()`` in sequence with ``cfg.strategy``; after each, test on
    every task of the sequence (also those not yet learned). Trains on ``device`` (default
    ``$DGMBOOK_DEVICE``); the results are on the CPU.

    Returns a dict (run-cache friendly): ``R`` float [T, T] the accuracy matrix, ``train_examples``
    and ``fisher_examples`` per task (example-gradients spent), ``memory_bytes`` per task (what the
    strategy stores beyond the model after that task), ``capped_fraction`` per task (EWC: share of
    coordinates at the curvature cap), ``n_params`` and ``config``."""
    device = devices.resolve(device)
    g = seed_everything(cfg.seed)
    if data is None:
        data = load_permuted_mnist(cfg.n_train, cfg.n_test, seed=cfg.seed)
    tasks = cfg.task_ids()
    model = make_model(cfg).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    cap = None if cfg.ewc_cap is None else cfg.ewc_cap / cfg.lr
    ewc = EWC(cfg.ewc_lambda, cap) if cfg.strategy == "ewc" else None
    buffer = ReplayBuffer(cfg.buffer_size, seed=cfg.seed) if cfg.strategy == "replay" else None
    if cfg.strategy not in ("naive", "ewc", "replay"):
        raise ValueError(f"unknown strategy {cfg.strategy!r}")
    tests = [data.test(t) for t in tasks]
    T = len(tasks)
    R = torch.zeros(T, T)
    train_examples, fisher_examples, memory, capped = [], [], [], []
    for i, t in enumerate(tasks):
        x, y = data.train(t)
        if buffer is not None and len(buffer):
            bx, by = buffer.parts()
            x, y = ConcatRows([x, *bx]), ConcatRows([y, *by])
        train_examples.append(train_epochs(model, opt, x, y, cfg, g, ewc))
        n_fisher = 0
        if ewc is not None:
            xt, yt = data.train(t)
            n_fisher = len(xt) if cfg.fisher == "course" else min(cfg.fisher_n, len(xt))
            sub = torch.randperm(len(xt), generator=g)[:n_fisher]
            fisher = fisher_diagonal(model, xt[sub], yt[sub], cfg.fisher, generator=g)
            ewc.consolidate(model, fisher)
        if buffer is not None:
            buffer.add_task(*data.train(t))
        fisher_examples.append(n_fisher)
        capped.append(ewc.capped_fraction() if ewc else 0.0)
        memory.append(ewc.nbytes() if ewc else buffer.nbytes() if buffer else 0)
        for j, (xt, yt) in enumerate(tests):
            R[i, j] = accuracy(model, xt, yt, cfg.bf16, device=device)
    return {
        "R": R,
        "train_examples": train_examples,
        "fisher_examples": fisher_examples,
        "memory_bytes": memory,
        "capped_fraction": capped,
        "n_params": count_parameters(model),
        "config": asdict(cfg),
    }


def cached_run(cfg: Config, name: str = "continual") -> dict:
    """:func:`run` through the run cache (keyed by the config and the code :func:`run` reaches)."""
    return runcache.cached(name, cfg, run, cfg)


# ---------------------------------------------------------------------------------------------
# metrics of an accuracy matrix R [T, T] (row i: after training task i; column j: tested on task j)


def average_accuracy(R: torch.Tensor) -> torch.Tensor:
    """[T]: after task i, the mean accuracy over the tasks seen so far, ``mean_{j<=i} R[i, j]``."""
    T = R.shape[0]
    mask = torch.ones(T, T).tril()
    return (R * mask).sum(1) / mask.sum(1)


def average_over_all(R: torch.Tensor) -> torch.Tensor:
    """[T]: the ContinualAI tutorial's "Avg acc": ``mean_j R[i, j]`` over *all* T tasks, including
    those not yet trained (equal to :func:`average_accuracy` after the last task)."""
    return R.mean(1)


def forgetting(R: torch.Tensor) -> torch.Tensor:
    """[T-1]: for each task j but the last, the drop from its best accuracy while later tasks were
    learned to its final accuracy: ``max_{j<=i<T-1} R[i, j] - R[T-1, j]`` (Chaudhry et al. 2018)."""
    T = R.shape[0]
    return torch.stack([R[j:T - 1, j].max() - R[T - 1, j] for j in range(T - 1)])


def fisher_comparison(cfg: Config, n: int = 2048, device: str | None = None) -> dict:
    """Train ``cfg.model`` on task 0 (``cfg.epochs``, plain SGD) and estimate its diagonal Fisher
    four ways on the same ``n`` training examples (the course shortcut too, in batches of 256).
    Also returns ``grad_mean``, the mean per-example gradient of the data loss: the empirical
    Fisher decomposes as ``mean(g^2) = grad_mean^2 + var(g)``. Tensors are flattened [P], on the
    CPU; the model trains on ``device`` (default ``$DGMBOOK_DEVICE``)."""
    device = devices.resolve(device)
    g = seed_everything(cfg.seed)
    data = load_permuted_mnist(cfg.n_train, cfg.n_test, seed=cfg.seed)
    model = make_model(cfg).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    x, y = data.train(0)
    train_epochs(model, opt, x, y, cfg, g)
    sub = torch.randperm(len(x), generator=g)[:n]
    xs, ys = x[sub], y[sub]
    flat = lambda d: torch.cat([v.flatten() for v in d.values()]).cpu()  # noqa: E731
    out = {m: flat(fisher_diagonal(model, xs, ys, m, generator=g))
           for m in ("sampled", "empirical", "exact", "course")}
    model.eval()  # the mean per-example gradient is the ordinary full-batch gradient
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(to_input(xs.to(device))), ys.to(device)).backward()
    out["grad_mean"] = torch.cat([p.grad.flatten() for p in model.parameters()]).cpu()
    model.zero_grad(set_to_none=True)
    out["n_batches"] = (n + 255) // 256
    out["test_accuracy"] = accuracy(model, *data.test(0), cfg.bf16, device=device)
    return out


def fisher_agreement(fc: dict) -> dict:
    """How the estimates of :func:`fisher_comparison` agree with its exact Fisher,
    weight by weight, measured as the chapter measures them. For ``"sampled"``,
    ``"empirical"`` and ``"course"``: ``log_corr``, the correlation of the log estimate
    with the log exact Fisher over the weights where both are positive;
    ``top1_overlap``, the share of the top 1% of weights by exact Fisher that are also
    in the estimate's top 1%; ``total_ratio``, the estimate's total over the exact
    total. And ``grad_mean_share``, the squared mean gradient's share of the empirical
    Fisher (summed over the weights). Plain floats."""
    ref = fc["exact"]
    k = max(1, ref.numel() // 100)  # the top 1% of weights by exact Fisher
    top_ref = set(ref.topk(k).indices.tolist())
    out: dict = {}
    for m in ("sampled", "empirical", "course"):
        est = fc[m]
        pos = (est > 0) & (ref > 0)
        corr = torch.corrcoef(torch.stack([est[pos].log(), ref[pos].log()]))[0, 1]
        top = set(est.topk(k).indices.tolist())
        out[m] = {"log_corr": corr.item(), "top1_overlap": len(top_ref & top) / k,
                  "total_ratio": (est.sum() / ref.sum()).item()}
    share = (fc["grad_mean"] ** 2).sum() / fc["empirical"].sum()
    out["grad_mean_share"] = share.item()
    return out


# --------------------------------------------------------------------------------------
# the full experiment (python -m dgmbook full continual-learning)

# the chapter's SCALE10: ten tasks, the MLP, 30,000 training, 2,000 test images a task
FULL_BASE = dict(model="mlp", n_tasks=10, n_train=30_000, n_test=2_000)
# the chapter's "ten tasks: the strategies side by side"; naive first (the reference)
FULL_STRATEGIES = {
    "naive": dict(strategy="naive"),
    "ewc": dict(strategy="ewc", ewc_lambda=10.0),  # the chapter's sweep's best lambda
    "replay_1000": dict(strategy="replay", buffer_size=1_000),
    "full_rehearsal": dict(strategy="replay", buffer_size=None),
}
FULL_SEEDS = (0, 1, 2)
FULL_EPOCHS = (1, 3)  # epochs per task: the book's one, and exercise 1's three
FULL_FISHER_N = 2_048  # fisher_comparison's inputs: its default, the chapter's


def full_configs() -> list[tuple[str, Config]]:
    """The training runs of ``python -m dgmbook full continual-learning``, as
    ``(strategy name, Config)`` pairs: the chapter's ten-task MLP setting (30,000
    training and 2,000 test images per task) with its four side-by-side strategies
    (naive; EWC with the sampled Fisher at lambda 10, the best of the chapter's sweep at
    its last build; a 1,000-example replay buffer; full rehearsal), for seeds 0-2 (the
    chapter runs seed 0, and seed 1 for three of them) and for 1 and 3 epochs per task
    (the chapter trains one; its exercise 1 asks what more epochs do). Every other field
    is the chapter's. Epochs outermost, then seeds, then strategies; the seed-0,
    one-epoch runs are the chapter's own."""
    return [(name, Config(**{**FULL_BASE, **kw, "epochs": e, "seed": s}))
            for e in FULL_EPOCHS for s in FULL_SEEDS
            for name, kw in FULL_STRATEGIES.items()]


def full_fisher_configs() -> list[Config]:
    """The Fisher comparisons of the full experiment: the chapter's
    (:func:`fisher_comparison` in the naive ten-task setting, one epoch on task 1) for
    every seed of :data:`FULL_SEEDS`."""
    return [Config(**{**FULL_BASE, "seed": s}) for s in FULL_SEEDS]


_summary = recorded.summary  # per-seed values, mean and standard error


def _elementwise(tensors) -> dict:
    """Mean and standard error over seeds of same-shaped tensors, as nested lists."""
    a = torch.stack([t.double() for t in tensors])  # [seeds, ...]
    se = (a.std(0) / math.sqrt(len(a))).tolist() if len(a) > 1 else None
    return {"mean": a.mean(0).tolist(), "se": se}


def _final_A(res: dict) -> float:
    return average_accuracy(res["R"])[-1].item()


def _strategy_metrics(results: list[dict], naive: list[dict],
                      seconds: list[float]) -> dict:
    """The metrics of one strategy at one number of epochs, from its per-seed
    :func:`run` results and those of naive fine-tuning on the same seeds."""
    Rs = [r["R"] for r in results]
    gradients = [sum(r["train_examples"]) + sum(r["fisher_examples"]) for r in results]
    naive_gradients = [sum(n["train_examples"]) for n in naive]
    return {
        "final_average_accuracy": _summary([_final_A(r) for r in results]),  # A_T
        "minus_naive": _summary([_final_A(r) - _final_A(n)
                                 for r, n in zip(results, naive)]),
        "forgetting": _summary([forgetting(R).mean().item() for R in Rs]),
        "diagonal_mean": _summary([R.diag().mean().item() for R in Rs]),
        "first_task_final": _summary([R[-1, 0].item() for R in Rs]),
        "last_task_final": _summary([R[-1, -1].item() for R in Rs]),
        "average_accuracy_curve": _elementwise([average_accuracy(R) for R in Rs]),
        "forgetting_per_task": _elementwise([forgetting(R) for R in Rs]),
        "R": {"values": [R.tolist() for R in Rs], **_elementwise(Rs)},
        "memory_mb": _summary([r["memory_bytes"][-1] / 1e6 for r in results]),
        "compute_x_naive": _summary([g / n
                                     for g, n in zip(gradients, naive_gradients)]),
        "capped_fraction": _summary([r["capped_fraction"][-1] for r in results]),
        "seconds": _summary(seconds),
    }


def full_experiment(progress: bool = True,
                    device: str | None = None) -> tuple[dict, dict]:
    """The full run for ``python -m dgmbook full continual-learning``: the runs of
    :func:`full_configs` with :func:`run`, one after another as the chapter runs them
    (each run uses every core the book's machine has), then the Fisher comparisons of
    :func:`full_fisher_configs` (:func:`fisher_comparison`, :func:`fisher_agreement`).

    Returns ``(config, metrics)``. ``metrics["epochs1"]`` and ``metrics["epochs3"]``
    (one per :data:`FULL_EPOCHS`) map each strategy of :data:`FULL_STRATEGIES` to
    per-seed values with mean and standard error (``{"values", "mean", "se"}``) of: the
    final average accuracy A_T, its margin over naive fine-tuning on the same seed, the
    mean forgetting, the mean diagonal R[i, i], task 1's and the last task's final
    accuracy, the memory (MB), the compute (example-gradients relative to naive), EWC's
    capped fraction and the run's seconds; and to the mean and standard error over seeds
    of the curve A_i, of each task's forgetting f_j and of the accuracy matrix R (whose
    per-seed matrices are kept too). ``metrics["epochs3_minus_epochs1"]``: per strategy,
    the per-seed change of A_T, forgetting and mean diagonal with the further epochs.
    ``metrics["fisher"]``: per estimate, :func:`fisher_agreement` over the seeds; the
    squared mean gradient's share; task 1's test accuracy; seconds.

    Runtime, estimated from the run-cache entries of a finished book build on the book's
    2-core CPU (no GPU). One epoch per task: naive 4.8-6.0 s, EWC 6.9-8.8 s, the
    1,000-example buffer 5.0-5.9 s, full rehearsal 24.3 s, about 42 s a seed. Seconds
    against example-gradients (naive 300,000, full rehearsal 1,650,000) give about 14 us
    an example-gradient plus 1.2 s a run (evaluation), so three epochs cost about
    14 + 19 + 14 + 71 = 117 s a seed, and the 24 runs about 3 x (42 + 117) = 477 s; the
    three Fisher comparisons (1.2 s each) add 4 s: about 8 minutes in all.

    progress: one line on stderr per finished run and per Fisher comparison; nothing
    otherwise. On ``device`` (default ``$DGMBOOK_DEVICE``). Under ``torchrun`` or
    ``accelerate launch`` the runs are dealt to the ranks (:func:`distributed.deal`:
    every rank trains every N-th run, rank 0 prints its own); rank 0 gathers them and
    runs the Fisher comparisons, the other ranks return empty metrics."""
    if next(iter(FULL_STRATEGIES)) != "naive":
        raise ValueError("FULL_STRATEGIES must start with 'naive' (the reference)")
    cfgs = full_configs()
    fisher_cfgs = full_fisher_configs()
    config = {"base": dict(FULL_BASE), "strategies": copy.deepcopy(FULL_STRATEGIES),
              "seeds": list(FULL_SEEDS), "epochs": list(FULL_EPOCHS),
              "fisher_n": FULL_FISHER_N,
              "runs": [{"name": name, "config": asdict(c)} for name, c in cfgs],
              "fisher_runs": [asdict(c) for c in fisher_cfgs]}

    def say(line: str) -> None:
        if progress and distributed.is_main():
            print(line, file=sys.stderr, flush=True)

    mine = {}  # this rank's share of the runs: index -> (result, seconds)
    for i in distributed.deal(len(cfgs)):
        name, c = cfgs[i]
        start = time.perf_counter()
        res = run(c, device=device)
        seconds = time.perf_counter() - start
        mine[i] = (res, seconds)
        f = forgetting(res["R"]).mean().item()
        say(f"[{i + 1}/{len(cfgs)}] continual epochs={c.epochs} seed={c.seed} {name}: "
            f"A_T {100 * _final_A(res):.1f}%, forgetting {100 * f:.1f} points, "
            f"{seconds:.1f} s")
    results = distributed.collect(mine, len(cfgs))
    if results is None:  # under a launcher, not rank 0: rank 0 has the runs
        return config, {}
    done: dict[tuple[int, str], list] = {}  # (epochs, name) -> [(result, seconds)]
    for (name, c), res_seconds in zip(cfgs, results):
        done.setdefault((c.epochs, name), []).append(res_seconds)
    metrics: dict = {}
    for e in FULL_EPOCHS:
        naive = [r for r, _ in done[(e, "naive")]]
        metrics[f"epochs{e}"] = {
            name: _strategy_metrics([r for r, _ in done[(e, name)]], naive,
                                    [s for _, s in done[(e, name)]])
            for name in FULL_STRATEGIES}
    e0 = FULL_EPOCHS[0]
    for e in FULL_EPOCHS[1:]:
        more, base = metrics[f"epochs{e}"], metrics[f"epochs{e0}"]
        metrics[f"epochs{e}_minus_epochs{e0}"] = {
            name: {key: _summary([a - b for a, b in zip(more[name][key]["values"],
                                                        base[name][key]["values"])])
                   for key in ("final_average_accuracy", "forgetting", "diagonal_mean")}
            for name in FULL_STRATEGIES}
    agreements, accuracies, fisher_seconds = [], [], []
    for i, c in enumerate(fisher_cfgs, 1):
        start = time.perf_counter()
        fc = fisher_comparison(c, n=FULL_FISHER_N, device=device)
        fisher_seconds.append(time.perf_counter() - start)
        agreements.append(fisher_agreement(fc))
        accuracies.append(fc["test_accuracy"])
        corr = " ".join(f"{m} {agreements[-1][m]['log_corr']:.3f}"
                        for m in ("sampled", "empirical", "course"))
        say(f"[{i}/{len(fisher_cfgs)}] continual Fisher seed={c.seed}: log-log "
            f"correlation with the exact Fisher: {corr}; {fisher_seconds[-1]:.1f} s")
    fisher: dict = {m: {key: _summary([a[m][key] for a in agreements])
                        for key in ("log_corr", "top1_overlap", "total_ratio")}
                    for m in ("sampled", "empirical", "course")}
    fisher["grad_mean_share"] = _summary([a["grad_mean_share"] for a in agreements])
    fisher["test_accuracy"] = _summary(accuracies)
    fisher["seconds"] = _summary(fisher_seconds)
    metrics["fisher"] = fisher
    return config, metrics
