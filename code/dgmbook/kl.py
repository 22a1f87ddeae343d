"""Chapter "Comparing distributions": the KL divergence, closed forms, Monte-Carlo estimates and
forward- vs reverse-KL fits of a Gaussian to a bimodal target, computed by quadrature.

All densities here are one-dimensional; quadrature is the trapezoid rule on a fixed grid, in
float64, with log-densities combined in log space so that tails do not underflow. The fits and
the surface run on ``$DGMBOOK_DEVICE`` (:mod:`dgmbook.device`; the CPU by default) or a
``device=`` argument and return CPU tensors; the other functions compute where their inputs live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import device as devices
from .utils import check_config

LOG_2PI = math.log(2 * math.pi)


# --- closed forms and Monte-Carlo estimates ------------------------------------------------------


def kl_gaussians(m1: float, s1: float, m2: float, s2: float) -> float:
    """KL( N(m1, s1^2) || N(m2, s2^2) ) = log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2."""
    return math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def kl_uniforms(a1: float, b1: float, a2: float, b2: float) -> float:
    """KL( U[a1,b1] || U[a2,b2] ): log((b2-a2)/(b1-a1)) if [a1,b1] lies inside [a2,b2], else inf."""
    if a1 < a2 or b1 > b2:
        return math.inf
    return math.log((b2 - a2) / (b1 - a1))


def kl_monte_carlo(log_p, log_q, sample_p, n: int, generator: torch.Generator) -> tuple[float, float]:
    """Estimate KL(P||Q) = E_P[log p(X) - log q(X)] from n draws of P.

    Returns (estimate, standard error). An infinite log-ratio (a draw where q = 0) makes the
    estimate infinite, which is the right answer: such draws have positive probability.
    """
    x = sample_p(n, generator)
    r = log_p(x) - log_q(x)
    est = r.mean().item()
    se = (r.std() / math.sqrt(n)).item() if math.isfinite(est) else math.nan
    return est, se


def uniform_log_density(a: float, b: float):
    def log_p(x: torch.Tensor) -> torch.Tensor:
        inside = (x >= a) & (x <= b)
        return torch.where(inside, torch.full_like(x, -math.log(b - a)), torch.full_like(x, -math.inf))

    return log_p


def uniform_sampler(a: float, b: float):
    return lambda n, g: a + (b - a) * torch.rand(n, generator=g, dtype=torch.float64)


def gaussian_log_density(m: float, s: float):
    return lambda x: -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * LOG_2PI


def gaussian_sampler(m: float, s: float):
    return lambda n, g: m + s * torch.randn(n, generator=g, dtype=torch.float64)


# --- the bimodal target and quadrature ------------------------------------------------------------


@dataclass(frozen=True)
class Mixture:
    """A 1-D mixture of Gaussians: sum_k w_k N(means_k, stds_k^2)."""

    weights: tuple[float, ...] = (0.5, 0.5)
    means: tuple[float, ...] = (-2.0, 2.0)
    stds: tuple[float, ...] = (0.6, 0.6)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.tensor(self.weights, dtype=x.dtype, device=x.device)
        m = torch.tensor(self.means, dtype=x.dtype, device=x.device)
        s = torch.tensor(self.stds, dtype=x.dtype, device=x.device)
        # x: [N] -> [N, 1] against components [K]; logsumexp over K keeps the tails finite
        comp = -0.5 * ((x[:, None] - m) / s) ** 2 - torch.log(s) - 0.5 * LOG_2PI  # [N, K]
        return torch.logsumexp(comp + torch.log(w), dim=1)  # [N]

    def mean(self) -> float:
        return sum(w * m for w, m in zip(self.weights, self.means))

    def variance(self) -> float:
        second = sum(w * (s**2 + m**2) for w, m, s in zip(self.weights, self.means, self.stds))
        return second - self.mean() ** 2


def grid(lo: float = -8.0, hi: float = 8.0, n: int = 1601) -> torch.Tensor:
    return torch.linspace(lo, hi, n, dtype=torch.float64)


def kl_quadrature(log_p: torch.Tensor, log_q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """KL(P||Q) = integral p (log p - log q) dx by the trapezoid rule on the grid x (last dim).

    log_p and log_q broadcast against each other ([..., N]); where p underflows to 0 the
    integrand is 0 (the limit of p log p), not nan.
    """
    log_p, log_q = torch.broadcast_tensors(log_p, log_q)
    p = log_p.exp()
    integrand = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return torch.trapezoid(integrand, x, dim=-1)


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(x; mu, sigma^2) for a grid x [N] and parameters mu, log_sigma [B] -> [B, N]
    (scalars give [N])."""
    mu, log_sigma = (torch.as_tensor(t, device=x.device) for t in (mu, log_sigma))
    mu, log_sigma = mu[..., None], log_sigma[..., None]  # [B] -> [B, 1] against x [N]
    return -0.5 * ((x - mu) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * LOG_2PI


def _divergence(direction: str, log_target: torch.Tensor, x: torch.Tensor, mu, log_sigma) -> torch.Tensor:
    log_q = gaussian_log_prob(x, mu, log_sigma)
    if direction == "forward":
        return kl_quadrature(log_target, log_q, x)
    if direction == "reverse":
        return kl_quadrature(log_q, log_target, x)
    raise ValueError(f"direction must be 'forward' or 'reverse', not {direction!r}")


def forward_kl(target: Mixture, mu, log_sigma, x: torch.Tensor | None = None) -> torch.Tensor:
    """KL(P || Q_theta): the target weighs the log-ratio (the 'mass-covering' direction)."""
    x = grid() if x is None else x
    return _divergence("forward", target.log_prob(x), x, mu, log_sigma)


def reverse_kl(target: Mixture, mu, log_sigma, x: torch.Tensor | None = None) -> torch.Tensor:
    """KL(Q_theta || P): the model weighs the log-ratio (the 'mode-seeking' direction)."""
    x = grid() if x is None else x
    return _divergence("reverse", target.log_prob(x), x, mu, log_sigma)


@dataclass
class FitResult:
    """Final parameters and divergences of B independent fits, and their paths."""

    mu: torch.Tensor  # [B]
    sigma: torch.Tensor  # [B]
    kl: torch.Tensor  # [B]
    path: torch.Tensor  # [T, B, 2]: (mu, sigma) every `record_every` steps, and the final one


def fit_gaussians(
    target: Mixture,
    direction: str,
    mu0,
    sigma0,
    steps: int = 1500,
    lr: float = 0.05,
    record_every: int = 25,
    device: str | None = None,
) -> FitResult:
    """Fit Q = N(mu, sigma^2) to the target by Adam on the forward or reverse KL, from each of
    B initializations at once (mu0, sigma0: floats or [B] tensors), on ``device`` (default
    ``$DGMBOOK_DEVICE``; the result is on the CPU).

    The B divergences are summed into one loss; since each depends on its own (mu, log sigma)
    only and Adam acts element-wise, this is exactly B independent fits. sigma is optimized
    through log sigma so that it stays positive.
    """
    device = devices.resolve(device)
    x = grid().to(device)
    log_target = target.log_prob(x)  # [N], computed once
    mu = torch.atleast_1d(torch.as_tensor(mu0, dtype=torch.float64)).clone()
    log_sigma = torch.atleast_1d(torch.as_tensor(sigma0, dtype=torch.float64)).log()
    mu, log_sigma = mu.to(device).requires_grad_(), log_sigma.to(device).requires_grad_()
    opt = torch.optim.Adam([mu, log_sigma], lr=lr)
    path = []
    for step in range(steps):
        if step % record_every == 0:
            path.append(torch.stack([mu.detach(), log_sigma.detach().exp()], dim=-1))
        opt.zero_grad()
        _divergence(direction, log_target, x, mu, log_sigma).sum().backward()
        opt.step()
    with torch.no_grad():
        final = _divergence(direction, log_target, x, mu, log_sigma)
    path.append(torch.stack([mu.detach(), log_sigma.detach().exp()], dim=-1))
    return FitResult(mu.detach().cpu(), log_sigma.detach().exp().cpu(), final.cpu(),
                     torch.stack(path).cpu())


def kl_surface(target: Mixture, direction: str, mus: torch.Tensor, sigmas: torch.Tensor,
               device: str | None = None) -> torch.Tensor:
    """The divergence on a (sigma, mu) grid, for contour plots: returns [len(sigmas), len(mus)]
    (on the CPU; computed on ``device``, default ``$DGMBOOK_DEVICE``).

    Computed one sigma row at a time so memory stays at [len(mus), grid points].
    """
    device = devices.resolve(device)
    x = grid().to(device)
    log_target = target.log_prob(x)
    mus = mus.double().to(device)
    rows = [
        _divergence(direction, log_target, x, mus, torch.full_like(mus, float(s)).log())
        for s in sigmas
    ]
    return torch.stack(rows).cpu()  # [S, M]


@dataclass(frozen=True)
class BasinConfig:
    """A grid of starting points for reverse-KL fits: ``mu0`` from ``mu_range`` (``mu_n`` values,
    evenly spaced) times ``sigma0`` from ``sigma_range`` (``sigma_n`` values, log-spaced)."""

    target: Mixture = Mixture()
    mu_range: tuple[float, float] = (-3.0, 3.0)
    mu_n: int = 13
    sigma_range: tuple[float, float] = (0.3, 3.0)
    sigma_n: int = 7
    steps: int = 800
    lr: float = 0.05

    def __post_init__(self) -> None:
        check_config(self, positive=("mu_n", "sigma_range", "sigma_n", "steps", "lr"))


def reverse_kl_basins(cfg: BasinConfig, device: str | None = None) -> dict[str, torch.Tensor]:
    """Fit the reverse KL from every start of the grid (one batch of independent fits) and return
    the starts ``mu0`` [M], ``sigma0`` [S] and where each fit ends: ``mu``, ``sigma``, ``kl``
    [S, M] (fitted on ``device``, default ``$DGMBOOK_DEVICE``; on the CPU)."""
    device = devices.resolve(device)
    m0 = torch.linspace(*cfg.mu_range, cfg.mu_n, dtype=torch.float64)
    lo, hi = (math.log10(s) for s in cfg.sigma_range)
    s0 = torch.logspace(lo, hi, cfg.sigma_n, dtype=torch.float64)
    # the grid as one batch: mu varies fastest, [S * M]
    fit = fit_gaussians(cfg.target, "reverse", m0.repeat(len(s0)), s0.repeat_interleave(len(m0)),
                        steps=cfg.steps, lr=cfg.lr, device=device)
    shape = (len(s0), len(m0))  # [S * M] -> [S, M]
    return {"mu0": m0, "sigma0": s0, "mu": fit.mu.reshape(shape),
            "sigma": fit.sigma.reshape(shape), "kl": fit.kl.reshape(shape)}
