"""The small helpers every chapter shares (dgmbook.utils), and the configurations' own checks:
an invalid value is a ValueError that names the field."""

import dataclasses

import pytest
import torch

from dgmbook import continual, digit_classifier, gan, kl, utils, vae
from dgmbook import policy_gradient as pg


def test_torch_threads_restores_the_setting_even_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with utils.torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("inference", [True, False])
def test_eval_mode_restores_the_mode(training, inference):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train(training)
    with utils.eval_mode(model, inference=inference):
        assert not model.training and not model[1].training
        y = model(torch.ones(1, 2))
        assert y.requires_grad is not inference
    assert model.training is training and model[1].training is training


@pytest.mark.parametrize("make, field", [
    (lambda: vae.VAEConfig(z_dim=0), "VAEConfig.z_dim"),
    (lambda: vae.VAEConfig(lr=-1e-3), "VAEConfig.lr"),
    (lambda: vae.VAEConfig(subset_binarization="fair"), "VAEConfig.subset_binarization"),
    (lambda: gan.book_config(lr_d=-2e-4), "GANConfig.lr_d"),
    (lambda: gan.GANConfig(z_dim=0), "GANConfig.z_dim"),
    (lambda: gan.GANConfig(g_hidden=(32, 0)), "GANConfig.g_hidden"),
    (lambda: gan.Toy1DConfig(steps=0), "Toy1DConfig.steps"),
    (lambda: pg.PGConfig(lr=-1e-3), "PGConfig.lr"),
    (lambda: pg.PGConfig(method="evolution"), "PGConfig.method"),
    (lambda: continual.Config(lr=-0.01), "Config.lr"),
    (lambda: continual.Config(strategy="forget"), "Config.strategy"),
    (lambda: digit_classifier.ClassifierConfig(feature_dim=0), "ClassifierConfig.feature_dim"),
    (lambda: kl.BasinConfig(lr=0.0), "BasinConfig.lr"),
])
def test_an_invalid_configuration_names_its_field(make, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make()


def test_replace_checks_too():
    with pytest.raises(ValueError, match="VAEConfig.iters"):
        dataclasses.replace(vae.VAEConfig(), iters=-5)
