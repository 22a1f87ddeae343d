"""Training speed of the GAN chapter's models on this machine's CPU.

    DGMBOOK_DATA=... python code/benchmarks/bench_gan.py [--iters 300] [--threads 2]

Prints, for the chapter's configuration (``dgmbook.gan.book_config``), GAN training iterations per
second (one discriminator step + one generator step, batch 64) with and without bf16 autocast, for
both generator losses, and the digit classifier's training throughput. Each figure is given twice:
from wall-clock time, and from the process's CPU time divided by the number of threads. The second
is a steadier estimate of the uncontended speed when other jobs share the cores (it assumes the
threads would be kept busy; on an idle machine the two agree to within the threads' idle time).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from dgmbook import digit_classifier, gan


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def bench_gan(cfg: gan.GANConfig, data: torch.Tensor, iters: int) -> tuple[float, float]:
    gan.train(dataclasses.replace(cfg, iters=20, snapshots=()), data)  # warm-up (oneDNN kernels)
    wall, cpu = timed(lambda: gan.train(dataclasses.replace(cfg, iters=iters, snapshots=()), data))
    return iters / wall, iters / (cpu / torch.get_num_threads())


def bench_classifier(n: int) -> tuple[float, float]:
    cfg = digit_classifier.ClassifierConfig(n_train=n, epochs=1)
    x, y = digit_classifier.mnist_float(train=True, n=n)
    model = digit_classifier.DigitCNN(cfg.channels, cfg.feature_dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)

    def run():
        for xb, yb in zip(x.split(cfg.batch_size), y.split(cfg.batch_size)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    run()  # warm-up
    wall, cpu = timed(run)
    return n / wall, n / (cpu / torch.get_num_threads())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300, help="GAN iterations per measurement")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, _ = gan.mnist_vectors(train=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"GAN (chapter config: conv G{gan.book_config().g_hidden} / D{gan.book_config().d_hidden}, "
          f"batch {gan.book_config().batch_size}), {args.iters} iterations per measurement")
    print(f"{'loss':<9}{'bf16':<6}{'it/s (wall)':>12}{'it/s (CPU time)':>17}")
    rates = {}
    for loss in ("ns", "minimax"):
        for bf16 in (True, False):
            wall, cpu = bench_gan(gan.book_config(loss, bf16=bf16), data, args.iters)
            rates[(loss, bf16)] = (wall, cpu)
            print(f"{loss:<9}{str(bf16):<6}{wall:>12.1f}{cpu:>17.1f}")
    wall, cpu = rates[("ns", True)]
    cfg = gan.book_config()
    print(f"chapter's GAN training ({2 * cfg.iters} iterations + 2 x 1000 head-start iterations "
          f"+ 2 x 1000 discriminator-only steps, counted as 1/3 iteration): "
          f"~{(2 * cfg.iters + 2000 + 2000 / 3) / wall:.0f} s (wall rate), "
          f"~{(2 * cfg.iters + 2000 + 2000 / 3) / cpu:.0f} s (CPU-time rate)")
    wall, cpu = bench_classifier(12_800)
    print(f"digit classifier training: {wall:.0f} images/s (wall), {cpu:.0f} images/s (CPU time); "
          f"{2 * 60_000 / cpu:.0f} s for its 2 epochs (CPU-time rate)")


if __name__ == "__main__":
    main()
