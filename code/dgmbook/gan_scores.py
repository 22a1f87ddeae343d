"""Trained GANs scored against the digit classifier (chapter "Generative adversarial networks").

Kept apart from :mod:`dgmbook.gan` and :mod:`dgmbook.digit_classifier` so that each of those
trains on its own code only: the run cache keys a run by the modules it reaches, and editing the
scoring here re-scores without re-training either network. The networks run on
``$DGMBOOK_DEVICE`` (:mod:`dgmbook.device`; the CPU by default) or a ``device=`` argument.
"""

from __future__ import annotations

import numpy as np
import torch

from . import device as devices
from . import digit_classifier, gan

Reference = tuple[np.ndarray, np.ndarray]  # Gaussian statistics (mean, covariance) of features


def fd_over_training(clf: digit_classifier.DigitCNN, reference: Reference, cfg: gan.GANConfig,
                     run: dict, n: int = 2000, seed: int = 4,
                     device: str | None = None) -> dict[int, float]:
    """The Frechet distance of ``n`` samples from each generator snapshot of a :func:`gan.train`
    run, by iteration (on ``device``, default ``$DGMBOOK_DEVICE``)."""
    device = devices.resolve(device)
    clf = devices.module_on(clf, device)
    out = {}
    for step in sorted(run["G_snapshots"]):
        G_step, _ = gan.build(cfg, run, snapshot=step)
        samples = gan.generate(G_step, n, seed=seed, device=device)
        out[step] = digit_classifier.evaluate(clf, samples, reference, device)["fd"]
    return out


def final_scores(clf: digit_classifier.DigitCNN, reference: Reference, real: torch.Tensor,
                 generators: dict[str, gan.Generator], n: int, seed: int = 3,
                 device: str | None = None) -> dict[str, dict]:
    """:func:`digit_classifier.evaluate` of ``n`` held-out real digits (``real[:n]``, named
    "real held-out digits") and of ``n`` samples of each generator (on ``device``, default
    ``$DGMBOOK_DEVICE``)."""
    device = devices.resolve(device)
    clf = devices.module_on(clf, device)
    scores = {"real held-out digits": digit_classifier.evaluate(clf, real[:n], reference, device)}
    for name, G in generators.items():
        samples = gan.generate(G, n, seed=seed, device=device)
        scores[name] = digit_classifier.evaluate(clf, samples, reference, device)
    return scores
