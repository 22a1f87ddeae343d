"""Generative adversarial networks (Goodfellow et al., 2014), small enough to train on a CPU.

Chapter "Generative adversarial networks". Everything the chapter runs lives here:

* the losses, written on the discriminator's *logits* h (D = sigmoid(h)) with
  ``binary_cross_entropy_with_logits`` / ``logsigmoid`` so that they never take log(0);
* the optimal discriminator D* = p_data / (p_data + p_theta), the value function and the
  Jensen-Shannon divergence on discrete distributions or on a 1-D grid (for the checks);
* a 1-D discriminator trained on samples from two known densities (to compare with D*);
* MLP and small convolutional (DCGAN-style) networks for MNIST, the alternating training loop
  and the configuration the chapter trains (:func:`book_config`);
* per-sample norms of the generator's gradient (minimax vs non-saturating loss).

Conventions: images are float tensors in [-1, 1] of shape [N, 784] (flattened 28 x 28);
the discriminator returns logits of shape [N]. Training and evaluation run on
``$DGMBOOK_DEVICE`` (:mod:`dgmbook.device`; the CPU by default) or a ``device=`` argument, draw
their random numbers on the CPU, and return their results on the CPU.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import device as devices
from .utils import autocast, check_config, progress, seed_everything, torch_threads

LOSSES = ("ns", "minimax")

# ----------------------------------------------------------------------------------------------
# Losses (all on logits h; D = sigmoid(h))
# ----------------------------------------------------------------------------------------------


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = -E_x[log D(x)] - E_z[log(1 - D(G(z)))]  (= -V(G, D)).

    real_logits: [B] logits on data, fake_logits: [B'] logits on generated samples.
    log D = logsigmoid(h) and log(1 - D) = logsigmoid(-h): BCE-with-logits with targets 1 / 0.
    """
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G^minimax = E_z[log(1 - D(G(z)))] = E_z[logsigmoid(-h)]  (the generator minimises it).

    d/dh log(1 - sigmoid(h)) = -sigmoid(h) = -D: the gradient vanishes when D(G(z)) -> 0.
    """
    return F.logsigmoid(-fake_logits).mean()


def generator_loss_ns(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G^NS = -E_z[log D(G(z))] = -E_z[logsigmoid(h)]  (the non-saturating loss).

    d/dh [-log sigmoid(h)] = -(1 - D): large exactly when the discriminator rejects the sample.
    """
    return -F.logsigmoid(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The generator loss named by ``kind`` ("ns" or "minimax")."""
    if kind == "ns":
        return generator_loss_ns(fake_logits)
    if kind == "minimax":
        return generator_loss_minimax(fake_logits)
    raise ValueError(f"unknown generator loss {kind!r}; use one of {LOSSES}")


# ----------------------------------------------------------------------------------------------
# The optimal discriminator, the value function and the JSD (discrete or on a 1-D grid)
# ----------------------------------------------------------------------------------------------


def optimal_discriminator(p_data: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """D*(x) = p_data(x) / (p_data(x) + p_model(x)), pointwise (probabilities or densities)."""
    return p_data / (p_data + p_model)


def value_function(p_data: torch.Tensor, p_model: torch.Tensor, d: torch.Tensor,
                   weights: torch.Tensor | float = 1.0) -> torch.Tensor:
    """V(G, D) = sum_x w(x) [p_data(x) log D(x) + p_model(x) log(1 - D(x))].

    With w = 1 the sums are over a discrete space; with w = quadrature weights (grid spacing)
    they approximate the integrals over a 1-D density. Terms with zero probability count as 0.
    """
    a = torch.where(p_data > 0, p_data * torch.log(d), torch.zeros_like(p_data))
    b = torch.where(p_model > 0, p_model * torch.log1p(-d), torch.zeros_like(p_model))
    return ((a + b) * weights).sum()


def kl(p: torch.Tensor, q: torch.Tensor, weights: torch.Tensor | float = 1.0) -> torch.Tensor:
    """KL(p || q) = sum_x w(x) p(x) log(p(x) / q(x)), with 0 log 0 = 0."""
    t = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return (t * weights).sum()


def jsd(p: torch.Tensor, q: torch.Tensor, weights: torch.Tensor | float = 1.0) -> torch.Tensor:
    """JSD(p || q) = KL(p || m) / 2 + KL(q || m) / 2 with m = (p + q) / 2; 0 <= JSD <= log 2."""
    m = 0.5 * (p + q)
    return 0.5 * kl(p, m, weights) + 0.5 * kl(q, m, weights)


# ----------------------------------------------------------------------------------------------
# A discriminator on 1-D data, trained on samples from two known densities
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mixture1D:
    """A 1-D mixture of Gaussians, sum_k w_k N(means_k, stds_k^2): samples and exact density."""

    weights: tuple[float, ...] = (1.0,)
    means: tuple[float, ...] = (0.0,)
    stds: tuple[float, ...] = (1.0,)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n] float32 samples (one component: no draw of the component)."""
        mu, sd = torch.tensor(self.means), torch.tensor(self.stds)
        if len(self.weights) == 1:
            return mu[0] + sd[0] * torch.randn(n, generator=generator)
        k = torch.multinomial(torch.tensor(self.weights), n, replacement=True, generator=generator)
        return mu[k] + sd[k] * torch.randn(n, generator=generator)

    def pdf(self, x: torch.Tensor) -> torch.Tensor:
        """The density at x [N], in float64."""
        comps = torch.distributions.Normal(torch.tensor(self.means, dtype=torch.float64),
                                           torch.tensor(self.stds, dtype=torch.float64))
        w = torch.tensor(self.weights, dtype=torch.float64)
        return (w * comps.log_prob(x.double().unsqueeze(-1)).exp()).sum(-1)  # [N, K] -> [N]


@dataclass
class Toy1DConfig:
    """Train a small MLP discriminator to tell samples of p_data from samples of p_model."""

    data: Mixture1D = Mixture1D((0.5, 0.5), (-1.5, 1.5), (0.5, 0.5))
    model: Mixture1D = Mixture1D((1.0,), (0.0,), (2.0,))
    hidden: int = 64
    steps: int = 1500
    batch_size: int = 512
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self, positive=("hidden", "steps", "batch_size", "lr"))


def mlp_1d(hidden: int) -> nn.Module:
    """x [N, 1] -> logit [N, 1]."""
    return nn.Sequential(
        nn.Linear(1, hidden), nn.Tanh(),
        nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, 1),
    )


def train_discriminator_1d(cfg: Toy1DConfig, device: str | None = None) -> dict:
    """Minimise L_D with Adam on fresh mini-batches of ``cfg.data`` and ``cfg.model``.

    Returns the state dict of the MLP (use :func:`mlp_1d` to rebuild it) and the loss curve.
    Runs on one thread: the operations are far too small to gain from more, and the result then
    does not depend on the machine's thread count. On ``device`` (default ``$DGMBOOK_DEVICE``).
    """
    device = devices.resolve(device)
    with torch_threads(1):
        return _train_discriminator_1d(cfg, device)


def _train_discriminator_1d(cfg: Toy1DConfig, device: str) -> dict:
    gen = seed_everything(cfg.seed)
    net = mlp_1d(cfg.hidden).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    losses = []
    for _ in range(cfg.steps):
        x_real = cfg.data.sample(cfg.batch_size, gen).reshape(-1, 1).to(device)  # [B, 1]
        x_fake = cfg.model.sample(cfg.batch_size, gen).reshape(-1, 1).to(device)  # [B, 1]
        loss = discriminator_loss(net(x_real).squeeze(1), net(x_fake).squeeze(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"state_dict": net.cpu().state_dict(), "losses": losses}


# ----------------------------------------------------------------------------------------------
# MNIST: data, networks
# ----------------------------------------------------------------------------------------------


def mnist_vectors(train: bool = True, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as float vectors in [-1, 1]: images [N, 784], labels [N] (the first n if given)."""
    from .data import load_image_dataset

    images, labels = load_image_dataset("MNIST", train=train)  # uint8 [N, 28, 28], int64 [N]
    if n is not None:
        images, labels = images[:n], labels[:n]
    x = images.reshape(len(images), -1).float().div(127.5).sub(1.0)  # [N, 784] in [-1, 1]
    return x, labels


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] vectors [N, 784] -> uint8 images [N, 28, 28] (for storing and plotting samples)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).reshape(-1, 28, 28)


class Generator(nn.Module):
    """z [B, z_dim] ~ N(0, I) -> image [B, 784] in (-1, 1).

    ``arch="mlp"``: Linear-LeakyReLU layers of widths ``hidden``, then Linear-tanh.
    ``arch="conv"``: Linear to [c, 7, 7], BatchNorm-ReLU, ConvTranspose 7 -> 14 (c/2 channels),
    BatchNorm-ReLU, ConvTranspose 14 -> 28 (1 channel), tanh, with c = ``hidden[0]`` (a small
    DCGAN generator, Radford et al. 2016). Sample from it in eval mode (BatchNorm running stats).
    """

    def __init__(self, z_dim: int = 64, hidden: tuple[int, ...] = (256, 512), arch: str = "mlp"):
        super().__init__()
        self.z_dim, self.arch = z_dim, arch
        if arch == "mlp":
            layers, d = [], z_dim
            for h in hidden:
                layers += [nn.Linear(d, h), nn.LeakyReLU(0.2)]
                d = h
            layers += [nn.Linear(d, 784), nn.Tanh()]
        elif arch == "conv":
            c = hidden[0]
            layers = [
                nn.Linear(z_dim, c * 7 * 7), nn.Unflatten(1, (c, 7, 7)),  # [B, c, 7, 7]
                nn.BatchNorm2d(c), nn.ReLU(),
                nn.ConvTranspose2d(c, c // 2, 4, 2, 1),  # [B, c/2, 14, 14]
                nn.BatchNorm2d(c // 2), nn.ReLU(),
                nn.ConvTranspose2d(c // 2, 1, 4, 2, 1), nn.Tanh(),  # [B, 1, 28, 28]
                nn.Flatten(),  # [B, 784]
            ]
        else:
            raise ValueError(f"unknown architecture {arch!r}")
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    """image [B, 784] -> logit h [B] (D = sigmoid(h) is the probability 'real').

    ``arch="mlp"``: Linear-LeakyReLU layers of widths ``hidden``, then Linear to 1.
    ``arch="conv"``: Conv 28 -> 14 (c channels), Conv 14 -> 7 (2c), LeakyReLU after each,
    Linear to 1, with c = ``hidden[0]``.
    """

    def __init__(self, hidden: tuple[int, ...] = (512, 256), arch: str = "mlp"):
        super().__init__()
        if arch == "mlp":
            layers, d = [], 784
            for h in hidden:
                layers += [nn.Linear(d, h), nn.LeakyReLU(0.2)]
                d = h
            layers += [nn.Linear(d, 1)]
        elif arch == "conv":
            c = hidden[0]
            layers = [
                nn.Unflatten(1, (1, 28, 28)),  # [B, 1, 28, 28]
                nn.Conv2d(1, c, 4, 2, 1), nn.LeakyReLU(0.2),  # [B, c, 14, 14]
                nn.Conv2d(c, 2 * c, 4, 2, 1), nn.LeakyReLU(0.2),  # [B, 2c, 7, 7]
                nn.Flatten(), nn.Linear(2 * c * 7 * 7, 1),  # [B, 1]
            ]
        else:
            raise ValueError(f"unknown architecture {arch!r}")
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@dataclass
class GANConfig:
    """One MNIST GAN run. The defaults are the book's CPU scale (see the chapter)."""

    loss: str = "ns"  # generator loss: "ns" (non-saturating) or "minimax"
    z_dim: int = 64
    g_arch: str = "mlp"  # "mlp" or "conv" (see Generator)
    g_hidden: tuple[int, ...] = (256, 512)
    d_arch: str = "mlp"  # "mlp" or "conv" (see Discriminator)
    d_hidden: tuple[int, ...] = (512, 256)
    n_train: int = 60_000  # training images used (the first n of MNIST train)
    batch_size: int = 64
    iters: int = 4000  # generator steps (one discriminator step before each)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    bf16: bool = True  # bf16 autocast for the matmuls (CPU AMX)
    n_grid: int = 200  # fixed z for the sample grids
    snapshots: tuple[int, ...] = (0, 250, 1000)  # iterations (besides the last) to keep G at
    d_head_start: int = 0  # discriminator-only steps before the alternation starts
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self, positive=("z_dim", "g_hidden", "d_hidden", "n_train", "batch_size",
                                     "n_grid"),
                     # 0 is meaningful: a frozen network, or a run of the head start alone
                     nonnegative=("iters", "lr_g", "lr_d", "beta1", "beta2", "snapshots",
                                  "d_head_start"),
                     choices={"loss": ("ns", "minimax"), "g_arch": ("mlp", "conv"),
                              "d_arch": ("mlp", "conv")})


def book_config(loss: str = "ns", **changes) -> GANConfig:
    """The configuration the chapter trains: a small DCGAN-style pair at CPU scale (about 6.4
    passes over MNIST), used by the chapter and by ``benchmarks/bench_gan.py``."""
    base = GANConfig(
        loss=loss, g_arch="conv", g_hidden=(32,), d_arch="conv", d_hidden=(16,),
        batch_size=64, iters=6000, lr_g=5e-4, lr_d=5e-4, bf16=True,
        snapshots=(0, 250, 500, 1000, 2000, 3000, 4000, 5000), seed=0,
    )
    return dataclasses.replace(base, **changes)


def _sample_batch(data: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(len(data), (batch_size,), generator=gen)
    return data[idx]


def train(cfg: GANConfig, data: torch.Tensor | None = None, device: str | None = None) -> dict:
    """Alternate one discriminator step and one generator step, ``cfg.iters`` times, on
    ``device`` (default ``$DGMBOOK_DEVICE``; batches and z are drawn on the CPU, then moved).

    data: [N, 784] in [-1, 1] (default: the first ``cfg.n_train`` MNIST training images).
    Returns a dict (all ``torch.save``-able, on the CPU):
      ``G``, ``D``: final state dicts; ``G_snapshots``: {iteration: state dict};
      ``samples``: {iteration: uint8 [n_grid, 28, 28]} on fixed z; ``curves``: per-iteration lists
      ``d_loss``, ``g_loss``, ``d_real`` (mean D(x)), ``d_fake`` (mean D(G(z)) in the D step),
      ``g_grad_norm`` (norm of the generator's gradient), ``g_step_norm`` (norm of Adam's update).
    """
    device = devices.resolve(device)
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown generator loss {cfg.loss!r}; use one of {LOSSES}")
    if data is None:
        data, _ = mnist_vectors(train=True, n=cfg.n_train)
    gen = seed_everything(cfg.seed)
    G = Generator(cfg.z_dim, cfg.g_hidden, cfg.g_arch).to(device)
    D = Discriminator(cfg.d_hidden, cfg.d_arch).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2),
                             fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2),
                             fused=True)
    z_grid = torch.randn(cfg.n_grid, cfg.z_dim, generator=gen).to(device)  # [n_grid, z_dim]

    curves = {k: [] for k in ("d_loss", "g_loss", "d_real", "d_fake", "g_grad_norm", "g_step_norm")}
    samples, snapshots = {}, {}

    def snapshot(it: int) -> None:
        G.eval()  # BatchNorm (conv G) uses its running statistics and does not update them
        with torch.no_grad():
            samples[it] = to_uint8(G(z_grid)).cpu()
        G.train()
        snapshots[it] = {k: v.clone().cpu() for k, v in G.state_dict().items()}

    def discriminator_step():
        # G's output is detached: no gradient flows into the generator
        x_real = _sample_batch(data, cfg.batch_size, gen).to(device)  # [B, 784]
        z = torch.randn(cfg.batch_size, cfg.z_dim, generator=gen).to(device)  # [B, z_dim]
        with autocast(cfg.bf16, device):
            with torch.no_grad():
                x_fake = G(z)  # [B, 784]
            real_logits, fake_logits = D(x_real), D(x_fake.detach())  # [B], [B]
            loss_d = discriminator_loss(real_logits.float(), fake_logits.float())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        return loss_d, real_logits.detach().float(), fake_logits.detach().float()

    for _ in range(cfg.d_head_start):  # the discriminator learns first, against the initial G
        discriminator_step()
    for it in progress(range(cfg.iters), desc=f"GAN ({cfg.loss})"):
        if it in cfg.snapshots:
            snapshot(it)
        # --- discriminator step -------------------------------------------------------------
        loss_d, real_logits, fake_logits = discriminator_step()
        # --- generator step: fresh z; D's weights are frozen (their gradient is not needed) -
        z = torch.randn(cfg.batch_size, cfg.z_dim, generator=gen).to(device)
        D.requires_grad_(False)
        with autocast(cfg.bf16, device):
            loss_g = generator_loss(D(G(z)).float(), cfg.loss)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        before = [p.detach().clone() for p in G.parameters()]
        opt_g.step()
        D.requires_grad_(True)
        curves["g_grad_norm"].append(
            torch.nn.utils.get_total_norm([p.grad for p in G.parameters()]).item())
        curves["g_step_norm"].append(
            torch.nn.utils.get_total_norm([p.detach() - b for p, b in zip(G.parameters(), before)]).item())

        curves["d_loss"].append(loss_d.item())
        curves["g_loss"].append(loss_g.item())
        curves["d_real"].append(torch.sigmoid(real_logits).mean().item())
        curves["d_fake"].append(torch.sigmoid(fake_logits).mean().item())
    snapshot(cfg.iters)
    return {
        "G": {k: v.clone().cpu() for k, v in G.state_dict().items()},
        "D": {k: v.clone().cpu() for k, v in D.state_dict().items()},
        "G_snapshots": snapshots,
        "samples": samples,
        "curves": curves,
    }


def build(cfg: GANConfig, result: dict, snapshot: int | None = None) -> tuple[Generator, Discriminator]:
    """Rebuild (G, D) in eval mode from a :func:`train` result (G at ``snapshot`` if given)."""
    G = Generator(cfg.z_dim, cfg.g_hidden, cfg.g_arch)
    D = Discriminator(cfg.d_hidden, cfg.d_arch)
    G.load_state_dict(result["G"] if snapshot is None else result["G_snapshots"][snapshot])
    D.load_state_dict(result["D"])
    return G.eval(), D.eval()


@torch.no_grad()
def generate(G: Generator, n: int, seed: int = 0, batch_size: int = 2000,
             device: str | None = None) -> torch.Tensor:
    """n samples [n, 784] in [-1, 1] from G, with z drawn from a generator seeded by ``seed``
    (on the CPU), run on ``device`` (default ``$DGMBOOK_DEVICE``); the samples are on the CPU."""
    device = devices.resolve(device)
    G = devices.module_on(G, device)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen)
    return torch.cat([G(zb.to(device)) for zb in z.split(batch_size)]).cpu()


# ----------------------------------------------------------------------------------------------
# The generator's gradient, sample by sample
# ----------------------------------------------------------------------------------------------


def per_sample_generator_grad_norms(G: Generator, D: Discriminator, z: torch.Tensor,
                                    chunk_size: int = 64, device: str | None = None) -> dict:
    """For each z_i: D(G(z_i)) and the norms of the gradients, w.r.t. all of G's parameters, of
    the single-sample minimax loss log(1 - D(G(z_i))) and non-saturating loss -log D(G(z_i)).

    Both losses depend on theta only through h = logit D(G(z)), so
      grad minimax = -D * dh/dtheta,   grad NS = -(1 - D) * dh/dtheta,
    and their ratio is exactly D / (1 - D). Computed in float64 with torch.func (vmap of grad),
    on ``device`` (default ``$DGMBOOK_DEVICE``; G and D stay where they are, copies go there).
    Returns float64 tensors [N] on the CPU: ``d``, ``minimax``, ``ns``, ``dh`` (the norm of
    dh/dtheta).
    """
    from torch.func import functional_call, grad, vmap

    device = devices.resolve(device)
    G64, D64 = _float64_copy(G, device), _float64_copy(D, device)
    params = {k: v.detach() for k, v in G64.named_parameters()}

    def logit(p, zi):  # zi [z_dim] -> scalar h
        x = functional_call(G64, p, (zi.unsqueeze(0),))  # [1, 784]
        return D64(x)[0]

    def losses(p, zi):
        h = logit(p, zi)
        return F.logsigmoid(-h), -F.logsigmoid(h)

    def norm(g):  # a dict of per-sample gradients -> [N] norms
        return torch.sqrt(sum(v.pow(2).flatten(1).sum(1) for v in g.values()))

    def per_sample(f):  # vmap over samples, in chunks to bound memory ([chunk, n_params] grads)
        return norm(vmap(grad(f), in_dims=(None, 0), chunk_size=chunk_size)(params, z))

    z = z.double().to(device)
    g_mm = per_sample(lambda p, zi: losses(p, zi)[0])
    g_ns = per_sample(lambda p, zi: losses(p, zi)[1])
    g_h = per_sample(logit)
    with torch.no_grad():
        d = torch.sigmoid(D64(G64(z)))
    return {"d": d.cpu(), "minimax": g_mm.cpu(), "ns": g_ns.cpu(), "dh": g_h.cpu()}


def gradient_probe(cfg: GANConfig, run: dict, steps, n: int = 200, seed: int = 2,
                   device: str | None = None) -> dict:
    """:func:`per_sample_generator_grad_norms` of the generator at each of ``steps`` (snapshots of
    a :func:`train` run) against the run's final discriminator, for ``n`` latent vectors drawn
    with ``seed``: ``{step: {"d", "minimax", "ns", "dh"}}``, on ``device`` (default
    ``$DGMBOOK_DEVICE``)."""
    device = devices.resolve(device)
    z = torch.randn(n, cfg.z_dim, generator=torch.Generator().manual_seed(seed))
    _, D = build(cfg, run)
    return {step: per_sample_generator_grad_norms(build(cfg, run, snapshot=step)[0], D, z,
                                                  device=device)
            for step in steps}


def _float64_copy(module: nn.Module, device: str = "cpu") -> nn.Module:
    m = copy.deepcopy(module).double().to(device).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def image_grid(images: torch.Tensor, rows: int, cols: int, pad: int = 1) -> torch.Tensor:
    """uint8 images [rows * cols, 28, 28] -> one uint8 image [rows * (28 + pad), cols * (28 + pad)],
    filled row by row (pad pixels of background between the tiles)."""
    n, h, w = images.shape
    assert n == rows * cols, f"{n} images do not fill a {rows} x {cols} grid"
    tiles = F.pad(images, (0, pad, 0, pad))  # [n, h + pad, w + pad]
    tiles = tiles.reshape(rows, cols, h + pad, w + pad).permute(0, 2, 1, 3)
    return tiles.reshape(rows * (h + pad), cols * (w + pad))
