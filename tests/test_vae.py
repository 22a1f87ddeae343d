"""Unit tests for dgmbook.vae: the reparameterization trick, the densities and the KL, the
negative ELBO and IWAE bounds, the data helpers, a tiny training run and the full experiment
on tiny runs. Fast: tiny data."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
from scipy import integrate

from dgmbook import vae
from dgmbook.data import DatasetNotFoundError


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(z_dim=4, hidden=16, seed=0):
    torch.manual_seed(seed)
    return vae.VAE(vae.VAEConfig(z_dim=z_dim, hidden=hidden))


def binary_batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 784, generator=g) < 0.3).float()


# --- sample_gaussian ------------------------------------------------------------------------


def test_sample_gaussian_moments():
    m = torch.tensor([-2.0, 0.0, 3.0])
    v = torch.tensor([0.25, 1.0, 4.0])
    z = vae.sample_gaussian(m.expand(200_000, 3), v.expand(200_000, 3))
    assert z.shape == (200_000, 3)
    # standard errors: sqrt(v / n) for the mean, about v sqrt(2 / n) for the variance
    assert torch.allclose(z.mean(0), m, atol=5 * (v / 200_000).sqrt().max().item())
    assert torch.allclose(z.var(0), v, rtol=0.02)


def test_sample_gaussian_gradients_flow_to_mean_and_variance():
    m = torch.tensor([0.5, -1.0], requires_grad=True)
    v = torch.tensor([2.0, 0.5], requires_grad=True)
    torch.manual_seed(3)
    z = vae.sample_gaussian(m, v)
    z.sum().backward()
    torch.manual_seed(3)
    eps = torch.randn(2)  # the noise sample_gaussian drew
    assert torch.allclose(z, m.detach() + v.detach().sqrt() * eps)
    assert torch.allclose(m.grad, torch.ones(2))  # dz/dm = 1
    assert torch.allclose(v.grad, eps / (2 * v.detach().sqrt()))  # dz/dv = eps / (2 sqrt v)


def test_reparameterized_gradient_matches_analytic():
    # d/dm E[z^2] = 2m and d/dv E[z^2] = 1 for z ~ N(m, v)
    m = torch.tensor(0.7, requires_grad=True)
    v = torch.tensor(1.3, requires_grad=True)
    z = vae.sample_gaussian(m.expand(400_000), v.expand(400_000))
    z.pow(2).mean().backward()
    assert abs(m.grad.item() - 1.4) < 0.02
    assert abs(v.grad.item() - 1.0) < 0.02


# --- densities and the KL -------------------------------------------------------------------


def test_gaussian_parameters_split_and_positive():
    h = torch.randn(5, 6) * 30
    m, v = vae.gaussian_parameters(h)
    assert m.shape == v.shape == (5, 3)
    assert torch.equal(m, h[:, :3])
    assert (v > 0).all()
    assert torch.allclose(v, torch.nn.functional.softplus(h[:, 3:]) + 1e-8)


def test_log_normal_matches_torch_distributions():
    x, m, v = torch.randn(7, 3), torch.randn(7, 3), torch.rand(7, 3) + 0.1
    ref = torch.distributions.Normal(m, v.sqrt()).log_prob(x).sum(-1)
    assert torch.allclose(vae.log_normal(x, m, v), ref, atol=1e-5)


def test_log_bernoulli_matches_torch_distributions():
    x, logits = binary_batch(6), torch.randn(6, 784) * 3
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    assert torch.allclose(vae.log_bernoulli_with_logits(x, logits), ref, rtol=1e-5)


def test_kl_normal_matches_defining_integral_1d():
    for qm, qv, pm, pv in [(0.3, 0.5, 0.0, 1.0), (-1.0, 2.0, 0.5, 0.7), (2.0, 0.1, -1.0, 3.0)]:
        def integrand(z):
            lq = -0.5 * (math.log(2 * math.pi * qv) + (z - qm) ** 2 / qv)
            lp = -0.5 * (math.log(2 * math.pi * pv) + (z - pm) ** 2 / pv)
            return math.exp(lq) * (lq - lp)

        ref, _ = integrate.quad(integrand, -np.inf, np.inf)
        got = vae.kl_normal(*(torch.tensor([[a]], dtype=torch.float64) for a in (qm, qv, pm, pv)))
        assert got.shape == (1,)
        assert abs(got.item() - ref) < 1e-7


def test_kl_normal_equals_monte_carlo_estimate():
    qm, qv = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, 1.5, 0.8])
    kl = vae.kl_normal(qm, qv, torch.zeros(1), torch.ones(1))  # against the prior N(0, I)
    z = vae.sample_gaussian(qm.expand(400_000, 3), qv.expand(400_000, 3))
    log_ratio = vae.log_normal(z, qm, qv) - vae.log_normal(z, torch.zeros(1), torch.ones(1))
    se = log_ratio.std() / math.sqrt(z.shape[0])
    assert abs(log_ratio.mean() - kl) < 5 * se
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(qm, qv.sqrt()), torch.distributions.Normal(0.0, 1.0)).sum()
    assert torch.allclose(kl, ref, atol=1e-6)


def test_log_mean_exp_is_stable():
    x = torch.tensor([[1000.0, 1000.0], [-1000.0, -1000.0 + math.log(3)]])
    out = vae.log_mean_exp(x, dim=1)
    assert torch.allclose(out, torch.tensor([1000.0, -1000.0 + math.log(2)]))


# --- the bounds -----------------------------------------------------------------------------


def test_negative_elbo_bound_parts_and_gradients():
    model, x = tiny_model(), binary_batch()
    nelbo, kl, rec = model.negative_elbo_bound(x)
    assert nelbo.shape == kl.shape == rec.shape == ()
    assert torch.allclose(nelbo, kl + rec)
    assert kl.item() >= 0 and rec.item() >= 0
    nelbo.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_negative_elbo_bound_matches_a_direct_computation():
    model, x = tiny_model(), binary_batch(5)
    torch.manual_seed(7)
    nelbo, kl, rec = model.negative_elbo_bound(x)
    torch.manual_seed(7)
    m, v = model.enc.encode(x)
    z = m + v.sqrt() * torch.randn_like(m)
    q = torch.distributions.Normal(m, v.sqrt())
    kl_ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    rec_ref = -torch.distributions.Bernoulli(logits=model.dec.decode(z)).log_prob(x).sum(-1)
    assert torch.allclose(kl, kl_ref.mean(), atol=1e-5)
    assert torch.allclose(rec, rec_ref.mean(), rtol=1e-5)


def test_negative_elbo_bound_under_bf16_autocast_is_fp32_and_close():
    model, x = tiny_model(), binary_batch()
    torch.manual_seed(1)
    ref = model.negative_elbo_bound(x)
    torch.manual_seed(1)
    with vae.autocast(True):
        got = model.negative_elbo_bound(x)
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32
        assert abs(a.item() - b.item()) < 0.02 * abs(b.item()) + 0.05


def test_elbo_equals_iwae_1_and_iwae_tightens_in_expectation():
    model, x = tiny_model(z_dim=2), binary_batch(4)
    xs = x.repeat(500, 1)  # 500 independent draws per image
    with torch.no_grad():
        nelbo, _, _ = model.negative_elbo_bound(xs)
        niwae1, _, _ = model.negative_iwae_bound(xs, 1)
        niwae10, _, _ = model.negative_iwae_bound(xs, 10)
        niwae100, _, _ = model.negative_iwae_bound(x.repeat(50, 1), 100)
    # k = 1 is the ELBO itself (equal in expectation; 2000 draws, per-draw sd of a few nats)
    assert abs(niwae1.item() - nelbo.item()) < 0.5
    # -ELBO >= -IWAE_10 >= -IWAE_100 in expectation (Burda et al. 2016, theorem 1)
    assert nelbo.item() > niwae10.item() > niwae100.item()


def test_iwae_is_exact_when_q_is_the_posterior():
    # A decoder that ignores z makes the posterior equal the prior; an encoder that outputs
    # (0, 1) makes q the prior too. Then every weight p(x, z) / q(z | x) = p(x): all bounds
    # are exact and equal, for any k.
    model = tiny_model(z_dim=3)
    with torch.no_grad():
        for p in model.enc.net.parameters():
            p.zero_()
        model.enc.net[-1].bias[3:] = math.log(math.e - 1)  # softplus^-1(1)
        model.dec.net[0].weight.zero_()
    x = binary_batch(3)
    with torch.no_grad():
        nelbo, kl, _ = model.negative_elbo_bound(x)
        values = [model.negative_iwae_bound(x, k)[0].item() for k in (1, 7, 50)]
    assert abs(kl.item()) < 1e-6
    assert max(values) - min(values) < 1e-4 and abs(values[0] - nelbo.item()) < 1e-4


def test_sample_x_is_binary():
    model = tiny_model()
    x = model.sample_x(10)
    assert x.shape == (10, 784)
    assert set(x.unique().tolist()) <= {0.0, 1.0}


# --- data -----------------------------------------------------------------------------------


def test_binarize_batch_has_the_course_law():
    pix = torch.tensor([0, 1, 64, 128, 254, 255], dtype=torch.uint8)
    x = vae.binarize_batch(pix.expand(100_000, 6))
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    p = pix.double() / 255
    assert x[:, 0].sum() == 0 and x[:, 5].sum() == 100_000
    assert torch.allclose(x.double().mean(0), p, atol=0.006)


def test_static_binarize_is_deterministic():
    x = torch.rand(20, 784)
    a, b = vae.static_binarize(x), vae.static_binarize(x)
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, vae.static_binarize(x, seed=1))


def test_course_test_subset():
    try:
        x, y = vae.course_test_subset()
    except DatasetNotFoundError:
        pytest.skip("MNIST not available (set DGMBOOK_DATA)")
    assert x.shape == (100, 784) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(y, torch.arange(10).repeat_interleave(10))
    x2, _ = vae.course_test_subset()
    assert torch.equal(x, x2)  # binarized once, the same every time


# --- training -------------------------------------------------------------------------------


def test_tiny_training_run_is_deterministic_and_learns():
    g = torch.Generator().manual_seed(0)
    x_train = (torch.rand(200, 784, generator=g) * 255).to(torch.uint8)
    x_train[:, :392] = 0  # structure to learn: the top half of every image is black
    cfg = vae.VAEConfig(z_dim=2, hidden=32, iters=60, batch_size=20, log_every=10, lr=3e-3, bf16=False)
    a = vae.train(cfg, x_train)
    b = vae.train(cfg, x_train)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    c = a["curves"]
    assert c["iter"].tolist() == [10, 20, 30, 40, 50, 60]
    assert torch.allclose(c["nelbo"], c["kl"] + c["rec"], atol=1e-3)
    assert c["nelbo"][-1] < c["nelbo"][0] - 50


def test_evaluate_bound_and_iwae_on_a_tiny_model():
    model, x = tiny_model().eval(), binary_batch(6)
    r = vae.evaluate_bound(model, x, repeats=200, seed=0, rows_per_batch=256)
    assert abs(r["nelbo"] - (r["kl"] + r["rec"])) < 1e-4
    r2 = vae.evaluate_bound(model, x, repeats=200, seed=0, rows_per_batch=256)
    assert r == r2  # seeded
    niwae1 = vae.evaluate_iwae(model, x, 1, samples_per_batch=4)
    niwae50 = vae.evaluate_iwae(model, x, 50)
    assert niwae50 < r["nelbo"] and abs(niwae1 - r["nelbo"]) < 5


def test_mean_se():
    m, se = vae.mean_se([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and abs(se - np.std([1, 2, 3, 4], ddof=1) / 2) < 1e-12


def test_run_many_in_processes_matches_one_process():
    # The chapter trains its runs two at a time in spawned single-threaded processes; the
    # result must not depend on that.
    cfgs = [vae.VAEConfig(z_dim=2, hidden=16, iters=5, seed=s, eval_repeats=0, test_repeats=0)
            for s in (0, 1)]
    try:
        serial = vae.run_many(cfgs, workers=1)
    except DatasetNotFoundError:
        pytest.skip("MNIST not available (set DGMBOOK_DATA)")
    torch.set_num_threads(2)
    parallel = vae.run_many(cfgs, workers=2)
    assert torch.get_num_threads() == 2  # the caller's setting is left alone
    for a, b in zip(serial, parallel):
        for k in a["state_dict"]:
            assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
        assert torch.equal(a["curves"]["nelbo"], b["curves"]["nelbo"])
    assert not torch.equal(serial[0]["state_dict"]["dec.net.4.bias"], serial[1]["state_dict"]["dec.net.4.bias"])


def test_evaluate_bound_equals_the_bound_of_the_repeated_images():
    """Chunked without building x.repeat(repeats, 1): the same rows, the same random draws."""
    model = tiny_model()
    x = torch.bernoulli(torch.full((7, 784), 0.3), generator=torch.Generator().manual_seed(1))
    got = vae.evaluate_bound(model, x, repeats=5, seed=3, rows_per_batch=4)
    torch.manual_seed(3)
    xs, want = x.repeat(5, 1), torch.zeros(3, dtype=torch.float64)
    for chunk in xs.split(4):
        want += torch.stack(model.negative_elbo_bound(chunk)).double() * chunk.shape[0]
    want /= xs.shape[0]
    assert [got[k] for k in ("nelbo", "kl", "rec")] == pytest.approx(want.tolist(), rel=1e-12)


# --- the full experiment --------------------------------------------------------------


def tiny_data(monkeypatch):
    """MNIST replaced by random images (as tests/test_device_chapters.py does): 120
    training images, and six binary ones for every evaluation set."""
    g = torch.Generator().manual_seed(0)
    x_train = (torch.rand(120, 784, generator=g) * 255).to(torch.uint8)
    x_eval = (torch.rand(6, 784, generator=g) < 0.3).float()
    monkeypatch.setattr(vae, "course_test_subset",
                        lambda b="torch", seed=0: (x_eval, None))
    monkeypatch.setattr(vae, "test_set", lambda: (x_eval, None))
    monkeypatch.setattr(vae, "load_image_dataset", lambda name, train: (x_train, None))


def tiny_cfg(**kw):
    base = dict(z_dim=2, hidden=16, iters=8, batch_size=20, log_every=2, eval_repeats=2,
                test_repeats=1)
    return vae.VAEConfig(**{**base, **kw})


def test_run_many_timed_adds_only_the_seconds(monkeypatch):
    tiny_data(monkeypatch)
    cfgs = [tiny_cfg(seed=s) for s in (0, 1)]
    plain = vae.run_many(cfgs, workers=1)
    timed = vae.run_many(cfgs, workers=1, timed=True)
    for a, b in zip(plain, timed):
        assert set(b) == set(a) | {"train_seconds", "eval_seconds"}
        assert b["train_seconds"] > 0 and b["eval_seconds"] > 0
        assert a["subset"] == b["subset"] and a["test"] == b["test"]
        assert torch.equal(a["curves"]["nelbo"], b["curves"]["nelbo"])


def test_default_workers_is_two_or_one_on_a_single_core(monkeypatch):
    assert vae.default_workers() == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert vae.default_workers() == 1


def test_full_configs():
    cfgs = vae.full_configs()
    want = [(z, s) for z in (64, 10) for s in range(5)]
    assert [(c.z_dim, c.seed) for c in cfgs] == want
    default = dataclasses.asdict(vae.VAEConfig())
    for c in cfgs:
        assert dataclasses.asdict(c) == {**default, "z_dim": c.z_dim, "seed": c.seed,
                                         "iters": 20_000}
    assert vae.FULL_IWAE_IMAGES == 2000  # the chapter's evaluate_models call


def test_full_experiment_on_tiny_runs(monkeypatch, capsys):
    tiny_data(monkeypatch)
    cfgs = [tiny_cfg(z_dim=z, seed=s) for z in (3, 2) for s in (0, 1)]
    monkeypatch.setattr(vae, "full_configs", lambda: cfgs)
    monkeypatch.setattr(vae, "FULL_IWAE_IMAGES", 3)
    monkeypatch.setattr(vae, "FULL_CURVE_EVERY", 4)  # 2 points per window, 2 windows
    config, metrics = vae.full_experiment(progress=False, workers=1)
    assert capsys.readouterr().err == ""  # progress=False: silent
    json.dumps(config, allow_nan=False)
    json.dumps(metrics, allow_nan=False)
    assert config["runs"] == [dataclasses.asdict(c) for c in cfgs]
    settings = (config["workers"], config["iwae_images"], config["curve_every"])
    assert settings == (1, 3, 4)
    assert list(metrics) == ["z3", "z2"]
    m = metrics["z2"]
    assert m["seeds"] == [0, 1]
    assert set(m) == {"seeds", "subset", "test", "final_train", "numpy_subset_nelbo",
                      "spread", "iwae_subset", "iwae_test", "curve", "train_seconds",
                      "eval_seconds"}
    for where in ("subset", "test", "final_train"):
        assert set(m[where]) == {"nelbo", "kl", "rec"}
        for s in m[where].values():
            assert len(s["values"]) == 2
            assert s["mean"] == pytest.approx(np.mean(s["values"]))
            assert math.isfinite(s["se"])
        assert m[where]["nelbo"]["mean"] == pytest.approx(
            m[where]["kl"]["mean"] + m[where]["rec"]["mean"], rel=1e-4)
    assert m["spread"]["n_binarizations"] == 50
    assert m["spread"]["min"] <= m["spread"]["mean"] <= m["spread"]["max"]
    assert list(m["iwae_subset"]) == list(m["iwae_test"]) == ["1", "10", "100", "1000"]
    assert m["curve"]["iter"] == [4, 8]
    assert all(len(m["curve"][k]) == 2 for k in ("nelbo", "kl", "rec"))
    # the curve: the mean over seeds of each window's mean
    runs = vae.run_many(cfgs[2:], workers=1)
    curves = torch.stack([r["curves"]["nelbo"] for r in runs])  # (seeds, 4 points)
    want = curves.reshape(2, 2, 2).mean((0, 2))
    assert m["curve"]["nelbo"] == pytest.approx(want.tolist(), rel=1e-6)
    assert m["subset"]["kl"]["values"] == [r["subset"]["kl"] for r in runs]
    for key in ("train_seconds", "eval_seconds"):
        assert len(m[key]["values"]) == 2 and min(m[key]["values"]) > 0


def test_full_experiment_progress_lines(monkeypatch, capsys):
    tiny_data(monkeypatch)
    monkeypatch.setenv("DGMBOOK_PROGRESS", "1")  # the training loops' bars: on ...
    monkeypatch.setattr(vae, "full_configs", lambda: [tiny_cfg(seed=s) for s in (0, 1)])
    monkeypatch.setattr(vae, "FULL_IWAE_IMAGES", 2)
    _, metrics = vae.full_experiment(progress=True, workers=1)
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()  # ... but off in the full experiment: our lines alone
    assert [ln.split(":")[0] for ln in lines] == [
        "[1/2] vae z=2 seed=0", "[2/2] vae z=2 seed=1", "vae z=2"]
    assert os.environ["DGMBOOK_PROGRESS"] == "1"  # restored
    assert metrics["z2"]["seeds"] == [0, 1]


def test_full_experiment_under_a_launcher_deals_the_runs(monkeypatch, as_rank):
    """As rank 1 of 2: it trains the second and fourth of four runs and sends them to
    rank 0, and does not evaluate."""
    tiny_data(monkeypatch)
    cfgs = [tiny_cfg(seed=s) for s in range(4)]
    monkeypatch.setattr(vae, "full_configs", lambda: cfgs)
    trained = []
    run_many = vae.run_many
    monkeypatch.setattr(vae, "run_many",
                        lambda cs, **kw: trained.extend(cs) or run_many(cs, **kw))
    monkeypatch.setattr(vae, "evaluate_models",
                        lambda *a, **kw: pytest.fail("rank 1 evaluated"))
    sent = as_rank(1, 2)
    config, metrics = vae.full_experiment(progress=True, workers=1)
    assert metrics == {} and len(config["runs"]) == 4
    assert trained == [cfgs[1], cfgs[3]]
    assert list(sent[0]) == [1, 3] and "subset" in sent[0][3]


def test_cli_lists_the_vae_experiment(capsys):
    from dgmbook import cli

    assert cli.main(["list"]) == 0
    assert "vae" in capsys.readouterr().out.split()
    assert cli._resolve(cli.EXPERIMENTS["vae"]) is vae.full_experiment
