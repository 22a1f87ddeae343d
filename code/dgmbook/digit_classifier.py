"""A small MNIST classifier, used as a yardstick for generated digits.

Chapter "Generative adversarial networks". Two sample-quality numbers that need no human:

* **mode coverage**: the class distribution the classifier assigns to a set of samples (a
  generator that has collapsed onto a few digits puts most of its mass on a few classes);
* **Frechet distance in feature space** (the recipe of FID, Heusel et al. 2017, with this small
  classifier's penultimate layer in place of Inception): fit a Gaussian to the features of the
  samples and one to the features of real digits, and report

      FD = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}),

  the squared 2-Wasserstein distance between the two Gaussians.

Images are float tensors in [-1, 1], [N, 784] or [N, 28, 28] (the GAN's convention). Training
and evaluation run on ``$DGMBOOK_DEVICE`` (:mod:`dgmbook.device`; the CPU by default) or a
``device=`` argument, and return their results on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import device as devices
from .utils import autocast, check_config, progress, seed_everything


@dataclass
class ClassifierConfig:
    """Training of the yardstick classifier (the defaults take seconds on a CPU)."""

    channels: tuple[int, int] = (16, 32)
    feature_dim: int = 64  # the penultimate layer, the feature space of the Frechet distance
    epochs: int = 2
    batch_size: int = 128
    lr: float = 2e-3
    n_train: int = 60_000
    bf16: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self, positive=("channels", "feature_dim", "epochs", "batch_size", "lr",
                                     "n_train"))


class DigitCNN(nn.Module):
    """[B, 784] or [B, 28, 28] in [-1, 1] -> logits [B, 10]; ``features`` gives [B, feature_dim].

    conv5 (c1) - ReLU - maxpool2 -> [B, c1, 12, 12]; conv5 (c2) - ReLU - maxpool2 -> [B, c2, 4, 4];
    Linear -> ReLU -> features [B, feature_dim]; Linear -> logits [B, 10].
    """

    def __init__(self, channels: tuple[int, int] = (16, 32), feature_dim: int = 64):
        super().__init__()
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 5), nn.ReLU(), nn.MaxPool2d(2),  # [B, c1, 12, 12]
            nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),  # [B, c2, 4, 4]
            nn.Flatten(), nn.Linear(c2 * 16, feature_dim), nn.ReLU(),  # [B, feature_dim]
        )
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(-1, 1, 28, 28))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def mnist_float(train: bool, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images [N, 28, 28] in [-1, 1] and labels [N] (the first n if given)."""
    from .data import load_image_dataset

    images, labels = load_image_dataset("MNIST", train=train)
    if n is not None:
        images, labels = images[:n], labels[:n]
    return images.float().div(127.5).sub(1.0), labels


def train(cfg: ClassifierConfig, device: str | None = None) -> dict:
    """Train with Adam and cross-entropy on MNIST train; report accuracy on MNIST test.

    Returns ``{"state_dict", "test_accuracy", "losses"}`` (``torch.save``-able, on the CPU).
    Trains on ``device`` (default ``$DGMBOOK_DEVICE``); the batches' order is drawn on the CPU.
    """
    device = devices.resolve(device)
    gen = seed_everything(cfg.seed)
    x, y = mnist_float(train=True, n=cfg.n_train)
    model = DigitCNN(cfg.channels, cfg.feature_dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    steps = cfg.epochs * (len(x) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    losses = []
    model.train()
    for _ in progress(range(cfg.epochs), desc="classifier"):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // cfg.batch_size):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            with autocast(cfg.bf16, device):
                loss = F.cross_entropy(model(x[idx].to(device)).float(), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    model.eval()
    x_test, y_test = mnist_float(train=False)
    acc = (predict(model, x_test, device) == y_test).float().mean().item()
    return {"state_dict": model.cpu().state_dict(), "test_accuracy": acc, "losses": losses}


def build(cfg: ClassifierConfig, result: dict) -> DigitCNN:
    """The trained classifier (eval mode) from a :func:`train` result."""
    model = DigitCNN(cfg.channels, cfg.feature_dim)
    model.load_state_dict(result["state_dict"])
    return model.eval()


@torch.no_grad()
def _batched(fn, x: torch.Tensor, device: str, batch_size: int = 2000) -> torch.Tensor:
    """fn on x in batches moved to ``device``; the result on the CPU."""
    return torch.cat([fn(xb.to(device)) for xb in x.split(batch_size)]).cpu()


def predict(model: DigitCNN, x: torch.Tensor, device: str | None = None) -> torch.Tensor:
    """Predicted classes [N] (float32 inference, so results do not depend on autocast), computed
    on ``device`` (default ``$DGMBOOK_DEVICE``; the model stays where it is, a copy goes there)."""
    device = devices.resolve(device)
    model = devices.module_on(model, device)
    return _batched(lambda xb: model(xb).argmax(1), x.float(), device)


def features(model: DigitCNN, x: torch.Tensor, device: str | None = None) -> torch.Tensor:
    """Penultimate-layer features [N, feature_dim], float64, computed on ``device`` (default
    ``$DGMBOOK_DEVICE``)."""
    device = devices.resolve(device)
    model = devices.module_on(model, device)
    return _batched(model.features, x.float(), device).double()


def gaussian_stats(feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and (unbiased) covariance [d, d] of features [N, d], as float64 numpy arrays."""
    f = feats.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(s1 + s2 - 2 (s1^{1/2} s2 s1^{1/2})^{1/2}).

    tr((s1 s2)^{1/2}) is computed as tr((s1^{1/2} s2 s1^{1/2})^{1/2}), a square root of a
    symmetric PSD matrix (the two have the same eigenvalues), which is stable in float64.
    """
    r1 = _sqrtm_psd(s1)
    cross = _sqrtm_psd(r1 @ s2 @ r1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))


def class_distribution(model: DigitCNN, x: torch.Tensor, device: str | None = None) -> torch.Tensor:
    """The fraction of images [10] the classifier assigns to each digit (classified on
    ``device``, default ``$DGMBOOK_DEVICE``)."""
    return torch.bincount(predict(model, x, device), minlength=10).double() / len(x)


def evaluate(model: DigitCNN, x: torch.Tensor, reference: tuple[np.ndarray, np.ndarray],
             device: str | None = None) -> dict:
    """Sample-quality numbers for images x against reference feature statistics (mu, S):

    ``fd`` (Frechet distance), ``classes`` (class distribution [10]), ``kl_uniform``
    (KL(class distribution || uniform) in nats: 0 when every digit is equally frequent, log 10
    when all samples are one digit), ``modes`` (digits with at least 1/4 of their fair share),
    ``confidence`` (the mean of the classifier's top softmax probability). The classifier runs
    on ``device`` (default ``$DGMBOOK_DEVICE``); the numbers are the CPU's.
    """
    device = devices.resolve(device)
    model = devices.module_on(model, device)
    x = x.float()
    mu, s = gaussian_stats(features(model, x, device))
    classes = class_distribution(model, x, device)
    nz = classes[classes > 0]
    probs = _batched(lambda xb: F.softmax(model(xb), 1).max(1).values, x, device)
    return {
        "fd": frechet_distance(mu, s, *reference),
        "classes": classes,
        "kl_uniform": float((nz * torch.log(nz * 10)).sum()),
        "modes": int((classes >= 0.025).sum()),
        "confidence": probs.double().mean().item(),
    }
