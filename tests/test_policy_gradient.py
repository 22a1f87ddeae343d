"""Tests for dgmbook.policy_gradient: the score-function estimator is unbiased (exactly checkable
on a discrete problem and on a small network), the black box has no gradient path, and the
trainers run, learn and are deterministic. Tiny data; the whole file runs in a few seconds."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from dgmbook import policy_gradient as pg


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the estimator on the discrete problem ------------------------------------------------------


def test_discrete_estimator_is_unbiased():
    prob = pg.DiscreteProblem()
    exact = prob.exact_gradient()  # [K, D]
    est = prob.mc_estimates(50, 4000, torch.Generator().manual_seed(0))  # [R, K, D]
    se = est.std(0) / math.sqrt(len(est))
    z = (est.mean(0) - exact) / se
    assert z.abs().max() < 4.5, z  # 6 entries, each within 4.5 standard errors
    assert exact.abs().max() > 0.05  # not a trivially zero gradient


def test_discrete_standard_error_shrinks_like_one_over_sqrt_n():
    prob = pg.DiscreteProblem()
    gen = torch.Generator().manual_seed(1)
    sd_100 = prob.mc_estimates(100, 2000, gen).std(0)
    sd_1600 = prob.mc_estimates(1600, 2000, gen).std(0)
    ratio = (sd_100 / sd_1600).mean().item()
    assert ratio == pytest.approx(4.0, rel=0.08)


def test_discrete_scores_match_closed_form():
    # linear softmax: grad_W log p(y|x) = (onehot(y) - p(.|x)) phi(x)^T
    prob = pg.DiscreteProblem()
    _, phi, W, _ = prob.tensors()
    p = prob.policy(W)  # [M, K]
    K = W.shape[0]
    closed = (torch.eye(K)[None, :, :, None] - p[:, None, :, None]) * phi[:, None, None, :]
    assert torch.allclose(prob.scores(), closed, atol=1e-12)


# --- the estimator on a network ------------------------------------------------------------------


def _tiny_problem(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = pg.make_synthetic(n, 8, g)
    net = pg.EnsembleMLP((8, 16, 4), (seed,)).member(0)
    return x, y, net


@pytest.mark.parametrize("baseline", ["none", "mean", 0.7])
def test_reinforce_gradient_is_unbiased_on_a_network(baseline):
    x, y, net = _tiny_problem()
    env = pg.BlackBoxReward(y, 3.0, -1.0)
    idx = np.arange(len(x))
    g = pg.true_gradient(net, x, env.all_actions(idx, 4))
    gen = torch.Generator().manual_seed(2)
    est = torch.stack([pg.reinforce_gradient(net, x, idx, env, baseline, gen) for _ in range(3000)])
    err = (est.mean(0) - g).norm()
    noise = est.std(0).norm() / math.sqrt(len(est))  # the size of the error expected by chance
    assert err < 2.0 * noise, (err, noise)


def test_surrogate_gradient_matches_hand_formula():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    actions = torch.tensor([0, 2, 1, 1, 0])
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0])
    pg.reinforce_surrogate(logits, actions, adv).backward()
    p = torch.softmax(logits.detach(), -1)
    expected = -(adv[:, None] * (torch.eye(3)[actions] - p)) / 5
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_leave_one_out_baseline():
    r = torch.tensor([[3.0, -1.0, -1.0, 3.0]])
    b = pg.baseline_values(r, "mean")
    assert torch.allclose(b, torch.tensor([[1 / 3, 5 / 3, 5 / 3, 1 / 3]]))
    assert torch.equal(pg.baseline_values(r, "none"), torch.zeros_like(r))
    assert torch.equal(pg.baseline_values(r, 2.5), torch.full_like(r, 2.5))


def test_sample_actions_follow_the_softmax():
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0]]).expand(40_000, 4)
    a = pg.sample_actions(logits, torch.rand(40_000, generator=torch.Generator().manual_seed(0)))
    freq = torch.bincount(a, minlength=4).double() / len(a)
    assert torch.allclose(freq, torch.softmax(logits[0].double(), -1), atol=0.01)
    assert a.dtype == torch.int64 and not a.requires_grad


def test_optimal_constant_baseline_minimises_variance():
    x, y, net = _tiny_problem(n=8, seed=3)
    env = pg.BlackBoxReward(y, 3.0, -1.0)
    idx = np.arange(len(x))
    b_opt = pg.optimal_constant_baseline(net, x, env.all_actions(idx, 4))
    assert -1.0 <= b_opt <= 3.0

    def mse(b):
        return pg.estimator_stats(net, x, idx, env, b, 400, torch.Generator().manual_seed(4))["rel_mse"]

    assert mse(b_opt) < mse(b_opt + 1.5) and mse(b_opt) < mse(b_opt - 1.5)


# --- the black box -------------------------------------------------------------------------------


def test_black_box_has_no_gradient_path():
    x, y, net = _tiny_problem()
    env = pg.BlackBoxReward(y, 3.0, -1.0)
    logits = net(x)
    actions = pg.sample_actions(logits, torch.rand(len(x)))
    rewards = env(np.arange(len(x)), actions.numpy())
    assert not rewards.requires_grad and rewards.grad_fn is None
    # nothing to differentiate: autograd refuses, and the reward is unconnected to every weight
    with pytest.raises(RuntimeError):
        torch.autograd.grad(rewards.sum(), list(net.parameters()))
    # even the learner's own logits cannot pull a gradient through it
    with pytest.raises(RuntimeError):
        torch.autograd.grad(env(np.arange(len(x)), actions.numpy()).sum(), logits)


def test_black_box_refuses_differentiable_inputs():
    x, y, net = _tiny_problem()
    env = pg.BlackBoxReward(y)
    logits = net(x)
    with pytest.raises(TypeError):
        env(np.arange(len(x)), logits)  # probabilities/logits: refused
    with pytest.raises(TypeError):
        env(np.arange(len(x)), logits.detach())  # float actions: refused
    with pytest.raises(TypeError):
        env(np.arange(len(x)), np.zeros(len(x)))  # float NumPy: refused
    r = env(np.arange(len(x)), y.numpy())  # the true labels earn the full reward
    assert torch.equal(r, torch.full((len(x),), 3.0))
    assert env.queries == len(x)


def test_reward_chance_mean():
    assert pg.reward_chance_mean(3.0, -1.0, 4) == 0.0
    assert pg.reward_chance_mean(3.0, -1.0, 10) == pytest.approx(-0.6)


# --- data, networks and training -----------------------------------------------------------------


def test_make_synthetic_rule_and_determinism():
    x, y = pg.make_synthetic(500, 8, torch.Generator().manual_seed(0))
    x2, y2 = pg.make_synthetic(500, 8, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.min() >= -2.2 and x.max() <= 2.2 and x.shape == (500, 8)
    a = ((x - 1) ** 2).sum(1) <= 20
    b = ((x + 1) ** 2).sum(1) <= 20
    assert torch.equal(y, 2 * a.long() + b.long())
    assert set(y.tolist()) == {0, 1, 2, 3}


def test_ensemble_member_matches_ensemble_and_single_seed():
    ens = pg.EnsembleMLP((8, 16, 4), (5, 6, 7))
    x = torch.randn(10, 8)
    out = ens(x)  # [3, 10, 4]
    for s in range(3):
        assert torch.allclose(ens.member(s)(x), out[s], atol=1e-6)
    single = pg.EnsembleMLP((8, 16, 4), (6,))
    assert torch.allclose(single(x)[0], out[1], atol=1e-6)  # init depends on its own seed only


SMALL = pg.PGConfig(n_train=300, n_test=300, hidden=(16,), lr=1e-2, iters=60, eval_every=20)


def test_training_runs_learns_and_is_deterministic():
    sup = pg.train(replace(SMALL, method="supervised", seeds=(0, 1)))
    rl = pg.train(replace(SMALL, seeds=(0, 1)))
    rl2 = pg.train(replace(SMALL, seeds=(0, 1)))
    assert sup["test_acc"].shape == (2, 4) and sup["recall"].shape == (2, 4, 4)
    assert sup["iters"] == [0, 20, 40, 60]
    assert (sup["final_test_acc"] > sup["test_acc"][:, 0]).all()
    assert (rl["reward"][:, -1] > rl["reward"][:, 0]).all()  # the policy earns more reward
    assert torch.equal(rl["test_acc"], rl2["test_acc"])
    assert rl["queries"] == 2 * 300 * 60 + 2 * 300  # one guess per example and iteration


def test_ensemble_members_train_independently():
    both = pg.train(replace(SMALL, seeds=(0, 1), iters=20))
    alone = pg.train(replace(SMALL, seeds=(1,), iters=20))
    assert torch.allclose(both["test_acc"][1], alone["test_acc"][0])


def test_minibatch_training_and_baseline():
    run = pg.train(replace(SMALL, batch_size=32, baseline="mean", seeds=(0,)))
    assert run["test_acc"].shape == (1, 4)


def test_iters_to_reach_and_summarize():
    acc = torch.tensor([[0.1, 0.5, 0.8, 0.9], [0.1, 0.2, 0.3, 0.4]])
    its = pg.iters_to_reach([0, 10, 20, 30], acc, 0.75)
    assert its[0] == 20 and math.isnan(its[1])
    s = pg.summarize({"iters": [0, 10, 20, 30], "test_acc": acc}, 0.75)
    assert torch.allclose(s["final"], torch.tensor([0.9, 0.4]))
    assert torch.allclose(s["jitter"], torch.tensor([0.1, 0.1]))


def test_median_reach_counts_a_seed_that_never_reaches_as_slowest():
    nan = math.nan
    assert pg.median_reach(torch.tensor([500.0, nan, 300.0], dtype=torch.float64)) == 500.0
    assert pg.median_reach(torch.tensor([500.0, 400.0, 300.0], dtype=torch.float64)) == 400.0
    assert pg.median_reach(torch.tensor([nan, nan, 300.0], dtype=torch.float64)) == math.inf
