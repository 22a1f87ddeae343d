"""Variational autoencoders on binarized MNIST (chapter ``vae``).

The latent-variable model of the Stanford CS236 homework (as forked by UC Berkeley CS 182)::

    p(z)            = N(0, I)                            z in R^z_dim
    p_theta(x | z)  = Bern(sigmoid(f_theta(z)))          x in {0, 1}^784
    q_phi(z | x)    = N(mu_phi(x), diag(sigma^2_phi(x)))

trained by maximizing the evidence lower bound (ELBO) with the reparameterization trick
(Kingma & Welling 2014; Rezende, Mohamed & Wierstra 2014), and evaluated with the ELBO and the
importance-weighted bound (IWAE; Burda, Grosse & Salakhutdinov 2016).

Everything the chapter runs is here: the config (every choice of the reference setup is a field),
the two functions the homework asks for (:func:`sample_gaussian`, :meth:`VAE.negative_elbo_bound`),
the IWAE bound, the data (dynamic binarization for training, the course's 100-image test subset),
the training loop and the evaluations, on ``$DGMBOOK_DEVICE`` (:mod:`dgmbook.device`; the CPU
by default) or a ``device=`` argument, with results on the CPU. Command line (with a progress
bar)::

    python -m dgmbook.vae --z-dim 64 --iters 10000 --seeds 0 1 2 3 4

The full experiment (:func:`full_experiment`: z = 64 and z = 10, five seeds each, 20,000
iterations) records its results in code/dgmbook/results/vae.json::

    python -m dgmbook full vae
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dgmbook import device as devices
from dgmbook import distributed, recorded
from dgmbook.data import load_image_dataset
from dgmbook.utils import (PROGRESS_ENV, autocast, check_config, progress,
                           seed_everything, torch_threads)

# -----------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class VAEConfig:
    """Every choice of the reference setup, explicit. Defaults = the CS 182 fork of CS236 HW2."""

    z_dim: int = 64  # latent dimensions: 64 in the CS 182 fork, 10 in CS236
    hidden: int = 300  # encoder 784-300-300-(2 z_dim), decoder z_dim-300-300-784, ELU
    var_eps: float = 1e-8  # variance = softplus(h) + var_eps
    iters: int = 10_000  # gradient steps (`python experiment.py --model vae`)
    batch_size: int = 100
    lr: float = 1e-3  # Adam, default betas
    seed: int = 0
    # Dynamic binarization: every step re-samples each training batch as x ~ Bern(pixel / 255),
    # the course's `torch.bernoulli` on ToTensor() images.
    dynamic_binarization: bool = True
    bf16: bool = True  # bf16 autocast for the training matmuls (evaluation is always fp32)
    log_every: int = 50  # training-curve resolution (iterations averaged per point)
    # Evaluation, as in the course: the 100 fixed test images (10 per class), binarized once,
    # the one-sample bound averaged over `eval_repeats` draws. "torch": torch.manual_seed(0);
    # torch.bernoulli(x) (the original CS236 evaluate_lower_bound); "numpy": NumPy binomial
    # with seed 0 (the later CS236 static_binarize).
    subset_binarization: str = "torch"
    eval_repeats: int = 100
    # ... and beyond the course: the full 10,000-image test set (binarized once, seed 0).
    test_repeats: int = 10
    eval_seed: int = 1234

    def __post_init__(self) -> None:
        check_config(self, positive=("z_dim", "hidden", "var_eps", "iters", "batch_size", "lr",
                                     "log_every"),
                     nonnegative=("eval_repeats", "test_repeats"),
                     choices={"subset_binarization": ("torch", "numpy")})


# -----------------------------------------------------------------------------------------------
# the two functions of the homework, and the densities they need


def sample_gaussian(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The reparameterization trick: z = m + sqrt(v) * eps, eps ~ N(0, I).

    m, v: (batch, ..., dim) mean and variance; returns z of the same shape, differentiable in
    m and v (the randomness is in eps, which does not depend on the parameters).
    """
    eps = torch.randn_like(m)
    return m + v.sqrt() * eps


def gaussian_parameters(h: torch.Tensor, var_eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Split h (batch, 2 dim) into a mean and a positive variance softplus(.) + var_eps."""
    m, h = h.chunk(2, dim=-1)
    return m, F.softplus(h) + var_eps


def log_bernoulli_with_logits(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Bern(x; sigmoid(l)) summed over the last dim: (..., 784) -> (...).

    With p = sigmoid(l): x log p + (1 - x) log(1 - p) = x l - log(1 + e^l) = x l - softplus(l),
    which is exact and stable for any l. x broadcasts against logits (e.g. x (B, 784) against
    logits (k, B, 784) in the IWAE bound).
    """
    return (x * logits).sum(-1) - F.softplus(logits).sum(-1)


def log_normal(x: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """log N(x; m, diag(v)) summed over the last dim: (..., dim) -> (...)."""
    return -0.5 * (math.log(2 * math.pi) + torch.log(v) + (x - m).pow(2) / v).sum(-1)


def kl_normal(qm: torch.Tensor, qv: torch.Tensor, pm: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
    """KL(N(qm, diag qv) || N(pm, diag pv)) in closed form, summed over the last dim."""
    element_wise = 0.5 * (torch.log(pv) - torch.log(qv) + qv / pv + (qm - pm).pow(2) / pv - 1)
    return element_wise.sum(-1)


def log_mean_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log(mean(exp(x), dim)), computed stably."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


# -----------------------------------------------------------------------------------------------
# the model


class Encoder(nn.Module):
    """q_phi(z | x): 784 -> 300 -> 300 -> (mean, variance) of a diagonal Gaussian."""

    def __init__(self, z_dim: int, hidden: int = 300, var_eps: float = 1e-8):
        super().__init__()
        self.var_eps = var_eps
        self.net = nn.Sequential(
            nn.Linear(784, hidden), nn.ELU(),
            nn.Linear(hidden, hidden), nn.ELU(),
            nn.Linear(hidden, 2 * z_dim),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x).float()  # (B, 2 z_dim), fp32 even under bf16 autocast
        return gaussian_parameters(h, self.var_eps)  # (B, z_dim) each


class Decoder(nn.Module):
    """p_theta(x | z): z_dim -> 300 -> 300 -> 784 Bernoulli logits."""

    def __init__(self, z_dim: int, hidden: int = 300):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.ELU(),
            nn.Linear(hidden, hidden), nn.ELU(),
            nn.Linear(hidden, 784),
        )

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).float()  # (..., 784) logits


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig = VAEConfig()):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.enc = Encoder(cfg.z_dim, cfg.hidden, cfg.var_eps)
        self.dec = Decoder(cfg.z_dim, cfg.hidden)
        # the prior N(0, I), as fixed buffers
        self.register_buffer("z_prior_m", torch.zeros(1))
        self.register_buffer("z_prior_v", torch.ones(1))

    def negative_elbo_bound(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch averages of the negative ELBO, its KL term and its reconstruction term.

        x: (B, 784) binary. Per example,
            -ELBO(x) = KL(q(z|x) || p(z)) + E_q[-log p(x|z)],
        with the KL in closed form and the reconstruction term estimated by one sample
        z ~ q(z|x) drawn with the reparameterization trick. Returns (nelbo, kl, rec), scalars.
        """
        m, v = self.enc.encode(x)  # (B, z), (B, z)
        z = sample_gaussian(m, v)  # (B, z)
        logits = self.dec.decode(z)  # (B, 784)
        rec = -log_bernoulli_with_logits(x, logits)  # (B,)
        kl = kl_normal(m, v, self.z_prior_m, self.z_prior_v)  # (B,)
        nelbo = kl + rec  # (B,)
        return nelbo.mean(), kl.mean(), rec.mean()

    def negative_iwae_bound(self, x: torch.Tensor, iw: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch averages of the negative importance-weighted bound with iw samples, and of the
        (one-sample) KL and reconstruction terms of the ELBO over the same samples.

            -IWAE_k(x) = -log (1/k) sum_i p(x, z_i) / q(z_i | x),   z_i ~ q(z | x) i.i.d.
        """
        m, v = self.enc.encode(x)  # (B, z)
        m_k, v_k = m.expand(iw, *m.shape), v.expand(iw, *v.shape)  # (k, B, z)
        z = sample_gaussian(m_k, v_k)  # (k, B, z)
        logits = self.dec.decode(z)  # (k, B, 784)
        log_px_z = log_bernoulli_with_logits(x, logits)  # (k, B)
        log_pz = log_normal(z, self.z_prior_m, self.z_prior_v)  # (k, B)
        log_qz = log_normal(z, m_k, v_k)  # (k, B)
        niwae = -log_mean_exp(log_px_z + log_pz - log_qz, dim=0)  # (B,)
        kl = kl_normal(m, v, self.z_prior_m, self.z_prior_v)  # (B,)
        rec = -log_px_z.mean(0)  # (B,)
        return niwae.mean(), kl.mean(), rec.mean()

    @torch.no_grad()
    def sample_z(self, n: int) -> torch.Tensor:
        return sample_gaussian(self.z_prior_m.expand(n, self.z_dim), self.z_prior_v.expand(n, self.z_dim))

    @torch.no_grad()
    def compute_sigmoid_given(self, z: torch.Tensor) -> torch.Tensor:
        """The Bernoulli means sigmoid(f(z)), (n, 784)."""
        return torch.sigmoid(self.dec.decode(z))

    @torch.no_grad()
    def sample_x(self, n: int) -> torch.Tensor:
        """n samples x ~ p(x) = E_z p(x | z): ancestral sampling, z ~ p(z) then x ~ p(x | z)."""
        return torch.bernoulli(self.compute_sigmoid_given(self.sample_z(n)))


# -----------------------------------------------------------------------------------------------
# data

# The course's hand-picked test images: row c holds 10 indices into the test images of class c.
# (Class 5 lists index 128 twice, so the "100 images" are 99 distinct ones; we keep it as is.)
COURSE_TEST_INDEX = np.array([
    [684, 559, 629, 192, 835, 763, 707, 359, 9, 723],
    [277, 599, 1094, 600, 314, 705, 551, 87, 174, 849],
    [537, 845, 72, 777, 115, 976, 755, 448, 850, 99],
    [984, 177, 755, 797, 659, 147, 910, 423, 288, 961],
    [265, 697, 639, 544, 543, 714, 244, 151, 675, 510],
    [459, 882, 183, 28, 802, 128, 128, 53, 550, 488],
    [756, 273, 335, 388, 617, 42, 442, 543, 888, 257],
    [57, 291, 779, 430, 91, 398, 611, 908, 633, 84],
    [203, 324, 774, 964, 47, 639, 131, 972, 868, 180],
    [1000, 846, 143, 660, 227, 954, 791, 719, 909, 373],
])


def static_binarize(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One fixed binarization x ~ Bern(x) with NumPy (as the course does, so it is the same on
    every machine). x: float in [0, 1]; returns float32 {0, 1} of the same shape."""
    rng = np.random.RandomState(seed)
    return torch.from_numpy(rng.binomial(1, x.double().numpy()).astype(np.float32))


def course_test_subset(binarization: str = "torch", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The course's evaluation set: (x (100, 784) binarized once, labels (100,)).

    binarization: "torch" (torch.manual_seed(seed); torch.bernoulli, as the original CS236
    evaluate_lower_bound does), "numpy" (NumPy binomial, seed `seed`, the later CS236
    static_binarize) or "gray" (no binarization: the pixel intensities in [0, 1]).
    """
    images, labels = load_image_dataset("MNIST", train=False)
    x = images.reshape(-1, 784).float() / 255
    rows = [torch.nonzero(labels == c).squeeze(1)[COURSE_TEST_INDEX[c]] for c in range(10)]
    idx = torch.cat(rows)  # (100,) indices into the test set, class by class
    x = x[idx]
    if binarization == "torch":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    elif binarization == "numpy":
        x = static_binarize(x, seed)
    elif binarization != "gray":
        raise ValueError(f"unknown binarization {binarization!r}")
    return x, labels[idx]


def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    """All 10,000 test images, binarized once: (x (10000, 784), labels (10000,))."""
    images, labels = load_image_dataset("MNIST", train=False)
    return static_binarize(images.reshape(-1, 784).float() / 255), labels


def binarize_batch(x_u8: torch.Tensor) -> torch.Tensor:
    """Dynamic binarization of a uint8 batch: x ~ Bern(pixel / 255), i.e. u * 255 < pixel with
    u ~ U[0, 1) (the same law as torch.bernoulli(pixel / 255), and several times cheaper on a CPU)."""
    return (torch.rand(x_u8.shape) * 255 < x_u8).float()


# -----------------------------------------------------------------------------------------------
# training and evaluation


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    # the fused Adam kernel: one pass over all parameters instead of ~10 ops per tensor
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def train(cfg: VAEConfig, x_train: torch.Tensor | None = None, device: str | None = None) -> dict:
    """Train one VAE; returns its state dict and the training curves (on the CPU).

    x_train: uint8 (N, 784) images (default: the 60,000 MNIST training images). Each epoch
    visits them in a fresh random order, cfg.batch_size at a time, like the course's DataLoader.
    curves: per cfg.log_every iterations, the mean over those iterations of the batch negative
    ELBO, KL and reconstruction terms. It trains on ``device`` (default ``$DGMBOOK_DEVICE``);
    the order and the binarization are drawn on the CPU, then each batch moves there.
    """
    device = devices.resolve(device)
    seed_everything(cfg.seed)
    if x_train is None:
        x_train = load_image_dataset("MNIST", train=True)[0].reshape(-1, 784)
    n_batches = x_train.shape[0] // cfg.batch_size
    model = VAE(cfg).to(device)
    opt = make_optimizer(model, cfg.lr)
    sums = torch.zeros(3, device=device)  # running sums of (nelbo, kl, rec) since the last log
    curves = []
    for it in progress(range(cfg.iters), desc=f"vae z={cfg.z_dim} seed={cfg.seed}"):
        if it % n_batches == 0:
            order = torch.randperm(x_train.shape[0])
        idx = order[(it % n_batches) * cfg.batch_size:][: cfg.batch_size]  # (B,)
        x_u8 = x_train.index_select(0, idx)  # (B, 784) uint8
        x = binarize_batch(x_u8) if cfg.dynamic_binarization else (x_u8 >= 128).float()
        with autocast(cfg.bf16, device):
            nelbo, kl, rec = model.negative_elbo_bound(x.to(device))
        opt.zero_grad(set_to_none=True)
        nelbo.backward()
        opt.step()
        sums += torch.stack([nelbo.detach(), kl.detach(), rec.detach()])
        if (it + 1) % cfg.log_every == 0:
            curves.append(sums / cfg.log_every)
            sums = torch.zeros(3, device=device)
    c = torch.stack(curves).cpu() if curves else torch.zeros(0, 3)  # (iters // log_every, 3)
    steps = torch.arange(1, c.shape[0] + 1) * cfg.log_every
    return {
        "state_dict": {k: t.clone().cpu() for k, t in model.state_dict().items()},
        "curves": {"iter": steps, "nelbo": c[:, 0], "kl": c[:, 1], "rec": c[:, 2]},
    }


def load_model(cfg: VAEConfig, state_dict: dict) -> VAE:
    model = VAE(cfg)
    model.load_state_dict(state_dict)
    return model.eval()


@torch.no_grad()
def evaluate_bound(model: VAE, x: torch.Tensor, repeats: int, seed: int = 0,
                   rows_per_batch: int = 2_000, device: str | None = None) -> dict[str, float]:
    """The one-sample negative ELBO (with its KL and reconstruction terms) averaged over the
    images x (n, 784) and over `repeats` independent draws, in fp32 (the course's
    evaluate_lower_bound, batched: each image appears `repeats` times in the batches), on
    ``device`` (default ``$DGMBOOK_DEVICE``; the draws z ~ q are that device's)."""
    device = devices.resolve(device)
    model, x = devices.module_on(model, device), x.to(device)
    torch.manual_seed(seed)
    n, rows = x.shape[0], repeats * x.shape[0]  # the rows of x.repeat(repeats, 1), never built:
    tot = torch.zeros(3, dtype=torch.float64, device=device)  # for 10 test sets it is 0.3 GB
    for start in range(0, rows, rows_per_batch):
        chunk = x[torch.arange(start, min(start + rows_per_batch, rows), device=device) % n]
        terms = model.negative_elbo_bound(chunk)
        tot += torch.stack(terms).double() * chunk.shape[0]
    tot /= rows
    return {"nelbo": tot[0].item(), "kl": tot[1].item(), "rec": tot[2].item()}


@torch.no_grad()
def evaluate_iwae(model: VAE, x: torch.Tensor, iw: int, seed: int = 0,
                  samples_per_batch: int = 10_000, device: str | None = None) -> float:
    """The negative IWAE bound with iw importance samples, averaged over the images x (n, 784),
    on ``device`` (default ``$DGMBOOK_DEVICE``)."""
    device = devices.resolve(device)
    model, x = devices.module_on(model, device), x.to(device)
    torch.manual_seed(seed)
    per = max(1, samples_per_batch // iw)  # images per batch
    tot = 0.0
    for chunk in x.split(per):
        niwae, _, _ = model.negative_iwae_bound(chunk, iw)
        tot += niwae.double().item() * chunk.shape[0]
    return tot / x.shape[0]


@torch.no_grad()
def iwae_bounds(model: VAE, x: torch.Tensor, ks=(1, 10, 100, 1000), seed: int = 0,
                bf16: bool = True, device: str | None = None) -> dict[int, float]:
    """The negative IWAE bound for each k in ks, averaged over the images x, on ``device``
    (default ``$DGMBOOK_DEVICE``).

    bf16: run the networks' matmuls in bf16 (the densities stay fp32). At k = 1000 the decoder
    runs on k times as many rows as there are images, and bf16 makes that affordable on a CPU.
    """
    device = devices.resolve(device)
    model = devices.module_on(model, device)
    with autocast(bf16, device):
        return {k: evaluate_iwae(model, x, k, seed, device=device) for k in ks}


@torch.no_grad()
def binarization_spread(model: VAE, n: int = 50, repeats: int = 20, seed: int = 0,
                        device: str | None = None) -> torch.Tensor:
    """The negative ELBO on the course's 100 test images under n different fixed binarizations
    (NumPy seeds 1..n), each averaged over `repeats` draws: how much the choice of one
    binarization moves the reported number. Returns (n,) float64. On ``device`` (default
    ``$DGMBOOK_DEVICE``)."""
    device = devices.resolve(device)
    model = devices.module_on(model, device)
    gray, _ = course_test_subset("gray")
    return torch.tensor([evaluate_bound(model, static_binarize(gray, s), repeats, seed,
                                        device=device)["nelbo"]
                         for s in range(1, n + 1)], dtype=torch.float64)


def train_and_evaluate(cfg: VAEConfig, device: str | None = None,
                       timed: bool = False) -> dict:
    """One run of the chapter: train, then evaluate on the course subset and on the test set,
    on ``device`` (default ``$DGMBOOK_DEVICE``); the results are on the CPU.

    timed: also return the wall seconds of the training (``train_seconds``) and of the
    evaluation (``eval_seconds``). Off by default: timings differ from run to run, and
    the chapter's results are compared bit for bit."""
    device = devices.resolve(device)
    start = time.perf_counter()
    out = train(cfg, device=device)
    trained = time.perf_counter()
    model = devices.module_on(load_model(cfg, out["state_dict"]), device)
    if cfg.eval_repeats > 0:
        x_sub, _ = course_test_subset(cfg.subset_binarization)
        out["subset"] = evaluate_bound(model, x_sub, cfg.eval_repeats, cfg.eval_seed,
                                       device=device)
    if cfg.test_repeats > 0:
        x_test, _ = test_set()
        out["test"] = evaluate_bound(model, x_test, cfg.test_repeats, cfg.eval_seed,
                                     device=device)
    if timed:
        out["train_seconds"] = trained - start
        out["eval_seconds"] = time.perf_counter() - trained
    return out


def evaluate_models(models: list[VAE], cfg: VAEConfig, iwae_images: int = 2000,
                    device: str | None = None) -> dict:
    """The chapter's evaluations of trained models (one thread: robust when the cores are shared,
    where idle threads spin-wait):

    * ``spread`` [models, 50]: the negative ELBO of each model under 50 binarizations of the
      course's 100 test images (:func:`binarization_spread`);
    * ``numpy``: each model's negative ELBO on the subset binarized with NumPy seed 0;
    * ``iwae_subset``: IWAE bounds of the first model for k = 1, 10, 100, 1000 on the course's
      subset (binarized as ``cfg`` says), the course's way: at least 100 samples per image in all;
    * ``iwae_test``: the same bounds on the first ``iwae_images`` test images.

    On ``device`` (default ``$DGMBOOK_DEVICE``; the models stay where they are, copies go
    there); the results are on the CPU.
    """
    device = devices.resolve(device)
    models = [devices.module_on(m, device) for m in models]
    x_test, _ = test_set()
    x_numpy, _ = course_test_subset("numpy")
    x_sub, _ = course_test_subset(cfg.subset_binarization)
    on = {"device": device}
    with torch_threads(1):
        return {
            "spread": torch.stack([binarization_spread(m, **on) for m in models]),  # [models, 50]
            "numpy": [evaluate_bound(m, x_numpy, cfg.eval_repeats, cfg.eval_seed, **on)["nelbo"]
                      for m in models],
            "iwae_subset": {k: np.mean([iwae_bounds(models[0], x_sub, [k], seed=r, **on)[k]
                                        for r in range(max(100 // k, 1))])
                            for k in (1, 10, 100, 1000)},
            "iwae_test": iwae_bounds(models[0], x_test[:iwae_images], **on),
        }


def _train_and_evaluate_one_thread(cfg: VAEConfig, device: str | None = None,
                                   timed: bool = False) -> dict:
    with torch_threads(1):
        return train_and_evaluate(cfg, device, timed)


def default_workers() -> int:
    """:func:`run_many`'s default: two runs at a time, or one on a single core."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count()
    return min(2, cores or 1)


def run_many(cfgs: list[VAEConfig], workers: int | None = None,
             device: str | None = None, timed: bool = False) -> list[dict]:
    """:func:`train_and_evaluate` for every config, each run on one thread, `workers` runs at a
    time (default: two, or one on a single core): this process takes every `workers`-th run and
    `workers - 1` worker processes the others. Each extra process costs about 0.6 GB (its own
    PyTorch and MNIST), so the default stays small on machines, such as Binder's (2 GB), that
    report many more cores than they have memory for; running one share here instead of in a
    second worker keeps the chapter's peak about 0.4 GB lower.

    The matmuls of one run (batch 100, width 300) are too small to keep two threads busy, so on
    a 2-core machine two single-threaded runs side by side use the cores better than 2-threaded
    runs one after another (code/benchmarks/bench_vae.py measures both). One thread per run also
    makes the numbers independent of the number of cores and of the process a run lands in.
    Every run trains on ``device`` (default ``$DGMBOOK_DEVICE``, read here, in this process).
    timed: each result also holds its seconds (:func:`train_and_evaluate`).
    """
    device = devices.resolve(device)
    cfgs = list(cfgs)
    if workers is None:
        workers = default_workers()
    workers = max(1, min(workers or 1, len(cfgs)))
    here = list(range(0, len(cfgs), workers))  # this process: runs 0, w, 2w, ...
    out: list[dict | None] = [None] * len(cfgs)
    if workers == 1:
        return [_train_and_evaluate_one_thread(c, device, timed) for c in cfgs]
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: safe under Jupyter/OpenMP
    with ProcessPoolExecutor(workers - 1, mp_context=ctx) as pool:
        futures = {i: pool.submit(_train_and_evaluate_one_thread, c, device, timed)
                   for i, c in enumerate(cfgs) if i not in here}
        for i in here:
            out[i] = _train_and_evaluate_one_thread(cfgs[i], device, timed)
        for i, future in futures.items():
            out[i] = future.result()
    return out


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n))."""
    a = np.asarray(values, dtype=np.float64)
    se = a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return float(a.mean()), float(se)


# --------------------------------------------------------------------------------------
# the full experiment (python -m dgmbook full vae)

FULL_Z_DIMS = (64, 10)  # the CS 182 fork's latent size and CS236's
FULL_SEEDS = (0, 1, 2, 3, 4)
FULL_ITERS = 20_000  # twice the book's 10,000
FULL_IWAE_IMAGES = 2_000  # test images for the IWAE bounds, as in the chapter
FULL_CURVE_EVERY = 1_000  # iterations per point of the recorded training curves


def full_configs() -> list[VAEConfig]:
    """The runs of ``python -m dgmbook full vae``: 64 latent dimensions (the CS 182
    fork, the chapter's reference model) and 10 (CS236), five seeds each, 20,000
    iterations instead of the book's 10,000; every other field the chapter's (bf16
    training, the course's evaluation). The chapter runs z = 10 once, and the
    KL/reconstruction split moves with both the latent size and the length of training:
    these runs measure both with error bars."""
    return [VAEConfig(z_dim=z, iters=FULL_ITERS, seed=s)
            for z in FULL_Z_DIMS for s in FULL_SEEDS]


_summary = recorded.summary  # per-seed values, mean and standard error


def _coarse_curves(runs: list[dict], cfg: VAEConfig) -> dict[str, list]:
    """The training curves in windows of :data:`FULL_CURVE_EVERY` iterations (the mean
    of the batch bounds over each window), averaged over the runs."""
    w = max(1, FULL_CURVE_EVERY // cfg.log_every)  # curve points per window
    n = len(runs[0]["curves"]["iter"]) // w  # whole windows
    out = {"iter": [(i + 1) * w * cfg.log_every for i in range(n)]}
    for key in ("nelbo", "kl", "rec"):
        c = torch.stack([r["curves"][key][: n * w] for r in runs])  # (runs, n w)
        out[key] = c.reshape(len(runs), n, w).mean((0, 2)).tolist()
    return out


def _z_metrics(cfgs: list[VAEConfig], runs: list[dict], ev: dict) -> dict:
    """The metrics of one latent size, from its runs and :func:`evaluate_models`."""
    terms = ("nelbo", "kl", "rec")
    spread = ev["spread"]  # [models, binarizations]
    return {
        "seeds": [c.seed for c in cfgs],
        # the one-sample bound on the course's 100 images and on the 10,000 test images
        **{where: {k: _summary([r[where][k] for r in runs]) for k in terms}
           for where in ("subset", "test")},
        # the last point of each training curve (the last log_every iterations)
        "final_train": {k: _summary([r["curves"][k][-1] for r in runs]) for k in terms},
        "numpy_subset_nelbo": _summary(ev["numpy"]),
        "spread": {
            "n_binarizations": spread.shape[1],
            "mean": spread.mean().item(),
            "sd_binarization": spread.std(1).mean().item(),  # per model, averaged
            "min": spread.min().item(),
            "max": spread.max().item(),
        },
        # of the first seed's model, as in the chapter
        "iwae_subset": {str(k): float(v) for k, v in ev["iwae_subset"].items()},
        "iwae_test": {str(k): float(v) for k, v in ev["iwae_test"].items()},
        "curve": _coarse_curves(runs, cfgs[0]),
        "train_seconds": _summary([r["train_seconds"] for r in runs]),
        "eval_seconds": _summary([r["eval_seconds"] for r in runs]),
    }


def full_experiment(progress: bool = True, workers: int | None = None,
                    device: str | None = None) -> tuple[dict, dict]:
    """The full run for ``python -m dgmbook full vae``: train :func:`full_configs` with
    :func:`run_many` (one thread per run, ``workers`` runs side by side, two by default)
    and evaluate them as the chapter evaluates its runs (:func:`train_and_evaluate`,
    then :func:`evaluate_models` on each latent size's models). Returns
    ``(config, metrics)``, metrics keyed ``"z64"``, ``"z10"``: per-seed values with mean
    and standard error, the IWAE bounds of the seed-0 model, mean training curves per
    1,000 iterations, and the seconds of each run.

    progress: a line on stderr per finished run and per evaluation; nothing otherwise.
    The training loops' own bars stay off (two processes would draw them on one line).
    The runs go ``workers`` at a time, so a batch's lines come when its slower run ends.
    On ``device`` (default ``$DGMBOOK_DEVICE``). Under ``torchrun`` or ``accelerate
    launch`` the runs are dealt to the ranks (:func:`distributed.deal`: every rank
    trains every N-th run, ``workers`` at a time, rank 0 shows its own); rank 0 gathers
    and evaluates them, the other ranks return empty metrics."""
    device = devices.resolve(device)
    cfgs = full_configs()
    workers = max(1, workers or default_workers())
    config = {"runs": [asdict(c) for c in cfgs], "workers": workers,
              "iwae_images": FULL_IWAE_IMAGES, "curve_every": FULL_CURVE_EVERY}

    def say(line: str) -> None:
        if progress and distributed.is_main():
            print(line, file=sys.stderr, flush=True)

    mine: dict[int, dict] = {}  # this rank's share of the runs: index -> result
    dealt = list(distributed.deal(len(cfgs)))
    with mock.patch.dict(os.environ, {PROGRESS_ENV: "0"}):  # spawned workers inherit it
        for start in range(0, len(dealt), workers):
            batch = dealt[start:start + workers]
            done = run_many([cfgs[i] for i in batch], workers=workers, device=device,
                            timed=True)
            for i, r in zip(batch, done):
                mine[i], c, sub = r, cfgs[i], r["subset"]
                terms = " ".join(f"{k} {sub[k]:.2f}" for k in ("nelbo", "kl", "rec"))
                say(f"[{i + 1}/{len(cfgs)}] vae z={c.z_dim} seed={c.seed}: "
                    f"{r['train_seconds']:.0f} s training; 100 images: {terms}")
    runs = distributed.collect(mine, len(cfgs))
    if runs is None:  # under a launcher, not rank 0: rank 0 has the runs
        return config, {}
    metrics = {}
    for z in dict.fromkeys(c.z_dim for c in cfgs):  # in order, once each
        zc = [c for c in cfgs if c.z_dim == z]
        zr = [r for c, r in zip(cfgs, runs) if c.z_dim == z]
        models = [load_model(c, r["state_dict"]) for c, r in zip(zc, zr)]
        say(f"vae z={z}: evaluating {len(models)} models (binarizations, IWAE)")
        ev = evaluate_models(models, zc[0], iwae_images=FULL_IWAE_IMAGES, device=device)
        metrics[f"z{z}"] = _z_metrics(zc, zr, ev)
    return config, metrics


# -----------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train VAEs on binarized MNIST (the CS236 / CS 182 "
                                "homework setup) and report the negative ELBO, KL and reconstruction.")
    p.add_argument("--z-dim", type=int, default=VAEConfig.z_dim)
    p.add_argument("--iters", type=int, default=VAEConfig.iters)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--fp32", action="store_true", help="train without bf16 autocast")
    p.add_argument("--workers", type=int, default=1,
                   help="runs side by side, one thread each (progress bars only with 1)")
    args = p.parse_args(argv)
    cfgs = [VAEConfig(z_dim=args.z_dim, iters=args.iters, seed=s, bf16=not args.fp32) for s in args.seeds]
    rows = run_many(cfgs, workers=args.workers)
    for cfg, r in zip(cfgs, rows):
        print(f"seed {cfg.seed}: subset NELBO {r['subset']['nelbo']:.2f} KL {r['subset']['kl']:.2f} "
              f"Rec {r['subset']['rec']:.2f} | test set NELBO {r['test']['nelbo']:.2f} "
              f"KL {r['test']['kl']:.2f} Rec {r['test']['rec']:.2f}", flush=True)
    for where in ("subset", "test"):
        parts = [f"{k} {m:.2f} +/- {se:.2f}" for k in ("nelbo", "kl", "rec")
                 for m, se in [mean_se([r[where][k] for r in rows])]]
        print(f"{where} (mean +/- standard error over {len(rows)} runs): " + ", ".join(parts))


if __name__ == "__main__":
    main()


__all__ = [
    "VAEConfig", "sample_gaussian", "gaussian_parameters", "log_bernoulli_with_logits",
    "log_normal", "kl_normal", "log_mean_exp", "Encoder", "Decoder", "VAE", "COURSE_TEST_INDEX",
    "static_binarize", "course_test_subset", "test_set", "binarize_batch", "train", "load_model",
    "evaluate_bound", "evaluate_iwae", "iwae_bounds", "binarization_spread", "train_and_evaluate",
    "default_workers", "run_many", "mean_se", "full_configs", "full_experiment",
]
