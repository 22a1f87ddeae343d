"""dgmbook.kl: closed forms vs quadrature vs Monte Carlo, and the forward/reverse fits."""

import math

import pytest
import torch

from dgmbook import kl


def test_gaussian_closed_form_matches_quadrature():
    x = kl.grid()
    for m1, s1, m2, s2 in [(0, 1, 1, 1), (0, 1, 0, 2), (1.5, 0.5, -1, 1.3)]:
        quad = kl.kl_quadrature(kl.gaussian_log_density(m1, s1)(x), kl.gaussian_log_density(m2, s2)(x), x)
        assert quad.item() == pytest.approx(kl.kl_gaussians(m1, s1, m2, s2), abs=1e-6)


def test_kl_is_zero_only_for_equal_and_asymmetric():
    assert kl.kl_gaussians(0.3, 1.2, 0.3, 1.2) == 0.0
    assert kl.kl_gaussians(0, 1, 0, 2) != pytest.approx(kl.kl_gaussians(0, 2, 0, 1))


def test_uniforms():
    assert kl.kl_uniforms(0, 1, -2, 2) == pytest.approx(math.log(4))
    assert kl.kl_uniforms(-2, 2, 0, 1) == math.inf


def test_monte_carlo_within_standard_errors():
    g = torch.Generator().manual_seed(1)
    est, se = kl.kl_monte_carlo(kl.gaussian_log_density(0, 1), kl.gaussian_log_density(1, 2),
                                kl.gaussian_sampler(0, 1), 200_000, g)
    assert abs(est - kl.kl_gaussians(0, 1, 1, 2)) < 4 * se
    est, _ = kl.kl_monte_carlo(kl.uniform_log_density(-2, 2), kl.uniform_log_density(0, 1),
                               kl.uniform_sampler(-2, 2), 1000, g)
    assert est == math.inf


def test_quadrature_survives_underflow():
    """Far in the tails p underflows to 0 and log q is very negative: the integrand must be 0."""
    x = kl.grid()
    val = kl.reverse_kl(kl.Mixture(), torch.tensor(7.5), torch.tensor(math.log(0.2)), x)
    assert torch.isfinite(val)


def test_mixture_moments():
    m = kl.Mixture(weights=(0.3, 0.7), means=(-1.0, 2.0), stds=(0.5, 1.0))
    x = kl.grid(-15, 15, 30001)
    p = m.log_prob(x).exp()
    assert torch.trapezoid(p, x).item() == pytest.approx(1.0, abs=1e-9)
    assert torch.trapezoid(x * p, x).item() == pytest.approx(m.mean(), abs=1e-9)
    assert torch.trapezoid((x - m.mean()) ** 2 * p, x).item() == pytest.approx(m.variance(), abs=1e-8)


def test_forward_fit_is_moment_matching():
    target = kl.Mixture(weights=(0.3, 0.7), means=(-1.0, 2.0), stds=(0.5, 1.0))
    fit = kl.fit_gaussians(target, "forward", mu0=0.0, sigma0=1.0, steps=1500)
    assert fit.mu.item() == pytest.approx(target.mean(), abs=1e-3)
    assert fit.sigma.item() == pytest.approx(math.sqrt(target.variance()), abs=1e-3)


def test_reverse_fit_finds_the_mode_it_starts_near():
    target = kl.Mixture()
    fit = kl.fit_gaussians(target, "reverse", mu0=torch.tensor([1.0, -1.0]), sigma0=torch.tensor([1.0, 1.0]))
    assert fit.mu.tolist() == pytest.approx([2.0, -2.0], abs=0.01)
    assert fit.sigma.tolist() == pytest.approx([0.6, 0.6], abs=0.01)
    # one mode of an equal mixture: KL(Q||P) ~ log 2
    assert fit.kl.tolist() == pytest.approx([math.log(2)] * 2, abs=0.01)


def test_batched_fits_equal_independent_fits():
    target = kl.Mixture()
    both = kl.fit_gaussians(target, "reverse", torch.tensor([0.5, 1.5]), torch.tensor([1.0, 0.7]), steps=200)
    for i, (m0, s0) in enumerate([(0.5, 1.0), (1.5, 0.7)]):
        one = kl.fit_gaussians(target, "reverse", m0, s0, steps=200)
        assert one.mu.item() == pytest.approx(both.mu[i].item(), abs=1e-9)  # summation order only
        assert one.sigma.item() == pytest.approx(both.sigma[i].item(), abs=1e-9)
    assert both.path.shape == (200 // 25 + 1, 2, 2)


def test_surface_agrees_with_pointwise_divergence():
    target = kl.Mixture()
    mus, sigmas = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([0.5, 1.5])
    surf = kl.kl_surface(target, "reverse", mus, sigmas)
    assert surf.shape == (2, 3)
    for i, s in enumerate(sigmas):
        for j, m in enumerate(mus):
            ref = kl.reverse_kl(target, m.double(), torch.log(s.double()))
            assert surf[i, j].item() == pytest.approx(ref.item(), rel=1e-12)


def test_bad_direction():
    with pytest.raises(ValueError, match="forward' or 'reverse"):
        kl.fit_gaussians(kl.Mixture(), "sideways", 0.0, 1.0, steps=1)
