"""Unit tests of dgmbook.continual on tiny synthetic data (no MNIST needed, a few
seconds), the full experiment's included."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dgmbook import continual as C
from dgmbook.utils import torch_threads


def tiny_data(n_train=192, n_test=64, seed=0) -> C.PermutedMNIST:
    """Random 'images' whose label is decided by a few pixel means: learnable, permutable."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train + n_test, C.N_PIXELS), generator=g, dtype=torch.uint8)
    y = (x[:, :10].float().mean(1) // 25.6).long().clamp(0, 9)
    return C.PermutedMNIST(x[:n_train], y[:n_train], x[n_train:], y[n_train:], seed)


def softmax_regression() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(C.N_PIXELS, 10))


# --- tasks and models ---------------------------------------------------------------------------

def test_permutations_fixed_and_task0_identity():
    assert torch.equal(C.task_permutation(0), torch.arange(784))
    p1, p2 = C.task_permutation(1), C.task_permutation(2)
    assert torch.equal(p1, C.task_permutation(1))  # fixed seed: reproducible
    assert not torch.equal(p1, p2)
    assert torch.equal(p1.sort().values, torch.arange(784))  # a permutation


def test_mlp_is_blind_to_pixel_order():
    torch.manual_seed(0)
    mlp, perm = C.MLP(32), C.task_permutation(3)
    x = torch.randn(5, 784)
    assert torch.allclose(C.permute_first_layer(mlp, perm)(x[:, perm]), mlp(x), atol=1e-6)


def test_course_cnn_shape_and_size():
    cnn = C.CourseCNN()
    assert cnn(torch.randn(4, 784)).shape == (4, 10)
    assert sum(p.numel() for p in cnn.parameters()) == 21_840


# --- Fisher -----------------------------------------------------------------------------------

def test_fisher_exact_matches_softmax_regression_closed_form():
    # logits = W x + b:  E_{y~p}[(d log p(y|x)/dW_kj)^2] = p_k (1 - p_k) x_j^2,  bias: p_k (1 - p_k)
    model, data = softmax_regression(), tiny_data()
    with torch.no_grad():
        model[0].weight.mul_(20)  # confident predictions: p far from uniform
    x = data.x_train[:64]
    f = C.fisher_diagonal(model, x, data.y_train[:64], "exact")
    xin = C.to_input(x)
    p = F.softmax(model(xin), -1).detach()
    v = p * (1 - p)  # [N, 10]
    assert torch.allclose(f["0.weight"], v.T @ xin.pow(2) / len(x), rtol=1e-4, atol=1e-7)
    assert torch.allclose(f["0.bias"], v.mean(0), rtol=1e-4, atol=1e-7)


def test_sampled_fisher_is_unbiased_estimate_of_exact():
    model, data = softmax_regression(), tiny_data(n_train=64)
    x = data.x_train.repeat(40, 1)  # 2560 draws of y ~ p(y|x) over 64 inputs
    exact = C.fisher_diagonal(model, data.x_train, data.y_train, "exact")
    sampled = C.fisher_diagonal(model, x, data.y_train.repeat(40), "sampled",
                                generator=torch.Generator().manual_seed(1))
    for k in exact:
        rel = (sampled[k].sum() - exact[k].sum()).abs() / exact[k].sum()
        assert rel < 0.05, (k, rel)


def test_linear_shortcut_matches_per_example_gradients():
    torch.manual_seed(0)
    mlp, data = C.MLP(16), tiny_data()
    x, y = C.to_input(data.x_train[:32]), data.y_train[:32]
    w = torch.rand(32)
    fast = C.squared_grad_sum(mlp, x, y, w)
    slow = C._per_example_grads(mlp, x, y)
    for k, v in slow.items():
        assert torch.allclose(fast[k], torch.einsum("b,b...->...", w, v.pow(2)), rtol=1e-4, atol=1e-8)


def test_course_fisher_is_square_of_summed_batch_gradients():
    torch.manual_seed(0)
    mlp, data = C.MLP(16), tiny_data(n_train=512)
    x, y = data.x_train, data.y_train
    f = C.fisher_diagonal(mlp, x, y, "course", batch_size=128)
    mlp.zero_grad()
    F.cross_entropy(mlp(C.to_input(x)), y).backward()  # full-batch mean gradient
    for k, p in mlp.named_parameters():  # 4 equal batches: sum of batch means = 4 * full mean
        assert torch.allclose(f[k], (4 * p.grad).pow(2), rtol=1e-4, atol=1e-10)


def test_fisher_modes_keep_model_mode_and_grads_clean():
    cnn, data = C.CourseCNN(), tiny_data(n_train=16)
    cnn.train()
    f = C.fisher_diagonal(cnn, data.x_train, data.y_train, "sampled",
                          generator=torch.Generator().manual_seed(0))
    assert cnn.training and all(p.grad is None for p in cnn.parameters())
    assert all((v >= 0).all() and v.shape == p.shape for v, p in zip(f.values(), cnn.parameters()))
    with pytest.raises(ValueError):
        C.fisher_diagonal(cnn, data.x_train, data.y_train, "nope")


# --- EWC penalty ------------------------------------------------------------------------------

def _random_fisher(model, g):
    return {k: torch.rand(p.shape, generator=g) for k, p in model.named_parameters()}


def test_ewc_penalty_zero_at_anchor_and_positive_elsewhere():
    torch.manual_seed(0)
    model, g = C.MLP(8), torch.Generator().manual_seed(0)
    ewc = C.EWC(lam=3.0)
    assert ewc.penalty(model).item() == 0.0  # nothing consolidated yet
    ewc.consolidate(model, _random_fisher(model, g))
    assert ewc.penalty(model).item() < 1e-10
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    assert ewc.penalty(model).item() > 0


def test_ewc_penalty_and_gradient_match_explicit_formula():
    # (lam/2) sum_t sum_i F_t,i (theta_i - theta*_t,i)^2, summed over 3 tasks, vs the merged form
    torch.manual_seed(0)
    model, g, lam = C.MLP(8), torch.Generator().manual_seed(0), 7.0
    ewc, tasks = C.EWC(lam), []
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        fisher = _random_fisher(model, g)
        ewc.consolidate(model, fisher)
        tasks.append((fisher, {k: p.detach().clone() for k, p in model.named_parameters()}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)

    def explicit():
        return 0.5 * lam * sum((f[k] * (p - a[k]).pow(2)).sum()
                               for f, a in tasks for k, p in model.named_parameters())

    params = list(model.parameters())
    g_ours = torch.autograd.grad(ewc.penalty(model), params)
    g_ref = torch.autograd.grad(explicit(), params)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # the merged form differs from the explicit sum by a theta-independent constant only
    c1 = explicit().item() - ewc.penalty(model).item()
    with torch.no_grad():
        for p in params:
            p.mul_(0.5)
    assert abs((explicit().item() - ewc.penalty(model).item()) - c1) < 1e-3 * max(1.0, abs(c1))
    assert ewc.nbytes() == 2 * 4 * sum(p.numel() for p in params)  # F and F theta*, float32


def test_ewc_curvature_cap():
    model, g = C.MLP(8), torch.Generator().manual_seed(0)
    ewc = C.EWC(lam=1e6, max_curvature=100.0)
    ewc.consolidate(model, _random_fisher(model, g))
    assert all((c <= 100.0).all() for c in ewc.curv.values())
    assert ewc.capped_fraction() > 0.99


# --- replay buffer ----------------------------------------------------------------------------

@pytest.mark.parametrize("capacity", [1, 7, 50, 100])
def test_buffer_never_exceeds_capacity_and_stays_balanced(capacity):
    buf, data = C.ReplayBuffer(capacity, seed=0), tiny_data(n_train=60)
    for t in range(5):
        buf.add_task(*data.train(t))
        assert len(buf) <= capacity
        sizes = [len(y) for y in buf.ys]
        assert max(sizes) - min(sizes) <= 1
        assert len(buf) == min(capacity, 60 * (t + 1)) or len(buf) == capacity
        x, y = buf.data()
        assert x.dtype == torch.uint8 and len(x) == len(y) == len(buf)
        assert buf.nbytes() == len(buf) * (784 + 1)


def test_full_buffer_keeps_everything():
    buf, data = C.ReplayBuffer(None), tiny_data(n_train=30)
    for t in range(3):
        buf.add_task(*data.train(t))
    assert len(buf) == 90


# --- metrics ----------------------------------------------------------------------------------

def test_metrics_on_hand_example():
    R = torch.tensor([[0.9, 0.1, 0.1],
                      [0.6, 0.9, 0.1],
                      [0.3, 0.5, 0.9]])
    assert torch.allclose(C.average_accuracy(R), torch.tensor([0.9, 0.75, (0.3 + 0.5 + 0.9) / 3]))
    assert torch.allclose(C.average_over_all(R), R.mean(1))
    assert torch.allclose(C.forgetting(R), torch.tensor([0.6, 0.4]))


# --- whole runs -------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy,extra", [("naive", {}), ("ewc", {"ewc_lambda": 10.0}),
                                            ("replay", {"buffer_size": 50}), ("replay", {})])
def test_run_smoke_and_determinism(strategy, extra):
    cfg = C.Config(model="mlp", hidden=16, strategy=strategy, n_tasks=3, batch_size=32,
                   fisher_n=64, bf16=False, **extra)
    a, b = C.run(cfg, tiny_data()), C.run(cfg, tiny_data())
    assert a["R"].shape == (3, 3) and ((a["R"] >= 0) & (a["R"] <= 1)).all()
    assert torch.equal(a["R"], b["R"])
    n = 192
    if strategy == "naive":
        assert a["train_examples"] == [n] * 3 and a["memory_bytes"] == [0, 0, 0]
    if strategy == "ewc":
        assert a["fisher_examples"] == [64] * 3 and a["memory_bytes"][0] == 2 * 4 * a["n_params"]
    if strategy == "replay" and "buffer_size" in extra:
        assert a["train_examples"] == [n, n + 50, n + 50]
    if strategy == "replay" and not extra:
        assert a["train_examples"] == [n, 2 * n, 3 * n]


def test_run_cnn_and_course_fisher():
    cfg = C.Config(model="cnn", strategy="ewc", fisher="course", n_tasks=2, batch_size=64,
                   ewc_lambda=0.8, bf16=False)
    out = C.run(cfg, tiny_data())
    assert out["R"].shape == (2, 2) and out["fisher_examples"] == [192, 192]


def test_concat_rows_indexes_like_torch_cat():
    g = torch.Generator().manual_seed(0)
    parts = [torch.randint(0, 255, (n, 5), generator=g, dtype=torch.uint8) for n in (7, 1, 12)]
    rows = C.ConcatRows(parts)
    whole = torch.cat(parts)
    assert len(rows) == len(whole)
    idx = torch.randperm(len(whole), generator=g)
    for s in range(0, len(idx), 6):
        assert torch.equal(rows[idx[s:s + 6]], whole[idx[s:s + 6]])
    labels = C.ConcatRows([torch.arange(3), torch.arange(10, 12)])
    assert labels[torch.tensor([4, 0, 3])].tolist() == [11, 0, 10]


# --- the full experiment (python -m dgmbook full continual-learning) ------------------

def test_full_configs():
    pairs = C.full_configs()
    names = ["naive", "ewc", "replay_1000", "full_rehearsal"]
    want = [(n, e, s) for e in (1, 3) for s in range(3) for n in names]
    assert [(n, c.epochs, c.seed) for n, c in pairs] == want
    # the chapter's SCALE10
    scale10 = dict(model="mlp", n_tasks=10, n_train=30_000, n_test=2_000)
    kw = {"naive": dict(strategy="naive"),
          "ewc": dict(strategy="ewc", ewc_lambda=10.0, fisher="sampled"),
          "replay_1000": dict(strategy="replay", buffer_size=1000),
          "full_rehearsal": dict(strategy="replay", buffer_size=None)}
    default = dataclasses.asdict(C.Config())
    for n, c in pairs:
        assert dataclasses.asdict(c) == {**default, **scale10, **kw[n],
                                         "epochs": c.epochs, "seed": c.seed}
    assert [dataclasses.asdict(c) for c in C.full_fisher_configs()] == [
        {**default, **scale10, "seed": s} for s in range(3)]
    assert C.FULL_FISHER_N == 2048  # fisher_comparison's default, the chapter's call


def test_fisher_agreement_on_known_estimates():
    exact = torch.arange(1.0, 201.0)  # 200 weights: the top 1% is the last 2
    fc = {"exact": exact, "sampled": exact.clone(), "empirical": 3 * exact,
          "course": exact.flip(0), "grad_mean": torch.full((200,), 0.5)}
    a = C.fisher_agreement(fc)
    assert a["sampled"] == pytest.approx(
        {"log_corr": 1.0, "top1_overlap": 1.0, "total_ratio": 1.0})
    assert a["empirical"]["log_corr"] == pytest.approx(1.0)
    assert a["empirical"]["total_ratio"] == pytest.approx(3.0)
    assert a["course"]["log_corr"] < 0 and a["course"]["top1_overlap"] == 0.0
    assert a["grad_mean_share"] == pytest.approx(200 * 0.25 / (3 * exact.sum().item()))


def _tiny_full(monkeypatch, seeds, epochs):
    """The full experiment on tiny_data, 3 tasks of a 16-unit MLP (run it on one thread:
    the tiny runs gain nothing from more, and lose much on a busy machine)."""
    monkeypatch.setattr(C, "load_permuted_mnist",
                        lambda n_train=None, n_test=None, seed=0: tiny_data(seed=seed))
    monkeypatch.setattr(C, "FULL_BASE", dict(model="mlp", hidden=16, n_tasks=3,
                                             batch_size=32, fisher_n=64, bf16=False))
    monkeypatch.setattr(C, "FULL_SEEDS", seeds)
    monkeypatch.setattr(C, "FULL_EPOCHS", epochs)
    monkeypatch.setattr(C, "FULL_FISHER_N", 64)


STRATEGY_KEYS = {"final_average_accuracy", "minus_naive", "forgetting", "diagonal_mean",
                 "first_task_final", "last_task_final", "average_accuracy_curve",
                 "forgetting_per_task", "R", "memory_mb", "compute_x_naive",
                 "capped_fraction", "seconds"}


def test_full_experiment_on_tiny_runs(monkeypatch, capsys):
    _tiny_full(monkeypatch, seeds=(0, 1), epochs=(1, 2))
    with torch_threads(1):
        config, metrics = C.full_experiment(progress=False)
    assert capsys.readouterr() == ("", "")  # progress=False: silent
    json.dumps(config, allow_nan=False)
    json.dumps(metrics, allow_nan=False)
    assert len(config["runs"]) == 2 * 2 * 4 and len(config["fisher_runs"]) == 2
    settings = (config["seeds"], config["epochs"], config["fisher_n"])
    assert settings == ([0, 1], [1, 2], 64)
    assert list(metrics) == ["epochs1", "epochs2", "epochs2_minus_epochs1", "fisher"]
    names = ["naive", "ewc", "replay_1000", "full_rehearsal"]
    for e in ("epochs1", "epochs2"):
        assert list(metrics[e]) == names
        for m in metrics[e].values():
            assert set(m) == STRATEGY_KEYS
            for key in STRATEGY_KEYS - {"average_accuracy_curve", "forgetting_per_task",
                                        "R"}:
                s = m[key]
                assert len(s["values"]) == 2 and math.isfinite(s["se"])
                assert s["mean"] == pytest.approx(sum(s["values"]) / 2)
            assert len(m["average_accuracy_curve"]["mean"]) == 3
            assert len(m["forgetting_per_task"]["se"]) == 2
            assert len(m["R"]["values"]) == 2
            assert torch.tensor(m["R"]["mean"]).shape == (3, 3)
        assert metrics[e]["naive"]["minus_naive"]["values"] == [0.0, 0.0]
        assert metrics[e]["naive"]["compute_x_naive"]["values"] == [1.0, 1.0]
        rehearsal = metrics[e]["full_rehearsal"]["compute_x_naive"]["values"]
        assert rehearsal == pytest.approx([2.0, 2.0])  # (1 + 2 + 3) / 3
    # the numbers are run()'s, the chapter's metrics of its R
    cfg = C.Config(**{**C.FULL_BASE, "strategy": "ewc", "ewc_lambda": 10.0,
                      "epochs": 2, "seed": 1})
    with torch_threads(1):
        R = C.run(cfg)["R"]
    ewc = metrics["epochs2"]["ewc"]
    assert ewc["R"]["values"][1] == R.tolist()
    assert ewc["final_average_accuracy"]["values"][1] == pytest.approx(
        C.average_accuracy(R)[-1].item())
    f = ewc["forgetting"]["values"]
    assert f[1] == pytest.approx(C.forgetting(R).mean().item())
    diff = metrics["epochs2_minus_epochs1"]["ewc"]["forgetting"]["values"]
    f1 = metrics["epochs1"]["ewc"]["forgetting"]["values"]
    assert diff == pytest.approx([a - b for a, b in zip(f, f1)])
    fisher = metrics["fisher"]
    assert set(fisher) == {"sampled", "empirical", "course", "grad_mean_share",
                           "test_accuracy", "seconds"}
    for m in ("sampled", "empirical", "course"):
        assert set(fisher[m]) == {"log_corr", "top1_overlap", "total_ratio"}
        assert all(-1 <= v <= 1 for v in fisher[m]["log_corr"]["values"])
    assert len(fisher["test_accuracy"]["values"]) == 2


def test_full_experiment_progress_lines_and_one_seed(monkeypatch, capsys):
    _tiny_full(monkeypatch, seeds=(3,), epochs=(1,))
    with torch_threads(1):
        _, metrics = C.full_experiment(progress=True)
    out = capsys.readouterr()
    assert out.out == ""
    heads = [line.split(":")[0] for line in out.err.splitlines()]
    assert heads == [f"[{i}/4] continual epochs=1 seed=3 {n}" for i, n in enumerate(
        ["naive", "ewc", "replay_1000", "full_rehearsal"], 1)] + [
        "[1/1] continual Fisher seed=3"]
    assert list(metrics) == ["epochs1", "fisher"]
    assert metrics["epochs1"]["ewc"]["forgetting"]["se"] is None  # one seed: no error
    assert metrics["epochs1"]["ewc"]["R"]["se"] is None
    json.dumps(metrics, allow_nan=False)


def test_full_experiment_under_a_launcher_deals_the_runs(monkeypatch, as_rank):
    """As rank 1 of 3: it trains every third run from the second and sends them to
    rank 0, and runs no Fisher comparison."""
    _tiny_full(monkeypatch, seeds=(0, 1), epochs=(1,))  # 8 runs
    trained = []
    run = C.run
    monkeypatch.setattr(C, "run", lambda c, **kw: trained.append(c) or run(c, **kw))
    monkeypatch.setattr(C, "fisher_comparison",
                        lambda *a, **kw: pytest.fail("rank 1 compared"))
    sent = as_rank(1, 3)
    with torch_threads(1):
        config, metrics = C.full_experiment(progress=True)
    assert metrics == {}
    assert trained == [C.full_configs()[i][1] for i in (1, 4, 7)]
    assert list(sent[0]) == [1, 4, 7] and "R" in sent[0][4][0]


def test_cli_lists_the_continual_experiment(capsys):
    from dgmbook import cli

    assert cli.main(["list"]) == 0
    assert "continual-learning" in capsys.readouterr().out.split()
    spec = cli.EXPERIMENTS["continual-learning"]
    assert cli._resolve(spec) is C.full_experiment
