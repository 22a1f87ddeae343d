"""Trained GANs scored against the digit classifier (chapter "Generative adversarial networks").

Kept apart from :mod:`dgmbook.gan` and :mod:`dgmbook.digit_classifier` so that each of those
trains on its own code only: the run cache keys a run by the modules it reaches, and editing the
scoring here re-scores without re-training either network.
"""

from __future__ import annotations

import numpy as np
import torch

from . import digit_classifier, gan

Reference = tuple[np.ndarray, np.ndarray]  # Gaussian statistics (mean, covariance) of features


def fd_over_training(clf: digit_classifier.DigitCNN, reference: Reference, cfg: gan.GANConfig,
                     run: dict, n: int = 2000, seed: int = 4) -> dict[int, float]:
    """The Frechet distance of ``n`` samples from each generator snapshot of a :func:`gan.train`
    run, by iteration."""
    out = {}
    for step in sorted(run["G_snapshots"]):
        G_step, _ = gan.build(cfg, run, snapshot=step)
        out[step] = digit_classifier.evaluate(clf, gan.generate(G_step, n, seed=seed), reference)["fd"]
    return out


def final_scores(clf: digit_classifier.DigitCNN, reference: Reference, real: torch.Tensor,
                 generators: dict[str, gan.Generator], n: int, seed: int = 3) -> dict[str, dict]:
    """:func:`digit_classifier.evaluate` of ``n`` held-out real digits (``real[:n]``, named
    "real held-out digits") and of ``n`` samples of each generator."""
    scores = {"real held-out digits": digit_classifier.evaluate(clf, real[:n], reference)}
    for name, G in generators.items():
        scores[name] = digit_classifier.evaluate(clf, gan.generate(G, n, seed=seed), reference)
    return scores
