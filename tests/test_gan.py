"""Unit tests for dgmbook.gan: the losses equal their defining formulas, D* is optimal, the
JSD identity holds, and the training loop runs and is deterministic (tiny data, < 10 s)."""

import math

import pytest
import torch
import torch.nn.functional as F

from dgmbook import gan


pytestmark = pytest.mark.usefixtures("one_thread")


def _logits(n=64, scale=3.0, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


# --- losses -------------------------------------------------------------------------------------


def test_discriminator_loss_matches_definition():
    hr, hf = _logits(seed=1), _logits(seed=2)
    d_real, d_fake = torch.sigmoid(hr), torch.sigmoid(hf)
    expected = -torch.log(d_real).mean() - torch.log(1 - d_fake).mean()
    assert torch.allclose(gan.discriminator_loss(hr, hf), expected, rtol=1e-10)


def test_generator_losses_match_definitions():
    h = _logits(seed=3)
    d = torch.sigmoid(h)
    assert torch.allclose(gan.generator_loss_minimax(h), torch.log(1 - d).mean(), rtol=1e-10)
    assert torch.allclose(gan.generator_loss_ns(h), -torch.log(d).mean(), rtol=1e-10)
    assert torch.equal(gan.generator_loss(h, "ns"), gan.generator_loss_ns(h))
    assert torch.equal(gan.generator_loss(h, "minimax"), gan.generator_loss_minimax(h))
    with pytest.raises(ValueError):
        gan.generator_loss(h, "wasserstein")


def test_generator_loss_gradients_wrt_logits():
    # d/dh log(1 - sigmoid(h)) = -D,  d/dh [-log sigmoid(h)] = -(1 - D)  (per sample, / batch)
    h = _logits(n=32, seed=4).requires_grad_()
    d = torch.sigmoid(h.detach())
    (g_mm,) = torch.autograd.grad(gan.generator_loss_minimax(h), h)
    (g_ns,) = torch.autograd.grad(gan.generator_loss_ns(h), h)
    assert torch.allclose(g_mm, -d / 32, rtol=1e-10)
    assert torch.allclose(g_ns, -(1 - d) / 32, rtol=1e-10)


def test_losses_are_stable_for_extreme_logits():
    h = torch.tensor([-200.0, -50.0, 0.0, 50.0, 200.0], requires_grad=True)
    for loss in (gan.discriminator_loss(h, h), gan.generator_loss_minimax(h), gan.generator_loss_ns(h)):
        (g,) = torch.autograd.grad(loss, h)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
    # the saturation itself: a confidently rejected fake gives the minimax loss no gradient
    h = torch.tensor([-30.0], requires_grad=True)
    (g_mm,) = torch.autograd.grad(gan.generator_loss_minimax(h), h)
    (g_ns,) = torch.autograd.grad(gan.generator_loss_ns(h), h)
    assert abs(g_mm.item()) < 1e-12 and abs(g_ns.item() + 1) < 1e-12


# --- optimal discriminator, value function, JSD ---------------------------------------------------

P = torch.tensor([0.1, 0.4, 0.2, 0.3, 0.0], dtype=torch.float64)
Q = torch.tensor([0.3, 0.1, 0.1, 0.25, 0.25], dtype=torch.float64)


def test_optimal_discriminator_minimises_discriminator_loss():
    d_star = gan.optimal_discriminator(P, Q)
    best = -gan.value_function(P, Q, d_star)  # the expected discriminator loss at D*
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        d = (d_star + 0.05 * torch.randn(5, generator=gen, dtype=torch.float64)).clamp(1e-3, 1 - 1e-3)
        assert -gan.value_function(P, Q, d) >= best - 1e-12
    # stationarity: the gradient of V in D vanishes at D* (where p + q > 0 and 0 < D* < 1)
    d = d_star.clone().requires_grad_()
    mask = (P > 0) & (Q > 0)
    (g,) = torch.autograd.grad(gan.value_function(P, Q, d), d)
    assert torch.allclose(g[mask], torch.zeros_like(g[mask]), atol=1e-12)


def test_value_at_optimum_is_minus_log4_plus_2_jsd():
    v = gan.value_function(P, Q, gan.optimal_discriminator(P, Q))
    assert torch.allclose(v, -math.log(4) + 2 * gan.jsd(P, Q), atol=1e-12)


def test_jsd_bounds():
    assert gan.jsd(P, P).abs() < 1e-12
    a = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 0.0, 0.5, 0.5], dtype=torch.float64)
    assert torch.allclose(gan.jsd(a, b), torch.tensor(math.log(2), dtype=torch.float64))
    assert 0 < gan.jsd(P, Q) < math.log(2)
    assert torch.allclose(gan.jsd(P, Q), gan.jsd(Q, P))


def test_1d_discriminator_approaches_optimum():
    # p = N(-1, 1), q = N(1, 1): D*(x) = sigmoid(-2x)
    cfg = gan.Toy1DConfig(data=gan.Mixture1D(means=(-1.0,)), model=gan.Mixture1D(means=(1.0,)),
                          hidden=16, steps=300, batch_size=256, lr=1e-2)
    res = gan.train_discriminator_1d(cfg)
    net = gan.mlp_1d(cfg.hidden)
    net.load_state_dict(res["state_dict"])
    x = torch.linspace(-2, 2, 41).reshape(-1, 1)
    with torch.no_grad():
        d = torch.sigmoid(net(x)).squeeze(1)
    assert (d - torch.sigmoid(-2 * x.squeeze(1))).abs().max() < 0.08
    assert len(res["losses"]) == cfg.steps


def test_mixture_samples_and_density():
    mix = gan.Mixture1D((0.25, 0.75), (-2.0, 2.0), (0.5, 1.0))
    x = mix.sample(200_000, torch.Generator().manual_seed(0))
    assert abs(x.mean().item() - (0.25 * -2 + 0.75 * 2)) < 0.02
    grid = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    assert abs(torch.trapezoid(mix.pdf(grid), grid).item() - 1) < 1e-6


# --- networks, training loop, gradients -----------------------------------------------------------


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_network_shapes(arch):
    G = gan.Generator(16, (32, 32), arch)
    D = gan.Discriminator((8, 8), arch)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, 784) and x.abs().max() <= 1
    assert D(x).shape == (5,)


def _tiny_cfg(**kw):
    base = dict(z_dim=8, g_hidden=(32,), d_hidden=(32,), batch_size=16, iters=30, n_grid=6,
                snapshots=(0, 10), bf16=False, seed=3)
    base.update(kw)
    return gan.GANConfig(**base)


def _tiny_data():
    return torch.rand(100, 784, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("loss", ["ns", "minimax"])
def test_train_runs_and_is_deterministic(loss):
    cfg = _tiny_cfg(loss=loss)
    r1, r2 = gan.train(cfg, _tiny_data()), gan.train(cfg, _tiny_data())
    assert set(r1["samples"]) == {0, 10, 30} and r1["samples"][30].shape == (6, 28, 28)
    assert r1["samples"][30].dtype == torch.uint8
    assert all(len(v) == cfg.iters for v in r1["curves"].values())
    assert r1["curves"] == r2["curves"]
    for k in r1["G"]:
        assert torch.equal(r1["G"][k], r2["G"][k])
    G, D = gan.build(cfg, r1)
    assert torch.equal(gan.to_uint8(G(torch.zeros(1, 8))), gan.to_uint8(G(torch.zeros(1, 8))))


def test_discriminator_step_leaves_generator_alone():
    # with lr_g = 0 the generator never moves, so only D's step changes anything
    cfg = _tiny_cfg(lr_g=0.0, iters=5, snapshots=(0,))
    r = gan.train(cfg, _tiny_data())
    for k, v in r["G"].items():
        assert torch.equal(v, r["G_snapshots"][0][k])


def test_head_start_trains_only_the_discriminator_first():
    cfg = _tiny_cfg(d_head_start=7, iters=3, snapshots=(0,))
    r = gan.train(cfg, _tiny_data())
    # the snapshot at iteration 0 (after the head start) is still the initial generator
    ref = gan.train(_tiny_cfg(iters=0, snapshots=(0,)), _tiny_data())["G_snapshots"][0]
    for k, v in r["G_snapshots"][0].items():
        assert torch.equal(v, ref[k])
    assert len(r["curves"]["d_loss"]) == 3


def test_bf16_training_runs():
    r = gan.train(_tiny_cfg(bf16=True, iters=5), _tiny_data())
    assert all(math.isfinite(v) for v in r["curves"]["d_loss"])


def test_per_sample_gradient_norms_follow_the_derivation():
    torch.manual_seed(0)
    G, D = gan.Generator(8, (16,)), gan.Discriminator((16,))
    out = gan.per_sample_generator_grad_norms(G, D, torch.randn(12, 8))
    d = out["d"]
    assert torch.allclose(out["minimax"], d * out["dh"], rtol=1e-10)
    assert torch.allclose(out["ns"], (1 - d) * out["dh"], rtol=1e-10)
    # compare one sample with plain autograd
    z = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    out = gan.per_sample_generator_grad_norms(G, D, z)
    G64, D64 = G.double(), D.double()
    loss = F.logsigmoid(-D64(G64(z[3:4].double())))[0]
    grads = torch.autograd.grad(loss, list(G64.parameters()))
    ref = torch.sqrt(sum((g ** 2).sum() for g in grads))
    assert torch.allclose(out["minimax"][3], ref, rtol=1e-8)


def test_image_grid_layout():
    imgs = torch.arange(6, dtype=torch.uint8).reshape(6, 1, 1).expand(6, 28, 28).contiguous()
    g = gan.image_grid(imgs, 2, 3)
    assert g.shape == (2 * 29, 3 * 29)
    assert g[0, 0] == 0 and g[0, 29] == 1 and g[29, 0] == 3 and g[29, 2 * 29] == 5
    assert g[28, 0] == 0  # padding


def test_to_uint8_range():
    x = torch.tensor([[-1.5, -1.0, 0.0, 1.0, 2.0] + [0.0] * 779])
    u = gan.to_uint8(x)
    assert u.shape == (1, 28, 28) and u.flatten()[:5].tolist() == [0, 0, 128, 255, 255]
