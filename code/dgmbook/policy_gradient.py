"""Chapter "Zeroth-order optimization": training a classifier through a black-box reward with the
policy gradient (REINFORCE), against supervised learning on the same network, data and optimizer.

The classifier is a policy p_w(y|x) (a softmax over the network's logits). REINFORCE samples a
label y ~ p_w(.|x) for every example, asks a black box for the reward r(x, y) of that guess, and
follows the score-function estimate of the gradient of the expected reward R(w) = E[r(x, y)]:

    grad R ~ (1/N) sum_i (r_i - b_i) grad log p_w(y_i | x_i)

The black box (:class:`BlackBoxReward`) is computed in NumPy from integer actions: there is no
autograd path from the reward to the weights, so the learner cannot cheat by back-propagating
through it. The supervised trainer uses the labels directly (cross-entropy).

Also here: a small discrete problem on which the estimator can be compared with the exact
gradient (:class:`DiscreteProblem`), and the measurement of the estimator's variance against the
true gradient of the expected reward (:func:`estimator_stats`).

:func:`train` and :func:`variance_study` run on ``$DGMBOOK_DEVICE`` (:mod:`dgmbook.device`; the
CPU by default) or a ``device=`` argument and return their results on the CPU; every random
number (initialisation, minibatches, the uniforms behind the sampled actions) is drawn on the
CPU, and the black box stays NumPy. The estimators and losses run where their network lives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import device as devices
from .utils import check_config, progress, torch_threads

# --- data ----------------------------------------------------------------------------------------


def make_synthetic(n: int, dim: int = 8, generator: torch.Generator | None = None):
    """The course's synthetic task: x ~ U[-2.2, 2.2]^dim and four classes from two balls,

        a = ||x - 1||^2 <= 2.5 dim,   b = ||x + 1||^2 <= 2.5 dim,   y = 2a + b,

    so y = 0: in neither ball, 1: only in the ball around -1, 2: only around +1, 3: in both.
    Returns x float32 [n, dim], y int64 [n].
    """
    x = torch.rand(n, dim, generator=generator) * 4.4 - 2.2  # [n, dim]
    a = ((x - 1) ** 2).sum(1) <= 2.5 * dim  # [n]
    b = ((x + 1) ** 2).sum(1) <= 2.5 * dim  # [n]
    return x, 2 * a.long() + b.long()


def mnist_vectors(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as float32 [N, 784] in [0, 1] and int64 labels [N]."""
    from .data import load_image_dataset

    images, labels = load_image_dataset("MNIST", train=train)
    return images.reshape(len(images), -1).float() / 255.0, labels


def load_task(cfg: "PGConfig"):
    """(x_train, y_train, x_test, y_test) for ``cfg.task``."""
    if cfg.task == "synthetic":
        g = torch.Generator().manual_seed(cfg.data_seed)
        x_tr, y_tr = make_synthetic(cfg.n_train, cfg.dim, g)
        x_te, y_te = make_synthetic(cfg.n_test, cfg.dim, g)
        return x_tr, y_tr, x_te, y_te
    if cfg.task == "mnist":
        x_tr, y_tr = mnist_vectors(train=True)
        x_te, y_te = mnist_vectors(train=False)
        return x_tr[: cfg.n_train], y_tr[: cfg.n_train], x_te[: cfg.n_test], y_te[: cfg.n_test]
    raise ValueError(f"unknown task {cfg.task!r}")


# --- the black box -------------------------------------------------------------------------------


class BlackBoxReward:
    """The environment: it knows the labels, scores a guessed class, and is opaque to autograd.

    ``env(idx, actions)`` returns ``correct`` where ``actions[i] == label[idx[i]]`` and
    ``wrong`` elsewhere. It works on NumPy integer arrays only: a float tensor (probabilities,
    logits) is refused, and the returned tensor is a fresh leaf without history, so no gradient
    path runs from the reward back to the network. The loss of the source, L = -reward, is
    equally a black box. ``queries`` counts how many guesses were scored.
    """

    def __init__(self, labels: torch.Tensor, correct: float = 3.0, wrong: float = -1.0):
        self._labels = np.asarray(labels, dtype=np.int64)  # [n], private to the environment
        self.correct, self.wrong = float(correct), float(wrong)
        self.queries = 0

    def __len__(self) -> int:
        return len(self._labels)

    def __call__(self, idx, actions) -> torch.Tensor:
        for name, v in (("idx", idx), ("actions", actions)):
            if isinstance(v, torch.Tensor) and (v.requires_grad or v.is_floating_point()):
                raise TypeError(f"the black box takes integer {name}, not a differentiable tensor")
        idx = np.asarray(idx, dtype=np.int64)  # [B]
        actions = np.asarray(actions)
        if not np.issubdtype(actions.dtype, np.integer):
            raise TypeError(f"the black box takes integer actions, got dtype {actions.dtype}")
        self.queries += actions.size
        r = np.where(actions == self._labels[idx], self.correct, self.wrong)  # [B] float64, NumPy
        return torch.from_numpy(r.astype(np.float32))  # a leaf: requires_grad=False, no grad_fn

    def all_actions(self, idx, n_classes: int) -> torch.Tensor:
        """Rewards of every possible action: idx [...] -> [..., n_classes] (n_classes queries per
        example). Used to measure the true gradient of the expected reward, and by the
        "expected" trainer; the REINFORCE learner never calls it."""
        idx = np.asarray(idx, dtype=np.int64)
        return torch.stack([self(idx, np.full(idx.shape, k)) for k in range(n_classes)], dim=-1)


def reward_chance_mean(correct: float, wrong: float, n_classes: int) -> float:
    """Expected reward of a uniformly random guess: correct/K + wrong (K-1)/K."""
    return correct / n_classes + wrong * (n_classes - 1) / n_classes


# --- the estimator -------------------------------------------------------------------------------


def sample_actions(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One class per row from softmax(logits), by inverse CDF: logits [..., K] and uniforms [...]
    in [0, 1) -> int64 [...]. The action is *sampled*, never the argmax; no gradient flows."""
    cdf = torch.softmax(logits.detach().float(), dim=-1).cumsum(-1)  # [..., K]
    return (uniforms[..., None] > cdf).sum(-1).clamp(max=logits.shape[-1] - 1)


def baseline_values(rewards: torch.Tensor, kind: str | float = "none") -> torch.Tensor:
    """The baseline b_i subtracted from reward r_i along the last (batch) dim: [..., B] -> [..., B].

    "none": 0.  "mean": the leave-one-out mean (sum_j r_j - r_i)/(B-1), which does not depend on
    the i-th action, so subtracting it keeps the estimator unbiased.  A number: that constant.
    """
    if isinstance(kind, (int, float)):
        return torch.full_like(rewards, float(kind))
    if kind == "none":
        return torch.zeros_like(rewards)
    if kind == "mean":
        B = rewards.shape[-1]
        return (rewards.sum(-1, keepdim=True) - rewards) / max(B - 1, 1)
    raise ValueError(f"unknown baseline {kind!r}")


def reinforce_surrogate(logits: torch.Tensor, actions: torch.Tensor,
                        advantages: torch.Tensor) -> torch.Tensor:
    """The surrogate loss whose gradient is minus the REINFORCE estimate of grad R:

        -(1/B) sum_i A_i log p_w(a_i | x_i),   A_i = r_i - b_i (a constant, no gradient)

    logits [..., B, K] (with grad), actions int64 [..., B], advantages [..., B] -> scalar
    (leading dims, e.g. ensemble members, are summed: each member gets its own gradient).
    """
    logp = F.log_softmax(logits.float(), dim=-1)  # [..., B, K]
    logp_a = logp.gather(-1, actions[..., None]).squeeze(-1)  # [..., B]
    return -(advantages.detach() * logp_a).mean(-1).sum()


def expected_reward_loss(logits: torch.Tensor, reward_table: torch.Tensor) -> torch.Tensor:
    """-(1/B) sum_i sum_a p_w(a|x_i) r(x_i, a): minus the expected reward, computed exactly from
    the black box's reward of every action (reward_table [..., B, K], no gradient). Its gradient
    is the quantity REINFORCE estimates; still zeroth order, but K queries per example."""
    probs = torch.softmax(logits.float(), dim=-1)  # [..., B, K]
    return -(probs * reward_table.detach()).sum(-1).mean(-1).sum()


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, the first-order route that needs the labels: logits [..., B, K],
    labels [..., B] -> scalar (mean over the batch, summed over leading dims)."""
    K = logits.shape[-1]
    ce = F.cross_entropy(logits.float().reshape(-1, K), labels.reshape(-1), reduction="none")
    return ce.reshape(labels.shape).mean(-1).sum()


# --- networks and training -----------------------------------------------------------------------


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear-ReLU-...-Linear, e.g. (8, 32, 4): [B, 8] -> logits [B, 4]."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class EnsembleMLP(nn.Module):
    """S independent MLPs (one per seed) evaluated with batched matmuls, so that several seeds
    train for about the price of one on a small network.

    Member s is initialised like ``nn.Linear`` (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights
    and biases) from its own generator seeded with ``seeds[s]``. Adam is elementwise and the loss
    is a sum of per-member losses, so the members never interact: training the ensemble is
    training S separate networks.  x [B, d] (shared) or [S, B, d] -> logits [S, B, K].
    """

    def __init__(self, sizes: tuple[int, ...], seeds: tuple[int, ...]):
        super().__init__()
        self.sizes, self.seeds = tuple(sizes), tuple(seeds)
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(fan_in)
            def u(*shape):  # [S, *shape], member s from its own generator
                return torch.stack([torch.rand(*shape, generator=g) for g in gens])

            self.weights.append(nn.Parameter((2 * u(fan_in, fan_out) - 1) * bound))  # [S, in, out]
            self.biases.append(nn.Parameter((2 * u(1, fan_out) - 1) * bound))  # [S, 1, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if x.dim() == 3 else x.expand(len(self.seeds), *x.shape)  # [S, B, d]
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, W)  # [S, B, out]
            if i < len(self.weights) - 1:
                h = torch.relu(h)
        return h

    def member(self, s: int) -> nn.Sequential:
        """Member s as a plain ``mlp`` (a copy): [B, d] -> [B, K]."""
        net = mlp(self.sizes)
        linears = [m for m in net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, W, b in zip(linears, self.weights, self.biases):
                lin.weight.copy_(W[s].T)
                lin.bias.copy_(b[s, 0])
        return net


@dataclass(frozen=True)
class PGConfig:
    task: str = "synthetic"  # "synthetic" (the course's task) or "mnist"
    method: str = "reinforce"  # "reinforce" (sampled actions), "expected" (exact expectation over
    #                            actions: K black-box queries per example), "supervised" (labels)
    baseline: str = "none"  # "none" or "mean" (leave-one-out batch mean); reinforce only
    reward_correct: float = 3.0  # what the black box pays for a right guess ...
    reward_wrong: float = -1.0  # ... and for a wrong one
    n_train: int = 1000
    n_test: int = 1000
    dim: int = 8  # synthetic input dimension
    data_seed: int = 0  # draws the synthetic dataset
    hidden: tuple[int, ...] = (32,)
    lr: float = 1e-3  # Adam
    iters: int = 2000
    batch_size: int = 0  # 0: full batch
    eval_every: int = 20
    seeds: tuple[int, ...] = (0,)  # one network per seed: its init, minibatches and actions
    threads: int = 1  # torch threads while training (fixed, so results do not depend on the host)

    def __post_init__(self) -> None:
        check_config(self, positive=("n_train", "n_test", "dim", "hidden", "lr", "iters",
                                     "eval_every", "threads"),
                     nonnegative=("batch_size",),
                     choices={"task": ("synthetic", "mnist"),
                              "method": ("reinforce", "expected", "supervised"),
                              "baseline": ("none", "mean")})


@torch.no_grad()
def evaluate(net: EnsembleMLP, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> dict:
    """Greedy (argmax) accuracy [S] and per-class recall [S, K] of every member."""
    hit = (net(x).argmax(-1) == y).float()  # [S, n]
    recall = torch.stack([hit[:, y == k].mean(1) for k in range(n_classes)], dim=1)  # [S, K]
    return {"acc": hit.mean(1), "recall": recall}


def train(cfg: PGConfig, data=None, device: str | None = None) -> dict:
    """Train one network per seed, with REINFORCE through the black box or with cross-entropy,
    on ``device`` (default ``$DGMBOOK_DEVICE``; the results are on the CPU).

    Returns curves logged at iteration 0 and every ``eval_every`` iterations: ``iters`` [T],
    ``test_acc`` [S, T], ``train_acc`` [S, T] (on at most 10,000 training examples), ``reward``
    [S, T] (mean black-box reward of the batch's sampled actions; the supervised run samples
    them only to report this), ``recall`` [S, T, K] (test, per class); ``final_test_acc`` [S],
    ``queries`` (guesses scored by the black box) and the final ``state_dict``.
    """
    device = devices.resolve(device)
    x_tr, y_tr, x_te, y_te = data if data is not None else load_task(cfg)
    n, K, S = len(x_tr), int(max(y_tr.max(), y_te.max())) + 1, len(cfg.seeds)
    B = cfg.batch_size if 0 < cfg.batch_size < n else n
    with torch_threads(cfg.threads):
        net = EnsembleMLP((x_tr.shape[1], *cfg.hidden, K), cfg.seeds).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        gens = [torch.Generator().manual_seed(10_000 + s) for s in cfg.seeds]  # batches, actions
        env = BlackBoxReward(y_tr, cfg.reward_correct, cfg.reward_wrong)
        # what the network sees lives on the device (the black box keeps its NumPy labels)
        x_tr, y_tr, x_te, y_te = (t.to(device) for t in (x_tr, y_tr, x_te, y_te))
        logs: dict = {k: [] for k in ("iters", "test_acc", "train_acc", "reward", "recall")}

        def log(it: int, rewards: torch.Tensor) -> None:
            te = evaluate(net, x_te, y_te, K)
            logs["iters"].append(it)
            logs["test_acc"].append(te["acc"])
            logs["recall"].append(te["recall"])
            logs["train_acc"].append(evaluate(net, x_tr[:10_000], y_tr[:10_000], K)["acc"])
            logs["reward"].append(rewards.mean(-1))

        def batch() -> tuple[torch.Tensor, torch.Tensor]:
            """Indices [S, B] (each member its own minibatch) and the inputs: [B, d] shared
            (full batch) or [S, B, d]."""
            if B == n:
                return torch.arange(n).expand(S, n), x_tr
            idx = torch.stack([torch.randint(0, n, (B,), generator=g) for g in gens])
            return idx, x_tr[idx.to(device)]

        def uniforms(m: int) -> torch.Tensor:  # [S, m], member s from its own generator
            return torch.stack([torch.rand(m, generator=g) for g in gens]).to(device)

        with torch.no_grad():
            m = min(n, 4096)
            a0 = sample_actions(net(x_tr[:m]), uniforms(m))  # [S, m]
            log(0, env(np.arange(m)[None].repeat(S, 0), a0.cpu().numpy()).to(device))
        for it in progress(range(1, cfg.iters + 1), desc=f"{cfg.task}/{cfg.method}"):
            idx, x = batch()  # idx [S, B] on the CPU (the black box's rows)
            logits = net(x)  # [S, B, K]
            actions = sample_actions(logits, uniforms(B))  # [S, B], sampled
            rewards = env(idx.numpy(), actions.cpu().numpy()).to(device)  # [S, B], black box
            if cfg.method == "reinforce":
                adv = rewards - baseline_values(rewards, cfg.baseline)  # [S, B]
                loss = reinforce_surrogate(logits, actions, adv)
            elif cfg.method == "expected":  # the true gradient of R on the batch, no sampling
                loss = expected_reward_loss(logits, env.all_actions(idx.numpy(), K).to(device))
            elif cfg.method == "supervised":
                loss = supervised_loss(logits, y_tr[idx.to(device)])
            else:
                raise ValueError(f"unknown method {cfg.method!r}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if it % cfg.eval_every == 0 or it == cfg.iters:
                log(it, rewards)
    stack = lambda k: torch.stack(logs[k], dim=1).cpu()  # noqa: E731  [S, T, ...]
    return {
        "iters": logs["iters"],
        "test_acc": stack("test_acc"),
        "train_acc": stack("train_acc"),
        "reward": stack("reward"),
        "recall": stack("recall"),
        "final_test_acc": logs["test_acc"][-1].cpu(),
        "queries": env.queries,
        "state_dict": {k: v.clone().cpu() for k, v in net.state_dict().items()},
        "seeds": list(cfg.seeds),
    }


def iters_to_reach(iters, acc: torch.Tensor, target: float) -> torch.Tensor:
    """First logged iteration at which each curve of ``acc`` [S, T] reaches ``target``: [S]
    (nan where it never does)."""
    acc = torch.as_tensor(acc)
    reached = acc >= target  # [S, T]
    first = reached.float().argmax(1)  # first True (0 if none)
    its = torch.tensor(iters, dtype=torch.float64)[first]
    return torch.where(reached.any(1), its, torch.tensor(math.nan, dtype=torch.float64))


def median_reach(reach: torch.Tensor) -> float:
    """The median over seeds of :func:`iters_to_reach` [S], a seed that never reaches the target
    counting as later than any that does (inf): one stuck seed of three moves the median to the
    slower of the other two instead of making it nan."""
    return reach.nan_to_num(nan=math.inf).median().item()


# --- the estimator against the true gradient -----------------------------------------------------


def flat_grad(loss: torch.Tensor, params) -> torch.Tensor:
    """d loss / d params, flattened and concatenated: [P]."""
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params))])


def true_gradient(net: nn.Module, x: torch.Tensor, reward_table: torch.Tensor) -> torch.Tensor:
    """The exact gradient of R(w) = (1/n) sum_i sum_a p_w(a|x_i) r(x_i, a), [P].

    ``reward_table`` [n, K] is the black box's reward of every action (no gradient); the
    expectation over actions is a finite sum, so autograd gives the true gradient.
    """
    return -flat_grad(expected_reward_loss(net(x), reward_table), net.parameters())


def reinforce_gradient(net: nn.Module, x: torch.Tensor, idx, env: BlackBoxReward,
                       baseline: str, generator: torch.Generator) -> torch.Tensor:
    """One REINFORCE estimate of grad R (ascent direction) from one round of sampled actions on
    the batch x [B, d] (rows ``idx`` of the black box's dataset): [P], where x lives (the
    uniforms are drawn on the CPU from ``generator``)."""
    logits = net(x)  # [B, K]
    u = torch.rand(len(x), generator=generator).to(x.device)  # [B]
    actions = sample_actions(logits, u)  # [B]
    rewards = env(idx, actions.cpu().numpy()).to(x.device)  # [B]
    adv = rewards - baseline_values(rewards, baseline)
    return -flat_grad(reinforce_surrogate(logits, actions, adv), net.parameters())


def estimator_stats(net: nn.Module, x: torch.Tensor, idx, env: BlackBoxReward, baseline: str,
                    n_draws: int, generator: torch.Generator) -> dict:
    """Bias and variance of the REINFORCE estimate on batch ``x`` against the true gradient.

    Returns ``rel_mse`` = E||g_hat - g||^2 / ||g||^2 (the trace of the estimator's covariance plus
    its squared bias, relative to the signal), ``rel_bias`` = ||mean g_hat - g|| / ||g|| (which
    shrinks like 1/sqrt(n_draws) for an unbiased estimator), and ``cosine``, the mean cosine
    similarity between g_hat and g.
    """
    n_classes = net(x[:1]).shape[1]
    g = true_gradient(net, x, env.all_actions(idx, n_classes).to(x.device))  # [P]
    est = torch.stack([reinforce_gradient(net, x, idx, env, baseline, generator)
                       for _ in range(n_draws)])  # [R, P]
    return {
        "rel_mse": (((est - g) ** 2).sum(1).mean() / (g**2).sum()).item(),
        "rel_bias": ((est.mean(0) - g).norm() / g.norm()).item(),
        "cosine": F.cosine_similarity(est, g[None], dim=1).mean().item(),
        "true_grad_norm": g.norm().item(),
    }


def optimal_constant_baseline(net: nn.Module, x: torch.Tensor,
                              reward_table: torch.Tensor) -> float:
    """The constant b that minimises the variance of the REINFORCE estimate on batch x:

        b* = sum_i E_a[r(x_i, a) ||s_ia||^2] / sum_i E_a[||s_ia||^2],  s_ia = grad log p_w(a|x_i),

    a reward average weighted by squared score norms (Greensmith et al., 2004). Needs the reward
    of every action and per-example gradients, so it is an analysis tool, not a learner's.
    """
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in net.named_parameters()}

    def logp(p, xi, a):  # xi [d] -> scalar log p(a|xi)
        return torch.log_softmax(functional_call(net, p, (xi[None],)).float(), -1)[0, a]

    sq = []
    for a in range(reward_table.shape[1]):
        g = vmap(grad(logp), in_dims=(None, 0, None))(params, x, a)  # {name: [n, ...]}
        sq.append(sum((v.reshape(len(x), -1) ** 2).sum(1) for v in g.values()))  # [n]
    sq = torch.stack(sq, dim=1)  # [n, K]
    with torch.no_grad():
        probs = torch.softmax(net(x).float(), dim=-1)  # [n, K]
    return ((probs * reward_table * sq).sum() / (probs * sq).sum()).item()


@dataclass(frozen=True)
class VarianceConfig:
    """Where the estimator's variance is measured: the full-batch synthetic policy of
    ``train_cfg`` (its first seed), at initialisation and after training; reward schemes
    (correct, wrong) and baselines ("optimal": :func:`optimal_constant_baseline`)."""

    train_cfg: PGConfig = PGConfig()
    rewards: tuple[tuple[float, float], ...] = ((3.0, -1.0), (1.0, 0.0), (13.0, 9.0))
    baselines: tuple[str, ...] = ("none", "mean", "optimal")
    n_draws: int = 200
    seed: int = 0


def variance_study(cfg: VarianceConfig, device: str | None = None) -> dict:
    """``estimator_stats`` at initialisation and at the end of a REINFORCE run, for every reward
    scheme and baseline. Returns {"stats": {(stage, (correct, wrong), baseline): stats},
    "info": {(stage, (correct, wrong)): {"b_opt", "mean_reward"}}, "train": the run}. On
    ``device`` (default ``$DGMBOOK_DEVICE``); the results are on the CPU."""
    device = devices.resolve(device)
    tc = cfg.train_cfg
    data = load_task(tc)
    x_tr, y_tr = data[0], data[1]
    sizes = (x_tr.shape[1], *tc.hidden, int(y_tr.max()) + 1)
    trained = train(tc, data, device=device)
    x_tr = x_tr.to(device)  # the black box keeps the labels y_tr
    stats, info = {}, {}
    with torch_threads(tc.threads):
        for stage in ("init", "trained"):
            ens = EnsembleMLP(sizes, tc.seeds)
            if stage == "trained":
                ens.load_state_dict(trained["state_dict"])
            net = ens.member(0).to(device)
            idx = np.arange(len(x_tr))
            for rc, rw in cfg.rewards:
                env = BlackBoxReward(y_tr, rc, rw)
                table = env.all_actions(idx, sizes[-1]).to(device)  # [n, K]
                with torch.no_grad():
                    mean_r = (torch.softmax(net(x_tr), -1) * table).sum(1).mean().item()
                b_opt = optimal_constant_baseline(net, x_tr, table)
                info[(stage, (rc, rw))] = {"b_opt": b_opt, "mean_reward": mean_r}
                for b in cfg.baselines:
                    gen = torch.Generator().manual_seed(cfg.seed)
                    kind = b_opt if b == "optimal" else b
                    stats[(stage, (rc, rw), b)] = estimator_stats(net, x_tr, idx, env, kind,
                                                                  cfg.n_draws, gen)
    trained.pop("state_dict")
    return {"stats": stats, "info": info, "train": trained}


def summarize(run: dict, target: float) -> dict:
    """Per-seed summary of a ``train`` result: final test accuracy [S], iterations to reach
    ``target`` test accuracy [S] (nan: never), and jitter [S], the mean absolute change of test
    accuracy between consecutive logs over the second half of training (an instability measure)."""
    acc = run["test_acc"]  # [S, T]
    half = acc[:, acc.shape[1] // 2:]
    return {
        "final": acc[:, -1],
        "iters_to_target": iters_to_reach(run["iters"], acc, target),
        "jitter": (half[:, 1:] - half[:, :-1]).abs().mean(1),
    }


# --- a small discrete problem where everything is exact ------------------------------------------


@dataclass(frozen=True)
class DiscreteProblem:
    """M inputs with probabilities ``px``, features ``phi`` [M, D], K labels, a linear-softmax
    policy p_w(y|x) = softmax(W phi(x)) with W [K, D], and a loss table L [M, K]."""

    px: tuple[float, ...] = (0.5, 0.3, 0.2)
    phi: tuple[tuple[float, ...], ...] = ((1.0, 0.0), (1.0, 1.0), (1.0, -2.0))
    W: tuple[tuple[float, ...], ...] = ((0.2, -0.5), (-0.3, 0.4), (0.1, 0.3))
    L: tuple[tuple[float, ...], ...] = ((0.0, 2.0, 1.0), (1.5, 0.0, 3.0), (2.5, 1.0, 0.0))

    def tensors(self):
        t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        return t(self.px), t(self.phi), t(self.W), t(self.L)

    def policy(self, W: torch.Tensor) -> torch.Tensor:
        """p_w(y|x) for every x: [M, K]."""
        _, phi, _, _ = self.tensors()
        return torch.softmax(phi @ W.T, dim=-1)

    def objective(self, W: torch.Tensor) -> torch.Tensor:
        """The exact J(W) = sum_x p(x) sum_y p_w(y|x) L(x, y)."""
        px, _, _, L = self.tensors()
        return (px[:, None] * self.policy(W) * L).sum()

    def exact_gradient(self) -> torch.Tensor:
        """grad_W J by autograd on the exact (finite-sum) objective: [K, D]."""
        W = self.tensors()[2].requires_grad_(True)
        return torch.autograd.grad(self.objective(W), W)[0]

    def scores(self) -> torch.Tensor:
        """grad_W log p_w(y|x) for every cell (x, y), by autograd: [M, K, K, D]."""
        px, phi, W, _ = self.tensors()
        M, K = len(px), W.shape[0]
        W = W.requires_grad_(True)
        logp = torch.log(self.policy(W))  # [M, K]
        return torch.stack([torch.stack([torch.autograd.grad(logp[m, k], W, retain_graph=True)[0]
                                         for k in range(K)]) for m in range(M)])

    def mc_estimates(self, n: int, repeats: int, generator: torch.Generator) -> torch.Tensor:
        """``repeats`` independent score-function estimates, each from n draws, [R, K, D]:

            g_hat = (1/n) sum_i grad log p_w(y_i|x_i) L(x_i, y_i),  x_i ~ p(x), y_i ~ p_w(.|x_i).

        The sum over draws is grouped by cell (x, y): sum_i f(x_i, y_i) = sum_cells count * f.
        """
        px, _, W, L = self.tensors()
        M, K = len(px), W.shape[0]
        x = torch.multinomial(px, repeats * n, replacement=True, generator=generator)  # [R n]
        u = torch.rand(repeats * n, 1, generator=generator, dtype=torch.float64)
        cdf = self.policy(W).cumsum(1)[x]  # [R n, K]
        y = (u > cdf).sum(1).clamp(max=K - 1)  # inverse-CDF sample of y ~ p_w(.|x), [R n]
        cell = (x * K + y).reshape(repeats, n)  # [R, n]
        counts = torch.zeros(repeats, M * K, dtype=torch.float64)
        counts.scatter_add_(1, cell, torch.ones_like(cell, dtype=torch.float64))  # [R, M K]
        per_cell = (self.scores() * L[:, :, None, None]).reshape(M * K, -1)  # [M K, K D]
        return (counts @ per_cell / n).reshape(repeats, K, -1)
