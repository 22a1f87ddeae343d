"""Trained GANs scored against the digit classifier (chapter "Generative adversarial networks").

Kept apart from :mod:`dgmbook.gan` and :mod:`dgmbook.digit_classifier` so that each of those
trains on its own code only: the run cache keys a run by the modules it reaches, and editing the
scoring here re-scores without re-training either network. The networks run on
``$DGMBOOK_DEVICE`` (:mod:`dgmbook.device`; the CPU by default) or a ``device=`` argument.

The full experiment (:func:`full_experiment`: both generator losses, three seeds each, 7,000
iterations) records its results in code/dgmbook/results/gans.json::

    python -m dgmbook full gans
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from unittest import mock

import numpy as np
import torch

from . import device as devices
from . import digit_classifier, distributed, gan, recorded
from .utils import PROGRESS_ENV

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


# --------------------------------------------------------------------------------------
# the full experiment (python -m dgmbook full gans)
#
# Here and not in dgmbook.gan: it needs the classifier, and dgmbook.gan must not reach
# dgmbook.digit_classifier (the run cache would retrain the chapter's GANs whenever the
# classifier changed); an edit here re-scores the chapter's runs without retraining them.

FULL_LOSSES = ("ns", "minimax")  # the chapter's two generator losses, in its order
FULL_SEEDS = (0, 1, 2)
FULL_ITERS = 7_000  # the book trains 6,000
FULL_BOOK_ITERS = 6_000  # the book's length: a snapshot there is scored as the end is
FULL_SNAPSHOTS = (0, 250, 500, 1000, 2000, 3000, 4000, 5000, 6000)  # the book's, + 6000
FULL_N_EVAL = 10_000  # samples (and held-out digits) per final score, as in the chapter
FULL_N_FD = 2_000  # samples per point of the Frechet-distance curve, as in the chapter
FULL_N_REFERENCE = 10_000  # training digits of the reference statistics, as in the chapter
FULL_CLASSIFIER = digit_classifier.ClassifierConfig()  # the chapter's yardstick
FULL_TAIL = 500  # the last iterations the chapter averages the losses over
FULL_SMOOTH = 100  # the chapter's moving average of mean D(G(z))
FULL_CURVE_EVERY = 500  # iterations per point of the recorded training curves


def full_configs() -> list[gan.GANConfig]:
    """The runs of ``python -m dgmbook full gans``: the chapter's MNIST GAN
    (:func:`gan.book_config`) with each generator loss, non-saturating then minimax,
    seeds 0, 1 and 2, for 7,000 iterations instead of the book's 6,000, with the book's
    snapshots plus one at 6,000 (seed 0's first 6,000 iterations are the book's runs)."""
    return [gan.book_config(loss, iters=FULL_ITERS, snapshots=FULL_SNAPSHOTS, seed=s)
            for loss in FULL_LOSSES for s in FULL_SEEDS]


_summary = recorded.summary  # per-seed values, mean and standard error


def _score_summary(scores: list[dict]) -> dict:
    """:func:`digit_classifier.evaluate` results of the seeds, summarised."""
    out = {k: _summary([s[k] for s in scores])
           for k in ("fd", "kl_uniform", "modes", "confidence")}
    out["min_class"] = _summary([s["classes"].min().item() for s in scores])
    out["max_class"] = _summary([s["classes"].max().item() for s in scores])
    out["classes"] = torch.stack([s["classes"] for s in scores]).mean(0).tolist()
    return out


def _coarse_curves(curves: list[dict]) -> dict[str, list]:
    """The training curves in windows of :data:`FULL_CURVE_EVERY` iterations (each
    window's mean), averaged over the runs."""
    n = len(curves[0]["d_loss"]) // FULL_CURVE_EVERY  # whole windows
    out = {"iter": [(i + 1) * FULL_CURVE_EVERY for i in range(n)]}
    for key in ("d_loss", "g_loss", "d_real", "d_fake"):
        c = np.array([cv[key][: n * FULL_CURVE_EVERY] for cv in curves])  # (runs, n w)
        out[key] = c.reshape(len(curves), n, FULL_CURVE_EVERY).mean((0, 2)).tolist()
    return out


def _loss_metrics(cfgs: list[gan.GANConfig], runs: list[dict], final: list[dict],
                  at_book: list[dict]) -> dict:
    """The metrics of one generator loss, from its runs (a seed each) and scores."""
    curves = [r["curves"] for r in runs]
    k = min(FULL_SMOOTH, len(curves[0]["d_fake"]))
    ma = [np.convolve(cv["d_fake"], np.ones(k) / k, mode="valid") for cv in curves]
    steps = list(runs[0]["fd"])
    return {
        "seeds": [c.seed for c in cfgs],
        "final": _score_summary(final),  # FULL_N_EVAL samples at the end of training
        "book_iters": _score_summary(at_book),  # the same at the book's length
        "fd_curve": {"iter": steps,
                     "fd": [_summary([r["fd"][s] for r in runs]) for s in steps]},
        # the means over the last FULL_TAIL iterations, as the chapter prints them
        "tail": {key: _summary([np.mean(cv[key][-FULL_TAIL:]) for cv in curves])
                 for key in ("d_loss", "g_loss", "d_real", "d_fake")},
        "min_d_fake_smoothed": _summary([m.min() for m in ma]),
        "curve": _coarse_curves(curves),
        "train_seconds": _summary([r["train_seconds"] for r in runs]),
        "fd_seconds": _summary([r["fd_seconds"] for r in runs]),
    }


def full_experiment(progress: bool = True,
                    device: str | None = None) -> tuple[dict, dict]:
    """The full run for ``python -m dgmbook full gans``: train :func:`full_configs`
    one after another (as the chapter does, with :func:`gan.train`) and score them as
    the chapter does, with its classifier (:data:`FULL_CLASSIFIER`, trained here): the
    Frechet distance of 2,000 samples at every snapshot (:func:`fd_over_training`), and
    :func:`final_scores` of 10,000 samples at the end and at the book's 6,000
    iterations. The chapter trains one seed per loss and says that it has not measured
    how much its numbers vary between seeds; these runs measure that, and how the runs
    go on after the book stops.

    Returns ``(config, metrics)``; metrics holds ``"classifier"`` (test accuracy,
    seconds), ``"real"`` (the held-out digits' scores: the floors), ``"ns"`` and
    ``"minimax"`` (per-seed values with mean and standard error of the final scores,
    of the Frechet-distance curve and of the chapter's loss and D(G(z)) numbers; a mean
    training curve per 500 iterations; seconds), ``"minimax_minus_ns"`` (differences
    of the Frechet distance, paired by seed) and ``"score_seconds"``.

    Wall time, estimated from the book build's run-cache entries (the 2-core CPU
    machine): 6,000 iterations took 102.5 s (non-saturating) and 114.9 s (minimax),
    18.1 ms an iteration on average, so six runs of 7,000 take about 760 s; the
    classifier took 28 s, the Frechet-distance curves about 0.5 s a snapshot (about
    31 s for ten snapshots of six runs), the final scores about 2.3 s per 10,000
    images (about 30 s for thirteen sets): about 850 s, 14 minutes in all.

    progress: a line on stderr per finished stage (and the training loops' bars where
    they show, in a terminal); nothing otherwise. On ``device`` (default
    ``$DGMBOOK_DEVICE``). Under ``torchrun`` or ``accelerate launch`` the training runs
    are dealt to the ranks (:func:`distributed.deal`: every rank trains every N-th,
    rank 0 shows its own); rank 0 gathers them, trains the classifier and scores every
    generator, the other ranks return empty metrics."""
    device = devices.resolve(device)
    cfgs = full_configs()
    for c in cfgs:  # the generator at the book's length must be kept
        if not (FULL_BOOK_ITERS == c.iters
                or FULL_BOOK_ITERS in c.snapshots and FULL_BOOK_ITERS < c.iters):
            raise ValueError(f"no snapshot at iteration {FULL_BOOK_ITERS} in {c}")
    config = {"runs": [dataclasses.asdict(c) for c in cfgs],
              "classifier": dataclasses.asdict(FULL_CLASSIFIER),
              "book_iters": FULL_BOOK_ITERS, "n_eval": FULL_N_EVAL, "n_fd": FULL_N_FD,
              "n_reference": FULL_N_REFERENCE, "tail": FULL_TAIL,
              "smooth": FULL_SMOOTH, "curve_every": FULL_CURVE_EVERY}

    def say(line: str) -> None:
        if progress and distributed.is_main():
            print(line, file=sys.stderr, flush=True)

    # no training bars when silent, nor on the ranks other than 0
    quiet = {} if progress and distributed.is_main() else {PROGRESS_ENV: "0"}
    with mock.patch.dict(os.environ, quiet):
        mine = {}  # this rank's share of the training runs: index -> (run, seconds)
        for i in distributed.deal(len(cfgs)):
            c, t0 = cfgs[i], time.perf_counter()
            mine[i] = (gan.train(c, device=device), time.perf_counter() - t0)
            say(f"[{i + 1}/{len(cfgs)}] gan {c.loss} seed={c.seed}: "
                f"{mine[i][1]:.0f} s training")
        trained = distributed.collect(mine, len(cfgs))
        if trained is None:  # under a launcher, not rank 0: rank 0 has the runs
            return config, {}

        t0 = time.perf_counter()
        clf_run = digit_classifier.train(FULL_CLASSIFIER, device=device)
        clf_seconds = time.perf_counter() - t0
        clf = digit_classifier.build(FULL_CLASSIFIER, clf_run)
        x_train, _ = digit_classifier.mnist_float(train=True, n=FULL_N_REFERENCE)
        x_test, _ = digit_classifier.mnist_float(train=False)
        reference = digit_classifier.gaussian_stats(
            digit_classifier.features(clf, x_train, device))
        floor_fd = digit_classifier.evaluate(clf, x_test[:FULL_N_FD], reference,
                                             device)["fd"]
        say(f"classifier: {clf_seconds:.0f} s, test accuracy "
            f"{clf_run['test_accuracy']:.3f}; {FULL_N_FD} held-out digits: FD "
            f"{floor_fd:.1f}")

        runs, generators = [], {}
        for c, (run, train_seconds) in zip(cfgs, trained):
            t1 = time.perf_counter()
            fd = fd_over_training(clf, reference, c, run, n=FULL_N_FD, device=device)
            generators[(c.loss, c.seed)] = gan.build(c, run)[0]
            generators[(c.loss, c.seed, "book")] = gan.build(
                c, run, snapshot=FULL_BOOK_ITERS)[0]
            runs.append({"curves": run["curves"], "fd": fd,
                         "train_seconds": train_seconds,
                         "fd_seconds": time.perf_counter() - t1})
            say(f"gan {c.loss} seed={c.seed}: FD of {FULL_N_FD} samples at "
                f"{FULL_BOOK_ITERS} {fd[FULL_BOOK_ITERS]:.1f}, at {c.iters} "
                f"{fd[c.iters]:.1f}")

        say(f"scoring {FULL_N_EVAL} samples of {len(generators)} generators")
        t0 = time.perf_counter()
        names = {key: " ".join(map(str, key)) for key in generators}
        scores = final_scores(clf, reference, x_test,
                              {names[k]: G for k, G in generators.items()},
                              FULL_N_EVAL, device=device)
        score_seconds = time.perf_counter() - t0

    real = scores["real held-out digits"]
    metrics = {
        "classifier": {"test_accuracy": float(clf_run["test_accuracy"]),
                       "seconds": clf_seconds},
        # FULL_N_EVAL held-out digits; fd_small: FULL_N_FD of them (the curve's floor)
        "real": {"fd": real["fd"], "fd_small": floor_fd,
                 "kl_uniform": real["kl_uniform"],
                 "modes": real["modes"], "confidence": real["confidence"],
                 "classes": real["classes"].tolist()},
    }
    for loss in dict.fromkeys(c.loss for c in cfgs):  # in order, once each
        idx = [j for j, c in enumerate(cfgs) if c.loss == loss]
        lc = [cfgs[j] for j in idx]
        metrics[loss] = _loss_metrics(
            lc, [runs[j] for j in idx],
            [scores[names[(c.loss, c.seed)]] for c in lc],
            [scores[names[(c.loss, c.seed, "book")]] for c in lc])
    ns, mm = metrics.get("ns"), metrics.get("minimax")
    if (ns and mm and ns["seeds"] == mm["seeds"]  # the same seeds: pair them
            and ns["fd_curve"]["iter"] == mm["fd_curve"]["iter"]):

        def diff(a: dict, b: dict) -> dict:
            return _summary(np.subtract(a["values"], b["values"]))

        metrics["minimax_minus_ns"] = {
            "fd_final": diff(mm["final"]["fd"], ns["final"]["fd"]),
            "fd_book_iters": diff(mm["book_iters"]["fd"], ns["book_iters"]["fd"]),
            "fd_curve": {"iter": ns["fd_curve"]["iter"],
                         "fd": [diff(a, b) for a, b in zip(mm["fd_curve"]["fd"],
                                                           ns["fd_curve"]["fd"])]},
        }
    metrics["score_seconds"] = score_seconds
    return config, metrics
