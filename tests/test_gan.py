"""Unit tests for dgmbook.gan: the losses equal their defining formulas, D* is optimal, the
JSD identity holds, and the training loop runs and is deterministic; the full experiment
(dgmbook.gan_scores) on tiny runs (tiny data, < 10 s)."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import synthetic

from dgmbook import digit_classifier as dc
from dgmbook import gan, gan_scores


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


# --- the full experiment (python -m dgmbook full gans) --------------------------------


def test_full_configs():
    cfgs = gan_scores.full_configs()
    assert [(c.loss, c.seed) for c in cfgs] == [
        (loss, s) for loss in ("ns", "minimax") for s in (0, 1, 2)]
    book = gan.book_config()
    assert gan_scores.FULL_BOOK_ITERS == book.iters == 6000
    for c in cfgs:
        assert dataclasses.asdict(c) == {
            **dataclasses.asdict(gan.book_config(c.loss, seed=c.seed)),
            "iters": 7000, "snapshots": book.snapshots + (6000,)}
    # the chapter's evaluation
    assert gan_scores.FULL_CLASSIFIER == dc.ClassifierConfig()
    assert (gan_scores.FULL_N_EVAL, gan_scores.FULL_N_FD,
            gan_scores.FULL_N_REFERENCE) == (10_000, 2000, 10_000)
    assert (gan_scores.FULL_TAIL, gan_scores.FULL_SMOOTH) == (500, 100)


def _tiny_full(monkeypatch, cfgs):
    """The full experiment on ``cfgs``, tiny data and a tiny classifier (no MNIST)."""
    monkeypatch.setattr(gan, "mnist_vectors",
                        lambda train=True, n=None: (_tiny_data(), torch.zeros(100)))
    monkeypatch.setattr(dc, "mnist_float", lambda train, n=None: synthetic.digits(
        n or 256 if train else 64, int(train)))
    monkeypatch.setattr(gan_scores, "full_configs", lambda: cfgs)
    monkeypatch.setattr(gan_scores, "FULL_CLASSIFIER", dc.ClassifierConfig(
        channels=(4, 8), feature_dim=8, epochs=1, batch_size=64, lr=1e-2, n_train=256,
        bf16=False))
    for name, value in (("BOOK_ITERS", 20), ("N_EVAL", 20), ("N_FD", 16),
                        ("N_REFERENCE", 40), ("TAIL", 5), ("SMOOTH", 4),
                        ("CURVE_EVERY", 10)):
        monkeypatch.setattr(gan_scores, f"FULL_{name}", value)


def _full_cfg(loss, seed):
    return _tiny_cfg(loss=loss, seed=seed, snapshots=(0, 10, 20))  # 30 iterations


def test_full_experiment_on_tiny_runs(monkeypatch, capsys):
    cfgs = [_full_cfg(loss, s) for loss in ("ns", "minimax") for s in (0, 1)]
    _tiny_full(monkeypatch, cfgs)
    monkeypatch.setenv("DGMBOOK_PROGRESS", "1")  # the training loops' bars: on ...
    config, metrics = gan_scores.full_experiment(progress=False)
    assert capsys.readouterr() == ("", "")  # ... but progress=False: silent
    assert os.environ["DGMBOOK_PROGRESS"] == "1"  # restored
    json.dumps(config, allow_nan=False)
    json.dumps(metrics, allow_nan=False)
    assert config["runs"] == [dataclasses.asdict(c) for c in cfgs]
    assert (config["book_iters"], config["n_eval"], config["n_fd"]) == (20, 20, 16)
    assert list(metrics) == ["classifier", "real", "ns", "minimax", "minimax_minus_ns",
                             "score_seconds"]
    assert 0 <= metrics["classifier"]["test_accuracy"] <= 1
    real = metrics["real"]
    assert set(real) == {"fd", "fd_small", "kl_uniform", "modes", "confidence",
                         "classes"}
    assert len(real["classes"]) == 10 and sum(real["classes"]) == pytest.approx(1)
    m = metrics["minimax"]
    assert m["seeds"] == [0, 1]
    assert set(m) == {"seeds", "final", "book_iters", "fd_curve", "tail",
                      "min_d_fake_smoothed", "curve", "train_seconds", "fd_seconds"}
    for where in ("final", "book_iters"):
        assert set(m[where]) == {"fd", "kl_uniform", "modes", "confidence", "min_class",
                                 "max_class", "classes"}
        for key in ("fd", "kl_uniform", "modes", "confidence"):
            s = m[where][key]
            assert len(s["values"]) == 2 and math.isfinite(s["se"])
            assert s["mean"] == pytest.approx(np.mean(s["values"]))
    assert m["fd_curve"]["iter"] == [0, 10, 20, 30]
    assert all(len(s["values"]) == 2 for s in m["fd_curve"]["fd"])
    # the end of the curve (FULL_N_FD samples) and the final score (FULL_N_EVAL) differ
    assert m["fd_curve"]["fd"][-1]["values"] != m["final"]["fd"]["values"]
    assert m["curve"]["iter"] == [10, 20, 30]
    assert set(m["curve"]) == {"iter", "d_loss", "g_loss", "d_real", "d_fake"}
    # the chapter's numbers, from the minimax runs trained again
    c, c1 = (gan.train(cfg)["curves"] for cfg in cfgs[2:])
    assert m["tail"]["d_loss"]["values"][0] == pytest.approx(np.mean(c["d_loss"][-5:]))
    smooth = np.convolve(c["d_fake"], np.ones(4) / 4, mode="valid")
    assert m["min_d_fake_smoothed"]["values"][0] == pytest.approx(smooth.min())
    # the curve: the mean over seeds of each window's mean
    assert m["curve"]["d_fake"][1] == pytest.approx(
        np.mean([c["d_fake"][10:20], c1["d_fake"][10:20]]))
    diff = metrics["minimax_minus_ns"]
    assert diff["fd_final"]["values"] == pytest.approx(
        np.subtract(m["final"]["fd"]["values"], metrics["ns"]["final"]["fd"]["values"]))
    assert diff["fd_curve"]["iter"] == [0, 10, 20, 30]
    # at iteration 0 the two losses' generators are the same (same seed, no step yet)
    assert diff["fd_curve"]["fd"][0]["values"] == [0.0, 0.0]
    assert min(m["train_seconds"]["values"]) > 0


def test_full_experiment_progress_lines(monkeypatch, capsys):
    _tiny_full(monkeypatch, [_full_cfg("ns", 0), _full_cfg("minimax", 0)])
    monkeypatch.setenv("DGMBOOK_PROGRESS", "0")  # no bars: our lines alone
    _, metrics = gan_scores.full_experiment(progress=True)
    out = capsys.readouterr()
    assert out.out == ""
    assert [ln.split(":")[0] for ln in out.err.splitlines()] == [
        "[1/2] gan ns seed=0", "[2/2] gan minimax seed=0", "classifier",
        "gan ns seed=0", "gan minimax seed=0", "scoring 20 samples of 4 generators"]
    assert metrics["ns"]["final"]["fd"]["se"] is None  # one seed: no standard error
    json.dumps(metrics, allow_nan=False)


def test_full_experiment_under_a_launcher_deals_the_runs(monkeypatch, as_rank):
    """As rank 1 of 2: it trains the second of two runs and sends it to rank 0, and
    neither trains the classifier nor scores."""
    cfgs = [_full_cfg("ns", 0), _full_cfg("minimax", 0)]
    _tiny_full(monkeypatch, cfgs)
    trained, train = [], gan.train
    monkeypatch.setattr(gan, "train", lambda c, **kw: trained.append(c) or train(c, **kw))
    monkeypatch.setattr(dc, "train", lambda *a, **kw: pytest.fail("rank 1 scored"))
    sent = as_rank(1, 2)
    config, metrics = gan_scores.full_experiment(progress=True)
    assert metrics == {} and config["runs"] == [dataclasses.asdict(c) for c in cfgs]
    assert trained == cfgs[1:]
    assert list(sent[0]) == [1] and sent[0][1][0]["curves"]["d_loss"]


def test_cli_lists_the_gans_experiment(capsys):
    from dgmbook import cli

    assert cli.main(["list"]) == 0
    assert "gans" in capsys.readouterr().out.split()
    assert cli._resolve(cli.EXPERIMENTS["gans"]) is gan_scores.full_experiment
