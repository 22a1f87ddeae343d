"""Speed figures for the chapter "Zeroth-order optimization" (dgmbook.policy_gradient).

Prints, on one torch thread (the chapter trains on one):
  * ms per training iteration on the synthetic task, one network vs a 5-seed ensemble;
  * ms per iteration on MNIST (3-seed ensemble, minibatch 256), fp32 vs bf16 autocast;
  * the cost of the variance measurement's pieces;
  * the CPU seconds the chapter's cold run spends training, estimated from these rates.

Times are CPU seconds of this process (time.process_time), which other jobs sharing the cores do
not inflate; wall-clock seconds are shown beside them.

    DGMBOOK_DATA=/work/shared/data python code/benchmarks/bench_policy_gradient.py
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from dgmbook import policy_gradient as pg
from dgmbook.utils import autocast


def timed(fn, repeat: int = 1) -> tuple[float, float]:
    """(cpu seconds, wall seconds) of ``repeat`` calls, the first call excluded as a warm-up."""
    fn()
    c, w = time.process_time(), time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.process_time() - c) / repeat, (time.perf_counter() - w) / repeat


def per_iter(cfg: pg.PGConfig, data, iters: int) -> tuple[float, float]:
    """ms per iteration of ``pg.train`` (logging every 20 iterations, as in the chapter)."""
    cpu, wall = timed(lambda: pg.train(replace(cfg, iters=iters), data))
    return 1e3 * cpu / iters, 1e3 * wall / iters


def mnist_step_ms(cfg: pg.PGConfig, data, bf16: bool, iters: int = 60) -> tuple[float, float]:
    """ms per REINFORCE step of the MNIST ensemble with and without bf16 autocast."""
    x_tr, y_tr = data[0], data[1]
    net = pg.EnsembleMLP((784, *cfg.hidden, 10), cfg.seeds)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    env = pg.BlackBoxReward(y_tr)
    g = torch.Generator().manual_seed(0)
    S, B = len(cfg.seeds), cfg.batch_size

    def run():
        for _ in range(iters):
            idx = torch.randint(0, len(x_tr), (S, B), generator=g)
            with autocast(bf16):
                logits = net(x_tr[idx]).float()
            a = pg.sample_actions(logits, torch.rand(S, B, generator=g))
            r = env(idx.numpy(), a.numpy())
            loss = pg.reinforce_surrogate(logits, a, r)
            opt.zero_grad()
            loss.backward()
            opt.step()

    cpu, wall = timed(run)
    return 1e3 * cpu / iters, 1e3 * wall / iters


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread\n")

    course = pg.PGConfig(seeds=(0, 1, 2, 3, 4))
    data = pg.load_task(course)
    print("synthetic task (8-32-4, full batch of 1000), ms per iteration [cpu / wall]:")
    rates = {}
    for method in ("reinforce", "supervised", "expected"):
        one = per_iter(replace(course, method=method, seeds=(0,)), data, 200)
        five = per_iter(replace(course, method=method), data, 200)
        rates[method] = five[0]
        print(f"  {method:10s} 1 seed {one[0]:6.2f} / {one[1]:6.2f}   5-seed ensemble {five[0]:6.2f} / "
              f"{five[1]:6.2f}   speed-up over 5 separate runs x{5 * one[0] / five[0]:.1f}")

    mnist = pg.PGConfig(task="mnist", n_train=60_000, n_test=10_000, hidden=(64,), batch_size=256,
                        iters=1000, eval_every=50, seeds=(0, 1, 2))
    mdata = pg.load_task(mnist)
    print("\nMNIST (784-64-10, 3-seed ensemble, minibatch 256), ms per REINFORCE step [cpu / wall]:")
    fp32 = mnist_step_ms(mnist, mdata, bf16=False)
    bf16 = mnist_step_ms(mnist, mdata, bf16=True)
    print(f"  fp32 {fp32[0]:6.2f} / {fp32[1]:6.2f}   bf16 autocast {bf16[0]:6.2f} / {bf16[1]:6.2f}"
          f"   (bf16/fp32 = {bf16[0] / fp32[0]:.2f})")
    m_train = per_iter(mnist, mdata, 200)
    print(f"  pg.train incl. evaluation every 50 steps: {m_train[0]:6.2f} / {m_train[1]:6.2f}")

    print("\nvariance measurement (full batch of 1000, one network):")
    net = pg.EnsembleMLP((8, 32, 4), (0,)).member(0)
    env = pg.BlackBoxReward(data[1])
    idx = np.arange(1000)
    table = env.all_actions(idx, 4)
    g = torch.Generator().manual_seed(0)
    est = timed(lambda: pg.reinforce_gradient(net, data[0], idx, env, "none", g), repeat=50)
    opt = timed(lambda: pg.optimal_constant_baseline(net, data[0], table), repeat=3)
    print(f"  one REINFORCE estimate {1e3 * est[0]:6.2f} ms cpu;  optimal baseline b* {1e3 * opt[0]:6.1f} ms cpu")

    # the chapter's cold run: 5 synthetic ensembles of 2000 iterations, the variance study
    # (one 2000-iteration run + 2 stages x 3 rewards x 3 baselines x 200 estimates), 3 MNIST runs
    synth = 2000 * (rates["supervised"] + 3 * rates["reinforce"] + rates["expected"]) / 1e3
    one_seed = per_iter(replace(course, seeds=(0,)), data, 200)[0]
    variance = (2000 * one_seed + 18 * 200 * 1e3 * est[0] + 6 * 1e3 * opt[0]) / 1e3
    mn = 3 * 1000 * m_train[0] / 1e3
    print(f"\nestimated training CPU seconds of a cold chapter run: synthetic {synth:.0f}, "
          f"variance study {variance:.0f}, MNIST {mn:.0f}; total {synth + variance + mn:.0f}")


if __name__ == "__main__":
    main()
