"""Unit tests for dgmbook.digit_classifier: the Frechet distance against closed forms, the
class-distribution numbers, and a tiny training run on synthetic data (no MNIST needed)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import synthetic

from dgmbook import digit_classifier as dc


pytestmark = pytest.mark.usefixtures("one_thread")


def test_frechet_distance_identical_is_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6))
    mu, s = a.mean(0), np.cov(a, rowvar=False)
    assert abs(dc.frechet_distance(mu, s, mu, s)) < 1e-9


def test_frechet_distance_1d_and_diagonal_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    fd = dc.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert fd == pytest.approx(9.0 + 1.0, abs=1e-12)
    # commuting (diagonal) covariances: sum of the 1-D distances
    v1, v2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 0.1])
    fd = dc.frechet_distance(np.zeros(3), np.diag(v1), np.ones(3), np.diag(v2))
    assert fd == pytest.approx(3 + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum(), abs=1e-12)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    s1, s2 = a @ a.T + 0.1 * np.eye(8), b @ b.T + 0.1 * np.eye(8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert dc.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    assert dc.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(dc.frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_gaussian_stats():
    f = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 2.0]], dtype=torch.float64)
    mu, s = dc.gaussian_stats(f)
    assert np.allclose(mu, [2.0, 2.0]) and np.allclose(s, np.cov(f.numpy(), rowvar=False))


def test_network_shapes():
    m = dc.DigitCNN((4, 8), 12)
    x = torch.rand(3, 784) * 2 - 1
    assert m(x).shape == (3, 10) and m.features(x).shape == (3, 12)
    assert torch.equal(m(x), m(x.reshape(3, 28, 28)))


def test_train_and_evaluate_on_synthetic_digits(monkeypatch):
    monkeypatch.setattr(dc, "mnist_float", lambda train, n=None: synthetic.digits(1024 if train else 256, int(train)))
    cfg = dc.ClassifierConfig(channels=(4, 8), feature_dim=16, epochs=2, batch_size=64, lr=1e-2, bf16=False)
    res = dc.train(cfg)
    assert res["test_accuracy"] > 0.9
    model = dc.build(cfg, res)
    x, _ = synthetic.digits(400, 7)
    ref = dc.gaussian_stats(dc.features(model, x))
    ev = dc.evaluate(model, x, ref)
    assert ev["fd"] == pytest.approx(0.0, abs=1e-5)
    assert ev["classes"].sum().item() == pytest.approx(1.0)
    assert ev["modes"] >= 8 and ev["kl_uniform"] < 0.1 and 0.1 <= ev["confidence"] <= 1.0
    # a collapsed "generator" (every image the same digit) has KL(classes || uniform) = log 10
    one = x[:1].expand(50, 28, 28)
    ev = dc.evaluate(model, one, ref)
    assert ev["modes"] == 1 and ev["kl_uniform"] == pytest.approx(math.log(10))
    assert ev["fd"] > 1.0
