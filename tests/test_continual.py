"""Unit tests of dgmbook.continual on tiny synthetic data (no MNIST needed, a few seconds)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dgmbook import continual as C


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
