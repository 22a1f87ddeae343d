"""Seconds per training epoch (60,000 permuted-MNIST images) for the chapter's two networks,
float32 against bf16 autocast, plus what EWC adds (the penalty per step, the Fisher per task).

    DGMBOOK_DATA=../shared/data python code/benchmarks/bench_continual.py [--threads 2] [--n 60000]

Prints wall and process-CPU seconds; on a shared machine the CPU time is the better guide to
what an idle machine would take (divide by the threads actually used).
"""

from __future__ import annotations

import argparse
import time

import torch

from dgmbook import continual as cl


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--n", type=int, default=60_000, help="training images per timed epoch")
    ap.add_argument("--fisher-n", type=int, default=1_000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = cl.load_permuted_mnist(n_train=args.n, n_test=1_000)
    x, y = data.train(1)
    print(f"torch {torch.__version__}, {args.threads} thread(s), epoch = {len(x):,} images, batch 256")
    print(f"{'model':5} {'precision':9} {'strategy':8} {'wall s/epoch':>12} {'cpu s/epoch':>12}")
    for model_name in ("mlp", "cnn"):
        for bf16 in (False, True):
            for strategy in ("naive", "ewc"):
                cfg = cl.Config(model=model_name, bf16=bf16, strategy=strategy)
                g = torch.Generator().manual_seed(0)
                torch.manual_seed(0)
                model = cl.make_model(cfg)
                opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
                ewc = None
                if strategy == "ewc":  # a consolidated task, so the penalty is really computed
                    ewc = cl.EWC(100.0, 1 / cfg.lr)
                    ewc.consolidate(model, {k: torch.rand_like(p) for k, p in model.named_parameters()})
                cl.train_epochs(model, opt, x[:2048], y[:2048], cfg, g, ewc)  # warm-up
                _, wall, cpu = timed(lambda: cl.train_epochs(model, opt, x, y, cfg, g, ewc))
                print(f"{model_name:5} {'bf16' if bf16 else 'fp32':9} {strategy:8} {wall:12.2f} {cpu:12.2f}")
        model = cl.make_model(cl.Config(model=model_name))
        _, wall, cpu = timed(lambda: cl.fisher_diagonal(model, x[:args.fisher_n], y[:args.fisher_n],
                                                        "sampled", generator=torch.Generator().manual_seed(0)))
        print(f"{model_name:5} fp32      Fisher of {args.fisher_n:,} examples (sampled): "
              f"wall {wall:.2f} s, cpu {cpu:.2f} s")


if __name__ == "__main__":
    main()
