"""The chapters' training and evaluation functions on ``DGMBOOK_DEVICE`` (dgmbook.device): on the
CPU the setting changes nothing (unset, ``cpu`` and an explicit ``device="cpu"`` give the same
results, bit for bit), every result comes back on the CPU, and a device string that names no
device stops a run before it trains. Tiny configurations, a few seconds in all. Where a GPU is
visible, each run also goes once through CUDA: it works and hands back CPU results."""

import math
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

import synthetic

from dgmbook import continual as C
from dgmbook import device as devices
from dgmbook import digit_classifier as dc
from dgmbook import gan, gan_scores, kl, vae
from dgmbook import policy_gradient as pg

pytestmark = pytest.mark.usefixtures("one_thread")


# --- helpers ------------------------------------------------------------------------------------


def _tensors(obj):
    """Every tensor in nested dicts, lists, tuples and dataclasses."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
    elif hasattr(obj, "__dataclass_fields__"):
        yield from _tensors(asdict(obj))


def _same(a, b, path="result"):
    """Exact equality of nested results (tensors bit for bit, nan equal to nan)."""
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all()), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b, equal_nan=True), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{path}[{i}]")
    elif hasattr(a, "__dataclass_fields__"):
        _same(asdict(a), asdict(b), path)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


def on_every_cpu_setting(monkeypatch, run):
    """``run(device)`` with DGMBOOK_DEVICE unset, with DGMBOOK_DEVICE=cpu, and with an explicit
    ``device="cpu"`` while the variable names no device (so every inner call must pass the
    argument on): the three results are identical and on the CPU. Returns the first."""
    monkeypatch.delenv(devices.ENV, raising=False)
    unset = run(None)
    monkeypatch.setenv(devices.ENV, "cpu")
    cpu = run(None)
    monkeypatch.setenv(devices.ENV, "nonsense")
    explicit = run("cpu")
    monkeypatch.delenv(devices.ENV)
    _same(unset, cpu)
    _same(unset, explicit)
    found = list(_tensors(unset))
    assert found and all(t.device.type == "cpu" for t in found)
    return unset


def _same_structure(a, b, path="result"):
    """The same keys, types, shapes and dtypes (a GPU's numbers differ in their last bits)."""
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _same_structure(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _same_structure(u, v, f"{path}[{i}]")
    elif hasattr(a, "__dataclass_fields__"):
        _same_structure(asdict(a), asdict(b), path)


def and_on_a_gpu(cpu_result, run):
    """Where a GPU is visible: ``run("cuda")`` works, returns everything on the CPU, and has the
    CPU result's structure."""
    if not torch.cuda.is_available():
        return
    gpu = run("cuda")
    _same_structure(cpu_result, gpu)
    assert all(t.device.type == "cpu" for t in _tensors(gpu))


# --- dgmbook.device -----------------------------------------------------------------------------


def test_resolve_names_a_bad_setting(monkeypatch):
    monkeypatch.setenv(devices.ENV, "nonsense")
    with pytest.raises(RuntimeError, match="nonsense"):
        devices.resolve()
    assert devices.resolve(torch.device("cpu")) == "cpu"


def test_module_on_moves_a_copy_and_leaves_the_module():
    net = torch.nn.Linear(3, 2).eval()
    assert devices.module_on(net, "cpu") is net
    assert devices.module_on(torch.nn.ReLU(), "meta") is not None  # no parameters: itself
    moved = devices.module_on(net, "meta")
    assert moved is not net and not moved.training
    assert next(moved.parameters()).device.type == "meta"
    assert next(net.parameters()).device.type == "cpu"


# --- one test per module ------------------------------------------------------------------------


def test_vae(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x_train = (torch.rand(120, 784, generator=g) * 255).to(torch.uint8)
    x_eval = (torch.rand(6, 784, generator=g) < 0.3).float()
    cfg = vae.VAEConfig(z_dim=2, hidden=16, iters=12, batch_size=20, log_every=4, bf16=True,
                        eval_repeats=2, test_repeats=1)
    # the course's subset and the test set, replaced by six images (no MNIST needed)
    monkeypatch.setattr(vae, "course_test_subset", lambda b="torch", seed=0: (x_eval, None))
    monkeypatch.setattr(vae, "test_set", lambda: (x_eval, None))
    monkeypatch.setattr(vae, "load_image_dataset", lambda name, train: (x_train, None))

    def run(device):
        out = vae.train(cfg, x_train, device=device)
        model = vae.load_model(cfg, out["state_dict"])
        return {
            "train": out,
            "bound": vae.evaluate_bound(model, x_eval, 3, seed=1, rows_per_batch=4,
                                        device=device),
            "iwae": vae.iwae_bounds(model, x_eval, ks=(1, 4), device=device),
            "models": vae.evaluate_models([model], cfg, iwae_images=2, device=device),
            "runs": vae.run_many([replace(cfg, iters=4)], workers=1, device=device),
        }

    out = on_every_cpu_setting(monkeypatch, run)
    and_on_a_gpu(out, run)
    assert out["train"]["curves"]["nelbo"].shape == (3,)
    assert out["models"]["spread"].shape == (1, 50)


def _tiny_gan_cfg(**kw):
    base = dict(z_dim=8, g_arch="conv", g_hidden=(8,), d_arch="conv", d_hidden=(4,),
                batch_size=16, iters=6, n_grid=4, snapshots=(0, 3), bf16=True, seed=3,
                d_head_start=1)
    return gan.GANConfig(**{**base, **kw})


def _tiny_images(n=64):
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_gan(monkeypatch):
    cfg, data = _tiny_gan_cfg(), _tiny_images()
    toy = gan.Toy1DConfig(steps=10, batch_size=32, hidden=8)

    def run(device):
        out = gan.train(cfg, data, device=device)
        G, D = gan.build(cfg, out)
        z = torch.randn(3, cfg.z_dim, generator=torch.Generator().manual_seed(1))
        return {
            "train": out,
            "toy": gan.train_discriminator_1d(toy, device=device),
            "samples": gan.generate(G, 5, seed=1, batch_size=2, device=device),
            "norms": gan.per_sample_generator_grad_norms(G, D, z, device=device),
            "probe": gan.gradient_probe(cfg, out, [0, 3], n=3, device=device),
        }

    out = on_every_cpu_setting(monkeypatch, run)
    and_on_a_gpu(out, run)
    assert set(out["train"]["samples"]) == {0, 3, 6}
    assert out["samples"].shape == (5, 784)


def test_digit_classifier_and_gan_scores(monkeypatch):
    monkeypatch.setattr(dc, "mnist_float",
                        lambda train, n=None: synthetic.digits(256 if train else 64, int(train)))
    cfg = dc.ClassifierConfig(channels=(4, 8), feature_dim=8, epochs=1, batch_size=64, lr=1e-2)
    gcfg = _tiny_gan_cfg()
    gan_run = gan.train(gcfg, _tiny_images(), device="cpu")
    x, _ = synthetic.digits(40, 7)

    def run(device):
        out = dc.train(cfg, device=device)
        clf = dc.build(cfg, out)
        ref = dc.gaussian_stats(dc.features(clf, x, device=device))
        G, _ = gan.build(gcfg, gan_run)
        return {
            "train": out,
            "predict": dc.predict(clf, x, device=device),
            "evaluate": dc.evaluate(clf, x[:20], ref, device=device),
            "fd": gan_scores.fd_over_training(clf, ref, gcfg, gan_run, n=20, device=device),
            "final": gan_scores.final_scores(clf, ref, x, {"G": G}, n=20, device=device),
        }

    out = on_every_cpu_setting(monkeypatch, run)
    and_on_a_gpu(out, run)
    assert set(out["fd"]) == {0, 3, 6}


def _tiny_permuted(n_train=96, n_test=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_test, C.N_PIXELS), generator=g, dtype=torch.uint8)
    y = (x[:, :10].float().mean(1) // 25.6).long().clamp(0, 9)
    return C.PermutedMNIST(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 0)


def test_continual(monkeypatch):
    data = _tiny_permuted()
    monkeypatch.setattr(C, "load_permuted_mnist", lambda n_train, n_test, seed=0: data)
    base = C.Config(model="mlp", hidden=8, n_tasks=2, batch_size=32, fisher_n=32, bf16=True)

    def run(device):
        return {
            "ewc": C.run(replace(base, strategy="ewc"), data, device=device),  # sampled Fisher
            "replay": C.run(replace(base, strategy="replay", buffer_size=20), data,
                            device=device),
            "cnn": C.run(replace(base, model="cnn", strategy="ewc", fisher="course",
                                 n_tasks=2, bf16=False), data, device=device),
            "fisher": C.fisher_comparison(base, n=40, device=device),
            "accuracy": C.accuracy(C.MLP(8), *data.test(0), device=device),
        }

    out = on_every_cpu_setting(monkeypatch, run)
    and_on_a_gpu(out, run)
    assert out["ewc"]["R"].shape == (2, 2)
    assert out["fisher"]["exact"].shape == out["fisher"]["grad_mean"].shape


def test_policy_gradient(monkeypatch):
    small = pg.PGConfig(n_train=80, n_test=40, hidden=(8,), lr=1e-2, iters=6, eval_every=3)
    variance = pg.VarianceConfig(train_cfg=replace(small, n_train=40), n_draws=3,
                                 rewards=((3.0, -1.0),))

    def run(device):
        return {
            "reinforce": pg.train(replace(small, seeds=(0, 1), batch_size=16, baseline="mean"),
                                  device=device),
            "expected": pg.train(replace(small, method="expected"), device=device),
            "supervised": pg.train(replace(small, method="supervised", batch_size=16),
                                   device=device),
            "variance": pg.variance_study(variance, device=device),
        }

    out = on_every_cpu_setting(monkeypatch, run)
    and_on_a_gpu(out, run)
    assert out["reinforce"]["test_acc"].shape == (2, 3)


def test_kl(monkeypatch):
    target = kl.Mixture()

    def run(device):
        return {
            "fit": kl.fit_gaussians(target, "reverse", torch.tensor([1.0, -1.0]),
                                    torch.tensor([1.0, 0.5]), steps=20, device=device),
            "forward": kl.fit_gaussians(target, "forward", 0.5, 1.0, steps=20, device=device),
            "surface": kl.kl_surface(target, "reverse", torch.linspace(-3, 3, 4),
                                     torch.tensor([0.5, 1.0]), device=device),
            "basins": kl.reverse_kl_basins(kl.BasinConfig(mu_n=3, sigma_n=2, steps=10),
                                           device=device),
        }

    out = on_every_cpu_setting(monkeypatch, run)
    and_on_a_gpu(out, run)
    assert out["surface"].shape == (2, 4)


# --- a bad setting stops a run before it trains --------------------------------------------------


class Reached(Exception):
    pass


def _refuse(*args, **kwargs):
    raise Reached


# each run, and a step it takes early on: that step must never be reached
BAD_SETTING = {
    "vae.train": (vae, "VAE", lambda: vae.train(vae.VAEConfig(iters=1), torch.zeros(4, 784))),
    "vae.evaluate_bound": (devices, "module_on", lambda: vae.evaluate_bound(
        vae.VAE(vae.VAEConfig(z_dim=2, hidden=4)), torch.zeros(2, 784), 1)),
    "vae.evaluate_models": (vae, "test_set", lambda: vae.evaluate_models([], vae.VAEConfig())),
    "vae.run_many": (vae, "_train_and_evaluate_one_thread", lambda: vae.run_many(
        [vae.VAEConfig()], workers=1)),
    "gan.train": (gan, "Generator", lambda: gan.train(_tiny_gan_cfg(), _tiny_images())),
    "gan.train_discriminator_1d": (gan, "mlp_1d", lambda: gan.train_discriminator_1d(
        gan.Toy1DConfig(steps=1))),
    "gan.generate": (devices, "module_on", lambda: gan.generate(gan.Generator(8, (8,)), 2)),
    "gan.gradient_probe": (gan, "build", lambda: gan.gradient_probe(_tiny_gan_cfg(), {}, [0])),
    "digit_classifier.train": (dc, "mnist_float", lambda: dc.train(dc.ClassifierConfig())),
    "digit_classifier.evaluate": (dc, "features", lambda: dc.evaluate(
        dc.DigitCNN(), torch.zeros(2, 784), None)),
    "gan_scores.final_scores": (dc, "evaluate", lambda: gan_scores.final_scores(
        dc.DigitCNN(), None, torch.zeros(2, 784), {"G": gan.Generator(8, (8,))}, 2)),
    "continual.run": (C, "make_model", lambda: C.run(C.Config(n_tasks=1), _tiny_permuted())),
    "continual.fisher_comparison": (C, "load_permuted_mnist", lambda: C.fisher_comparison(
        C.Config())),
    "continual.accuracy": (C, "to_input", lambda: C.accuracy(
        C.MLP(4), *_tiny_permuted().test(0))),
    "policy_gradient.train": (pg, "load_task", lambda: pg.train(pg.PGConfig())),
    "policy_gradient.variance_study": (pg, "load_task", lambda: pg.variance_study(
        pg.VarianceConfig())),
    "kl.fit_gaussians": (kl, "grid", lambda: kl.fit_gaussians(kl.Mixture(), "reverse", 0.0, 1.0)),
    "kl.kl_surface": (kl, "grid", lambda: kl.kl_surface(
        kl.Mixture(), "reverse", torch.zeros(2), torch.ones(2))),
    "kl.reverse_kl_basins": (kl, "fit_gaussians", lambda: kl.reverse_kl_basins(
        kl.BasinConfig())),
}


@pytest.mark.parametrize("name", sorted(BAD_SETTING))
def test_a_bad_setting_stops_the_run_before_it_starts(name, monkeypatch):
    module, first_step, call = BAD_SETTING[name]
    monkeypatch.setattr(module, first_step, _refuse)
    monkeypatch.setenv(devices.ENV, "cpu")
    with pytest.raises(Reached):  # the step is on the run's way
        call()
    monkeypatch.setenv(devices.ENV, "nonsense")
    with pytest.raises(RuntimeError, match="not a torch device: 'nonsense'"):
        call()
